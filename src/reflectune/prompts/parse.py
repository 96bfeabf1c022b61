"""Strict, atomic parsing of the oracle's reflection output (METHOD.md §3).

The reference code stops at any bare "End" (truncating answers at "Endpoint") and, when one field
is missing, mixes old and new fields. Here a section runs from its marker to the first ``[End]``
or the next known marker, whichever comes first; and a sample parses only when *every* required
section is present exactly once, non-empty, not an echo of the prompt's placeholder, and the
generation was not cut off. Otherwise nothing is taken and the reason says why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from reflectune.markers import END, SECTION_MARKERS

CUT_OFF_REASONS = ("length", "max_tokens", "model_length")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class ParseResult:
    ok: bool
    values: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def _section(text: str, start: int) -> str:
    stops = [text.find(END, start)] + [text.find(m, start) for m in SECTION_MARKERS]
    stops = [s for s in stops if s != -1]
    return text[start:min(stops) if stops else len(text)]


def _is_placeholder(value: str, placeholders: Sequence[str]) -> bool:
    if len(value) > 64:  # placeholders are a few words; skip the regex on real answers
        return False
    norm = _NON_WORD.sub(" ", value.lower()).strip()
    return any(norm == _NON_WORD.sub(" ", p.lower()).strip() for p in placeholders)


def parse_reflection(text: str | None, sections: Sequence[str], fields: Sequence[str], *,
                     finish_reason: str | None = "stop",
                     placeholders: Sequence[str] = ()) -> ParseResult:
    """Extract ``fields[i]`` from the section opened by ``sections[i]``, all or nothing.

    Example::

        >>> parse_reflection("Critique. [Better Answer] Hi. [End]", ["[Better Answer]"], ["output"])
        ParseResult(ok=True, values={'output': 'Hi.'}, reason=None)
    """
    if finish_reason in CUT_OFF_REASONS:
        return ParseResult(False, reason=f"generation cut off (finish_reason={finish_reason})")
    if not text or not text.strip():
        return ParseResult(False, reason="empty output")
    values: dict[str, str] = {}
    for marker, name in zip(sections, fields, strict=True):
        count = text.count(marker)
        if count == 0:
            return ParseResult(False, reason=f"missing {marker}")
        if count > 1:
            return ParseResult(False, reason=f"{marker} appears {count} times")
        value = _section(text, text.index(marker) + len(marker)).strip()
        if not value:
            return ParseResult(False, reason=f"empty {marker} section")
        if _is_placeholder(value, placeholders):
            return ParseResult(False, reason=f"{marker} echoes the prompt's placeholder ({value[:40]!r})")
        values[name] = value
    return ParseResult(True, values)
