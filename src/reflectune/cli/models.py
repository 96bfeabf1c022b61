"""`reflectune models`: show what ``models.catalog`` finds (the embedded model, the cache, local
models), as a table or ``--json``. Listing only: nothing is loaded or downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reflectune.models.catalog import discover_models, embedded_status, size_of
from reflectune.models.source import cache_dir

__all__ = ["register"]


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
        head.add_row("  GGUF", f"{embedded['gguf']}  {_human(size_of(Path(embedded['gguf'])))}  "
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
