"""Rich renderings shared by commands: the live recycle display and the final summary."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from reflectune.contracts import PREFERENCE


def _eta(done: int, total: int | None, elapsed: float) -> str:
    if not total or done == 0 or done >= total:
        return "-"
    seconds = elapsed / done * (total - done)
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def progress_table(progress: Any, stats: Any, elapsed: float) -> Table:
    """One compact line of live figures: rows, rate, tokens/s, cost, failures, ETA."""
    elapsed = max(elapsed, 1e-6)
    total = progress.total
    tokens = stats.prompt_tokens + stats.completion_tokens
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("rows", "rows/s", "tokens/s", "calls", "cached", "in flight", "retries",
                   "failed", "cost", "ETA"):
        table.add_column(column, justify="right")
    pct = f" ({100 * progress.done / total:.0f}%)" if total else ""
    table.add_row(f"{progress.done:,}/{total:,}{pct}" if total else f"{progress.done:,}",
                  f"{progress.done / elapsed:.1f}", f"{tokens / elapsed:,.0f}", f"{stats.sent:,}",
                  f"{stats.cached:,}", f"{stats.in_flight}", f"{stats.retries}", f"{stats.failed}",
                  f"${stats.cost:.4f}" if stats.cost_known else "n/a",
                  _eta(progress.done, total, elapsed))
    return table


def summary_table(summary: Any) -> Table:
    table = Table(title="recycle summary", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("rows written", f"{summary.rows:,}")
    for name in PREFERENCE:
        if summary.chosen.get(name):
            table.add_row(f"  kept {name}", f"{summary.chosen[name]:,}")
    if summary.passthrough:
        table.add_row("  multi-turn kept unchanged", f"{summary.passthrough:,}")
    if summary.rejected:
        table.add_row("rejected rows", f"{summary.rejected:,}")
    for key, count in summary.variant_status.items():
        variant, status = key.split(":")
        if variant != "ori":
            table.add_row(f"variant {variant} {status}", f"{count:,}")
    for gate, count in getattr(summary, "gates", {}).items():
        table.add_row(f"  rejected by gate {gate}", f"{count:,}")
    verify = getattr(summary, "verify", None)
    if verify:
        for outcome, count in verify["verdicts"].items():
            table.add_row(f"judge verdicts: {outcome}", f"{count:,}")
        judge = verify["judge"]
        table.add_row("judge calls made / from store", f"{judge['sent']:,} / {judge['cached']:,}")
        cost = verify.get("cost_usd")
        table.add_row("judge cost", "unknown (no price for this model)" if cost is None else f"${cost:.4f}")
    stats = summary.stats
    table.add_row("oracle calls made", f"{stats['sent']:,}")
    table.add_row("answered from store", f"{stats['cached']:,}")
    table.add_row("failed calls (this run)", f"{stats['failed']:,}")
    table.add_row("calls still failed", f"{summary.outcome.failed_calls:,}")
    table.add_row("retries", f"{stats['retries']:,}")
    table.add_row("tokens in / out", f"{stats['prompt_tokens']:,} / {stats['completion_tokens']:,}")
    if stats.get("reasoning_tokens"):  # a part of the tokens out, shown apart
        table.add_row("  of which reasoning", f"{stats['reasoning_tokens']:,}")
    cost = stats.get("cost_usd")
    table.add_row("cost", "unknown (no price for this model)" if cost is None else f"${cost:.4f}")
    table.add_row("wall time", f"{summary.elapsed_s:.1f} s")
    return table


def retry_command(add_retry_failed: bool) -> str:
    """The command line that was run, as a user would type it again (with ``--retry-failed``)."""
    args = list(sys.argv[1:])
    if add_retry_failed and "--retry-failed" not in args:
        args.append("--retry-failed")
    return " ".join(["reflectune", *(shlex.quote(a) for a in args)])


def finish(console: Console, outcome: Any) -> None:
    """The one exit rule, said aloud: what failed and why, the command that retries it, exit 1.

    ``outcome`` is a stage's ``RunOutcome``; a run that did what was asked returns quietly.
    """
    if outcome.ok:
        return
    if outcome.failed_calls:
        console.print(f"[red]{outcome.failed_calls:,} call(s) failed[/red]; the rows they belong to keep "
                      "their original text or an error field:")
        for kind, (count, example) in outcome.failures.items():
            console.print(f"  {count:,} x {kind}: {example}", soft_wrap=True, markup=False)
        if outcome.needs_retry_failed:
            console.print("some failures are final (the same request fails the same way); "
                          f"to ask them again: {retry_command(True)}", soft_wrap=True)
        else:
            console.print("fix the cause, then rerun (the failed calls are asked again): "
                          f"{retry_command(False)}", soft_wrap=True)  # one line, to copy whole
    if not outcome.produced:
        console.print(f"[red]nothing was produced[/red] (0 {outcome.unit})")
    raise typer.Exit(outcome.exit_code)


def print_report(console: Console, folder: Any, *, medians: bool = False) -> str | None:
    """Write the folder's report.html and print its path (and, for recycle and select, the
    before/after medians). The stage already succeeded: a report that cannot be written is a warning,
    never a changed exit code."""
    from reflectune.errors import ReflectuneError
    from reflectune.report import report

    try:
        result = report(folder)
    except (ReflectuneError, OSError) as exc:
        console.print(f"[yellow]report not written[/yellow]: {exc}", soft_wrap=True)
        return None
    if medians:
        for line in result.summary:
            console.print(line)
    console.print(f"report:   {result.path}", soft_wrap=True)
    return str(result.path)


def _plain(value: Any) -> Any:
    """A summary as JSON-ready values: dataclasses and pydantic models as dicts, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def print_json(command: str, summary: Any, *, exit_code: int = 0, **extra: Any) -> None:
    """``--json``: the command's summary as one JSON object on stdout (the tables went to stderr).

    It carries the exit code the command is about to return, so a script reads one object whether
    the run succeeded or failed some calls."""
    body = {"command": command, "exit_code": exit_code, **_plain(summary), **_plain(extra)}
    sys.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
    sys.stdout.flush()
