"""``reflectune score --dry-run``: what a score run would compute and about how long it would take,
writing nothing.

Scoring is slow on CPUs (hours for a few thousand rows), so a user should know before starting. The
plan makes the checks a run makes (``scoring.run.prepare``: the same function), then builds the run's
real work list: every candidate tokenized and cut into items by the scorer's own code
(``Tokenized.chunk``, truncation included), deduplicated across the run, looked up in the run folder's
store (opened read-only: no folder, no file, not even SQLite's ``-wal``/``-shm``), and packed chunk by
chunk as the run packs it. Tokenizing costs seconds where scoring costs hours.

The time comes from a measured probe: the student loaded exactly as the run loads it (device, dtype,
threads), then the losses of a few real items, without a store. The items come from
``PROBE_GROUPS`` points spread over the run's work (each group stands for an equal share of the
padded tokens, so long items weigh what they cost), each group a batch of about
``PROBE_GROUP_TOKENS`` tokens packed as the run packs. Only the forward passes are timed, after an
untimed warm-up; loading is reported apart. The estimate is the run's padded work at the probe's
rate; its range is the run's work at the probe's fastest and slowest group's rate.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import ScoreConfig
from reflectune.errors import ConfigError, StoreError
from reflectune.scoring.batching import Item, Tokenized, pack
from reflectune.scoring.run import (
    ScoreSetup,
    _Record,
    available,
    load_student,
    make_scorer,
    prepare,
    score_config,
    unavailable,
)
from reflectune.scoring.scorer import ScorerStats
from reflectune.units import duration

__all__ = ["PROBE_GROUPS", "PROBE_GROUP_TOKENS", "ScorePlan", "ScoreProbe", "plan_score"]

#: points of the run's work the probe measures (its range is their fastest and slowest)
PROBE_GROUPS = 4
#: tokens of work per probe group (at most ``batch_tokens``): a few seconds in all on a busy CPU
PROBE_GROUP_TOKENS = 512
#: items kept, uniformly at random, to choose the probe's from (the work list itself is not kept)
SAMPLE_SIZE = 256


@dataclass(frozen=True)
class ScoreProbe:
    """What the probe measured: ``tokens_per_s`` over its computations, and each group's rate in padded
    tokens per second (the unit the estimate scales by)."""

    items: int
    batches: int
    tokens: int
    padded_tokens: int
    seconds: float
    load_seconds: float
    tokens_per_s: float
    group_rates: tuple[float, ...]
    device: str
    dtype: str
    threads: int | None
    shares_heads: bool

    def describe(self) -> str:
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return (f"{self.items} computations, {self.tokens:,} tokens in {self.batches} batches, "
                f"{self.seconds:.1f} s = {self.tokens_per_s:,.0f} tok/s ({self.dtype} on {self.device}"
                f"{threads})")


@dataclass
class ScorePlan:
    """A score run before it runs: the setup, the work (computations and their tokens, as the run will
    count them in run.json's ``computed``, ``cached`` and ``tokens``) and, with a probe, its time."""

    source: Path
    run_dir: Path
    run_dir_exists: bool
    mode: str
    student: str
    fingerprint: str
    template: str
    max_length: int
    batch_tokens: int
    backend: str
    device: str
    dtype: str
    dtype_reason: str
    threads: int | None
    rifd: bool
    namespace: str
    samples: int = 0
    candidates: int = 0
    #: failed variants of a run folder (not scored)
    unavailable: int = 0
    #: unique computations with a target token: ``new`` + ``from_store``
    computations: int = 0
    new: int = 0
    from_store: int = 0
    #: unique computations with no target token left (NaN, nothing to run)
    empty_targets: int = 0
    #: tokens of the new computations (run.json's ``tokens``), their padded work as packed, batches
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    #: the store looked in: its path, or None when the run folder has none yet
    store: Path | None = None
    probe: ScoreProbe | None = None
    #: compute time of the new computations (None without a probe), and its range
    seconds: float | None = None
    seconds_low: float | None = None
    seconds_high: float | None = None
    notes: list[str] = field(default_factory=list)

    def estimate(self) -> str:
        """The time line: ``~12 min (8.0-20.1 min)``, or why there is none."""
        if self.new == 0:
            why = "every computation comes from the store" if self.from_store else "nothing to compute"
            return f"0 s: {why} (the model is not loaded)"
        if self.seconds is None or self.seconds_low is None or self.seconds_high is None:
            return "unknown: no probe (--no-probe)"
        return (f"~{_span(self.seconds)} ({_span(self.seconds_low)} to {_span(self.seconds_high)}: the "
                "probe's fastest and slowest group)")

    def store_line(self) -> str:
        if self.store is None:
            return "none yet: 0 from the store"
        return f"{self.store}: {self.from_store:,} of {self.computations:,} computations"


def _span(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else duration(seconds)


class _StoreView:
    """The run folder's store, read only, creating no file: a store with a live write-ahead log is read
    through it (``mode=ro``, its ``-wal``/``-shm`` exist already); else the file alone holds every
    committed row and is opened ``immutable`` (``mode=ro`` would create ``-wal`` and ``-shm``). A log
    without its ``-shm`` is not read: its rows count as new, so the estimate errs long, never short."""

    def __init__(self, path: Path) -> None:
        from reflectune.store.calls import MIGRATIONS, damaged_error

        self.path = path
        live = Path(f"{path}-wal").is_file() and Path(f"{path}-shm").is_file()
        uri = path.resolve().as_uri() + ("?mode=ro" if live else "?immutable=1")
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot read the store ({exc})") from None
        try:
            problems = [str(row[0]) for row in self._db.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise damaged_error(path, "; ".join(problems) or "quick_check gave no answer")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(f"{path} was written by a newer reflectune (schema {version})")
            self._tables = {row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise damaged_error(path, str(exc)) from None
        except BaseException:
            self._db.close()
            raise

    def has_results(self, namespace: str, keys: Sequence[str]) -> set[str]:
        if "results" not in self._tables:
            return set()
        found: set[str] = set()
        try:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key FROM results WHERE namespace = ? AND key IN ({marks})",
                                        (namespace, *chunk)).fetchall()
                found.update(k if isinstance(k, str) else bytes(k).decode("utf-8", "surrogatepass")
                             for (k,) in rows)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the store ({exc})") from None
        return found

    def close(self) -> None:
        self._db.close()


def _check_writable(folder: Path) -> None:
    """A run writes its folder: refuse, as the run would, one it could not create or write."""
    from reflectune.store.rundir import STORE

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"{folder / STORE}: cannot write the store (the run folder is read-only); "
                         "fix the cause and rerun")


def _chunks(records: Iterator[_Record], size: int) -> Iterator[list[_Record]]:
    chunk: list[_Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _padded(batch: Sequence[Item], shared: bool) -> int:
    """A batch's work as ``ScorerStats.padded_tokens`` counts it."""
    return len(batch) * max(i.work if shared else len(i) for i in batch)


def plan_score(source: str | os.PathLike[str], config: ScoreConfig | None = None, *, probe: bool = True,
               run_dir: str | os.PathLike[str] | None = None, **options: Any) -> ScorePlan:
    """What ``score(source, config, run_dir=run_dir, **options)`` would compute, and how long it would
    take (with ``probe``), creating no folder and no file.

    Args:
        source, config, run_dir, options: as for ``score`` (``student``, ``max_length``, ``split``...).
        probe: load the student as the run would and time a few of the real computations; without it
            the plan has no time estimate (and loads no weights: only the tokenizer).

    Raises:
        ConfigError, DataError, StoreError: what the run would refuse, with the run's message.

    Example::

        plan = plan_score("data.json", max_length=512)
        plan.new, plan.tokens, plan.estimate()
    """
    from reflectune.models import load_tokenizer

    setup = prepare(source, score_config(config, options), run_dir)
    c = setup.config
    _check_writable(setup.folder)
    result = ScorePlan(
        source=setup.source, run_dir=setup.folder, run_dir_exists=setup.folder.exists(), mode=setup.mode,
        student=c.student, fingerprint=setup.fingerprint, template=c.template, max_length=c.max_length,
        batch_tokens=c.batch_tokens, backend=c.backend, device=setup.device, dtype=setup.dtype,
        dtype_reason=setup.dtype_reason, threads=c.threads,
        rifd=setup.with_rifd, namespace=setup.namespace)
    tokenizer = load_tokenizer(setup.model_source)
    try:
        tokens = Tokenized(tokenizer, template=c.template, max_length=c.max_length, prompts_dir=c.prompts_dir)
    except ValueError as exc:  # as make_scorer says it: the chat template on a tokenizer that has none
        raise ConfigError(f"{c.student}: {exc}") from None
    from reflectune.store.rundir import STORE

    store_path = setup.folder / STORE
    store = _StoreView(store_path) if store_path.is_file() else None
    result.store = store_path if store is not None else None
    try:
        sample, padded = _count(setup, tokens, store, result)
    finally:
        if store is not None:
            store.close()
    if result.new == 0:
        result.seconds = result.seconds_low = result.seconds_high = 0.0
        return result
    if not probe:
        result.notes.append("no probe: no time estimate (drop --no-probe to measure one)")
        return result
    result.probe = _probe(setup, tokenizer, sample)
    work = padded[result.probe.shares_heads]
    result.padded_tokens = work
    rates = result.probe.group_rates
    if rates:  # each group stands for an equal share of the work: the harmonic mean of their rates
        result.seconds = work / len(rates) * sum(1 / r for r in rates)
        result.seconds_low, result.seconds_high = work / max(rates), work / min(rates)
    else:
        result.notes.append("the probe measured no time: no estimate")
    return result


def _count(setup: ScoreSetup, tokens: Tokenized, store: _StoreView | None,
           plan: ScorePlan) -> tuple[list[Item], dict[bool, int]]:
    """Fill ``plan``'s counts as the run would count them; return a uniform sample of the new items and
    their padded work with and without shared heads (which applies is known once the model loads)."""
    seen: set[bytes] = set()
    sample: list[Item] = []
    rng = random.Random(0)
    padded = {True: 0, False: 0}
    for chunk in _chunks(setup.records(), setup.config.chunk_size):
        plan.samples += len(chunk)
        plan.unavailable += unavailable(chunk)
        _, triples = available(chunk)
        plan.candidates += len(triples)
        if not triples:
            continue
        unique: dict[str, Item] = {}
        for built in tokens.chunk(triples, rifd=setup.with_rifd):
            for item in built.items.values():
                unique.setdefault(item.key, item)
        live: list[Item] = []
        for key, item in unique.items():
            digest = bytes.fromhex(key[:32])
            if digest in seen:  # met in an earlier chunk: the run finds it in the store by now
                continue
            seen.add(digest)
            if item.n_counted == 0:
                plan.empty_targets += 1
            else:
                live.append(item)
        found = store.has_results(setup.namespace, [i.key for i in live]) if store is not None else set()
        todo = [item for item in live if item.key not in found]
        plan.from_store += len(live) - len(todo)
        plan.new += len(todo)
        plan.tokens += sum(len(i) for i in todo)
        for batch in pack(todo, setup.config.batch_tokens):
            plan.batches += 1
            padded[True] += _padded(batch, True)
            padded[False] += _padded(batch, False)
        for index, item in enumerate(todo, start=plan.new - len(todo)):  # reservoir: each equally likely
            if index < SAMPLE_SIZE:
                sample.append(item)
            elif (slot := rng.randrange(index + 1)) < SAMPLE_SIZE:
                sample[slot] = item
    plan.computations = plan.new + plan.from_store
    plan.padded_tokens = padded[True]
    return sample, padded


def probe_groups(sample: Sequence[Item], batch_tokens: int, groups: int = PROBE_GROUPS,
                 group_tokens: int = PROBE_GROUP_TOKENS) -> list[list[Item]]:
    """``groups`` runs of neighbouring items (by length), each centred where a share of the sample's
    work is reached ((g + 0.5) / groups of it), each about ``group_tokens`` tokens of work (at least
    one item, at most ``batch_tokens``)."""
    ordered = sorted(sample, key=lambda i: i.work)
    if not ordered:
        return []
    budget = max(1, min(group_tokens, batch_tokens))
    total = sum(i.work for i in ordered)
    out: list[list[Item]] = []
    for g in range(groups):
        target, running, centre = (g + 0.5) / groups * total, 0, len(ordered) - 1
        for index, item in enumerate(ordered):
            running += item.work
            if running >= target:
                centre = index
                break
        lo = hi = centre
        work = ordered[centre].work
        while True:  # grow towards the neighbour closest in length while the budget allows
            below = ordered[lo - 1].work if lo > 0 else None
            above = ordered[hi + 1].work if hi + 1 < len(ordered) else None
            step = min((w for w in (below, above) if w is not None), default=None)
            if step is None or work + step > budget:
                break
            if step == above:
                hi += 1
            else:
                lo -= 1
            work += step
        out.append(ordered[lo:hi + 1])
    return out


def _probe(setup: ScoreSetup, tokenizer: Any, sample: Sequence[Item]) -> ScoreProbe:
    """Load the student as the run does and time its losses on a few of the real items."""
    from reflectune.models import import_torch

    groups = probe_groups(sample, setup.config.batch_tokens)
    loaded = time.monotonic()
    scorer = make_scorer(setup, tokenizer, lambda: load_student(setup), store=None)
    build_seconds = time.monotonic() - loaded  # the vLLM engine starts here; the hf model loads below
    # Warm-up, untimed: loads the weights, and computes each shared head once, as the run does first.
    warm: dict[tuple[int, ...], Item] = {}
    for item in sorted((i for group in groups for i in group), key=len):
        warm.setdefault(item.head, item)
    scorer.losses(list(warm.values()))
    load_seconds = build_seconds + scorer.stats.load_seconds
    scorer.stats = ScorerStats()
    rates: list[float] = []
    for group in groups:
        before_s, before_p = scorer.stats.compute_seconds, scorer.stats.padded_tokens
        scorer.losses(group)
        spent = scorer.stats.compute_seconds - before_s
        rates.append((scorer.stats.padded_tokens - before_p) / max(spent, 1e-9))
    stats = scorer.stats
    threads = import_torch().get_num_threads() if setup.device == "cpu" else setup.config.threads
    return ScoreProbe(items=sum(len(g) for g in groups), batches=stats.batches, tokens=stats.tokens,
                      padded_tokens=stats.padded_tokens, seconds=stats.compute_seconds,
                      load_seconds=load_seconds, tokens_per_s=stats.tokens_per_s,
                      group_rates=tuple(r for r in rates if math.isfinite(r) and r > 0),
                      device=setup.device, dtype=setup.dtype, threads=threads,
                      shares_heads=scorer.shares_heads)
