"""``reflectune decontaminate``: flags -> ``decontaminate()``, then a table of what was dropped."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from reflectune.cli.display import print_json
from reflectune.cli.options import AsJson, Quiet
from reflectune.config import DecontaminateConfig
from reflectune.io import parse_fields

_DEFAULTS = DecontaminateConfig()


def decontaminate_command(
    data: Path = typer.Argument(..., help="The training dataset (any format reflectune reads)."),
    against: str = typer.Option(_DEFAULTS.against, "--against", help="all (the five packaged test sets), "
                                "their names and prompt files (a JSON/JSONL with an instruction field, "
                                "e.g. AlpacaEval's 805), comma-separated."),
    output: Path | None = typer.Option(None, "-o", "--output", help="The kept rows; the extension picks the "
                                       "format (default: <run>/decontaminated.<input format>)."),
    rejects: Path | None = typer.Option(None, "--rejects", help="Dropped rows as JSON lines, each with the "
                                        "test item it matches (default: <run>/contaminated.jsonl)."),
    ngram: int = typer.Option(_DEFAULTS.ngram, "--ngram", min=1, help="Words per n-gram "
                              "(lm-evaluation-harness: 13)."),
    min_shared: int = typer.Option(_DEFAULTS.min_shared, "--min-shared", min=1, help="N-grams a row must "
                                   "share with one test prompt to be dropped."),
    short_coverage: float = typer.Option(_DEFAULTS.short_coverage, "--short-coverage", help="A prompt "
                                         "shorter than --ngram words matches an instruction holding it "
                                         "whole when it is at least this share of its words."),
    run_dir: Path | None = typer.Option(None, help="Run folder for run.json (default: "
                                        "runs/<stem>-decontaminate)."),
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    output_format: str | None = typer.Option(None, help="json | jsonl | parquet | csv | hf_disk."),
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Drop the training rows that are test prompts (word 13-gram overlap, as lm-evaluation-harness)."""
    from reflectune.decontamination.run import decontaminate

    summary = decontaminate(data, output, against=against, rejects=rejects, ngram=ngram,
                            min_shared=min_shared, short_coverage=short_coverage, run_dir=run_dir,
                            fields=parse_fields(fields) if fields else None, output_format=output_format)
    if not quiet:
        console = Console(stderr=True)
        table = Table(title=f"decontaminate summary ({summary.manifest['test_prompts']:,} test prompts)")
        table.add_column("what")
        table.add_column("rows", justify="right")
        table.add_row("rows in", f"{summary.samples:,}")
        for name, count in summary.by_testset.items():
            table.add_row(f"dropped: {name}", f"{count:,}")
        table.add_row("kept", f"{summary.kept:,}", style="bold")
        console.print(table)
        console.print(f"output:  {summary.output}\nrejects: {summary.rejects}\nrun:     {summary.run_dir}",
                      markup=False, highlight=False)
    if as_json:
        print_json("decontaminate", summary)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("decontaminate")(decontaminate_command)
