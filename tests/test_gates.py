"""The quality gates: each rule on real texts, their calibration on the labelled set, and the
promise that changing a gate re-decides from the store with no new call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.config import GatesConfig, RecycleConfig, gates_option, validated
from reflectune.errors import ConfigError
from reflectune.prompts.render import RESPONSE, load_template, render
from reflectune.recycling.calibration import calibrate
from reflectune.recycling.gates import Candidate, apply_gates, check
from reflectune.recycling.rules import Variant, skipped
from reflectune.testing.server import running_server
from reflectune.types import Sample
from tests.conftest import SHARED_DATA, run_cli

LABELLED = Path(__file__).parent / "data" / "gates_labelled.jsonl"
CFG = GatesConfig()
TASK = "\n".join(m.content for m in render(load_template(RESPONSE.template), instruction="", answer=""))


def _alpacaeval(i: int) -> tuple[dict, dict]:
    a7b = json.loads((SHARED_DATA / "alpacaeval805_alpaca-7b.json").read_text())[i]
    dv3 = json.loads((SHARED_DATA / "alpacaeval805_text_davinci_003.json").read_text())[i]
    return a7b, dv3


def answer(text: str, original: str, *, critique: str = "", instruction: str = "") -> Candidate:
    return Candidate("output", text, original, (), critique, TASK, (instruction, original),
                     instruction=instruction)


def gate_of(candidate: Candidate, cfg: GatesConfig = CFG) -> str | None:
    found = check(candidate, cfg)
    return found.gate if found else None


# -- each gate, on texts real models wrote ------------------------------------------------------

SMOL_ECHO = ("The answer is not good for the instruction because it is not helpful, relevant, accurate, or "
             "level of detail. It is not helpful because it is not helpful, it is not relevant because it "
             "is not helpful, and it is not accurate because it is not accurate.")
NAMES = "Ardith, Elsabelle, Gunther, Wilfred, Arianne, Balthazar, Hrolf, Gretchen, Isadora, Marsali."


def test_echo_is_judged_from_overlap_with_the_prompt_and_a_critique() -> None:
    assert gate_of(answer(SMOL_ECHO, NAMES)) == "echo"
    a7b, dv3 = _alpacaeval(78)  # octane ratings: a real rewrite shares the topic, not the criteria
    assert gate_of(answer(dv3["output"], a7b["output"], instruction=a7b["instruction"])) is None
    # A critique that restates the criteria may not be copied into the section...
    critique = "The answer is not good for the instruction because it lists names without any detail."
    echoed = "It lists names without any detail and it is not helpful for the user."
    assert gate_of(answer(echoed, NAMES, critique=critique)) == "echo"
    # ...but a "critique" that is a first draft of the answer may (a small model often writes one).
    draft = "The Notebook is a film that explores the theme of love, and its characters are passionate."
    assert gate_of(answer(draft, "In The Notebook, Allie and Noah have a strong relationship.",
                          critique=draft)) is None


def test_echo_does_not_count_what_the_critique_quotes_from_the_original() -> None:
    original = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves."
    critique = (f"The answer is not good: it says '{original}' but never explains the light reactions "
                "or the Calvin cycle.")
    rewrite = ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves. "
               "In the light reactions, chlorophyll absorbs photons and splits water; the Calvin cycle "
               "then fixes carbon dioxide into glucose using ATP and NADPH.")
    assert gate_of(answer(rewrite, original, critique=critique)) is None


def test_unchanged_catches_copies_and_cut_down_copies_not_short_answers() -> None:
    poem = "The night is dark, my friend, don't fear The shining stars that blaze above"
    assert gate_of(answer(poem, poem)) == "unchanged"
    long = ("The Vietnam War began in November 1955, when North Vietnam initiated an armed conflict in order "
            "to reunite the two Vietnams divided by the agreement of the Geneva Conference. The war was "
            "primarily a result of the tension between communist North Vietnam and South Vietnam.")
    cut = ("The Vietnam War began in November 1955, when North Vietnam initiated an armed conflict in order "
           "to reunite the two Vietnams divided by the")
    found = check(answer(cut, long), CFG)
    assert found is not None and found.gate == "unchanged" and "cut-down" in found.reason
    # A short answer that is a phrase of the original is an answer, not a cut-down copy.
    assert gate_of(answer("The Matrix", "The movie is The Matrix (1999), in which Neo takes the red pill "
                          "and wakes up in the real world outside the simulation built by machines.")) is None


def test_copy_catches_an_instruction_made_of_the_answer() -> None:
    slogan = '"Technology with the Touch of a Human"'
    sample = Sample(id="x", row=1, instruction="Compose a catchy ad slogan", output=slogan)
    variants = {"ori": Variant(sample.instruction, "", sample.output, "ok"), "A": skipped("-"),
                "Q": Variant(slogan, "", "Technology with a human touch.", "ok", task=TASK),
                "QA": Variant(slogan, "", "A slogan that sticks.", "ok", task=TASK)}
    apply_gates(sample, variants, CFG)
    assert variants["Q"].status == "rejected" and variants["Q"].gate == "copy"
    assert variants["QA"].gate == "copy" and "instruction (from Q)" in (variants["QA"].reason or "")


def test_an_answer_may_repeat_its_instructions_text_when_it_edits_it() -> None:
    a7b, dv3 = _alpacaeval(709)  # "rewrite this review": the answer is mostly the instruction's text
    sample = Sample(id="x", row=1, instruction=a7b["instruction"], input="", output=a7b["output"])
    variants = {"ori": Variant(sample.instruction, "", sample.output, "ok"), "Q": skipped("-"),
                "QA": skipped("-"), "A": Variant(sample.instruction, "", dv3["output"], "ok", task=TASK)}
    apply_gates(sample, variants, CFG)
    assert variants["A"].ok, variants["A"].reason


def test_degenerate_catches_loops_but_not_repeats_the_original_has() -> None:
    a7b, dv3 = _alpacaeval(474)  # text-davinci-003 looping on "The tone could also be seen as..."
    assert gate_of(answer(dv3["output"], a7b["output"])) == "degenerate"
    refrain = "Let it snow, let it snow, let it snow. " * 6
    assert gate_of(answer(refrain + "The fire is slowly dying, and my dear we're still goodbying.",
                          refrain)) in (None, "unchanged")
    assert gate_of(answer("word " * 5000, "A short original answer.")) == "degenerate"


def test_collapsed_is_a_few_words_for_a_long_original_to_the_same_instruction() -> None:
    a7b, dv3 = _alpacaeval(68)  # "How were airplanes created?": 11 words for 68
    assert gate_of(answer(dv3["output"], a7b["output"])) == "collapsed"
    q = Candidate("output", dv3["output"], a7b["output"], (), "", TASK, (), same_task=False)
    assert gate_of(q) is None, "a new instruction may ask for a shorter answer"


def test_refusal_is_a_refusal_not_an_apology_or_a_poem() -> None:
    a7b, dv3 = _alpacaeval(315)  # Alpaca-7B: "No, I'm sorry but I can't help you write your memoir."
    assert gate_of(answer(a7b["output"], dv3["output"])) == "refusal"
    for text in ("I'm sorry you had a rough day. What kind of problems did you encounter?",
                 "I cannot help the way I feel\nAbout the Lord up high\nHe has done so much for me"):
        assert gate_of(answer(text, "An original answer about something else entirely.")) is None
    disclaimer = "As an AI language model, I cannot browse the internet."
    assert gate_of(answer(disclaimer, "The title is X.")) == "refusal"


def test_language_drift_is_a_change_of_script() -> None:
    original = "The Great Wall of China is over 21,000 km long and was built over many centuries."
    chinese = "长城全长两万一千多公里，历经多个世纪修建而成，是世界上最长的建筑。"
    assert gate_of(answer(chinese, original)) == "language"
    proverb = ('"海水不可斗量，朋友多多采" —— The sea cannot be measured, '
               "so many friends will yield much wealth.")
    assert gate_of(answer(proverb + " It means friendship is worth more than riches.", proverb)) is None


def test_disabled_gates_do_not_fire_and_thresholds_move_decisions() -> None:
    echo = answer(SMOL_ECHO, NAMES)
    assert gate_of(echo, GatesConfig(enabled=("unchanged",))) is None
    assert gate_of(echo, GatesConfig(echo_overlap=0.99)) is None


# -- calibration: the targets on the shipped labelled set ---------------------------------------

def test_gates_meet_their_targets_on_the_labelled_set() -> None:
    records = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    assert len(records) > 800
    result = calibrate(records)
    assert result.good > 700 and result.bad > 150
    assert result.kept_share >= 0.95, result.lost
    assert result.rejected_share >= 0.90, result.missed
    for gate in ("echo", "unchanged", "copy", "collapsed"):
        assert result.labelled[gate] >= 10
        assert (result.recall(gate) or 0) >= 0.8, gate


# -- configuration ------------------------------------------------------------------------------

def test_gates_option_parses_names_and_thresholds() -> None:
    assert gates_option("all") == {}
    assert gates_option("none") == {"enabled": ()}
    assert gates_option("echo=0.3, unchanged") == {"echo_overlap": 0.3, "enabled": ("echo", "unchanged")}
    for bad, needle in (("echo=x", "must be a number"), ("refusal=0.2", "no threshold"),
                        ("eccho=0.2", "unknown gate")):
        with pytest.raises(ConfigError, match=needle):
            gates_option(bad)
    with pytest.raises(ConfigError, match="did you mean 'echo'"):
        validated(RecycleConfig, gates={"enabled": ("eccho",)})


# -- end to end: gates are post-processing --------------------------------------------------------

def _decisions(run: Path) -> dict[str, str]:
    out = {}
    for line in (run / "variants.jsonl").read_text().splitlines():
        d = json.loads(line)
        for name, v in d["variants"].items():
            out[f"{d['row']}:{name}"] = v["status"]
    return out


def test_changing_a_gate_redecides_from_the_store_with_no_new_call(alpaca_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["recycle", str(alpaca_path), "--oracle", "openai:test", "--limit", "12", "--run-dir", str(run),
            "-q"]
    with running_server() as server:
        first = run_cli(*args, "--base-url", server.base_url)
        assert first.returncode == 0, first.stderr
        calls = sum(server.stats()["by_key"].values())
        before = _decisions(run)
        assert all(s == "ok" for s in before.values()), "the test server writes real rewrites"
        strict = run_cli(*args, "--base-url", server.base_url, "--gates", "unchanged=0.05")
        assert sum(server.stats()["by_key"].values()) == calls, "a gate change made an oracle call"
        after = _decisions(run)
        strict_manifest = json.loads((run / "run.json").read_text())["recycle"]
        off = run_cli(*args, "--base-url", server.base_url, "--gates", "none")
        assert sum(server.stats()["by_key"].values()) == calls
    # Everything parsed is now "unchanged" (5 % similar is enough): nothing is kept, and the run says so.
    assert strict.returncode == 1 and "nothing was produced" in strict.stderr
    assert {k for k, s in after.items() if s == "rejected"} == {k for k in before if not k.endswith(":ori")}
    assert strict_manifest["rejected_by_gate"]["unchanged"] == len(after) - 12
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["recycle"]["rejected_by_gate"] == {} and off.returncode == 0
    line = json.loads((run / "variants.jsonl").read_text().splitlines()[0])
    assert line["variants"]["A"]["gate"] is None and line["variants"]["A"]["critique"]
