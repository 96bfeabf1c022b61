"""The strict, atomic parser of METHOD.md §3, on the edge cases the reference code gets wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reflectune.prompts.parse import parse_reflection
from reflectune.prompts.render import INSTRUCTION, RESPONSE

Q = dict(sections=INSTRUCTION.sections, fields=INSTRUCTION.fields, placeholders=INSTRUCTION.placeholders)
A = dict(sections=RESPONSE.sections, fields=RESPONSE.fields, placeholders=RESPONSE.placeholders)


def test_well_formed_instruction_reflection() -> None:
    text = "Weak.\n[New Instruction] Write a poem. [End]\n[New Answer] Roses. [End]"
    result = parse_reflection(text, **Q)
    assert result.ok and result.values == {"instruction": "Write a poem.", "output": "Roses."}


def test_endpoint_inside_an_answer_is_not_an_end_marker() -> None:
    text = "[Better Answer] Call the Endpoint, then End the session. Ending. [End]"
    result = parse_reflection(text, **A)
    assert result.values["output"] == "Call the Endpoint, then End the session. Ending."


def test_missing_end_runs_to_the_next_marker_or_the_end() -> None:
    text = "[New Instruction] Do X.\n[New Answer] Done X"
    result = parse_reflection(text, **Q)
    assert result.ok and result.values == {"instruction": "Do X.", "output": "Done X"}


@pytest.mark.parametrize("echo", ["your answer", " Your answer. ", "YOUR ANSWER!"])
def test_echoed_placeholder_fails(echo: str) -> None:
    result = parse_reflection(f"[Better Answer]{echo}[End]", **A)
    assert not result.ok and "placeholder" in (result.reason or "")


def test_duplicated_marker_fails() -> None:
    result = parse_reflection("[Better Answer] a [End] [Better Answer] b [End]", **A)
    assert not result.ok and "appears 2 times" in (result.reason or "")


def test_finish_reason_length_fails_even_if_markers_are_there() -> None:
    result = parse_reflection("[Better Answer] fine [End]", **A, finish_reason="length")
    assert not result.ok and "cut off" in (result.reason or "")


def test_atomic_instruction_without_answer_takes_nothing() -> None:
    result = parse_reflection("[New Instruction] A new task. [End] and no answer", **Q)
    assert not result.ok and result.values == {} and result.reason == "missing [New Answer]"


@pytest.mark.parametrize("text", ["", "   ", None, "[Better Answer][End]", "[Better Answer]   [End]"])
def test_empty_output_or_section_fails(text: str | None) -> None:
    assert not parse_reflection(text, **A).ok


@given(st.text())
def test_any_text_parses_or_gives_a_reason(text: str) -> None:
    result = parse_reflection(text, **Q)
    assert result.ok == (result.reason is None)
    if result.ok:
        assert set(result.values) == {"instruction", "output"} and all(result.values.values())


def test_the_critique_is_the_text_before_the_first_section() -> None:
    text = "The answer lacks [detail].\n[New Answer]\nA.\n[End]\n[New Instruction]\nQ?\n[End]"
    result = parse_reflection(text, ["[New Instruction]", "[New Answer]"], ["instruction", "output"])
    assert result.ok and result.critique == "The answer lacks [detail]."
    assert parse_reflection("[Better Answer] Hi. [End]", ["[Better Answer]"], ["output"]).critique == ""
