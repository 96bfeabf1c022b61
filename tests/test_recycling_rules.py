"""The pure parts around the recycle stage: strict parsing (METHOD.md §3), which variant a row keeps
(§4), prices, the training recipe's option handling, and the test-set / prompts-file readers.

No oracle, no model, no network: every function here is pure apart from reading a small file.
``tests/test_parse.py``, ``tests/test_training.py`` and ``tests/test_testsets.py`` hold the main
cases; this file covers what they leave out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reflectune.errors import ConfigError, DataError
from reflectune.io.testsets import (
    PROMPT_FIELDS,
    TESTSETS,
    EvalItem,
    load_prompts_file,
    load_testset,
    load_testsets,
    packaged_testset_path,
    parse_prompt_fields,
)
from reflectune.markers import BETTER_ANSWER, END, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.oracles import pricing
from reflectune.prompts.parse import parse_reflection
from reflectune.prompts.render import INSTRUCTION, MERGE, RESPONSE, ReflectionKind
from reflectune.recycling.rules import (
    PREFERENCE,
    SampleResult,
    Variant,
    choose,
    chosen_texts,
    default_output_name,
    output_columns,
    skipped,
)
from reflectune.training.rules import (
    TrainConfig,
    accelerate_config_path,
    make_config,
    parse_sft_overrides,
    resolve_world_size,
)
from reflectune.types import Sample


def parse(text: str | None, kind: ReflectionKind = INSTRUCTION, **kwargs):
    return parse_reflection(text, kind.sections, kind.fields, placeholders=kind.placeholders, **kwargs)


# == parse_reflection (METHOD.md §3) ====================================================================

def test_the_markers_are_the_methods_exact_strings() -> None:
    """Facts of the method (§2): never reworded."""
    assert (NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER, END) == (
        "[New Instruction]", "[New Answer]", "[Better Answer]", "[End]")
    assert INSTRUCTION.sections == ("[New Instruction]", "[New Answer]")
    assert RESPONSE.sections == ("[Better Answer]",)


def test_sections_may_come_in_either_order() -> None:
    result = parse("Critique first.\n[New Answer] The answer. [End]\n[New Instruction] The task. [End]")
    assert result.ok and result.values == {"instruction": "The task.", "output": "The answer."}


def test_text_after_the_last_end_is_ignored() -> None:
    result = parse("[Better Answer] Kept. [End]\nI hope this helps!", RESPONSE)
    assert result.values == {"output": "Kept."}


def test_a_section_runs_to_its_last_end_so_quoted_ends_stay_in_it() -> None:
    """Issue 13: an [End] inside the text is the text's; the section's own is the last one."""
    result = parse("[Better Answer] Kept. [End] [End]\nI hope this helps! [End]", RESPONSE)
    assert result.values == {"output": "Kept. [End] [End]\nI hope this helps!"}


def test_a_missing_end_runs_only_to_the_next_expected_marker() -> None:
    """No [End]: the section ends where the next expected section starts."""
    result = parse("[New Instruction] Write a haiku.\n[New Answer] Snow.")
    assert result.ok and result.values == {"instruction": "Write a haiku.", "output": "Snow."}


@pytest.mark.parametrize("other", ["[Better Answer]", "[Merged Instruction]"])
def test_a_marker_of_another_kind_is_text(other: str) -> None:
    """Only the expected markers structure an answer; any other is quoted text (issue 13)."""
    result = parse(f"[New Instruction] Write a haiku. {other} aside [End] [New Answer] Snow. [End]")
    assert result.ok and result.values == {"instruction": f"Write a haiku. {other} aside", "output": "Snow."}


@pytest.mark.parametrize("word", ["Endpoint", "END", "The End.", "end", "[end]", "(End)", "Ends", "[END]"])
def test_nothing_but_the_exact_end_marker_ends_a_section(word: str) -> None:
    """The reference stops at a bare "End"; here "Endpoint", "The End." and case variants are text."""
    result = parse(f"[Better Answer] Before {word} after. [End]", RESPONSE)
    assert result.values == {"output": f"Before {word} after."}


def test_an_end_marker_quoted_inside_the_answer_stays_in_it() -> None:
    """Issue 13: "What does the [End] tag mean in BBCode?" must not be cut at the tag."""
    result = parse("[Better Answer] Close the block with [End] and continue. [End]", RESPONSE)
    assert result.ok and result.values == {"output": "Close the block with [End] and continue."}


def test_a_marker_quoted_mid_sentence_in_the_critique_does_not_start_a_section() -> None:
    """A section starts at a marker that begins a line (or follows [End]); a quoted one is text."""
    text = ("The old answer lacks detail, so I write a [Better Answer] below.\n"
            "[Better Answer] A detailed answer. [End]")
    result = parse(text, RESPONSE)
    assert result.ok and result.values == {"output": "A detailed answer."}


def test_two_sections_that_both_start_a_line_are_ambiguous_and_fail() -> None:
    text = "[Better Answer] One. [End]\n[Better Answer] Two. [End]"
    result = parse(text, RESPONSE)
    assert not result.ok and result.values == {} and result.reason == "[Better Answer] appears 2 times"


def test_a_data_row_about_the_format_itself_keeps_its_quoted_markers() -> None:
    """An instruction that quotes "[New Answer]" mid-sentence comes out whole (issue 13)."""
    text = ("[New Instruction] Explain what the tag [New Answer] means in a prompt. [End]\n"
            "[New Answer] It opens the answer section. [End]")
    result = parse(text)
    assert result.ok and result.values == {
        "instruction": "Explain what the tag [New Answer] means in a prompt.",
        "output": "It opens the answer section."}


@pytest.mark.parametrize(("text", "reason"), [
    ("[New Answer] only an answer [End]", "missing [New Instruction]"),
    ("[New Instruction] a [End] [New Answer] b [End] [New Instruction] c [End] [New Instruction] d",
     "[New Instruction] appears 3 times"),
    ("[New Instruction][New Answer] b [End]", "empty [New Instruction] section"),
    ("[New Instruction] a [End] [New Answer]\n \n[End]", "empty [New Answer] section"),
    ("[new instruction] a [end] [new answer] b [end]", "missing [New Instruction]"),
])
def test_failures_name_the_marker_and_take_nothing(text: str, reason: str) -> None:
    result = parse(text)
    assert (result.ok, result.values, result.reason) == (False, {}, reason)


@pytest.mark.parametrize("finish", ["length", "max_tokens", "model_length"])
def test_a_cut_off_generation_fails_before_anything_else(finish: str) -> None:
    """A complete-looking answer from a truncated generation is still truncated (§3)."""
    result = parse("[New Instruction] a [End] [New Answer] b [End]", finish_reason=finish)
    assert not result.ok and result.values == {}
    assert result.reason == f"generation cut off (finish_reason={finish})"
    assert parse(None, finish_reason=finish).reason == result.reason


@pytest.mark.parametrize("finish", ["stop", None, "eos", "end_turn", "stop_sequence", "content_filter_none"])
def test_other_finish_reasons_are_not_cut_offs(finish: str | None) -> None:
    assert parse("[Better Answer] fine [End]", RESPONSE, finish_reason=finish).ok


@pytest.mark.parametrize(("kind", "text"), [
    (INSTRUCTION, "[New Instruction] [Your Instruction] [End] [New Answer] A real answer. [End]"),
    (INSTRUCTION, "[New Instruction] <your instruction> [End] [New Answer] A real answer. [End]"),
    (INSTRUCTION, "[New Instruction] A real task. [End] [New Answer] {your answer} [End]"),
    (INSTRUCTION, "[New Instruction] A real task. [End] [New Answer] Your_Answer [End]"),
    (MERGE, "[Merged Instruction] The rewritten instruction. [End]"),
])
def test_echoed_placeholders_in_any_dressing_fail(kind: ReflectionKind, text: str) -> None:
    result = parse(text, kind)
    assert not result.ok and "placeholder" in (result.reason or "") and result.values == {}


@pytest.mark.parametrize("answer", ["Here is your answer: 42.", "your answer is 42",
                                    "Your answer " + "x" * 80])
def test_an_answer_that_merely_contains_the_placeholder_words_is_kept(answer: str) -> None:
    result = parse(f"[Better Answer] {answer} [End]", RESPONSE)
    assert result.ok and result.values == {"output": answer}


def test_merge_kind_extracts_the_merged_instruction() -> None:
    """§2.3: "Design a wellness plan for the given audience" + "Expectant Mothers"."""
    result = parse("[Merged Instruction] Design a wellness plan for expectant mothers. [End]", MERGE)
    assert result.ok and result.values == {"instruction": "Design a wellness plan for expectant mothers."}


def test_whitespace_is_stripped_at_the_edges_only() -> None:
    """Leading/trailing blank lines go; the answer's own line breaks and indentation stay."""
    text = "[Better Answer]\r\n\n   def f():\n       return 1\n\t \n[End]"
    assert parse(text, RESPONSE).values == {"output": "def f():\n       return 1"}


safe_text = st.text(alphabet=st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)),
                    min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(safe_text, safe_text, safe_text, st.booleans())
def test_well_formed_output_round_trips(critique: str, instruction: str, answer: str, with_end: bool) -> None:
    """Whatever text sits in the sections (no brackets), it comes back exactly, stripped."""
    for value in (instruction, answer):
        assume(value.strip() and "your" not in value.lower())
    end = f" {END}" if with_end else ""
    result = parse(f"{critique}\n{NEW_INSTRUCTION}{instruction}{end}\n{NEW_ANSWER}{answer}{end}")
    assert result.ok and result.values == {"instruction": instruction.strip(), "output": answer.strip()}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["[New Instruction]", "[New Answer]", "[End]", "[Better Answer]", " ", "x",
                                  "End", "\n", "your answer"]), max_size=12).map("".join),
       st.sampled_from([None, "stop", "length"]))
def test_all_or_nothing_on_marker_soup(text: str, finish: str | None) -> None:
    """Either every field, non-empty and stripped (quoted markers may stay in it), or none and a reason."""
    result = parse(text, finish_reason=finish)
    if result.ok:
        assert set(result.values) == {"instruction", "output"} and finish != "length"
        for value in result.values.values():
            assert value and value == value.strip()
    else:
        assert result.values == {} and result.reason


# == which variant a row keeps (METHOD.md §4) ===========================================================

def ok(instruction: str, output: str, input: str = "") -> Variant:
    return Variant(instruction, input, output, "ok", None, ["key"])


def failed(status: str = "parse_failed", reason: str = "missing [New Answer]") -> Variant:
    return Variant(None, None, None, status, reason)


def variants(q: bool = True, a: bool = True, qa: bool = True) -> dict[str, Variant]:
    return {"ori": ok("x0", "y0", "i0"), "Q": ok("x_ins", "y_ins") if q else failed(),
            "A": ok("x0", "y_res", "i0") if a else failed("call_failed", "timeout"),
            "QA": ok("x_ins", "y_res_ins") if qa else skipped("Q failed")}


@pytest.mark.parametrize(("q", "a", "qa", "chosen"), [
    (True, True, True, "QA"), (True, True, False, "Q"), (True, False, False, "Q"), (False, True, False, "A"),
    (False, False, False, "ori"), (True, False, True, "QA"), (False, True, True, "QA"),
])
def test_a_row_keeps_its_best_available_version(q: bool, a: bool, qa: bool, chosen: str) -> None:
    """QA > Q > A > original (README, METHOD.md §4: the best available version)."""
    assert PREFERENCE == ("QA", "Q", "A", "ori")
    assert choose(variants(q, a, qa)) == chosen


def test_skipped_is_not_available() -> None:
    vs = variants()
    vs["QA"] = skipped("response phase not requested")
    vs["Q"] = skipped("instruction phase not requested")
    assert choose(vs) == "A" and not vs["Q"].ok and vs["Q"].status == "skipped"


def result_for(vs: dict[str, Variant], chosen: str | None = None) -> SampleResult:
    return SampleResult(Sample("r7", 8, "x0", "i0", "y0"), vs, chosen or choose(vs))


def test_output_columns_name_every_real_failure_and_no_skip() -> None:
    """Q parse_failed and A call_failed are named with their reasons; the skipped QA is not a failure."""
    cols = output_columns(result_for(variants(q=False, a=False, qa=False)))
    assert cols["reflect_status"] == "ori"
    reason = cols["reflect_reason"]
    assert reason == "Q parse_failed: missing [New Answer]; A call_failed: timeout"
    assert "QA" not in reason and "ori" not in reason


def test_output_columns_of_a_clean_row_and_of_a_passthrough() -> None:
    assert output_columns(result_for(variants())) == {"reflect_status": "QA", "reflect_reason": None}
    passthrough = SampleResult(Sample("c1", 1, "", passthrough=True), {}, "passthrough")
    assert output_columns(passthrough) == {}


def test_a_failed_qa_on_a_good_q_is_reported() -> None:
    vs = variants()
    vs["QA"] = failed("parse_failed", "[Better Answer] appears 2 times")
    cols = output_columns(result_for(vs))
    assert cols == {"reflect_status": "Q",
                    "reflect_reason": "QA parse_failed: [Better Answer] appears 2 times"}


def test_chosen_texts_are_the_chosen_variants_never_a_mix() -> None:
    """Atomic (§3): the instruction and output written come from one variant; Q variants have no input."""
    assert chosen_texts(result_for(variants())) == ("x_ins", "", "y_res_ins")
    assert chosen_texts(result_for(variants(qa=False))) == ("x_ins", "", "y_ins")
    assert chosen_texts(result_for(variants(q=False, qa=False))) == ("x0", "i0", "y_res")
    assert chosen_texts(result_for(variants(q=False, a=False, qa=False))) == ("x0", "i0", "y0")
    nones = {"ori": Variant(None, None, None, "ok")}
    assert chosen_texts(result_for(nones, "ori")) == ("", "", "")


def test_variants_line_records_every_variant_with_status_reason_and_calls() -> None:
    """variants.jsonl: the input of the selection stage, one JSON line per sample."""
    line = result_for(variants(q=False, qa=False)).variants_line()
    assert (line["id"], line["row"], line["status"]) == ("r7", 8, "A")
    assert list(line["variants"]) == ["ori", "Q", "A", "QA"]
    assert line["variants"]["Q"] == {"instruction": None, "input": None, "output": None,
                                     "status": "parse_failed", "reason": "missing [New Answer]", "gate": None,
                                     "critique": None, "calls": []}
    assert line["variants"]["A"] == {"instruction": "x0", "input": "i0", "output": "y_res", "status": "ok",
                                     "reason": None, "gate": None, "critique": None, "calls": ["key"]}
    assert line["variants"]["QA"]["status"] == "skipped" and line["variants"]["QA"]["reason"] == "Q failed"
    assert json.loads(json.dumps(line)) == line


def test_variant_calls_are_not_shared_between_instances() -> None:
    one, two = Variant("x", "", "y", "ok"), Variant("x", "", "y", "ok")
    one.calls.append("k1")
    assert two.calls == [] and one.as_json()["calls"] == ["k1"]


@pytest.mark.parametrize(("path", "fmt", "name"), [
    ("alpaca.json", None, "recycled.json"), ("data.jsonl", None, "recycled.jsonl"),
    ("d.parquet", None, "recycled.parquet"), ("t.csv", None, "recycled.csv"),
    ("saved_dataset", None, "recycled.jsonl"),                    # a save_to_disk folder: no suffix
    ("alpaca.json", "jsonl", "recycled.jsonl"), ("data.jsonl", "parquet", "recycled.parquet"),
    ("data.jsonl", "csv", "recycled.csv"), ("saved_dataset", "json", "recycled.json"),
])
def test_default_output_name_follows_the_input_format_unless_told(path: str, fmt: str | None,
                                                                  name: str) -> None:
    """``RUN_DIR/recycled.<input fmt>`` (README), or the ``--output-format`` given."""
    assert default_output_name(Path(path), fmt) == name


# == prices ===============================================================================================

def list_price(model: str) -> tuple[float, float] | None:
    """A hosted model's own price, through whichever API this tree has (it is being refactored)."""
    if hasattr(pricing, "list_price"):
        return pricing.list_price(model)
    return pricing.price_for(f"openai:{model}")  # type: ignore[attr-defined]


def run_price(model: str, price_in: float | None, price_out: float | None) -> tuple[float, float] | None:
    """The price a run pays for ``openai:MODEL`` with ``--price-in``/``--price-out``."""
    if hasattr(pricing, "with_overrides"):
        return pricing.with_overrides(list_price(model), price_in, price_out)
    return pricing.price_for(f"openai:{model}", price_in, price_out)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "family"), [
    ("gpt-4o", "gpt-4o"), ("GPT-4o", "gpt-4o"), ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),        # longest prefix: mini, not 4o
    ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"), ("gpt-4-0613", "gpt-4"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"), ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"), ("o3-mini-2025-01-31", "o3-mini"),
])
def test_dated_snapshots_take_their_familys_price(model: str, family: str) -> None:
    assert list_price(model) == pricing.PRICES[family]


def test_the_papers_oracle_is_priced_and_no_price_is_negative() -> None:
    """gpt-3.5-turbo (§2.4) has a list price; every entry is (input, output) USD >= 0."""
    assert list_price("gpt-3.5-turbo") == pricing.PRICES["gpt-3.5-turbo"]
    assert all(len(p) == 2 and min(p) >= 0 for p in pricing.PRICES.values())


@pytest.mark.parametrize("model", ["llama3.1", "o3", "gpt-4omni", "gpt-4o2", "claude-3-opus", "qwen/gpt-4o",
                                   "local", ""])
def test_unknown_models_have_no_price_rather_than_a_guess(model: str) -> None:
    """Unknown is None (reported as unknown, never as free); a family needs a "-" before the date."""
    assert list_price(model) is None


@pytest.mark.parametrize(("model", "price_in", "price_out", "expected"), [
    ("gpt-4o", 1.0, 2.0, (1.0, 2.0)), ("gpt-4o", 1.0, None, (1.0, 0.0)), ("gpt-4o", None, 3.0, (0.0, 3.0)),
    ("my-local-model", 0.2, 0.4, (0.2, 0.4)), ("gpt-4o", 0.0, None, (0.0, 0.0)),
    ("gpt-4o", None, None, pricing.PRICES["gpt-4o"]), ("my-local-model", None, None, None),
])
def test_explicit_prices_win(model: str, price_in, price_out, expected) -> None:
    """``--price-in``/``--price-out`` override the table (an unset half is 0), known model or not."""
    assert run_price(model, price_in, price_out) == expected


def test_local_backends_are_free() -> None:
    if hasattr(pricing, "price_for"):
        for spec in ("embedded", "hf:/models/qwen", "hf:model.gguf", "fake"):
            assert pricing.price_for(spec) == (0.0, 0.0)
    else:  # the price is declared by the backend itself
        from reflectune.oracles.fake import FakeOracle

        assert FakeOracle().capabilities.price == (0.0, 0.0)


def test_cost_is_per_million_tokens_of_each_kind() -> None:
    mini = pricing.PRICES["gpt-4o-mini"]
    assert pricing.cost_usd(mini, 1_000_000, 0) == pytest.approx(0.15)
    assert pricing.cost_usd(mini, 0, 1_000_000) == pytest.approx(0.60)
    assert pricing.cost_usd(mini, 2000, 500) == pytest.approx((2000 * 0.15 + 500 * 0.60) / 1e6)
    assert pricing.cost_usd((0.0, 0.0), 10**9, 10**9) == 0.0


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_cost_adds_up_over_calls(p1: int, c1: int, p2: int, c2: int) -> None:
    """The run's cost is the sum of its calls' costs, whatever the split."""
    prices = pricing.PRICES["gpt-4o"]
    total = pricing.cost_usd(prices, p1 + p2, c1 + c2)
    assert math.isclose(total, pricing.cost_usd(prices, p1, c1) + pricing.cost_usd(prices, p2, c2),
                        rel_tol=1e-12, abs_tol=1e-12)


# == the training recipe's options ========================================================================

def test_sft_values_are_json_when_they_parse_else_strings() -> None:
    assert parse_sft_overrides(["a=1e-3", "b=null", "c=[1, 2]", 'd="quoted"', "e=True", "f=", "g=b=c",
                                " h =2", "i=adamw_torch_fused", "j=-1"]) == {
        "a": 1e-3, "b": None, "c": [1, 2], "d": "quoted", "e": "True", "f": "", "g": "b=c", "h": 2,
        "i": "adamw_torch_fused", "j": -1}


def test_sft_later_values_win_and_nothing_is_empty() -> None:
    assert parse_sft_overrides(["x=1", "x=2"]) == {"x": 2}
    assert parse_sft_overrides([]) == {}


@pytest.mark.parametrize("bad", ["=1", " =1", "", "logging_steps", "  "])
def test_sft_items_without_a_key_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sft_overrides([bad])


def test_the_defaults_are_the_papers_recipe() -> None:
    """METHOD.md §6: batch 128, lr 2e-5, 3 epochs, 2048 tokens, warmup 0.03, no weight decay, cosine."""
    c = make_config()
    assert (c.global_batch, c.learning_rate, c.epochs, c.max_length, c.warmup_ratio, c.weight_decay,
            c.lr_scheduler, c.template) == (128, 2e-5, 3.0, 2048, 0.03, 0.0, "cosine", "vicuna")


@pytest.mark.parametrize(("option", "hint"), [("learning_rte", "learning_rate"), ("epoch", "epochs"),
                                              ("global_bach", "global_batch"), ("lora_rr", "lora_r")])
def test_an_unknown_option_suggests_the_closest_name(option: str, hint: str) -> None:
    expected = f"unknown training option '{option}' \\(did you mean '{hint}'\\?\\)"
    with pytest.raises(ConfigError, match=expected):
        make_config(**{option: 1})


def test_an_option_nothing_like_any_name_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        make_config(zzzzqqq=1)
    assert "unknown training option 'zzzzqqq'" in str(err.value) and "did you mean" not in str(err.value)


def test_none_options_keep_the_base_except_the_two_that_mean_unset() -> None:
    """A CLI flag left out (None) keeps the value; world_size/max_samples None means "unset"."""
    base = make_config(epochs=1.0, world_size=4, max_samples=10, lora=True)
    c = make_config(base, epochs=None, learning_rate=None, world_size=None, max_samples=None)
    assert (c.epochs, c.lora, c.world_size, c.max_samples) == (1.0, True, None, None)
    assert (base.world_size, base.max_samples) == (4, 10)  # the base is not changed


def test_make_config_validates_and_copies_sft() -> None:
    sft = {"logging_steps": 1}
    c = make_config(sft=sft)
    sft["logging_steps"] = 99
    assert c.sft == {"logging_steps": 1}
    with pytest.raises(ConfigError, match="global_batch must be at least 1"):
        make_config(global_batch=0)
    with pytest.raises(ConfigError, match="warmup_ratio"):
        make_config(warmup_ratio=1.0)
    with pytest.raises(ConfigError, match="did you mean 'alpaca'"):
        make_config(template="alpacca")
    with pytest.raises(ConfigError, match="set `epochs` instead"):
        make_config(sft={"num_train_epochs": 1})


@pytest.mark.parametrize(("per_device", "world", "accumulation"),
                         [(4, 1, 32), (4, 8, 4), (16, 8, 1), (1, 1, 128)])
def test_gradient_accumulation_keeps_the_global_batch(per_device: int, world: int, accumulation: int) -> None:
    """per-device x world x accumulation = the global batch of 128, exactly."""
    c = make_config(per_device_batch=per_device)
    assert c.grad_accumulation(world) == accumulation
    assert per_device * world * accumulation == c.global_batch


def test_a_global_batch_that_does_not_divide_is_refused_with_the_numbers() -> None:
    with pytest.raises(ConfigError, match="128 is not divisible by per-device batch 4 x world size 3 = 12"):
        make_config().grad_accumulation(3)


def test_lora_targets() -> None:
    assert make_config(lora_targets=" q_proj , v_proj ,").lora_target_modules() == ["q_proj", "v_proj"]
    assert make_config(lora_targets=" all-linear ").lora_target_modules() == "all-linear"
    assert make_config().lora_target_modules() == ["q_proj", "k_proj", "v_proj", "o_proj"]
    for empty in ("", " , ,"):
        with pytest.raises(ConfigError, match="lora_targets is empty"):
            make_config(lora_targets=empty).lora_target_modules()


@pytest.mark.parametrize(("override", "env", "expected"), [(None, None, 1), (None, "8", 8), (2, "8", 2),
                                                           (None, "0", 1), (None, " 4 ", 4), (3, None, 3)])
def test_world_size_override_then_environment_then_one(override, env, expected, monkeypatch) -> None:
    if env is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", env)
    assert resolve_world_size(make_config(world_size=override)) == expected


def test_a_garbled_world_size_is_a_config_error_naming_it(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "eight")
    with pytest.raises(ConfigError, match="WORLD_SIZE='eight' is not an integer"):
        resolve_world_size(TrainConfig())


@pytest.mark.parametrize(("name", "kind", "stage"), [("ddp", "MULTI_GPU", None), ("fsdp", "FSDP", None),
                                                    ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)])
def test_shipped_accelerate_configs_are_valid_yaml_of_their_kind(name: str, kind: str, stage) -> None:
    config = yaml.safe_load(accelerate_config_path(name).read_text())
    assert config["distributed_type"] == kind and isinstance(config["num_processes"], int)
    assert config["mixed_precision"] == "bf16"
    if stage is not None:
        assert config["deepspeed_config"]["zero_stage"] == stage


@pytest.mark.parametrize(("name", "hint"), [("zero-3", "zero3"), ("FSDP", None), ("deepspeed", None),
                                            ("dpp", "ddp")])
def test_unknown_accelerate_configs_list_the_choices(name: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as err:
        accelerate_config_path(name)
    message = str(err.value)
    assert f"'{name}'" in message and "ddp, fsdp, zero2, zero3" in message
    if hint:
        assert f"did you mean '{hint}'" in message


# == test sets and prompts files ===========================================================================

METHOD_SIZES = {"vicuna": 80, "koala": 180, "wizardlm": 218, "sinstruct": 252, "lima": 300}  # METHOD.md §7.1


@pytest.mark.parametrize("name", TESTSETS)
def test_every_line_of_a_packaged_file_is_one_item(name: str) -> None:
    """The loader neither drops nor merges rows: one item per non-blank line, as many as the paper's."""
    text = packaged_testset_path(name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == len(load_testset(name)) == METHOD_SIZES[name]


def test_all_sets_together_have_unique_keys_in_figure_order() -> None:
    """(dataset, id) pairs answers across files: unique over all 1,030 prompts."""
    items = load_testsets()
    assert list(dict.fromkeys(i.dataset for i in items)) == list(METHOD_SIZES)
    assert len({(i.dataset, i.id) for i in items}) == len(items) == sum(METHOD_SIZES.values())


def test_load_testsets_keeps_the_requested_order_and_limits_each_set() -> None:
    items = load_testsets(["lima", "vicuna"])
    assert len(items) == 380 and items[0].dataset == "lima" and items[-1].dataset == "vicuna"
    assert load_testsets("koala", limit=0) == []
    assert len(load_testsets("vicuna", limit=10_000)) == 80


def test_prompt_field_mappings() -> None:
    """Unset names map to themselves; dicts and strings are the same; spaces are ignored."""
    identity = {name: name for name in PROMPT_FIELDS}
    assert parse_prompt_fields(None) == parse_prompt_fields("") == parse_prompt_fields({}) == identity
    assert list(parse_prompt_fields(None)) == ["instruction", "input", "id", "category", "dataset"]
    expected = identity | {"instruction": "question", "dataset": "set"}
    assert parse_prompt_fields(" instruction = question , dataset=set ,") == expected
    assert parse_prompt_fields({"instruction": "question", "dataset": "set"}) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("=question", "expected canonical=column"), ("instruction=", "expected canonical=column"),
    ("question=q", "unknown field 'question'"), ({"output": "y"}, "unknown field 'output'"),
    ("id=a, id=b", "'id' is mapped twice"),
])
def test_bad_prompt_field_mappings(spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_prompt_fields(spec)


def write_lines(path: Path, *rows: object) -> Path:
    lines = ((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("second", "message", "field"), [
    (["not", "an", "object"], "expected a JSON object, got list", None),
    ("42", "expected a JSON object, got int", None),
    ({"instruction": 7}, "missing or empty instruction", "instruction"),
    ({"instruction": "   \n"}, "missing or empty instruction", "instruction"),
    ({"prompt": "wrong column"}, "missing or empty instruction", "instruction"),
    ("{broken", "invalid JSON", None),
])
def test_a_bad_row_stops_the_read_naming_file_and_row(tmp_path: Path, second, message: str, field) -> None:
    path = write_lines(tmp_path / "mine.jsonl", {"instruction": "fine"}, second)
    with pytest.raises(DataError, match=message) as err:
        load_prompts_file(path)
    assert err.value.row == 2 and err.value.path == str(path) and err.value.field == field


def test_a_json_array_with_a_bad_element_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"instruction": "a"}, {"instruction": "b"}, "c"]))
    with pytest.raises(DataError, match="expected a JSON object, got str") as err:
        load_prompts_file(path)
    assert err.value.row == 3
    path.write_text('[{"instruction": "a"},')
    with pytest.raises(DataError, match="invalid JSON"):
        load_prompts_file(path)


def test_undecodable_bytes_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"instruction": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="cannot read"):
        load_prompts_file(path)


def test_prompts_file_values_ids_and_dataset_names(tmp_path: Path) -> None:
    """Ids and categories become strings (id 0 stays "0"); a row without an id gets its 0-based row;
    blank lines are not rows; a BOM is ignored; the dataset defaults to the file name before its first dot."""
    path = tmp_path / "my.prompts.jsonl"
    rows = [{"q": "first", "qid": "a1", "cat": 3, "ctx": 5},
            {"q": "second", "qid": "", "set": "custom", "ctx": "  "},
            {"q": "third", "qid": 0, "set": "", "ctx": "extra"}]
    first, second, third = (json.dumps(r) for r in rows)
    path.write_text(f"\ufeff{first}\n\n   \n{second}\n{third}\n", encoding="utf-8")
    items = load_prompts_file(path, "instruction=q,id=qid,category=cat,input=ctx,dataset=set")
    assert items == [EvalItem("my", "a1", "first", "3"), EvalItem("custom", "1", "second", None),
                     EvalItem("my", "0", "third\n\nextra", None)]
    assert load_prompts_file(path, "instruction=q", limit=0) == []
    assert [i.dataset for i in load_prompts_file(path, "instruction=q", dataset="named")] == ["named"] * 3
