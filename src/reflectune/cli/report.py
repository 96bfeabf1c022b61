"""``reflectune report``: the HTML page of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from reflectune.cli.options import Quiet


def report_command(
    run_dir: Path = typer.Argument(..., help="A recycle, score/select or judge run folder, or a pipeline "
                                   "folder (reflectune run)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="The HTML file (default: "
                                       "RUN_DIR/report.html)."),
    tokens: bool = typer.Option(True, "--tokens/--words", help="Count lengths in the scoring student's "
                                "tokens (as the papers do) or in words."),
    quiet: Quiet = False,
) -> None:
    """Write one self-contained HTML page of what the run did: counts, the papers' table, histograms,
    selection outcomes, judge results, and a sample browser with word-level diffs."""
    from reflectune.report import report

    console = Console(stderr=True)
    result = report(run_dir, output, tokens=tokens)
    if not quiet:
        for note in result.notes:
            console.print(f"note: {note}", soft_wrap=True)
        for line in result.summary:
            console.print(line)
        console.print(f"{result.samples:,} samples, {result.judgments:,} judgments; "
                      f"{result.bytes / 1e6:.2f} MB in {result.seconds:.1f} s")
    typer.echo(str(result.path))


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("report")(report_command)
