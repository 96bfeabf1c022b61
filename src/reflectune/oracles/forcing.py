"""Format forcing: how a backend that can continue the assistant turn makes a small model write the
reflection format.

A 135M model will not reliably write ``[Better Answer] ... [End]`` on its own (DESIGN.md). A backend
that can *prefill* the assistant turn (a local model, or an HTTP server that continues a trailing
assistant message) lets the model write a short critique first (the method's chain of thought), then
writes each section marker itself and lets the model fill the section up to ``[End]``. The result is
a transcript the strict parser accepts by construction: each requested marker appears exactly once
and is closed by ``[End]``.

This module is the per-request state machine only, pure string work with no torch and no I/O, so the
local batching layer and the HTTP oracle drive the same rules: each asks a request for its next
:class:`Segment` (a prefix to continue from, a token budget, stop strings), runs it (one row of a
batched ``generate``, or one chat request) and feeds the text back. Requests at different phases (or
with different section tuples) share a local batch freely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from reflectune.markers import END, PROMPT_HEADERS
from reflectune.types import ChatRequest

DEFAULT_MAX_TOKENS = 512
DEFAULT_CRITIQUE_TOKENS = 64

__all__ = ["DEFAULT_CRITIQUE_TOKENS", "DEFAULT_MAX_TOKENS", "FORMAT_HEADER", "LOOP_COPIES", "LOOP_MAX_PERIOD",
           "LOOP_MIN_SPAN", "FormatPlan", "Segment", "loop_cut", "loop_period"]

#: A line that is a bracketed header naming a part of the reflection format ("[The Better Answer]",
#: "[Level of Detail]", "[New Question]"). A small model that writes one inside a forced section has
#: started a section of its own (and seldom ends it), so the forced section ends there, as at a
#: marker. Placeholders such as "[Your Name]" and song parts such as "[Chorus]" do not match.
FORMAT_HEADER = re.compile(
    r"\n[ \t]*\[[^\]\n]{0,40}\b(?:Answers?|Instructions?|Questions?|Inputs?|Responses?|Outputs?|Details?|"
    r"Helpfulness|Relevance|Accuracy|Complexity|Feasibility|Critique|Reflection)\b[^\]\n]{0,40}\]")


LOOP_COPIES = 2        # a block seen this many times back to back is a loop...
LOOP_MIN_SPAN = 24     # ...once the repeated span is this many tokens (short blocks need more copies:
#                        a sentence of 12+ tokens twice, a 8-token phrase three times, a word 24 times)
LOOP_MAX_PERIOD = 96   # longest block looked for, in tokens


def loop_period(ids: Sequence[int]) -> tuple[int, int]:
    """``(period, copies)`` of a verbatim loop at the end of ``ids`` (its last ``period * copies``
    tokens are one block repeated), or ``(0, 0)``. The local stopper passes token shapes
    (``local.stopping.vocab_classes``), the HTTP oracle word shapes (:func:`loop_cut`), so repeats
    that differ in spacing or numbering count too. Greedy decoding that reaches such a state repeats
    it to the budget, so generating further is pure waste."""
    n = len(ids)
    for p in range(1, LOOP_MAX_PERIOD + 1):
        copies = max(LOOP_COPIES, -(-LOOP_MIN_SPAN // p))
        span = p * copies
        if span > n or ids[-1] != ids[-1 - p]:
            continue
        if all(ids[n - span + k] == ids[n - span + k + p] for k in range(span - p)):
            return p, copies
    return 0, 0


_UNIT = re.compile(r"\w+|[^\w\s]")


def loop_cut(text: str) -> int | None:
    """Where to cut ``text`` so that a verbatim loop at its end keeps one copy, or ``None``.

    For text whose tokens are not at hand (an HTTP server's answer): its words and punctuation
    marks stand in for tokens, compared by shape (numbers alike, spacing ignored), with
    :func:`loop_period`'s rules. The loop is taken back to where it began, so what is kept is the
    text before it and its block once.
    """
    units = list(_UNIT.finditer(text))
    names: dict[str, int] = {}
    shapes = [-1 if m.group().isdigit() else names.setdefault(m.group(), len(names)) for m in units]
    period, copies = loop_period(shapes)
    if not period:
        return None
    start = len(shapes) - period * copies
    while start > 0 and shapes[start - 1] == shapes[start - 1 + period]:
        start -= 1
    return units[start + period - 1].end()


@dataclass(frozen=True, slots=True)
class Segment:
    """One generation step: continue the assistant turn from ``prefix`` for at most ``budget``
    new tokens, ending early at EOS or at any of ``stops``; with ``end_loops`` also where the model
    has fallen into a verbatim loop (greedy decoding never leaves one)."""

    prefix: str
    budget: int
    stops: tuple[str, ...]
    end_loops: bool = False  # a section: it also ends at a loop and at a ``FORMAT_HEADER`` line


@dataclass(slots=True)
class FormatPlan:
    """The assistant turn of one request, built segment by segment.

    Plain requests have one segment (stops are ``request.stop``, trimmed from the content).
    Requests with ``sections`` get a critique segment, then one segment per marker; there the stops
    are the markers and ``[End]``, and ``request.stop`` is not used. Call :meth:`next_segment` and
    :meth:`feed` in turn until ``next_segment()`` returns ``None``; then read ``content``,
    ``forced``, ``finish_reason`` and ``completion_tokens``.
    """

    request: ChatRequest
    content: str = ""
    forced: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    completion_tokens: int = 0
    _step: int = 0
    _done: bool = False

    @property
    def max_tokens(self) -> int:
        return DEFAULT_MAX_TOKENS if self.request.max_tokens is None else max(0, self.request.max_tokens)

    @property
    def left(self) -> int:
        return max(0, self.max_tokens - self.completion_tokens)

    def next_segment(self) -> Segment | None:
        if self._done:
            return None
        sections = self.request.sections
        if not sections:
            return Segment("", self.left, tuple(s for s in self.request.stop if s))
        if self._step == 0:  # the critique: short, and cut where the model starts a section itself
            critique = self.request.critique_tokens or DEFAULT_CRITIQUE_TOKENS
            return Segment("", min(critique, self.left), (*sections, END, *PROMPT_HEADERS))
        marker = sections[self._step - 1]
        head = self.content + "\n\n" if self.content else ""
        return Segment(f"{head}{marker}\n", self.left, (END, *sections, *PROMPT_HEADERS), end_loops=True)

    def feed(self, text: str, tokens: int, ended: str) -> None:
        """Take the model's text for the current segment. ``ended`` is ``"eos"``, ``"stop"``
        (a stop string was generated), ``"length"`` (the budget ran out) or ``"loop"`` (a section's
        text began repeating itself verbatim; ``text`` keeps one copy, and ``[End]`` is forced,
        recorded as ``[End]:loop``)."""
        self.completion_tokens += tokens
        segment = self.next_segment()
        assert segment is not None, "feed() after the plan finished"
        cut, hit = _cut_at_first(text, segment.stops)
        if segment.end_loops and (header := FORMAT_HEADER.search(cut)):
            cut, hit = cut[:header.start()], True
        sections = self.request.sections
        if not sections:
            self.content = cut
            self.finish_reason = "length" if ended == "length" and not hit else "stop"
            self._done = True
            return
        if self._step == 0:
            self.content = _trim_partial(cut, segment.stops).rstrip()
            self._step = 1
            return
        marker = sections[self._step - 1]
        self.content = segment.prefix + cut.rstrip()
        self.forced.append(marker)
        if ended == "length" and not hit:  # the section was cut off: no [End], and nothing after it
            self.finish_reason = "length"
            self._done = True
            return
        self.content += "\n" + END
        if ended == "loop" and not hit:
            self.forced.append(f"{END}:loop")
        elif not text[len(cut):].startswith(END):  # EOS, or the model began another marker
            self.forced.append(END)
        self._step += 1
        self._done = self._step > len(sections)


def _cut_at_first(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True


def _trim_partial(text: str, markers: tuple[str, ...]) -> str:
    """Drop a trailing beginning of a marker (``"... [Better An"``) cut off by the token budget."""
    for marker in markers:
        for size in range(len(marker) - 1, 0, -1):
            if text.endswith(marker[:size]):
                return text[:-size]
    return text
