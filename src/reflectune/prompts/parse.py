"""Strict, atomic parsing of the oracle's reflection output (METHOD.md §3).

The reference code stops at any bare "End" (truncating answers at "Endpoint") and, when one field
is missing, mixes old and new fields. Here a sample parses only when *every* required section is
present exactly once, non-empty, not an echo of the prompt's placeholder, and the generation was not
cut off. Otherwise nothing is taken and the reason says why.

Sections may quote markers. An answer about BBCode's ``[End]`` tag, or an instruction such as
"Explain what [End] and [New Answer] mean in this template language", comes out whole. The rule:

1. **Where a section opens.** An occurrence of an expected section marker *opens* its section when
   it begins a line, or follows ``[End]`` or another section marker, with only whitespace before it
   (``[End] [New Answer]`` opens, and so does text that starts with a marker). That is how models
   lay the format out, whether one section to a line or inline (``[New Instruction] a [End]
   [New Answer] b [End]``). An occurrence in the middle of a sentence (``your [New Instruction]
   lacks detail``) is quoted text, in the critique or in a section.
2. **Exactly once.** Each expected marker must open a section exactly once. Two openings are
   ambiguous, and the sample fails ("[Better Answer] appears 2 times"). If a marker never opens a
   line, the old inline habit (``Critique. [Better Answer] Hi. [End]``) is still accepted, but only
   when the marker occurs exactly once in the whole text (more is ambiguous: the sample fails) and
   does not stand inside another section, before that section's closing ``[End]``. There it is a
   quoted marker and the section counts as missing: a row about the format itself never turns
   into mixed sections.
3. **Where a section ends.** A section runs from its marker to the next opening of an expected
   section (sections may come in either order), or to the end of the text; markers of other kinds
   (``[Better Answer]`` in an instruction reflection) are text. Its value ends at the
   **last** ``[End]`` in that span, so an ``[End]`` or any other marker quoted inside the text is
   kept. If the span has no ``[End]``, the whole span is taken (METHOD.md: "up to the next known
   marker or the end of the text"). For the last section that is the last ``[End]`` of the text:
   what follows it ("I hope this helps!") is dropped, and an earlier ``[End]`` stays in the value.
4. Values are stripped of whitespace at both edges only. Only the exact string ``[End]`` ends a
   section: "Endpoint", "The End." and ``[END]`` are text.

The one layout this rule cannot tell from the format is a text that quotes a section marker at the
start of one of its own lines (or right after a quoted ``[End]``). Then the marker opens a section
twice and the sample fails as ambiguous (or, if the real marker is mid-line, that quote is taken as
the opening). No rule can do better: the same bytes can be read both ways.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from reflectune.markers import END, SECTION_MARKERS

CUT_OFF_REASONS = ("length", "max_tokens", "model_length")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
#: What a section marker may follow, whitespace aside, and still open a section.
_OPENERS = (*SECTION_MARKERS, END)
#: The characters ``str.splitlines`` breaks at: a marker after one of them begins a line.
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


@dataclass(frozen=True)
class ParseResult:
    ok: bool
    values: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    #: the text before the first section: the oracle's critique (the quality gates compare with it)
    critique: str = field(default="", compare=False)


def _occurrences(text: str, marker: str) -> list[int]:
    found, at = [], text.find(marker)
    while at != -1:
        found.append(at)
        at = text.find(marker, at + len(marker))
    return found


def _opens_section(text: str, at: int) -> bool:
    """True when the marker at ``at`` begins a line or follows ``[End]`` or a marker (rule 1)."""
    i = at
    while i > 0 and text[i - 1].isspace():
        i -= 1
        if text[i] in _LINE_BREAKS:
            return True
    return i == 0 or any(text.endswith(marker, 0, i) for marker in _OPENERS)


def _value(text: str, begin: int, openings: Sequence[int]) -> str:
    """The section body from ``begin`` to the last [End] before the next opening (rule 3)."""
    i = bisect_left(openings, begin)
    stop = openings[i] if i < len(openings) else len(text)
    end = text.rfind(END, begin, stop)
    return text[begin:end if end != -1 else stop].strip()


def _host(text: str, at: int, marker: str, openings: Sequence[tuple[int, str]]) -> str | None:
    """The section whose body holds the marker at ``at``, before its closing [End] (rule 2)."""
    i = bisect_right(openings, (at, "")) - 1
    if i < 0:
        return None  # in the critique, before every opening
    stop = openings[i + 1][0] if i + 1 < len(openings) else len(text)
    return openings[i][1] if text.find(END, at + len(marker), stop) != -1 else None


def _is_placeholder(value: str, placeholders: Sequence[str]) -> bool:
    if len(value) > 64:  # placeholders are a few words; skip the regex on real answers
        return False
    norm = _NON_WORD.sub(" ", value.lower()).strip()
    return any(norm == _NON_WORD.sub(" ", p.lower()).strip() for p in placeholders)


def parse_reflection(text: str | None, sections: Sequence[str], fields: Sequence[str], *,
                     finish_reason: str | None = "stop",
                     placeholders: Sequence[str] = (),
                     reasoning: str | None = None) -> ParseResult:
    """Extract ``fields[i]`` from the section opened by ``sections[i]``, all or nothing.

    ``reasoning`` (a reasoning model's, split off ``text`` before) is never searched for markers: it
    only names the cause when the budget ran out before any answer was written.

    The rule for where sections open and end is in the module docstring. Example::

        >>> parse_reflection("Critique. [Better Answer] Hi. [End]", ["[Better Answer]"], ["output"])
        ParseResult(ok=True, values={'output': 'Hi.'}, reason=None, critique='Critique.')
        >>> parse_reflection("[Better Answer]\\nIn BBCode, [End] closes a tag.\\n[End]",
        ...                  ["[Better Answer]"], ["output"]).values
        {'output': 'In BBCode, [End] closes a tag.'}
    """
    if finish_reason in CUT_OFF_REASONS:
        if reasoning and not (text or "").strip():
            return ParseResult(False, reason=f"generation cut off (finish_reason={finish_reason}): the "
                               "reasoning used the whole token budget before any answer; raise "
                               "--max-tokens (it covers reasoning and answer) or ask for less reasoning")
        return ParseResult(False, reason=f"generation cut off (finish_reason={finish_reason})")
    if not text or not text.strip():
        return ParseResult(False, reason="empty output")
    found = {marker: _occurrences(text, marker) for marker in sections}
    opened = {marker: [at for at in found[marker] if _opens_section(text, at)] for marker in sections}
    line_openings = sorted((at, marker) for marker in sections for at in opened[marker])
    starts: dict[str, int] = {}
    problems: dict[str, str] = {}
    for marker in sections:
        count = len(opened[marker]) or len(found[marker])
        if count == 0:
            problems[marker] = f"missing {marker}"
        elif count > 1:
            problems[marker] = f"{marker} appears {count} times"
        elif opened[marker]:
            starts[marker] = opened[marker][0]
        elif host := _host(text, found[marker][0], marker, line_openings):
            problems[marker] = f"missing {marker} (it is only quoted inside the {host} section)"
        else:
            starts[marker] = found[marker][0]
    openings = sorted({at for at, _ in line_openings} | set(starts.values()))
    values: dict[str, str] = {}
    for marker, name in zip(sections, fields, strict=True):
        if marker in problems:
            return ParseResult(False, reason=problems[marker])
        value = _value(text, starts[marker] + len(marker), openings)
        if not value:
            return ParseResult(False, reason=f"empty {marker} section")
        if _is_placeholder(value, placeholders):
            return ParseResult(False, reason=f"{marker} echoes the prompt's placeholder ({value[:40]!r})")
        values[name] = value
    return ParseResult(True, values, critique=text[:min(starts.values())].strip())
