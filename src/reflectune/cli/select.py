"""``reflectune select``: flags -> ``select()``, then an outcome table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from reflectune.cli.display import print_json, print_report
from reflectune.cli.options import AsJson, Quiet, WriteReport
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
    top_k: str | None = typer.Option(None, "--top-k", help="Then keep the top k by IFD: a percentage (5%, "
                                     "0.5%) of the rows that passed the rule (Cherry mode: of all scored "
                                     "rows), rounded down (5% of 30 rows keeps 1), or a row count (1000)."),
    ifd_top_k: str | None = typer.Option(None, "--ifd-top-k", help="Same as --top-k (Cherry-mode name)."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="A selection that keeps no row writes an "
                                     "empty output and warns, instead of failing (exit 1) with the reason."),
    below_one_filter: bool = typer.Option(True, "--below-one-filter/--no-below-one-filter",
                                          help="Keep only pairs with IFD < 1 and r-IFD < 1."),
    metric: str = typer.Option("ppl_ratio", help="ppl_ratio: exp(L_cond - L_direct) | loss_ratio: "
                               "L_cond / L_direct (Cherry LLM's)."),
    run_dir: Path | None = typer.Option(None, help="Cherry mode: the run folder score wrote to."),
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    output_format: str | None = typer.Option(None, help="json | jsonl | parquet | csv | hf_disk."),
    quiet: Quiet = False,
    html: WriteReport = True,
    as_json: AsJson = False,
) -> None:
    """Keep the pairs that suit the student (Selective Reflection-Tuning), optionally the top-k."""
    from reflectune.selection.run import select

    if top_k is not None and ifd_top_k is not None and top_k != ifd_top_k:
        raise ConfigError("give --top-k or --ifd-top-k, not both")
    console = Console(stderr=True)
    summary = select(source, output, top_k=top_k or ifd_top_k, below_one_filter=below_one_filter,
                     metric=metric, run_dir=run_dir, fields=parse_fields(fields) if fields else None,
                     output_format=output_format, allow_empty=allow_empty or None)
    console.print(outcome_table(summary.manifest))
    console.print(f"output: {summary.output} ({summary.kept:,} rows)\nrun:    {summary.run_dir}")
    if summary.empty_reason is not None:
        console.print(f"warning: kept no row: {summary.empty_reason}; wrote an empty {summary.output} "
                      "(--allow-empty)", style="yellow", soft_wrap=True, markup=False)
    page = print_report(console, summary.run_dir, medians=True) if html else None
    if as_json:
        print_json("select", summary, report=page)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("select")(select_command)
