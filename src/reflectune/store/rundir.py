"""A run is a folder: ``store.sqlite``, ``run.json``, ``run.lock``, outputs, ``log.txt``.

Every stage opens its folder through ``RunFolder`` so locking, the store, the manifest and atomic
writes behave the same for recycle, score, generate and judge. The manifest is rewritten
atomically (temp file + rename) and never holds a secret: configs store the *name* of the key's
environment variable only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from reflectune.contracts import MANIFEST_FILE
from reflectune.errors import StoreError
from reflectune.io.atomic import write_json_atomic
from reflectune.store.calls import Store
from reflectune.store.lock import RunLock

MANIFEST = MANIFEST_FILE
STORE = "store.sqlite"


def default_run_dir(input_path: str | os.PathLike[str], oracle_spec: str, stage: str = "") -> Path:
    """``runs/<input stem>-<oracle>[-stage]``: same command, same folder, so reruns resume."""
    stem = Path(input_path).name.split(".")[0] or "data"
    oracle = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(oracle_spec).name if "/" in oracle_spec else oracle_spec)
    name = "-".join(p for p in (stem, oracle.strip("_"), stage) if p)
    return Path("runs") / name


@functools.cache
def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("reflectune", "aiohttp", "torch", "transformers", "trl", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


class RunFolder:
    """Open (lock, store) a run folder for the lifetime of a ``with`` block."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = RunLock(self.path)
        self.store: Store | None = None

    def __enter__(self) -> RunFolder:
        self._lock.acquire()
        try:
            self.store = Store(self.path / STORE)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            self.store.close()
        self._lock.release()

    def file(self, name: str) -> Path:
        return self.path / name

    def read_manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def update_manifest(self, section: str, payload: dict[str, Any]) -> None:
        """Merge ``payload`` under ``section`` (e.g. "recycle", "score") and rewrite run.json."""
        manifest = self.read_manifest()
        manifest.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["versions"] = dict(versions())
        manifest[section] = payload
        write_json_atomic(self.path / MANIFEST, manifest)


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
