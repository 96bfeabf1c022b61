"""The local oracle's worker: one thread that owns the model, and the pool of jobs it serves.

The engine sends one request per ``complete`` call from many asyncio tasks; a local model is only
fast when it decodes many sequences at once, and only one thread may touch it. :class:`MicroBatcher`
owns that thread. It pools queued jobs, picks up to ``batch_size`` of them (the oldest, plus those
closest to it in length, so little is spent on padding), runs their current segment and delivers
each finished job to its own event loop with ``call_soon_threadsafe``. A job goes back to the pool
after every step (a segment, or as many tokens of it as the oracle decodes at once), so jobs at
different phases of format forcing and newly arrived ones share batches (continuous batching).

This module knows nothing of models or tokens: the oracle supplies ``load``, ``prepare`` and
``step``; decoding is :mod:`reflectune.oracles.local.decoding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reflectune.errors import OracleError
from reflectune.oracles.forcing import FormatPlan, Segment
from reflectune.oracles.local.kv_rows import Past
from reflectune.types import ChatRequest, Completion

__all__ = ["Job", "MicroBatcher", "deliver"]

_STOP = object()  # sentinel that ends the worker thread


@dataclass(eq=False)
class Job:
    """One request in flight: where to deliver it, and its progress through its plan."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completion]
    seq: int
    submitted: float = field(default_factory=time.monotonic)
    plan: FormatPlan = field(init=False)
    prompt_ids: list[int] | None = None  # set by the oracle's ``prepare``
    ids: list[int] = field(default_factory=list)  # the current segment's input: prompt + prefill
    segment: Segment | None = None
    cancelled: bool = False
    past: Past | None = None  # keys and values of its last call, for the next one to reuse
    prior: list[int] = field(default_factory=list)  # tokens of the current segment so far

    def __post_init__(self) -> None:
        self.plan = FormatPlan(self.request)

    @property
    def work(self) -> int:
        """Tokens the model must read for the current segment: those its ``past`` does not cover."""
        return len(self.ids) - (self.past.reusable(self.ids) if self.past is not None else 0)

    def is_cancelled(self) -> bool:
        """Whether the caller gave up on this job (a row's ``abort`` polls it every step)."""
        return self.cancelled


def deliver(job: Job, *, result: Completion | None = None, error: BaseException | None = None) -> None:
    """Resolve a job's future on its own event loop, from any thread; first delivery wins."""
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(settle)


class MicroBatcher:
    """The worker thread and its pool. The oracle supplies three callbacks, all run on the worker:

    - ``load()``: load the model if needed (its exception fails the pooled jobs);
    - ``prepare(job)``: tokenize a new job and set its first segment; False if it was delivered;
    - ``step(batch)``: run one segment of each job; return the jobs that were delivered.
    """

    def __init__(self, *, load: Callable[[], None], prepare: Callable[[Job], bool],
                 step: Callable[[list[Job]], list[Job]], batch_size: int, gather_s: float = 0.01,
                 name: str = "reflectune-local") -> None:
        self.load, self.prepare, self.step = load, prepare, step
        self.batch_size, self.gather_s, self.name = batch_size, gather_s, name
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs, starting the worker thread if it is not running."""
        if self._thread is None or not self._thread.is_alive():
            self._inbox = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        for job in jobs:
            self._inbox.put(job)

    def stop(self) -> None:
        """Blocking: end the worker after its current segment; queued jobs fail as closed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(_STOP)
            thread.join()

    def _work(self) -> None:
        pool: list[Job] = []
        stopping = False
        while not stopping:
            if not pool:
                item = self._inbox.get()
                if item is _STOP:
                    break
                pool.append(item)
            stopping = self._collect(pool)
            pool[:] = [job for job in pool if not job.cancelled]
            if not pool:
                continue
            try:
                self.load()
            except BaseException as exc:
                for job in pool:
                    deliver(job, error=exc)
                pool.clear()
                continue
            for job in [job for job in pool if job.prompt_ids is None]:
                if not self.prepare(job):
                    pool.remove(job)
            if pool:
                for job in self.step(self._pick(pool)):
                    pool.remove(job)
        closed = OracleError("the local oracle was closed")
        for job in pool:
            deliver(job, error=closed)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                deliver(item, error=closed)

    def _collect(self, pool: list[Job]) -> bool:
        """Move queued jobs into the pool, waiting up to ``gather_s`` for a fuller batch.
        Returns True when asked to stop."""
        deadline = time.monotonic() + self.gather_s
        while True:
            wait = deadline - time.monotonic()
            try:
                item = (self._inbox.get(timeout=wait) if len(pool) < self.batch_size and wait > 0
                        else self._inbox.get_nowait())
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            pool.append(item)

    def _pick(self, pool: list[Job]) -> list[Job]:
        """The oldest job plus up to ``batch_size - 1`` others with the same sampling settings,
        chosen as the window of sorted lengths that contains it with the least spread (lengths of
        what must be computed: a segment that reuses its past is short)."""
        size = self.batch_size
        oldest = min(pool, key=lambda job: job.seq)
        key = _sampling_key(oldest.request)
        same = [job for job in pool if _sampling_key(job.request) == key]
        work = {id(job): job.work for job in same}
        ranked = sorted(same, key=lambda job: work[id(job)])
        if len(ranked) <= size:
            return ranked
        at = ranked.index(oldest)
        starts = range(max(0, at - size + 1), min(at, len(ranked) - size) + 1)
        start = min(starts, key=lambda s: work[id(ranked[s + size - 1])] - work[id(ranked[s])])
        return ranked[start:start + size]


def _sampling_key(request: ChatRequest) -> tuple[float, float]:
    return (0.0, 1.0) if request.temperature <= 0 else (request.temperature, request.top_p)
