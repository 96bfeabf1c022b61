"""The one skeleton every oracle-calling stage runs in: recycle, generate and judge.

Each of them opens its run folder (lock and store), builds its oracle from an ``OracleConfig``, runs
its calls through one ``Engine``, and keeps a section of ``run.json`` that says ``running``, then
``complete``, or ``stopped`` (a clean, resumable ``ReflectuneError`` such as a cost cap) or
``interrupted`` (a signal, or anything unexpected). Written once here, the three stages cannot drift
apart on any of it; a stage adds only its own work and its own manifest fields.

Signals: the first SIGINT, SIGTERM or SIGHUP stops new calls; calls on the wire finish and are
stored for up to ``EngineConfig.grace_s`` seconds; a second signal aborts at once. Either way the
run ends with ``Interrupted`` (exit 128 + the signal's number) and the manifest says so.

Exit status: ``RunOutcome`` is the one rule every command follows. A run did what was asked only when
no call of it is still failed and it produced something; otherwise the command exits 1 and says
which calls failed, why, and the exact command that retries them.

Example::

    async with open_stage("generate", folder, config.model, config.engine) as stage:
        stage.manifest.update(rows=len(items))
        stage.write("running")
        ...
        stage.write("complete", failed=0)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import EngineConfig, OracleConfig
from reflectune.engine.runner import Engine
from reflectune.errors import Interrupted, ReflectuneError, final_failure, stop_status
from reflectune.logs import get_logger
from reflectune.oracles import Oracle, make_oracle
from reflectune.store import RunFolder, Store

__all__ = ["RunOutcome", "Stage", "open_stage", "settle", "stop_status"]

log = get_logger(__name__)
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, for the one exit rule: calls still failed, by reason, and what it produced."""

    #: calls of this run that are failed at its end
    failed_calls: int = 0
    #: error kind -> (count, one example message)
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: whether some failed call is final (deterministic): only ``--retry-failed`` asks it again
    needs_retry_failed: bool = False
    #: what the run produced (reflected variants, answers, judged pairs)
    produced: int = 0
    #: what ``produced`` counts, for the message
    unit: str = "results"

    @property
    def ok(self) -> bool:
        return self.failed_calls == 0 and self.produced > 0

    @property
    def exit_code(self) -> int:
        """0 only when the run did what was asked; 1 when a call is still failed or nothing came out."""
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {"failed_calls": self.failed_calls, "produced": self.produced, "unit": self.unit,
                "needs_retry_failed": self.needs_retry_failed,
                "failures": {k: {"count": n, "example": e} for k, (n, e) in self.failures.items()}}


@dataclass
class Stage:
    """A stage's open run: its folder, oracle, engine and manifest section."""

    name: str
    run: RunFolder
    oracle: Oracle
    engine: Engine
    #: Fields written into every version of this stage's manifest section.
    manifest: dict[str, Any] = field(default_factory=dict)
    #: Live fields (counts, stats) added to every write; the default is the engine's counters.
    live: Callable[[], dict[str, Any]] | None = None

    @property
    def store(self) -> Store:
        assert self.run.store is not None  # set while the folder is open
        return self.run.store

    def file(self, name: str) -> Path:
        return self.run.file(name)

    def write(self, status: str, **extra: Any) -> None:
        """Rewrite this stage's manifest section with ``status`` (atomically)."""
        live = self.live() if self.live is not None else {}
        self.run.update_manifest(self.name, self.manifest | live | extra | {"status": status})
        log.info("%s %s%s", self.name, status, "".join(f"; {k}={v}" for k, v in extra.items()))

    def outcome(self, produced: int, unit: str, *, also: Sequence[Engine] = ()) -> RunOutcome:
        """This run's outcome so far: the calls still failed (grouped by kind) and what it produced.

        ``also``: other engines of this stage (a judge's) whose failed calls count too."""
        failures: dict[str, tuple[int, str]] = {}
        final = False
        failed = [r for e in (self.engine, *also) for r in e.failed.values()]
        for record in failed:
            kind = record.error_kind or "error"
            count, example = failures.get(kind, (0, (record.error or "").splitlines()[0][:300]
                                                 if record.error else kind))
            failures[kind] = (count + 1, example)
            final = final or final_failure(record.error_kind)
        return RunOutcome(len(failed), dict(sorted(failures.items())), final, produced, unit)


@contextlib.asynccontextmanager
async def open_stage(name: str, folder: str | Path, oracle: OracleConfig, engine: EngineConfig, *,
                     session: Any = None) -> AsyncIterator[Stage]:
    """Open ``folder`` for stage ``name`` with an oracle and an engine; record how it ends.

    On any exception the manifest says ``stopped`` or ``interrupted`` with the reason and the live
    fields, then the exception propagates; a failed manifest write never hides the original error.
    The oracle is closed on the way out, then the folder's store and lock are released.
    """
    with RunFolder(folder) as run:
        assert run.store is not None
        log.info("%s: oracle %s; engine %s", name, oracle.canonical(), engine.canonical())
        backend = make_oracle(oracle, session=session)
        async with Engine(backend, run.store, engine) as calls:
            stage = Stage(name, run, backend, calls)
            try:
                with _signals(calls, engine.grace_s):
                    yield stage
            except asyncio.CancelledError:
                if calls.interrupted_by is None:
                    raise
                stopped = Interrupted(f"{calls.interrupted_by}; aborted before the calls on the wire "
                                      "finished. Rerun the same command to resume")
                stopped.exit_code = calls.interrupt_code
                with contextlib.suppress(ReflectuneError):
                    stage.write("interrupted", stop_reason=str(stopped))
                raise stopped from None
            except BaseException as exc:
                with contextlib.suppress(ReflectuneError):
                    stage.write(stop_status(exc), stop_reason=str(exc))
                if isinstance(exc, Interrupted):
                    exc.exit_code = calls.interrupt_code
                raise


@contextlib.contextmanager
def _signals(engine: Engine, grace_s: float) -> Iterator[None]:
    """While the block runs: the first signal stops new calls, the grace period or a second aborts."""
    try:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
    except RuntimeError:
        main = None
    if main is None:
        yield
        return
    installed: list[int] = []
    timers: list[asyncio.TimerHandle] = []

    def abort() -> None:
        """Past the grace period, or a second signal: cancel everything, calls on the wire too."""
        for task in asyncio.all_tasks(loop):
            task.cancel()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if engine.interrupted_by is not None:
            abort()
            return
        engine.interrupt_code = 128 + signum
        sent = engine.stats.requests
        engine.interrupt(f"interrupted by {name} after {sent} requests: no request was started after "
                         f"it; the {engine.stats.in_flight} on the wire were let finish and were kept. "
                         "Rerun the same command to resume")
        print(f"reflectune: {name} after {sent} requests: stopping; {engine.stats.in_flight} calls on the "
              f"wire finish within {grace_s:g} s (signal again to abort)", file=sys.stderr, flush=True)
        timers.append(loop.call_later(grace_s, abort))

    for signum in SIGNALS:
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no support
            pass
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        for signum in installed:
            loop.remove_signal_handler(signum)


async def settle(tasks: Iterable[asyncio.Future[Any]], *, cancel: bool) -> None:
    """After a failure, deal with the calls still running and retrieve every exception.

    ``cancel=False`` lets calls already on the wire finish, so their paid answers reach the store;
    ``cancel=True`` stops them at once. Either way nothing is left to print "exception never
    retrieved".
    """
    pending = list(tasks)
    if cancel:
        for task in pending:
            task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
