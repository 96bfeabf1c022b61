"""One process owns a run folder at a time.

``RunLock`` takes an exclusive lock on ``run.lock`` with ``filelock``'s native primitive (``flock`` on
Unix, ``LockFileEx`` on Windows, over a descriptor this module owns, so the holder's pid note stays
in the file); the OS releases it when the process dies, even on kill -9, so a stale lock never
blocks a rerun. A second process is refused with a message naming the holder. No ``fcntl`` import
here: the package imports where there is none (Windows).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

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
            locked = lock_descriptor(fh.fileno(), blocking=False)
        except OSError as exc:  # no locks on this filesystem
            fh.close()
            raise StoreError(f"{self.path}: cannot lock the run folder ({exc.strerror or exc})") from None
        if not locked:
            holder = "another process"
            with contextlib.suppress(OSError, UnicodeDecodeError):  # Windows: a locked byte is unreadable
                fh.seek(0)
                holder = fh.read().strip() or holder
            fh.close()
            raise StoreError(f"{self.path.parent} is in use by {holder}; wait for it to finish "
                             "or use another --run-dir")
        with contextlib.suppress(OSError):  # disk full: the lock is held, only its note is lost
            fh.seek(0)
            fh.truncate()
            fh.write(f"reflectune pid {os.getpid()}")
            fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):  # closing below drops the lock anyway
                unlock_descriptor(self._fh.fileno())
            with contextlib.suppress(OSError):  # a note that could not be flushed
                self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
