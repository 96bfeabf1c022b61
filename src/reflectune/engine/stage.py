"""The one skeleton every oracle-calling stage runs in: recycle, generate and judge.

Each of them opens its run folder (lock and store), builds its oracle from an ``OracleConfig``, runs
its calls through one ``Engine``, and keeps a section of ``run.json`` that says ``running``, then
``complete``, or ``stopped`` (a clean, resumable ``ReflectuneError`` such as a cost cap) or
``interrupted`` (anything else: Ctrl-C, a crash). Written once here, the three stages cannot drift
apart on any of it; a stage adds only its own work and its own manifest fields.

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
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import EngineConfig, OracleConfig
from reflectune.engine.runner import Engine
from reflectune.errors import ReflectuneError
from reflectune.oracles import Oracle, make_oracle
from reflectune.store import RunFolder, Store

__all__ = ["Stage", "open_stage", "settle", "stop_status"]


def stop_status(exc: BaseException) -> str:
    """``stopped`` for a clean stop the tool chose (resumable), ``interrupted`` for anything else."""
    return "stopped" if isinstance(exc, ReflectuneError) else "interrupted"


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
        backend = make_oracle(oracle, session=session)
        async with Engine(backend, run.store, engine) as calls:
            stage = Stage(name, run, backend, calls)
            try:
                yield stage
            except BaseException as exc:
                with contextlib.suppress(ReflectuneError):
                    stage.write(stop_status(exc), stop_reason=str(exc))
                raise


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
