"""One process owns a run folder at a time.

``RunLock`` takes an exclusive ``flock`` on ``run.lock``; the OS releases it when the process dies,
even on kill -9, so a stale lock never blocks a rerun. A second process is refused with a message
naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any

from reflectune.errors import StoreError


class RunLock:
    """Exclusive, process-lifetime lock on a run folder (released by the OS on kill -9)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / "run.lock"
        self._fh: Any = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115 - held for the run's lifetime
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot use the run folder ({exc.strerror})") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StoreError(f"{self.path.parent} is in use by {holder}; wait for it to finish "
                             "or use another --run-dir") from None
        except OSError as exc:  # no locks on this filesystem
            fh.close()
            raise StoreError(f"{self.path}: cannot lock the run folder ({exc.strerror or exc})") from None
        with contextlib.suppress(OSError):  # disk full: the lock is held, only its note is lost
            fh.seek(0)
            fh.truncate()
            fh.write(f"reflectune pid {os.getpid()}")
            fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            with contextlib.suppress(OSError):  # a note that could not be flushed
                self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
