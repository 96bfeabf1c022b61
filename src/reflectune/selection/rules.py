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

from reflectune.config import SelectConfig
from reflectune.errors import ConfigError, ReflectuneError

__all__ = ["OUTCOMES", "Choice", "EmptySelection", "TopK", "cherry_choice", "choose_variant", "kept_rows",
           "parse_top_k", "select_top_k", "why_empty"]

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
    """Keep the top ``count`` rows, or the top ``fraction`` of the pool, rounded down."""

    count: int | None = None
    fraction: float | None = None

    def size(self, pool: int) -> int:
        """How many rows to keep out of ``pool``: 2 % of 46,325 -> 926 (the paper's figure).

        A percentage rounds down (5.5 % of 5 rows is 0 rows); a count is capped by the pool.
        """
        if self.count is not None:
            return min(self.count, pool)
        assert self.fraction is not None
        return min(pool, math.floor(self.fraction * pool + 1e-9))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.fraction * 100:g}%"  # type: ignore[operator]


def parse_top_k(text: str | int | float | TopK) -> TopK:
    """``"5%"`` -> 5 % of the pool (rounded down); ``"1000"`` -> 1000 rows.

    Raises:
        ConfigError: anything else, saying why (over 100 %, not a whole count, a bare fraction such
            as ``0.05``, which is ambiguous, ...); the grammar is ``SelectConfig.read_top_k``.
    """
    if isinstance(text, TopK):
        return text
    count, fraction = SelectConfig.read_top_k(text)
    return TopK(count=count, fraction=fraction)


class EmptySelection(ReflectuneError):
    """A selection that kept no row (exit 1, as every command that produced nothing).

    ``reason`` says which step removed the last rows, from the counts; the message adds the remedy.
    """

    exit_code = 1

    def __init__(self, reason: str, remedy: str, *, where: str | None = None) -> None:
        self.reason, self.remedy = reason, remedy
        super().__init__(f"{where + ': ' if where else ''}kept no row: {reason}; {remedy}")


#: drop reasons the reference code's IFD < 1 / r-IFD < 1 filter gives (off: --no-below-one-filter)
_FILTER_REASONS = ("ifd_not_below_1", "rifd_not_below_1")


def why_empty(counts: Mapping[str, Any], top_k: TopK | None, *, cherry: bool = False,
              below_one: bool = True) -> tuple[str, str]:
    """Why a selection kept no row, and what would keep some: ``(reason, remedy)``.

    Args:
        counts: ``count_outcomes`` of the choices (``samples``, ``kept`` = passed the rule, ``dropped``).
        top_k: the cut asked for; a percentage refers to the rows that passed the rule (Cherry mode:
            every scored row), as in ``kept_rows``.

    Example:
        >>> why_empty({"samples": 5, "kept": 5, "dropped": {}}, parse_top_k("5.5%"))[0]
        'top-k 5.5% of the 5 rows that passed the rule rounds down to 0 rows'
    """
    samples, passed = int(counts["samples"]), int(counts["kept"])
    dropped: Mapping[str, int] = counts.get("dropped") or {}
    allow = "--allow-empty writes the empty selection"
    unit = "rows" if cherry else "samples"
    if samples == 0:
        return "there is no scored sample to select from", f"score a non-empty input, or {allow}"
    if passed == 0:
        filtered = sum(dropped.get(r, 0) for r in _FILTER_REASONS)
        what = "IFD < 1" if cherry else "IFD < 1 and r-IFD < 1"
        if below_one and filtered == samples:
            return (f"the {what} filter removed all {samples:,} {unit}",
                    f"--no-below-one-filter keeps them, or {allow}")
        detail = ", ".join(f"{name} {n:,}" for name, n in dropped.items())
        reason = f"the selection rule dropped all {samples:,} {unit} ({detail})"
        if below_one and filtered:
            return reason, (f"--no-below-one-filter keeps the {filtered:,} the {what} filter removed, "
                            f"or {allow}")
        return reason, allow
    pool = samples if cherry else passed
    if top_k is not None and top_k.size(pool) == 0:
        of = f"the {pool:,} scored rows" if cherry else f"the {pool:,} rows that passed the rule"
        least = f"{math.ceil(10_000 / pool) / 100:g}%"
        return (f"top-k {top_k} of {of} rounds down to 0 rows",
                f"give at least {least} or a row count such as 1, or {allow}")
    return f"no row of {samples:,} was left after the rule and the top-k", allow  # pragma: no cover


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
