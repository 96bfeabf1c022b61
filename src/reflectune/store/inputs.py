"""What a stage consumed: content hashes of a run folder's files and of datasets.

A stage records these in its run.json section so that a later stage (or the pipeline) can tell
stale outputs from fresh ones by content, not by timestamps or file names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from reflectune.contracts import VARIANTS_FILE

__all__ = ["file_sha256", "input_hashes", "is_run_folder"]


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """A recycle run folder: has ``variants.jsonl``."""
    return (Path(path) / VARIANTS_FILE).is_file()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes; of a folder (a ``save_to_disk`` dataset), of its files' names and bytes."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_hashes(source: str | os.PathLike[str]) -> dict[str, str]:
    """What ``score`` consumed, as run.json's ``score.inputs`` records it: ``{"variants": sha256}`` for
    a run folder, ``{"dataset": sha256}`` for a dataset source."""
    src = Path(source)
    if is_run_folder(src):
        return {"variants": file_sha256(src / VARIANTS_FILE)}
    return {"dataset": file_sha256(src)}
