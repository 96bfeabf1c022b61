"""All or nothing: every file reflectune writes goes to a unique temporary name, then is renamed.

A reader (or a rerun after kill -9) sees the old file or the new one, never half of one. The
temporary name ``.NAME.tmp<pid>-<n>`` sits beside the target (same filesystem, so the rename is
atomic), is unique to the process and the call (two writers never share one), and carries the pid so
that a later run can delete what a killed writer left (``remove_stale``). OS errors become
``StoreError`` naming the target; a full disk (``ENOSPC``, ``EDQUOT``, ``EFBIG``) says "disk full".

``OutputLock`` is the lock a long-running writer (``DatasetWriter``) holds on its target, so two runs
never write the same output; ``same_file`` tells whether an output would overwrite an input. Locks
use ``filelock``'s native primitive over descriptors this module owns (``flock`` on Unix,
``LockFileEx`` on Windows): no ``fcntl`` import, so the package imports where there is none.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from filelock import lock_descriptor

from reflectune.errors import StoreError

__all__ = ["AtomicFile", "OutputLock", "atomic_open", "is_disk_full", "remove_stale", "same_file",
           "temp_path", "write_json_atomic", "write_text_atomic"]

#: errno values that mean "no room": a full disk, a full quota, a file size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_counter = itertools.count()
#: flags that exist on one platform only (os.pread/pwrite and O_CLOEXEC are POSIX)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``path`` for this process: ``.NAME.tmp<pid>-<n>``."""
    target = Path(path)
    return target.with_name(f".{target.name}.tmp{os.getpid()}-{next(_counter)}")


def _pid_of(name: str, prefix: str) -> int | None:
    pid = name[len(prefix):].partition("-")[0]
    return int(pid) if pid.isdigit() else None


def remove_stale(path: str | os.PathLike[str]) -> None:
    """Delete the temporary files of ``path`` whose writer process is gone (a killed run's)."""
    target = Path(path)
    prefix = f".{target.name}.tmp"
    for tmp in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = _pid_of(tmp.name, prefix)
        # Windows: os.kill(pid, 0) would terminate that process, not probe it; leave the file there
        if pid is None or pid == os.getpid() or sys.platform == "win32":
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                if tmp.is_dir():
                    import shutil

                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
        except PermissionError:  # alive, someone else's
            continue


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for want of room (disk, quota or file size limit)."""
    return isinstance(exc, OSError) and (exc.errno in DISK_FULL or "No space left" in str(exc))


def os_reason(exc: OSError) -> str:
    """The reason part of a one-line error: ``disk full (...)`` for a full disk, else strerror."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"disk full: {reason}" if is_disk_full(exc) else reason


def _error(path: Path, exc: OSError) -> StoreError:
    return StoreError(f"{path}: cannot write ({os_reason(exc)})")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are the same file or folder, e.g. an ``-o`` that would replace the input.

    Two existing paths are compared by device and inode (symlinks followed, hard links found); when
    one does not exist yet (an output about to be written) their fully resolved paths are compared,
    symlinks in the existing part of each followed and ``..`` folded.
    """
    try:
        first, second = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        pass
    else:
        return os.path.samestat(first, second)
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable folder
        return os.path.abspath(a) == os.path.abspath(b)


class OutputLock:
    """An exclusive, non-blocking lock on ``.NAME.lock`` beside ``path``, held while it is written.

    A second writer of the same path, in another process or this one, gets a ``StoreError`` naming
    the holder's pid. The OS drops the lock when the holder dies (kill -9 included), so a stale lock
    file never blocks; ``release`` removes the file. On a filesystem without ``flock`` the writer goes
    on unguarded rather than fail. (Windows cannot remove a file another process holds open: there the
    file may stay, and a stale one is harmless.)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.target = Path(path)
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock; ``OSError`` if the lock file cannot be created (the caller names it)."""
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC | _O_BINARY, 0o644)
            try:
                locked = lock_descriptor(fd, blocking=False)
            except OSError:  # no locks here (some network filesystems)
                os.close(fd)
                with contextlib.suppress(OSError):
                    self.path.unlink()
                return self
            if not locked:
                holder = _holder(fd)
                os.close(fd)
                raise StoreError(f"{self.target} is being written by another run ({holder}); "
                                 "wait for it or choose another -o")
            # A holder removes the file before it unlocks: a lock on a file no longer at the path
            # guards nothing, so take the one that is there now.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                self._fd = fd
            else:
                os.close(fd)
        with contextlib.suppress(OSError):  # the pid is for the refusal message only
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, f"pid {os.getpid()}\n".encode())
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before the unlock: see ``acquire``
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):  # Windows: the holder's locked byte is unreadable
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii").strip()
        if text.startswith("pid ") and text[4:].isdigit():
            return text
    return "pid unknown"


class AtomicFile:
    """A file written under a temporary name; ``commit`` renames it over the target.

    For writers that stream for a long time (answers, scores): open it, write, then ``commit`` or
    ``abort``. ``atomic_open`` is the ``with`` form.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "w") -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.path)
            encoding = None if "b" in mode else "utf-8"
            self.file: IO[Any] = open(self.tmp, mode, encoding=encoding)  # noqa: SIM115 - commit/abort
        except OSError as exc:
            raise _error(self.path, exc) from None

    def commit(self) -> None:
        try:
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise _error(self.path, exc) from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``with atomic_open(p) as fh:`` writes ``p`` whole when the block ends without an exception."""
    out = AtomicFile(path, mode)
    try:
        yield out.file
    except BaseException:
        out.abort()
        raise
    try:
        out.file.flush()
    except OSError as exc:
        out.abort()
        raise _error(out.path, exc) from None
    out.commit()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    try:
        with atomic_open(path) as fh:
            fh.write(text)
    except OSError as exc:  # a write error inside the block (disk full)
        raise _error(Path(path), exc) from None


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Pretty, sorted JSON (manifests, reports): stable bytes for the same payload."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
