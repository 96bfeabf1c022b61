"""When a decoded row ends, on its own terms inside one batched ``generate``.

``generate`` takes one ``max_new_tokens`` and one list of stop strings for the whole batch, but the
rows of a local batch differ (a critique stops at a marker, a section at ``[End]``). So one stopping
criterion, :class:`RowStopper`, tracks every row: it ends a row at EOS, at one of *its* stop
strings, at *its* budget or, for a forced section, at a verbatim loop (``forcing.loop_period``) or a
format header line, records why, and ``generate`` pads the row from then on.
:class:`NoEmptySection` keeps a forced section from ending before it has any text. Both need
token classes of the vocabulary (:func:`vocab_classes`), computed once per tokenizer.

torch is imported inside functions only.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from reflectune.oracles.forcing import FORMAT_HEADER, LOOP_COPIES, LOOP_MAX_PERIOD, LOOP_MIN_SPAN, loop_period
from reflectune.oracles.local.rows import Row

__all__ = ["LOOP_COPIES", "LOOP_MAX_PERIOD", "LOOP_MIN_SPAN", "NoEmptySection", "RowStopper",
           "loop_period", "vocab_classes"]


#: token classes per tokenizer, dropped with it. Keyed by the tokenizer itself, not by ``id()``: an
#: id is reused once its object is collected, and a new tokenizer must not get an old one's classes.
_VOCAB_CLASSES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def vocab_classes(tokenizer: Any) -> dict[str, Any]:
    """Token ids by kind, once per tokenizer: ``blank`` (only whitespace), ``bracket`` (starting
    with "[", after any leading space), and ``shape``: each token's text without surrounding
    whitespace, as a small int, all digit-only tokens as -1. Loop detection compares shapes, so
    copies that differ only in spacing, line breaks or numbering still count as one block."""
    try:
        classes = _VOCAB_CLASSES.get(tokenizer)
    except TypeError:  # neither hashable nor weakly referenceable: compute it every time
        return _classes_of(tokenizer)
    if classes is None:
        classes = _VOCAB_CLASSES[tokenizer] = _classes_of(tokenizer)
    return classes


def _classes_of(tokenizer: Any) -> dict[str, Any]:
    vocab = tokenizer.get_vocab()

    def text(token: str) -> str:  # byte-level BPE writes a space as Ġ, a newline as Ċ
        return token.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")

    texts = {i: text(token) for token, i in vocab.items()}
    words: dict[str, int] = {}
    shape = {i: -1 if t.strip().isdigit() else words.setdefault(t.strip(), len(words))
             for i, t in texts.items() if t.strip()}
    return {
        "shape": shape,
        "blank": frozenset(i for i, t in texts.items() if t and not t.strip()),
        "bracket": frozenset(i for i, t in texts.items() if t.lstrip().startswith("[")),
    }


class NoEmptySection:
    """Logits processor: a forced section may not end (EOS) or open a bracket (``[End]``, another
    marker, a placeholder such as ``[Your Answer]``) before it has any visible text. A 135M model
    otherwise often closes a section at once, and the parser rightly rejects an empty one."""

    def __init__(self, start: int, rows: Sequence[Row], eos_ids: set[int], classes: dict[str, Any]) -> None:
        self.start, self.rows = start, rows
        self.banned = sorted(set(eos_ids) | classes["bracket"])
        self.blank = classes["blank"]
        # only forced sections are guarded, until they have visible text (from an earlier call too)
        self.empty = [row.end_loops and all(t in self.blank for t in row.prior) for row in rows]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.start:
            last = input_ids[:, -1].tolist()
            for r, empty in enumerate(self.empty):
                if empty and last[r] not in self.blank:
                    self.empty[r] = False
        rows = [r for r, empty in enumerate(self.empty) if empty]
        if rows:
            guarded = scores[rows]
            guarded[:, self.banned] = -float("inf")
            scores[rows] = guarded
        return scores


class RowStopper:
    """Per-row stopping criterion for ``generate``; called once per step with all ids so far."""

    def __init__(self, tokenizer: Any, start: int, rows: Sequence[Row], eos_ids: set[int]) -> None:
        self.tokenizer, self.start, self.rows, self.eos_ids = tokenizer, start, rows, eos_ids
        self.end: list[int | None] = [None] * len(rows)
        self.reason: list[str] = ["length"] * len(rows)
        self.loop: list[int] = [0] * len(rows)  # where to cut rows ended by a loop (token count)
        self.shapes: dict[int, int] = (vocab_classes(tokenizer)["shape"]
                                       if any(row.end_loops for row in rows) else {})
        self.generated: list[list[int]] = [list(row.prior) for row in rows]  # the segment so far
        self.shape: list[list[int]] = [[] for _ in rows]  # shapes of the visible tokens so far
        self.where: list[list[int]] = [[] for _ in rows]  # ... and their positions in ``generated``
        for r, row in enumerate(rows):
            for at, token in enumerate(row.prior if row.end_loops else ()):
                if token in self.shapes:
                    self.shape[r].append(self.shapes[token])
                    self.where[r].append(at)
        # a stop string of c characters spans at most c tokens (+1 for a partial byte)
        self.tail = [max((len(s) for s in row.stops), default=0) + 2 for row in rows]

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.start
        last = input_ids[:, -1].tolist()
        for r, row in enumerate(self.rows):
            if self.end[r] is not None:
                continue
            self.generated[r].append(last[r])
            if row.end_loops and last[r] in self.shapes:  # blank tokens are skipped
                self.shape[r].append(self.shapes[last[r]])
                self.where[r].append(len(self.generated[r]) - 1)
            if last[r] in self.eos_ids:
                self.end[r], self.reason[r] = step, "eos"
            elif self._has_stop(r):
                self.end[r], self.reason[r] = step, "stop"
            elif step >= row.budget or (row.abort is not None and row.abort()):
                self.end[r], self.reason[r] = step, "length"
            elif row.end_loops and (found := loop_period(self.shape[r]))[0]:
                self.end[r], self.reason[r] = step, "loop"
                period, copies = found
                self.loop[r] = self.where[r][len(self.shape[r]) - period * (copies - 1)]
        return torch.tensor([e is not None for e in self.end], dtype=torch.bool, device=input_ids.device)

    def _has_stop(self, r: int) -> bool:
        row, ids, decode = self.rows[r], self.generated[r], self.tokenizer.decode
        if row.stops:
            tail = decode(ids[-self.tail[r]:], skip_special_tokens=True)
            if any(stop in tail for stop in row.stops):
                return True
        # a format header (at most ~90 characters) can only have just ended if this token closes it
        return (row.end_loops and "]" in decode(ids[-1:])
                and FORMAT_HEADER.search(decode(ids[-48:], skip_special_tokens=True)) is not None)
