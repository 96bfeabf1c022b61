"""``reflectune score``: flags -> ``score()``, with a live progress bar and a summary table; ``--dry-run``
-> ``plan_score()``: the work counted and timed, nothing written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reflectune.cli.display import print_json
from reflectune.cli.options import AsJson, Prompts, Quiet
from reflectune.errors import ConfigError
from reflectune.io import parse_fields

if TYPE_CHECKING:
    from reflectune.scoring.plan import ScorePlan

STUDENT_HELP = "Student model: embedded | hf:PATH | a model folder | a .gguf file."


@contextmanager
def score_progress(console: Console, quiet: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar fed by ``score()``'s callback (None when quiet).

    The bar starts at the first report, which ``score()`` sends once its checks have passed: an option
    it refuses is then one line on stderr, with no blank line the bar would leave."""
    if quiet:
        yield None
        return
    bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]} tok/s  computed {task.fields[computed]:,}  "
                              "cached {task.fields[cached]:,}"),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task("score", total=None, rate="-", computed=0, cached=0)
    started = False

    def update(p: Any) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=int(p.samples_done), total=p.samples_total,
                   rate=f"{p.tokens_per_s:,.0f}", computed=p.computed, cached=p.cached)

    try:
        yield update
    finally:
        if started:
            bar.stop()


def score_table(manifest: dict[str, Any]) -> Table:
    table = Table(title="score summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("student", f"{manifest['student']} ({manifest['fingerprint']})")
    table.add_row("template / max length / dtype",
                  f"{manifest['template']} / {manifest['max_length']} / {manifest['dtype']}"
                  + (f" ({manifest['dtype_reason']})" if manifest.get("dtype_reason") else ""))
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


def plan_table(plan: ScorePlan) -> Table:
    """The dry run's table: the setup, the work as the run will count it, and the time it would take."""
    mode = "run folder: ori, Q, A, QA" if plan.mode == "variants" else "Cherry mode: ori only"
    table = Table(title=f"dry run: score {plan.source} ({mode})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    folder = "" if plan.run_dir_exists else " (not created by the dry run)"
    table.add_row("run folder", f"{plan.run_dir}{folder}")
    table.add_row("student", f"{plan.student} ({plan.fingerprint})")
    table.add_row("template / max length / batch tokens",
                  f"{plan.template} / {plan.max_length:,} / {plan.batch_tokens:,}")
    table.add_row("samples", f"{plan.samples:,}")
    table.add_row("candidates", f"{plan.candidates:,} x {4 if plan.rifd else 2} losses "
                  f"({'IFD and r-IFD' if plan.rifd else 'IFD only'})")
    if plan.unavailable:
        table.add_row("failed variants (not scored)", f"{plan.unavailable:,}")
    table.add_row("computations: new / from store", f"{plan.new:,} / {plan.from_store:,}")
    if plan.empty_targets:
        table.add_row("no target token left (NaN, not run)", f"{plan.empty_targets:,}")
    table.add_row("store", plan.store_line())
    table.add_row("tokens to compute", f"{plan.tokens:,} ({plan.padded_tokens:,} padded, "
                  f"{plan.batches:,} batches)")
    table.add_row("device / dtype", f"{plan.device} / {plan.dtype} ({plan.dtype_reason})")
    table.add_row("time (compute)", plan.estimate())
    if plan.probe is not None:
        table.add_row("probe", plan.probe.describe())
        table.add_row("model load", f"{plan.probe.load_seconds:.1f} s (not in the estimate)")
    for note in plan.notes:
        table.add_row("note", note)
    return table


def score_command(
    source: Path = typer.Argument(..., help="A recycle run folder (scores ori, Q, A, QA) or a dataset "
                                  "file (scores ori only: Cherry mode)."),
    student: str = typer.Option("embedded", help=STUDENT_HELP),
    template: str = typer.Option("vicuna", help="Student prompt: vicuna | alpaca | wiz | chat."),
    max_length: int = typer.Option(2048, help="Tokens per sequence; the target is cut, never the prompt."),
    batch_tokens: int = typer.Option(8192, help="Padded tokens per forward pass."),
    dtype: str | None = typer.Option(None, help="bfloat16 | float16 | float32 (default: float32 on CPUs, "
                                                "exact: bf16 changed which rows a top-k keeps; half "
                                                "precision on GPUs)."),
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
    split: str | None = typer.Option(None, help="The split to score of a DatasetDict save_to_disk folder "
                                     "(needed when it has several)."),
    prompts: Prompts = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count the computations and tokens (with the real "
                                 "tokenizer) and estimate the time from a short measured probe; write "
                                 "nothing."),
    no_probe: bool = typer.Option(False, "--no-probe", help="--dry-run without loading the student: counts "
                                  "only, no time estimate."),
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Score IFD and r-IFD of every candidate with a student model (resumable)."""
    from reflectune.errors import Interrupted
    from reflectune.scoring.run import score

    console = Console(stderr=True)
    options: dict[str, Any] = {
        "student": student, "template": template, "max_length": max_length, "batch_tokens": batch_tokens,
        "dtype": dtype, "device": device, "backend": backend, "threads": threads, "rifd": rifd,
        "fields": parse_fields(fields) if fields else None, "prompts_dir": prompts, "split": split}
    if no_probe and not dry_run:
        raise ConfigError("--no-probe is a --dry-run option: add --dry-run")
    if dry_run:
        from reflectune.scoring.plan import plan_score

        plan = plan_score(source, run_dir=run_dir, probe=not no_probe, **options)
        console.print(plan_table(plan))
        if as_json:
            print_json("score", plan, dry_run=True)
        return
    try:
        with score_progress(console, quiet) as update:
            summary = score(source, run_dir=run_dir, progress=update, **options)
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
