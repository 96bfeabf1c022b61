"""The pipeline folder's manifest, ``pipeline.json``: what each stage read, how it was set, what it
wrote, and what that cost. It is both the experiment's record and the pipeline's memory.

A stage is *up to date* when its entry is ``complete``, its fingerprint (its section's settings and
the content hashes of what it reads) is the one computed now, and every output it recorded is still
there as it was written. Then it is skipped; otherwise it runs, and resumes from its own store or
checkpoints. Because a fingerprint holds the *content* of a stage's inputs, a rerun stage whose
outputs come out the same leaves the stages after it up to date.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from reflectune.io.atomic import write_json_atomic
from reflectune.keys import content_key
from reflectune.store.inputs import file_sha256
from reflectune.store.rundir import versions

__all__ = ["FILE", "Lineage", "fingerprint", "identity"]

FILE = "pipeline.json"
#: A model folder is identified by its files' names and sizes, not their bytes: hashing 13 GB of
#: weights on every rerun would cost more than some stages. Training writes it; damage that keeps
#: every size (a flipped byte) is not caught here.
_LARGE = 64 << 20


def identity(path: Path) -> dict[str, Any]:
    """What an input or output is, by content: sha256 for files and small folders; names and sizes
    for folders holding large files (model weights)."""
    if not path.exists():
        return {"path": str(path), "missing": True}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if any(p.stat().st_size > _LARGE for p in files):
            listing = [[p.relative_to(path).as_posix(), p.stat().st_size] for p in files]
            return {"path": str(path), "files": content_key(listing)[:32]}
    return {"path": str(path), "sha256": file_sha256(path)}


def fingerprint(stage: str, settings: str, inputs: dict[str, Any]) -> str:
    """A stage's identity: its name, its settings' hash and its inputs' content (not their paths)."""
    content = {k: {f: v for f, v in i.items() if f != "path"} if isinstance(i, dict) else i
               for k, i in inputs.items()}
    return content_key(stage, settings, content)[:16]


class Lineage:
    """``pipeline.json``, read once and rewritten atomically after every change."""

    def __init__(self, folder: Path, config: dict[str, Any], config_hash: str, source: str | None) -> None:
        self.path = folder / FILE
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            import json

            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:  # a damaged manifest is rebuilt: each stage's own run.json is the truth
                self.data = {}
        self.data.setdefault("created_at", _now())
        self.data.update(config=config, config_hash=config_hash, source=source)
        self.data.setdefault("stages", {})

    def entry(self, stage: str) -> dict[str, Any]:
        return dict(self.data["stages"].get(stage) or {})

    def up_to_date(self, stage: str, print_: str) -> str | None:
        """None when ``stage`` can be skipped, else why it must run."""
        entry = self.entry(stage)
        if not entry:
            return "not run yet"
        if entry.get("fingerprint") != print_:
            return "settings or inputs changed"
        if entry.get("status") != "complete":
            return f"{entry.get('status', 'unfinished')} last time: resuming"
        for name, recorded in (entry.get("outputs") or {}).items():
            if identity(Path(recorded["path"])) != recorded:
                return f"its output {name} changed or is missing"
        return None

    def write(self, stage: str, entry: dict[str, Any]) -> None:
        self.data["stages"][stage] = entry
        self.data["updated_at"] = _now()
        self.data["versions"] = _versions()
        write_json_atomic(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _versions() -> dict[str, str]:
    """reflectune's, the Python's and every library that shapes a result (vLLM when installed)."""
    from importlib import metadata

    found = dict(versions())
    for dist in ("accelerate", "datasets", "vllm"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    found.setdefault("cpu_count", str(os.cpu_count()))
    return found
