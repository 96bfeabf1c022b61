"""Format forcing: how a local backend makes a small model write the reflection format.

A 135M model will not reliably write ``[Better Answer] ... [End]`` on its own (DESIGN.md). Because a
local backend owns the assistant turn, it can *prefill* it: let the model write a short critique
first (the method's chain of thought), then write each section marker itself and let the model fill
the section up to ``[End]``. The result is a transcript the strict parser accepts by construction:
each requested marker appears exactly once and is closed by ``[End]``.

This module is the per-request state machine only, pure string work with no torch: the batching
layer asks each request for its next :class:`Segment` (a prefix to continue from, a token budget,
stop strings), runs every segment of a batch in one ``generate`` and feeds the text back. Requests
at different phases (or with different section tuples) share a batch freely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reflectune.markers import END, PROMPT_HEADERS
from reflectune.types import ChatRequest

DEFAULT_MAX_TOKENS = 512
DEFAULT_CRITIQUE_TOKENS = 64

__all__ = ["DEFAULT_CRITIQUE_TOKENS", "DEFAULT_MAX_TOKENS", "FORMAT_HEADER", "FormatPlan", "Segment"]

#: A line that is a bracketed header naming a part of the reflection format ("[The Better Answer]",
#: "[Level of Detail]", "[New Question]"). A small model that writes one inside a forced section has
#: started a section of its own (and seldom ends it), so the forced section ends there, as at a
#: marker. Placeholders such as "[Your Name]" and song parts such as "[Chorus]" do not match.
FORMAT_HEADER = re.compile(
    r"\n[ \t]*\[[^\]\n]{0,40}\b(?:Answers?|Instructions?|Questions?|Inputs?|Responses?|Outputs?|Details?|"
    r"Helpfulness|Relevance|Accuracy|Complexity|Feasibility|Critique|Reflection)\b[^\]\n]{0,40}\]")


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
