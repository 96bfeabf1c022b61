"""What a row to decode is, and what comes back: the plain data between the oracle, the decoder
(:mod:`~reflectune.oracles.local.decoding`) and its per-row stopping rules
(:mod:`~reflectune.oracles.local.stopping`). Its own module so both can use it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reflectune.oracles.local.kv_rows import Past

__all__ = ["Row", "RowResult", "Sampling"]


@dataclass(frozen=True, slots=True)
class Row:
    """Token ids to continue, at most ``budget`` new tokens, and strings that end the row."""

    ids: list[int]
    budget: int
    stops: tuple[str, ...] = ()
    abort: Callable[[], bool] | None = None  # polled every step: True ends the row at once
    end_loops: bool = False  # a forced section: also end it at a verbatim loop (see stopping.loop_period)
    #                          and at a line that is a format header (``FORMAT_HEADER``)
    past: Past | None = None  # keys and values of a previous segment, reused where ``ids`` agree
    keep: bool = False  # return this row's keys and values (``RowResult.past``) for its next segment
    prior: tuple[int, ...] = ()  # tokens this segment generated in earlier calls (``ids`` ends with
    #                              them): stop strings, loops and the empty-section rule see them

    @property
    def reuse(self) -> int:
        return self.past.reusable(self.ids) if self.past is not None else 0


@dataclass(frozen=True, slots=True)
class RowResult:
    """Generated text (EOS excluded; stop strings included, the caller trims), tokens generated,
    and why the row ended: ``"eos"``, ``"stop"``, ``"length"`` or ``"loop"`` (the text keeps the
    loop's first copy; ``tokens`` counts all that were generated), or ``"more"``: the call's
    ``max_steps`` ran out first, and the row goes on in a later call. Text and loops cover the
    whole segment (``prior`` included); ``tokens`` counts this call's. ``past``: the row's keys and
    values when it asked to ``keep`` them and the model's cache allows it."""

    text: str
    tokens: int
    ended: str
    past: Past | None = None
    ids: tuple[int, ...] = ()  # the tokens this call generated (for a row that goes on: ``"more"``)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding settings shared by a batch: greedy when ``temperature`` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
