"""All or nothing: every file reflectune writes goes to a unique temporary name, then is renamed.

A reader (or a rerun after kill -9) sees the old file or the new one, never half of one. The
temporary name ``.NAME.tmp<pid>-<n>`` sits beside the target (same filesystem, so the rename is
atomic), is unique to the process and the call (two writers never share one), and carries the pid so
that a later run can delete what a killed writer left (``remove_stale``). OS errors become
``StoreError`` naming the target.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from reflectune.errors import StoreError

__all__ = ["AtomicFile", "atomic_open", "remove_stale", "temp_path", "write_json_atomic",
           "write_text_atomic"]

_counter = itertools.count()


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
        if pid is None or pid == os.getpid():
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


def _error(path: Path, exc: OSError) -> StoreError:
    return StoreError(f"{path}: cannot write ({exc.strerror or exc})")


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
