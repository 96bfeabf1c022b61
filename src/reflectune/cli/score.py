"""``reflectune score``: flags -> ``score()``, with a live progress bar and a summary table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reflectune.cli.display import print_json
from reflectune.cli.options import AsJson, Prompts, Quiet
from reflectune.io import parse_fields

STUDENT_HELP = "Student model: embedded | hf:PATH | a model folder | a .gguf file."


@contextmanager
def score_progress(console: Console, quiet: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar fed by ``score()``'s callback (None when quiet)."""
    if quiet:
        yield None
        return
    bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]} tok/s  computed {task.fields[computed]:,}  "
                              "cached {task.fields[cached]:,}"),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task("score", total=None, rate="-", computed=0, cached=0)

    def update(p: Any) -> None:
        bar.update(task, completed=int(p.samples_done), total=p.samples_total,
                   rate=f"{p.tokens_per_s:,.0f}", computed=p.computed, cached=p.cached)

    with bar:
        yield update


def score_table(manifest: dict[str, Any]) -> Table:
    table = Table(title="score summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("student", f"{manifest['student']} ({manifest['fingerprint']})")
    table.add_row("template / max length / dtype",
                  f"{manifest['template']} / {manifest['max_length']} / {manifest['dtype']}")
    table.add_row("samples", f"{manifest['samples']:,}")
    table.add_row("candidates scored", f"{manifest['candidates']:,}")
    if manifest.get("unavailable"):
        table.add_row("failed variants (not scored)", f"{manifest['unavailable']:,}")
    table.add_row("computations run / from store", f"{manifest['computed']:,} / {manifest['cached']:,}")
    nan = manifest["nan"]
    rifd = f"r-IFD {nan['rifd']:,}" if manifest.get("rifd", True) else "r-IFD not computed"
    table.add_row("NaN (no target token left)", f"{nan['candidates']:,} candidates "
                  f"(IFD {nan['ifd']:,}, {rifd})")
    table.add_row("tokens / tokens per s", f"{manifest['tokens']:,} / {manifest['tokens_per_s']:,.0f}")
    table.add_row("wall time", f"{manifest['seconds']:.1f} s")
    return table


def score_command(
    source: Path = typer.Argument(..., help="A recycle run folder (scores ori, Q, A, QA) or a dataset "
                                  "file (scores ori only: Cherry mode)."),
    student: str = typer.Option("embedded", help=STUDENT_HELP),
    template: str = typer.Option("vicuna", help="Student prompt: vicuna | alpaca | wiz | chat."),
    max_length: int = typer.Option(2048, help="Tokens per sequence; the target is cut, never the prompt."),
    batch_tokens: int = typer.Option(8192, help="Padded tokens per forward pass."),
    dtype: str | None = typer.Option(None, help="bfloat16 | float16 | float32 (default: bf16 on GPUs and on "
                                                "CPUs with native bf16, else float32)."),
    device: str | None = typer.Option(None, help="cpu | cuda | mps (default: auto)."),
    backend: str = typer.Option("hf", help="hf (transformers) | vllm (CUDA GPU, pip install "
                                 "reflectune[vllm]; untested)."),
    threads: int | None = typer.Option(None, help="CPU threads (default: one per core; fewer can be "
                                       "faster on a busy shared machine)."),
    rifd: bool | None = typer.Option(None, "--rifd/--no-rifd", help="Also compute r-IFD (default: yes for a "
                                     "run folder; no for a dataset, ranked by IFD alone: half the work)."),
    run_dir: Path | None = typer.Option(None, help="Run folder for a dataset source "
                                        "(default runs/<stem>-<student>-score)."),
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    prompts: Prompts = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Score IFD and r-IFD of every candidate with a student model (resumable)."""
    from reflectune.errors import Interrupted
    from reflectune.scoring.run import score

    console = Console(stderr=True)
    try:
        with score_progress(console, quiet) as update:
            summary = score(source, student=student, template=template, max_length=max_length,
                            batch_tokens=batch_tokens, dtype=dtype, device=device, backend=backend,
                            threads=threads, rifd=rifd, run_dir=run_dir,
                            fields=parse_fields(fields) if fields else None, prompts_dir=prompts,
                            progress=update)
    except Interrupted as exc:  # a signal: one line (no "error:"), exit 128 + its number
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None
    console.print(score_table(summary.manifest))
    console.print(f"scores: {summary.scores}\nrun:    {summary.run_dir}")
    if as_json:
        print_json("score", summary)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("score")(score_command)
