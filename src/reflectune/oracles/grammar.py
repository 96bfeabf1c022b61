"""The reflection format as a decoding constraint, for servers that cannot continue an assistant turn.

A server that samples under a grammar can force the format in one request where prefill needs one
per section: the constraint admits a free critique, then each section marker on its own line, the
section's text and ``[End]``, and nothing else, so the strict parser accepts what comes back.
llama.cpp (``llama-server`` and llama-cpp-python) takes a GBNF string in ``grammar``; vLLM takes a
regular expression in ``structured_outputs.regex``. :class:`FormatConstraint` holds both, built from
one description, so one request body serves either server (each ignores the other's field).

Lengths are bounded in characters, since a grammar cannot count tokens: a small model asked for a
critique writes one to the budget, so the critique is capped at about ``critique_tokens`` and the
sections share what ``max_tokens`` leaves, so the model reaches every ``[End]`` before the server
cuts it off (a cut-off answer fails to parse). Inside a section a ``[`` may open anything except
the initials of the format's own markers and of the prompt's headers (``[B``, ``[E``, ``[I``,
``[M``, ``[N``, ``[S``, ``[T``): the model can neither open a second marker nor replay the prompt,
at the price of placeholders such as ``[Name]`` or ``[Insert date]``, which it must write otherwise.

Pure string work: no I/O, nothing imported beyond the markers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from reflectune.markers import END, PROMPT_HEADERS, SECTION_MARKERS

__all__ = ["FormatConstraint", "format_constraint", "word_constraint"]

#: Characters per token of ``critique_tokens`` and of what is left for the sections: under the
#: ~4 of English prose, so text at the caps still fits ``max_tokens`` (code, numbers and the
#: broken text of a small model take more tokens per character).
CRITIQUE_CHARS_PER_TOKEN = 3
SECTION_CHARS_PER_TOKEN = 3
#: Tokens each section's marker, ``[End]`` and line breaks take.
SECTION_OVERHEAD_TOKENS = 12
MIN_SECTION_CHARS = 24
DEFAULT_MAX_TOKENS = 512
DEFAULT_CRITIQUE_TOKENS = 64

#: Letters a ``[`` may not be followed by inside a section: the initials of the markers and of the
#: prompt's own headers (a model that writes ``[The End of Answer]`` has begun to replay the prompt).
_INITIALS = "".join(sorted({m[1] for m in (*SECTION_MARKERS, END, *PROMPT_HEADERS)}))
_REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")


@dataclass(frozen=True, slots=True)
class FormatConstraint:
    """One constraint in the two dialects servers take: GBNF (llama.cpp) and a regex (vLLM)."""

    gbnf: str
    regex: str

    def fields(self) -> dict[str, object]:
        """The request-body fields that carry it: llama.cpp reads ``grammar``, vLLM
        ``structured_outputs``; each server ignores the field it does not know."""
        return {"grammar": self.gbnf, "structured_outputs": {"regex": self.regex}}


def word_constraint(word: str) -> FormatConstraint:
    """Only ``word`` may be written: the probe that shows whether a server obeys a constraint."""
    return FormatConstraint(f"root ::= {_literal(word)}\n", _regex_literal(word))


def format_constraint(sections: Sequence[str], *, critique_tokens: int = 0,
                      max_tokens: int | None = None) -> FormatConstraint:
    """The reflection format with ``sections`` in order, within ``max_tokens``.

    Example:
        >>> print(format_constraint(["[Better Answer]"], critique_tokens=8, max_tokens=64).gbnf)
        root ::= critique "\\n\\n[Better Answer]\\n" section0 "\\n[End]"
        critique ::= [^[]{0,24}
        section0 ::= first body{0,131}
        first ::= [^[ \\t\\n]
        body ::= [^[] | "[" [^BEIMNST[]
        <BLANKLINE>
    """
    if not sections:
        raise ValueError("a format constraint needs at least one section")
    critique = max(0, critique_tokens or DEFAULT_CRITIQUE_TOKENS)
    total = DEFAULT_MAX_TOKENS if max_tokens is None else max(0, max_tokens)
    critique_chars = critique * CRITIQUE_CHARS_PER_TOKEN
    left = max(0, total - min(critique, total) - SECTION_OVERHEAD_TOKENS * len(sections))
    section_chars = max(MIN_SECTION_CHARS, left * SECTION_CHARS_PER_TOKEN // len(sections))
    gbnf_parts, regex_parts = ["critique"], [rf"[^\[]{{0,{critique_chars}}}"]
    rules = []
    for i, marker in enumerate(sections):
        opening = f"\n\n{marker}\n" if i == 0 else f"\n{marker}\n"
        gbnf_parts += [_literal(opening), f"section{i}", _literal(f"\n{END}")]
        rules.append(f"section{i} ::= first body{{0,{section_chars - 1}}}")
        regex_parts.append(rf"{_regex_literal(opening)}[^\[ \t\n](?:[^\[]|\[[^{_INITIALS}\[])"
                           rf"{{0,{section_chars - 1}}}{_regex_literal(chr(10) + END)}")
    gbnf = "\n".join([
        "root ::= " + " ".join(_merge_literals(gbnf_parts)),
        f"critique ::= [^[]{{0,{critique_chars}}}",
        *rules,
        "first ::= [^[ \\t\\n]",
        f'body ::= [^[] | "[" [^{_INITIALS}[]',
        "",
    ])
    return FormatConstraint(gbnf, "".join(regex_parts))


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal (JSON's escapes are GBNF's: ``\\n``, ``\\"``, ``\\\\``)."""
    return json.dumps(text, ensure_ascii=False)


def _regex_literal(text: str) -> str:
    """``text`` as a regex that matches it alone, in the syntax every engine reads (``re.escape``
    writes a newline as a backslash and a newline, which not all of vLLM's backends take)."""
    return "".join("\\n" if c == "\n" else "\\t" if c == "\t" else f"\\{c}" if c in _REGEX_SPECIAL else c
                   for c in text)


def _merge_literals(parts: list[str]) -> list[str]:
    """Adjacent string literals joined into one (``"\\n[End]" "\\n[New Answer]\\n"``), for a
    grammar a person can read."""
    out: list[str] = []
    for part in parts:
        if out and part.startswith('"') and out[-1].startswith('"'):
            out[-1] = _literal(json.loads(out[-1]) + json.loads(part))
        else:
            out.append(part)
    return out
