"""A run is a folder: ``store.sqlite``, ``run.json``, ``run.lock``, outputs, ``log.txt``.

Every stage opens its folder through ``RunFolder`` so locking, the store, the manifest and atomic
writes behave the same for recycle, score, generate and judge. The manifest is rewritten
atomically (temp file + rename) and never holds a secret: configs store the *name* of the key's
environment variable only.

A store is never silently empty: if ``run.json`` says calls were made and stored, opening the folder
refuses a missing ``store.sqlite`` (before creating one) or one holding fewer calls than recorded,
with a one-line ``StoreError`` that says how to recover; a rerun would otherwise buy every call again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
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
from reflectune.logs import get_logger, run_log
from reflectune.store.calls import Store, recovery_hint
from reflectune.store.lock import RunLock

MANIFEST = MANIFEST_FILE
STORE = "store.sqlite"
log = get_logger(__name__)


def default_run_dir(input_path: str | os.PathLike[str], oracle_spec: str, stage: str = "", *,
                    identity: str | None = None) -> Path:
    """``runs/<input stem>[-<hash>]-<oracle>[-stage]``: same command, same folder, so reruns resume.

    ``identity`` (an input file's resolved path) adds a short hash of it, so ``a/train.json`` and
    ``b/train.json`` get folders of their own instead of overwriting each other's outputs.
    """
    stem = Path(input_path).name.split(".")[0] or "data"
    if identity is not None:
        stem = f"{stem}-{hashlib.sha256(identity.encode('utf-8', 'surrogatepass')).hexdigest()[:6]}"
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
    """Open (lock, store) a run folder for the lifetime of a ``with`` block.

    ``check_calls=False`` skips the comparison of the store with the calls ``run.json`` recorded, for
    a stage that sends no oracle call and so cannot buy lost ones again (the store is still checked
    for damage).
    """

    def __init__(self, path: str | os.PathLike[str], *, check_calls: bool = True) -> None:
        self.path = Path(path)
        self._lock = RunLock(self.path)
        self._check_calls = check_calls
        self.store: Store | None = None
        self._log = contextlib.ExitStack()

    def __enter__(self) -> RunFolder:
        self._lock.acquire()
        try:
            self._log.enter_context(run_log(self.path))
            log.info("opened %s (pid %d, reflectune %s)", self.path, os.getpid(),
                     versions().get("reflectune", "?"))
            self.store = self._open_store()
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                log.error("%s", exc)
            self._log.close()
            self._lock.release()
            raise
        return self

    def _open_store(self) -> Store:
        """Open the store, refusing one that has lost calls the manifest recorded."""
        path = self.path / STORE
        try:
            manifest = read_manifest(self.path)
        except StoreError:  # an unreadable run.json is reported when it is next written
            manifest = {}
        need, recorded, section = recorded_calls(manifest) if self._check_calls else (0, 0, "")
        if need > 0:
            try:
                size: int | None = path.stat().st_size
            except FileNotFoundError:
                size = None
            except OSError:
                size = -1  # cannot tell: Store says why when it opens
            if size is None or size == 0:
                what = "is missing" if size is None else "is empty"
                raise self._lost(path, f"{path.name} {what}", recorded, section, missing=True)
        store = Store(path)
        if need > 0:
            try:
                count = store.call_count()
                if count < need:
                    held = f"holds only {count}" if count else "holds none"
                    raise self._lost(path, f"{path.name} {held}", recorded, section)
            except BaseException:
                store.close()
                raise
        return store

    def _lost(self, path: Path, what: str, recorded: int, section: str, *,
              missing: bool = False) -> StoreError:
        calls = f"{recorded} oracle call{'' if recorded == 1 else 's'}"
        return StoreError(f"{self.path}: {MANIFEST} records {calls} ({section}) but {what}; refusing "
                          f"to start over and buy them again; {recovery_hint(path, missing=missing)}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, *_: object) -> None:
        if self.store is not None:
            self.store.close()
        if exc is not None:
            log.warning("closed %s: %s: %s", self.path, kind.__name__ if kind else "error", exc)
        else:
            log.info("closed %s", self.path)
        self._log.close()
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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, bytes that are not UTF-8
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: unreadable manifest (it holds a JSON {_json_kind(manifest)}, "
                         "not an object); fix or remove it")
    return manifest


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "array", str: "string", bool: "boolean"}.get(type(value), "number")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def recorded_calls(manifest: dict[str, Any]) -> tuple[int, int, str]:
    """What the manifest says the store must hold: ``(at least, recorded, section)``.

    A section's ``calls_in_store`` (``Store.call_totals()`` when it was written: recycle) is exact, and
    the store only grows, so the store must hold at least that many calls. A section with engine
    counters only (``engine`` or ``stats``: generate, judge) proves calls were stored, not how many
    distinct ones (one key may be sent twice), so the store must hold at least one. The section with
    the largest claim wins.
    """
    best = (0, 0, "")
    for name, section in manifest.items():
        if not isinstance(section, dict):
            continue
        need = recorded = 0
        totals = section.get("calls_in_store")
        if isinstance(totals, dict):
            need = recorded = sum(_count(v.get("calls")) for v in totals.values() if isinstance(v, dict))
        for field in ("engine", "stats"):
            stats = section.get(field)
            if isinstance(stats, dict):
                made = _count(stats.get("sent")) + _count(stats.get("failed"))
                if made or _count(stats.get("cached")):
                    need = max(need, 1)
                    recorded = max(recorded, made, need)
        if need > best[0]:
            best = (need, recorded, name)
    return best
