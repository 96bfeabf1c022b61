"""Sections may quote markers (issue 13, item 5).

An answer that legitimately contains ``[End]`` or another marker ("What does the [End] tag mean in
BBCode?") must come out whole, never cut at the quoted marker and marked ``ok``. A section ends at the
last ``[End]`` before the next section opening (or the last ``[End]`` of the text); a marker opens a
section only at the start of a line or right after ``[End]`` / another marker (the rule is in
``reflectune.prompts.parse``). The loopback responder keeps the markers it echoes, so the end-to-end
test sends them through the whole recycle stage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reflectune import markers
from reflectune.markers import BETTER_ANSWER, END, MERGED_INSTRUCTION, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.prompts.parse import ParseResult, parse_reflection
from reflectune.prompts.render import INSTRUCTION, MERGE, RESPONSE, ReflectionKind, load_template, render
from reflectune.testing.responder import classify, respond
from reflectune.testing.server import ServerHandle, running_server

#: Every marker string of reflectune.markers: section markers, [End], prompt and judge headers.
ALL_MARKERS: tuple[str, ...] = tuple(sorted(
    {v for k, v in vars(markers).items() if k.isupper() and isinstance(v, str)}
    | {m for k, v in vars(markers).items() if k.isupper() and isinstance(v, tuple) for m in v}))
SECTION_ALT = "|".join(re.escape(m) for m in markers.SECTION_MARKERS)
#: A section marker at the start of a line, or right after [End] or another section marker (whitespace
#: aside): the one place where a quoted marker looks exactly like the format itself.
LINE_BREAK = "[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]"
OPENING = re.compile(rf"(\A|{LINE_BREAK}|\[End\]|{SECTION_ALT})(\s*)(?={SECTION_ALT})")
BBCODE = "What does the [End] tag mean in BBCode?"
TEMPLATE_Q = "Explain what [End] and [New Answer] mean in this template language"


def parse(text: str | None, kind: ReflectionKind = INSTRUCTION, **kwargs: Any) -> ParseResult:
    return parse_reflection(text, kind.sections, kind.fields, placeholders=kind.placeholders, **kwargs)


def quoted(text: str) -> str:
    """``text`` with every section marker that would open a line moved mid-line ("q" before it)."""
    while (fixed := OPENING.sub(r"\1\2q", text)) != text:
        text = fixed
    return text


def usable(value: str) -> bool:
    return bool(value.strip()) and "your" not in value.lower() and "rewritten" not in value.lower()


# A text made of words, brackets, whitespace and every marker, or any unicode text.
pieces = st.sampled_from([*ALL_MARKERS, "[", "]", "[[", "]]", "[End", "End]", "[end]", "Endpoint", "End",
                          " ", "  ", "\n", "\r\n", "\t", "x", "word", "BBCode", "tag", "?", ":", "é", "„"])
any_text = st.one_of(
    st.lists(pieces, max_size=16).map("".join),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
).map(quoted)


def layout(style: str, critique: str, sections: list[tuple[str, str]]) -> str:
    """A well-formed answer: a critique, then each marker, its text and [End]."""
    if style == "lines":
        return critique + "".join(f"\n\n{m}\n{v}\n{END}" for m, v in sections) + "\n"
    if style == "crlf":
        return critique + "".join(f"\r\n\r\n{m}\r\n{v}\r\n{END}" for m, v in sections)
    head, *rest = sections
    return (f"{critique}\n{head[0]} {head[1]} {END}"
            + "".join(f" {m} {v} {END}" for m, v in rest) + " I hope this helps.")


styles = st.sampled_from(["lines", "crlf", "inline"])


# == property: well-formed answers parse back to exactly their texts ====================================

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(critique=any_text, instruction=any_text, answer=any_text, style=styles, swap=st.booleans())
def test_instruction_reflection_round_trips_texts_quoting_every_marker(
        critique: str, instruction: str, answer: str, style: str, swap: bool) -> None:
    assume(usable(instruction) and usable(answer))
    sections = [(NEW_INSTRUCTION, instruction), (NEW_ANSWER, answer)]
    text = layout(style, critique, sections[::-1] if swap else sections)
    result = parse(text)
    assert result == ParseResult(True, {"instruction": instruction.strip(), "output": answer.strip()}), text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(critique=any_text, value=any_text, style=styles,
       kind=st.sampled_from([RESPONSE, MERGE]))
def test_single_section_round_trips_texts_quoting_every_marker(
        critique: str, value: str, style: str, kind: ReflectionKind) -> None:
    assume(usable(value))
    result = parse(layout(style, critique, [(kind.sections[0], value)]), kind)
    assert result == ParseResult(True, {kind.fields[0]: value.strip()})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ALL_MARKERS), min_size=1, max_size=8), styles)
def test_a_text_that_is_nothing_but_quoted_markers_comes_back_whole(quotes: list[str], style: str) -> None:
    instruction = "Quote " + " and ".join(quotes)
    answer = "They are " + ", ".join(quotes) + "."
    text = layout(style, "Critique: " + ", ".join(quotes),
                  [(NEW_INSTRUCTION, instruction), (NEW_ANSWER, answer)])
    assert parse(text).values == {"instruction": instruction, "output": answer}


# == the cases named in the issue ======================================================================

@pytest.mark.parametrize("style", ["lines", "crlf", "inline"])
def test_the_bbcode_question_is_kept_whole(style: str) -> None:
    answer = "In BBCode, [End] closes the block that [Start] opened; write [End] right after the text."
    text = layout(style, "The instruction is short.",
                  [(NEW_INSTRUCTION, BBCODE), (NEW_ANSWER, answer)])
    assert parse(text) == ParseResult(True, {"instruction": BBCODE, "output": answer})
    better = parse(layout(style, "Too short.", [(BETTER_ANSWER, answer)]), RESPONSE)
    assert better == ParseResult(True, {"output": answer})


def test_an_instruction_about_the_template_language_is_kept_whole() -> None:
    answer = f"{END} closes a section and {NEW_ANSWER} opens the answer; {NEW_INSTRUCTION} opens the task."
    text = (f"Critique.\n{NEW_INSTRUCTION} {TEMPLATE_Q} {END}\n"
            f"{NEW_ANSWER} {answer} {END}")
    assert parse(text).values == {"instruction": TEMPLATE_Q, "output": answer}


def test_an_end_quoted_at_the_end_of_a_section_is_kept() -> None:
    text = f"{BETTER_ANSWER}\nClose the block with {END}\n{END}\n"
    assert parse(text, RESPONSE).values == {"output": f"Close the block with {END}"}


@pytest.mark.parametrize("critique", [
    f"Your {NEW_INSTRUCTION} lacks detail and the {NEW_ANSWER} never closes with {END}.",
    f"A {BETTER_ANSWER} is not asked for; a {NEW_INSTRUCTION} and a {NEW_ANSWER} are, each ending in {END}.",
    f"The old answer stopped at {END} {END}, mid-sentence. The {NEW_ANSWER} below fixes it.",
    f"{END} I explain: your {NEW_INSTRUCTION} was vague.",
])
def test_a_critique_that_quotes_markers_is_not_a_section(critique: str) -> None:
    text = f"{critique}\n\n{NEW_INSTRUCTION}\nWrite a haiku.\n{END}\n\n{NEW_ANSWER}\nSnow falls.\n{END}\n"
    assert parse(text) == ParseResult(True, {"instruction": "Write a haiku.", "output": "Snow falls."})


def test_the_old_layouts_still_parse() -> None:
    """Inline after prose, no [End] at all, and sections in either order."""
    assert parse("Critique. [Better Answer] Hi. [End]", RESPONSE).values == {"output": "Hi."}
    assert parse("[New Instruction] Do X.\n[New Answer] Done X").values == {"instruction": "Do X.",
                                                                            "output": "Done X"}
    assert parse("Weak.\n[New Answer] B. [End]\n[New Instruction] A. [End]").values == {
        "instruction": "A.", "output": "B."}


# == ambiguity fails, it never truncates ===============================================================

@pytest.mark.parametrize(("text", "reason"), [
    # the row about the format itself, with its own [New Answer] section missing: not split in two
    (f"{NEW_INSTRUCTION}\n{TEMPLATE_Q}\n{END}\nThey are markers.",
     f"missing {NEW_ANSWER} (it is only quoted inside the {NEW_INSTRUCTION} section)"),
    # two openings of the same section
    (f"{NEW_INSTRUCTION} a {END}\n{NEW_ANSWER} b {END}\n{NEW_ANSWER} c {END}",
     f"{NEW_ANSWER} appears 2 times"),
    # no opening, two mid-line occurrences: which one is the section?
    (f"Use a {NEW_INSTRUCTION} tag. Here: {NEW_INSTRUCTION} a {END}\n{NEW_ANSWER} b {END}",
     f"{NEW_INSTRUCTION} appears 2 times"),
])
def test_an_ambiguous_layout_fails_and_takes_nothing(text: str, reason: str) -> None:
    assert parse(text) == ParseResult(False, {}, reason)


@pytest.mark.parametrize("finish", ["length", "max_tokens", "model_length"])
def test_quoted_markers_do_not_rescue_a_cut_off_generation(finish: str) -> None:
    text = f"{BETTER_ANSWER}\n{BBCODE} {END}\n{END}"
    assert parse(text, RESPONSE, finish_reason=finish) == ParseResult(
        False, {}, f"generation cut off (finish_reason={finish})")


def test_a_placeholder_is_still_a_placeholder_beside_quoted_markers() -> None:
    text = (f"The {NEW_ANSWER} was weak.\n{NEW_INSTRUCTION}\nyour instruction\n{END}\n"
            f"{NEW_ANSWER}\nSnow.\n{END}")
    result = parse(text)
    assert not result.ok and "placeholder" in (result.reason or "") and result.values == {}


# == the loopback responder keeps the markers it echoes ================================================

def messages(kind: ReflectionKind, **values: str) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in render(load_template(kind.template), **values)]


QUOTING_ANSWER = f"The {END} tag closes a block; {NEW_INSTRUCTION} and {BETTER_ANSWER} are section markers."


def test_the_responder_echoes_quoted_markers_inside_its_sections() -> None:
    for kind, field in ((INSTRUCTION, "instruction"), (RESPONSE, "output")):
        msgs = messages(kind, instruction=BBCODE, answer=QUOTING_ANSWER)
        assert classify(msgs) == kind.template.split("_")[0]
        values = parse(respond(msgs), kind).values
        assert (BBCODE if field == "instruction" else QUOTING_ANSWER) in values[field]
        assert QUOTING_ANSWER in values["output"]
    merged = parse(respond(messages(MERGE, instruction=BBCODE, input=f"Use {NEW_ANSWER} too.")), MERGE)
    assert merged.values["instruction"] == f"{BBCODE} Use the following input: Use {NEW_ANSWER} too."


def test_the_responders_bad_format_answers_stay_unparseable_when_the_data_quotes_markers() -> None:
    msgs = messages(RESPONSE, instruction=BBCODE, answer=f"{BETTER_ANSWER} x {END}")
    bad = respond(msgs, bad_format_ratio=1.0)
    assert END not in bad and BETTER_ANSWER not in bad and not parse(bad, RESPONSE).ok


# == end to end: a recycle run through the CLI against the loopback server =============================

ROWS = [
    {"instruction": BBCODE, "input": "", "output": QUOTING_ANSWER},
    {"instruction": f"Why does {NEW_INSTRUCTION} come before {NEW_ANSWER}, and what does {END} do?",
     "input": "",
     "output": f"{NEW_INSTRUCTION} opens the task, {END} closes it, then {BETTER_ANSWER} may follow."},
    {"instruction": "Summarise the markup below.", "input": f"A {MERGED_INSTRUCTION} x {END} block.",
     "output": f"It shows {MERGED_INSTRUCTION} and {END}, and {BETTER_ANSWER} [End] in a row."},
]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m reflectune ARGS`` in a real subprocess (a copy of tests/conftest.py's helper)."""
    return subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def recycle_args(src: Path, out: Path, server: ServerHandle, *extra: str) -> list[str]:
    return ["recycle", str(src), "-o", str(out), "--oracle", "openai:test", "--base-url", server.base_url,
            "-q", *extra]


def test_recycle_keeps_texts_that_quote_markers_whole(tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with running_server() as server:
        proc = run_cli(*recycle_args(src, out, server, "--run-dir", str(tmp_path / "run")))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reflect_status"] for r in rows] == ["QA"] * len(ROWS)
    for row, original in zip(rows, ROWS, strict=True):
        # the responder's new instruction is a prefix + the original (merged with its input); its
        # answers carry the original answer inside: both must arrive whole, quoted markers and all
        assert original["instruction"] in row["instruction"] and original["input"] in row["instruction"]
        assert original["output"] in row["output"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "variants.jsonl").read_text().splitlines()]
    for line, original in zip(lines, ROWS, strict=True):
        assert {v["status"] for v in line["variants"].values()} == {"ok"}
        assert original["output"] in line["variants"]["A"]["output"]
        assert original["output"] in line["variants"]["Q"]["output"]
