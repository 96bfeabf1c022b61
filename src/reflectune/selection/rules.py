"""Selective Reflection-Tuning's rule (METHOD.md §5.2-5.3) as pure functions over score tables.

No torch, no files: the rule is a few comparisons, and keeping it pure lets the tests walk every
branch with hand-written numbers and lets ``select`` apply it to millions of rows cheaply.

A sample has four candidates, ori, Q, A and QA, each with an IFD and an r-IFD (``None`` = NaN).

1. Instruction: take Q's instruction iff IFD(Q) > IFD(ori).
2. Response: on that branch take the reflected response iff it lowers r-IFD
   (r-IFD(QA) < r-IFD(Q) on the Q branch, r-IFD(A) < r-IFD(ori) on the ori branch).
3. Keep the sample only if its response was reflected and (reference-code filter, on by default)
   IFD < 1 and r-IFD < 1 for the kept pair.

How it degrades:

* A failed variant (status other than ``ok``, or absent) is an unavailable candidate: it never wins.
  Q unavailable -> the ori branch. The branch's reflected response (A or QA) unavailable -> the
  response is not reflected -> the sample is dropped (outcome ``instruction``/``none``).
* ori unavailable -> dropped (``ori_unavailable``): there is nothing to compare against.
* NaN (``None``) where a comparison needs a number -> dropped with reason ``nan_ifd``/``nan_rifd``;
  a NaN in the kept pair's IFD or r-IFD -> ``nan_ifd``/``nan_rifd`` too, with or without the
  filter. A NaN score is never selected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reflectune.errors import ConfigError

__all__ = ["OUTCOMES", "Choice", "TopK", "cherry_choice", "choose_variant", "kept_rows", "parse_top_k",
           "select_top_k"]

Outcome = Literal["both", "instruction", "response", "none"]
#: outcome names for reporting: which parts of the sample were reflected.
OUTCOMES: tuple[str, ...] = ("both", "instruction", "response", "none")
#: metric name -> the (IFD key, r-IFD key) of a scores.jsonl variant entry.
METRICS: dict[str, tuple[str, str]] = {"ppl_ratio": ("ifd", "rifd"),
                                       "loss_ratio": ("ifd_loss_ratio", "rifd_loss_ratio")}


@dataclass(frozen=True, slots=True)
class Choice:
    """The rule's verdict for one sample.

    Attributes:
        variant: the pair the rule lands on (``ori``, ``Q``, ``A``, ``QA``); None if undecidable.
        outcome: which parts were reflected (``both``, ``instruction``, ``response``, ``none``);
            None when a NaN or a missing ori stopped the rule before it could tell.
        kept: whether the sample goes into the selected data.
        reason: why it was dropped (None when kept).
        ifd, rifd: the landed pair's scores (under the metric used).
    """

    variant: str | None
    outcome: Outcome | None
    kept: bool
    reason: str | None = None
    ifd: float | None = None
    rifd: float | None = None


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _available(entry: Mapping[str, Any] | None) -> bool:
    return entry is not None and entry.get("status", "ok") == "ok"


def choose_variant(scores: Mapping[str, Mapping[str, Any] | None], *, below_one_filter: bool = True,
                   metric: str = "ppl_ratio") -> Choice:
    """Apply the selection rule to one sample's score table.

    Args:
        scores: variant name (``ori``, ``Q``, ``A``, ``QA``) -> its entry in ``scores.jsonl``
            (``status`` plus ``ifd``/``rifd``/... numbers; ``None`` numbers are NaN). A missing
            name or a non-``ok`` status is an unavailable candidate.
        below_one_filter: keep only pairs with IFD < 1 and r-IFD < 1 (the reference code's filter).
        metric: ``ppl_ratio`` (exp of the loss difference, default) or ``loss_ratio`` (Cherry's).

    Returns:
        A ``Choice``.

    Example:
        >>> choose_variant({"ori": {"ifd": 0.8, "rifd": 0.7}, "Q": {"ifd": 0.9, "rifd": 0.6},
        ...                 "A": {"ifd": 0.7, "rifd": 0.5}, "QA": {"ifd": 0.85, "rifd": 0.4}})
        Choice(variant='QA', outcome='both', kept=True, reason=None, ifd=0.85, rifd=0.4)
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")
    ifd_key, rifd_key = METRICS[metric]

    def get(name: str, key: str) -> float | None:
        return _num((scores.get(name) or {}).get(key))

    if not _available(scores.get("ori")):
        return Choice(None, None, False, "ori_unavailable")
    # 1. Instruction: the harder instruction (higher IFD) wins.
    if not _available(scores.get("Q")):
        q_branch = False
    else:
        ifd_ori, ifd_q = get("ori", ifd_key), get("Q", ifd_key)
        if ifd_ori is None or ifd_q is None:
            return Choice(None, None, False, "nan_ifd")
        q_branch = ifd_q > ifd_ori
    base, reflected = ("Q", "QA") if q_branch else ("ori", "A")
    # 2. Response: the reflected response wins if it lowers r-IFD.
    if not _available(scores.get(reflected)):
        response = False
        unavailable = f"{reflected}_unavailable"
    else:
        rifd_base, rifd_new = get(base, rifd_key), get(reflected, rifd_key)
        if rifd_base is None or rifd_new is None:
            return Choice(None, None, False, "nan_rifd")
        response = rifd_new < rifd_base
        unavailable = ""
    landed = reflected if response else base
    outcome: Outcome = ("both" if response else "instruction") if q_branch else (
        "response" if response else "none")
    ifd, rifd = get(landed, ifd_key), get(landed, rifd_key)
    # 3. Keep only reflected responses that pass the below-one filter.
    if not response:
        return Choice(landed, outcome, False, unavailable or "response_not_reflected", ifd, rifd)
    if ifd is None:  # a NaN score is never selected, filter or no filter (METHOD.md §5.1)
        return Choice(landed, outcome, False, "nan_ifd", ifd, rifd)
    if rifd is None:
        return Choice(landed, outcome, False, "nan_rifd", ifd, rifd)
    if below_one_filter:
        if ifd >= 1:
            return Choice(landed, outcome, False, "ifd_not_below_1", ifd, rifd)
        if rifd >= 1:
            return Choice(landed, outcome, False, "rifd_not_below_1", ifd, rifd)
    return Choice(landed, outcome, True, None, ifd, rifd)


@dataclass(frozen=True, slots=True)
class TopK:
    """Keep the top ``count`` rows, or the top ``fraction`` of the pool (floored)."""

    count: int | None = None
    fraction: float | None = None

    def size(self, pool: int) -> int:
        """How many rows to keep out of ``pool``: 2 % of 46,325 -> 926 (the paper's figure)."""
        if self.count is not None:
            return min(self.count, pool)
        assert self.fraction is not None
        return min(pool, math.floor(self.fraction * pool + 1e-9))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.fraction * 100:g}%"  # type: ignore[operator]


def parse_top_k(text: str | int | TopK) -> TopK:
    """``"5%"`` -> 5 % of the pool; ``"1000"`` -> 1000 rows.

    Raises:
        ConfigError: anything else (a bare fraction such as ``0.05`` is ambiguous and refused).
    """
    if isinstance(text, TopK):
        return text
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise ConfigError(f"top-k must be at least 1, got {text}")
        return TopK(count=text)
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            pct = float(raw[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return TopK(fraction=pct / 100)
        count = int(raw)
        if count < 1:
            raise ValueError
        return TopK(count=count)
    except ValueError:
        raise ConfigError(f"invalid top-k '{raw}': give a percentage such as 5% or a row count "
                          "such as 1000") from None


def select_top_k(ifds: Sequence[float | None], top_k: TopK | str | int, *,
                 pool: int | None = None, below_one: bool = True) -> list[int]:
    """Indices of the rows to keep: highest IFD first among finite IFD < 1, ties in input order.

    Args:
        ifds: one IFD per candidate row (None = NaN, never kept; IFD >= 1 never kept while
            ``below_one``).
        top_k: a ``TopK`` or its text (``"5%"``, ``"1000"``).
        pool: the size a percentage refers to (default ``len(ifds)``).
        below_one: the reference's IFD < 1 filter; off (``--no-below-one-filter``), every finite IFD
            is ranked, so the top-k does not put back the filter the user turned off.

    Returns:
        The kept indices, best first.

    Example:
        >>> select_top_k([0.5, None, 0.9, 1.2, 0.7], "2")
        [2, 4]
    """
    spec = parse_top_k(top_k)
    numbers = [(i, _num(v)) for i, v in enumerate(ifds)]
    eligible = [(i, v) for i, v in numbers if v is not None and (v < 1 or not below_one)]
    eligible.sort(key=lambda iv: -iv[1])  # stable: ties keep input order
    return [i for i, _ in eligible[:spec.size(len(ifds) if pool is None else pool)]]


def cherry_choice(entry: Mapping[str, Any] | None, below_one_filter: bool, metric: str) -> Choice:
    """Cherry mode: one candidate; keep it if its IFD is a number (below 1 under the filter)."""
    ifd_key, rifd_key = METRICS[metric]
    if entry is None or entry.get("status", "ok") != "ok":
        return Choice(None, None, False, "ori_unavailable")
    ifd, rifd = _num(entry.get(ifd_key)), _num(entry.get(rifd_key))
    if ifd is None:
        return Choice("ori", "none", False, "nan_ifd", ifd, rifd)
    if below_one_filter and ifd >= 1:
        return Choice("ori", "none", False, "ifd_not_below_1", ifd, rifd)
    return Choice("ori", "none", True, None, ifd, rifd)


def kept_rows(choices: Sequence[Choice], top_k: TopK | None, *, cherry: bool = False,
              below_one: bool = True) -> list[int]:
    """Indices of the samples the selected data holds, in input order: those the rule kept, cut to
    the top-k by IFD. A percentage counts the rule's survivors (Cherry mode: every scored row)."""
    keep = [i for i, c in enumerate(choices) if c.kept]
    if top_k is None:
        return keep
    pool = len(choices) if cherry else len(keep)
    ranked = select_top_k([choices[i].ifd for i in keep], top_k, pool=pool, below_one=below_one)
    return sorted(keep[j] for j in ranked)


def count_outcomes(choices: Iterable[Choice]) -> dict[str, Any]:
    """Outcome and drop-reason counts for reports."""
    outcomes = dict.fromkeys(OUTCOMES, 0)
    dropped: dict[str, int] = {}
    kept = total = 0
    for choice in choices:
        total += 1
        if choice.outcome is not None:
            outcomes[choice.outcome] += 1
        if choice.kept:
            kept += 1
        else:
            reason = choice.reason or "dropped"
            dropped[reason] = dropped.get(reason, 0) + 1
    return {"samples": total, "outcomes": outcomes, "kept": kept, "dropped": dict(sorted(dropped.items()))}
