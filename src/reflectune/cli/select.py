"""``reflectune select``: flags -> ``select()``, then an outcome table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from reflectune.cli.display import print_report
from reflectune.cli.options import WriteReport
from reflectune.errors import ConfigError
from reflectune.io import parse_fields

_OUTCOME_LABELS = {"both": "both reflected", "instruction": "instruction only",
                   "response": "response only", "none": "none"}


def outcome_table(manifest: dict[str, Any]) -> Table:
    table = Table(title=f"select summary ({manifest['mode']} mode, metric {manifest['metric']})")
    table.add_column("what")
    table.add_column("samples", justify="right")
    table.add_row("samples", f"{manifest['samples']:,}")
    if manifest["mode"] == "variants":
        for key, label in _OUTCOME_LABELS.items():
            table.add_row(f"  {label}", f"{manifest['outcomes'][key]:,}")
    for reason, count in manifest["dropped"].items():
        table.add_row(f"dropped: {reason}", f"{count:,}")
    table.add_row("kept", f"{manifest['kept']:,}", style="bold")
    return table


def select_command(
    source: Path = typer.Argument(..., help="A recycle run folder, or a dataset file (Cherry mode)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Selected dataset; the extension picks "
                                       "the format (default: <run>/selected.<input format>)."),
    top_k: str | None = typer.Option(None, "--top-k", help="Then keep the top k by IFD: 5% or 1000."),
    ifd_top_k: str | None = typer.Option(None, "--ifd-top-k", help="Same as --top-k (Cherry-mode name)."),
    below_one_filter: bool = typer.Option(True, "--below-one-filter/--no-below-one-filter",
                                          help="Keep only pairs with IFD < 1 and r-IFD < 1."),
    metric: str = typer.Option("ppl_ratio", help="ppl_ratio: exp(L_cond - L_direct) | loss_ratio: "
                               "L_cond / L_direct (Cherry LLM's)."),
    run_dir: Path | None = typer.Option(None, help="Cherry mode: the run folder score wrote to."),
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    output_format: str | None = typer.Option(None, help="json | jsonl | parquet | csv | hf_disk."),
    quiet: bool = typer.Option(False, "-q", help="Accepted for symmetry with the other commands; select "
                               "draws no progress."),
    html: WriteReport = True,
) -> None:
    """Keep the pairs that suit the student (Selective Reflection-Tuning), optionally the top-k."""
    from reflectune.selection.run import select

    if top_k is not None and ifd_top_k is not None and top_k != ifd_top_k:
        raise ConfigError("give --top-k or --ifd-top-k, not both")
    console = Console(stderr=True)
    summary = select(source, output, top_k=top_k or ifd_top_k, below_one_filter=below_one_filter,
                     metric=metric, run_dir=run_dir, fields=parse_fields(fields) if fields else None,
                     output_format=output_format)
    console.print(outcome_table(summary.manifest))
    console.print(f"output: {summary.output} ({summary.kept:,} rows)\nrun:    {summary.run_dir}")
    if html:
        print_report(console, summary.run_dir, medians=True)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("select")(select_command)
