"""``reflectune run pipeline.yaml``: the whole method from one file, then the stage table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from reflectune.cli.display import print_report
from reflectune.cli.options import Quiet, WriteReport

_ACTION_STYLE = {"run": "bold", "up to date": "green", "off": "dim", "outside": "dim"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _plan_table(rows: list[Any]) -> Table:
    table = Table(title="pipeline plan (dry run: nothing is called or written)")
    for column in ("stage", "action", "rows", "work", "cost", "time"):
        table.add_column(column, justify="right" if column in ("rows", "cost", "time") else "left")
    for row in rows:
        action = row.action + (f" ({row.why})" if row.action == "run" and row.why else "")
        table.add_row(row.stage, action, row.rows, "\n".join(row.details) or "-",
                      "-" if row.cost is None else f"${row.cost:,.2f}",
                      "-" if row.seconds is None else f"~{_duration(row.seconds)}",
                      style=_ACTION_STYLE.get(row.action))
    return table


def stage_table(result: Any) -> Table:
    table = Table(title=f"pipeline {result.run_dir}")
    for column in ("stage", "status", "rows", "work", "cost", "time"):
        table.add_column(column, justify="right" if column in ("rows", "cost", "time") else "left")
    for stage in result.stages:
        work = f"{stage.made:,} {stage.unit} new, {stage.reused:,} reused" if stage.unit else "-"
        status = stage.status + (f": {stage.message}" if stage.message else "")
        table.add_row(stage.name, status, "-" if stage.rows is None else f"{stage.rows:,}", work,
                      "-" if stage.cost is None else f"${stage.cost:,.4f}",
                      _duration(stage.seconds) if stage.status in ("ran", "failed") else "-",
                      style={"failed": "red", "skipped": "green", "off": "dim", "outside": "dim"}.get(
                          stage.status))
    return table


def run_command(
    pipeline: Path = typer.Argument(..., help="The pipeline file (YAML): one section per stage."),
    start: str | None = typer.Option(None, "--from", help="Start at this stage (earlier ones are not "
                                     "run; their recorded outputs are read)."),
    until: str | None = typer.Option(None, "--until", help="Stop after this stage."),
    only: str | None = typer.Option(None, "--only", help="Run this stage alone."),
    overrides: list[str] = typer.Option([], "--set", help="KEY.PATH=VALUE over the file (repeatable), e.g. "
                                        "--set select.top_k=10%; recorded in the lineage like the file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan: stages, rows, calls, tokens, "
                                 "cost and (local models) a time estimate from a short probe."),
    no_probe: bool = typer.Option(False, "--no-probe", help="--dry-run without loading local models."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan or the result as JSON."),
    quiet: Quiet = False,
    html: WriteReport = True,
) -> None:
    """Run recycle -> score -> select -> train -> generate -> judge from one file, resuming."""
    from reflectune.pipeline import load_run_config, run

    config = load_run_config(pipeline, overrides)
    out = Console()
    err = Console(stderr=True)
    if dry_run:
        from reflectune.pipeline.plan import format_plan, plan

        rows = plan(config, start=start, until=until, only=only, probe=not no_probe)
        if as_json:
            typer.echo(json.dumps(format_plan(rows), indent=2))
        else:
            out.print(_plan_table(rows))
            costs = [row.cost for row in rows if row.cost is not None]
            if costs:
                out.print(f"paid calls: ~${sum(costs):,.2f} in all (recycle's expected, the judge's at most)")
            out.print(f"pipeline folder: {config.run_dir}")
        return

    def on_event(event: dict[str, Any]) -> None:
        if quiet:
            return
        if event.get("event") == "stage":
            if event["status"] == "running":
                err.print(f"[bold]{event['stage']}[/bold]: running ({event.get('reason', '')})")
            elif event["status"] == "skipped":
                err.print(f"[green]{event['stage']}[/green]: up to date, skipped")
        elif event.get("event") == "note":
            err.print(f"note: {event['message']}")

    result = run(config, start=start, until=until, only=only, on_event=on_event)
    page = print_report(err if not quiet else Console(stderr=True, quiet=True), result.run_dir) if html \
        else None
    if as_json:
        typer.echo(json.dumps({"run_dir": str(result.run_dir), "exit_code": result.exit_code, "report": page,
                               "verdict": result.verdict, "seconds": result.seconds,
                               "stages": [s.__dict__ for s in result.stages]}, indent=2, default=str))
    else:
        out.print(stage_table(result))
        if result.verdict:
            v = result.verdict
            score = v.get("winning_score")
            out.print(f"judge: trained vs baseline: {v['win']} win / {v['tie']} tie / {v['lose']} lose"
                      + (f", winning score {score:.3f}" if score is not None else ""))
        out.print(f"lineage: {result.manifest}   ({result.seconds:,.0f} s)")
    failed = next((s for s in result.stages if s.status == "failed"), None)
    if failed is not None:
        err.print(f"error: {failed.name}: {failed.message}; fix it, then rerun: reflectune run {pipeline}",
                  soft_wrap=True)
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("run")(run_command)
