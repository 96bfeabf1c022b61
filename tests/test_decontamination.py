"""Decontamination (issue 20): lm-evaluation-harness's 13-gram rule, the short-prompt rule, and the
acceptance measurement on AlpacaEval's 805 prompts and the 3,111 Alpaca rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.cli import main
from reflectune.decontamination import NgramIndex, TestPrompt, decontaminate, ngrams, normalize
from reflectune.decontamination.rules import prompt_text
from reflectune.errors import ConfigError

DATA = Path("/work/shared/data")
ALPACAEVAL = DATA / "alpacaeval805_alpaca-7b.json"
ALPACA = DATA / "alpaca_cherry5pct_3111.json"
needs_data = pytest.mark.skipif(not ALPACAEVAL.is_file() or not ALPACA.is_file(), reason="shared data absent")

LONG = "Describe a scenario where artificial intelligence could be used to improve the quality of care."


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello, World!", "hello world"),
    ("  don't\n\tstop  ", "dont stop"),  # deleted, not spaced: janitor's translate table
    ("well-known (AI)", "wellknown ai"),
    ("ÉCOLE", "école"),
    ("", ""),
])
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(("tokens", "n", "expected"), [
    (["a", "b", "c"], 2, ["a b", "b c"]),
    (["a", "b", "c"], 3, ["a b c"]),
    (["a", "b"], 3, []),
])
def test_ngrams(tokens: list[str], n: int, expected: list[str]) -> None:
    assert list(ngrams(tokens, n)) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("2 / 2Create 10 marketing punch lines", "Create 10 marketing punch lines"),
    ("Prove that 5 / 3 ...", "Prove that 5 / 3 ..."),
    ("3 / 3 is a fraction", "3 / 3 is a fraction"),
])
def test_prompt_text_drops_sharegpts_counter(text: str, expected: str) -> None:
    assert prompt_text(text) == expected


INDEX = NgramIndex.build([TestPrompt("vicuna", "15", LONG), TestPrompt("koala", "k1", "What is Atlantis?"),
                          TestPrompt("lima", "l1", "Write a poem.")])


@pytest.mark.parametrize(("instruction", "output", "expected"), [
    (LONG, "", ("vicuna", "ngram", "instruction")),
    ("Rewrite this.", "Sure: " + LONG.lower().replace(",", ""), ("vicuna", "ngram", "output")),
    # 12 of its words only: no 13-gram shared
    ("Describe a scenario where artificial intelligence could be used to improve the", "", None),
    # short prompts: the whole prompt, contiguous, at least half the instruction
    ("what is atlantis", "", ("koala", "short_prompt", "instruction")),
    ("What is Atlantis? Be brief.", "", ("koala", "short_prompt", "instruction")),
    ("Write a poem about the sea in the style of Keats, in four stanzas.", "", None),
    ("Tell me a story.", "What is Atlantis? A legend.", None),  # short prompts are not sought in answers
    ("What is Atlantis made of", "", ("koala", "short_prompt", "instruction")),
    ("Atlantis: what is it?", "", None),  # not contiguous
])
def test_match(instruction: str, output: str, expected: tuple[str, str, str] | None) -> None:
    found = INDEX.match(instruction, "", output)
    got = None if found is None else (found.prompt.dataset, found.reason, found.field)
    assert got == expected


def test_min_shared_and_the_input_joined_to_the_instruction() -> None:
    strict = NgramIndex.build([TestPrompt("vicuna", "15", LONG)], min_shared=2)
    assert strict.match(" ".join(LONG.split()[:13])) is None  # one 13-gram, two wanted
    assert strict.match(" ".join(LONG.split()[:14])) is not None
    words = LONG.split()
    assert INDEX.match(" ".join(words[:7]), " ".join(words[7:])) is not None


@needs_data
def test_every_alpacaeval_prompt_is_caught(tmp_path: Path) -> None:
    summary = decontaminate(ALPACAEVAL, against=str(ALPACAEVAL), run_dir=tmp_path / "self")
    assert (summary.samples, summary.dropped, summary.kept) == (805, 805, 0)
    lines = [json.loads(line) for line in summary.rejects.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 805 and all(line["test"]["id"] == str(line["row"] - 1) for line in lines)
    # against the five test sets alone: AlpacaEval holds all of Vicuna and Self-Instruct, 156 of Koala
    summary = decontaminate(ALPACAEVAL, against="all", run_dir=tmp_path / "all")
    print("AlpacaEval against all:", summary.dropped, summary.by_testset)
    assert summary.by_testset == {"koala": 156, "sinstruct": 252, "vicuna": 80}
    rows = json.loads(ALPACAEVAL.read_text(encoding="utf-8"))
    sources = {"koala": "koala", "sinstruct": "selfinstruct", "vicuna": "vicuna"}
    for line in (json.loads(x) for x in summary.rejects.read_text(encoding="utf-8").splitlines()):
        assert rows[line["row"] - 1]["source"] == sources[line["test"]["dataset"]]


@needs_data
def test_the_alpaca_rows_overlap(tmp_path: Path) -> None:
    summary = decontaminate(ALPACA, against=f"all,{ALPACAEVAL}", run_dir=tmp_path)
    lines = [json.loads(line) for line in summary.rejects.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        print(line["row"], line["test"]["dataset"], line["test"]["id"], line["ngram"])
    assert (summary.samples, summary.dropped, summary.kept) == (3111, 1, 3110)
    assert lines[0]["test"]["id"] == "lima_167"  # "Write a story about a brave knight who is on a quest..."
    assert len(json.loads(summary.output.read_text(encoding="utf-8"))) == 3110
    manifest = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))["decontaminate"]
    assert manifest["by_testset"] == {"lima": 1} and manifest["settings"]["ngram"] == 13


def test_bad_against_is_a_config_error(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "there"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="nor a file"):
        decontaminate(data, against="vicuna,nosuchset", run_dir=tmp_path / "run")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": LONG, "output": "x"}, {"instruction": "Name a colour.", "output": "Blue."}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": LONG}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["decontaminate", str(data), "--against", f"all,{prompts}", "-o", str(out),
                 "--run-dir", str(tmp_path / "run"), "-q", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["samples"], body["kept"], body["dropped"]) == (2, 1, 1)
    assert body["by_testset"] == {"p": 1}
    assert [json.loads(x)["instruction"] for x in out.read_text(encoding="utf-8").splitlines()] == [
        "Name a colour."]
    assert main(["decontaminate", str(tmp_path / "missing.json"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert main(["decontaminate", str(data), "--against", "nope", "--run-dir", str(tmp_path / "r3")]) == 2
    assert "nor a file" in capsys.readouterr().err
