"""``reflectune judge``: flags -> ``judging.judge()``; W/T/L tables per test set and category."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reflectune.cli.display import finish, print_json, print_report
from reflectune.cli.options import (
    ORACLE,
    AllowInsecureHttp,
    ApiKeyEnv,
    AsJson,
    BaseUrl,
    BatchSize,
    Concurrency,
    Device,
    Dtype,
    ExtraBody,
    Header,
    MaxCost,
    PriceIn,
    PriceOut,
    Prompts,
    Quiet,
    RequestRules,
    RetryFailed,
    Rpm,
    RunDir,
    Timeout,
    Tpm,
    WriteReport,
    shared_values,
    warn_unknown_price,
    with_http,
)
from reflectune.config import JudgeConfig


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _tally_table(title: str, rows: dict[str, dict[str, Any]], name_a: str, name_b: str,
                 total: dict[str, Any] | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    for column in ("", "N", f"{name_a} wins", "tie", f"{name_b} wins", "winning score", "errors", "skipped"):
        table.add_column(column, justify="left" if not column else "right")

    def add(label: str, t: dict[str, Any], style: str = "") -> None:
        table.add_row(label, str(t["n"]), str(t["win"]), str(t["tie"]), str(t["lose"]),
                      _score(t["winning_score"]), f"[red]{t['errors']}[/red]" if t["errors"] else "0",
                      str(t["skipped"]), style=style)

    for label, tally in rows.items():
        add(label, tally)
    if total is not None:
        add("overall", total, style="bold")
    return table


def judge_command(
    answers_a: Path = typer.Argument(..., help="Answers of model A (generate output or AlpacaEval "
                                     "model_outputs.json)."),
    answers_b: Path = typer.Argument(..., help="Answers of model B."),
    judge: str = typer.Option(..., "--judge", "-j", help="Judge model: openai:MODEL (with --base-url for "
                              "any server) | hf:PATH | embedded."),
    mode: str = typer.Option("score", help="score: two 1-10 scores (papers) | pair-v2: MT-Bench "
                             "[[A]]/[[B]]/[[C]] verdict."),
    retry_unparsed: bool = typer.Option(False, help="Re-ask, once, reviews without a readable score "
                                        "line, with a reminder of the format."),
    max_tokens: int = typer.Option(1024, min=1, help="Judge tokens per review."),
    pair_by_id: bool = typer.Option(False, "--pair-by-id", help="Pair on (dataset, id) alone; by default "
                                    "a pair whose questions differ is an error."),
    run_dir: RunDir = None,
    report: Path | None = typer.Option(None, "-o", "--output", "--report", help="JSON report (default: "
                                       "judge.json in the run folder)."),
    chart: Path | None = typer.Option(None, help="PNG chart (default: next to the report)."),
    no_chart: bool = typer.Option(False, "--no-chart", help="Do not draw the chart."),
    name_a: str | None = typer.Option(None, help="Label of A (default: its 'generator')."),
    name_b: str | None = typer.Option(None, help="Label of B (default: its 'generator')."),
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = ORACLE.api_key_env,
    allow_insecure_http: AllowInsecureHttp = False,
    request_rules: RequestRules = ORACLE.request_rules,
    extra_body: ExtraBody = None,
    header: Header = None,
    timeout: Timeout = ORACLE.timeout,
    device: Device = None,
    dtype: Dtype = None,
    batch_size: BatchSize = ORACLE.batch_size,
    template: str | None = typer.Option(None, help="Local models: the prompt format, vicuna | alpaca | wiz | "
                                        "chat (default: the model's own, as reflectune train recorded "
                                        "it, else its chat template)."),
    concurrency: Concurrency = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_cost: MaxCost = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    retry_failed: RetryFailed = False,
    prompts: Prompts = None,
    by_category: bool = typer.Option(True, help="Also print the per-category table."),
    quiet: Quiet = False,
    html: WriteReport = True,
    as_json: AsJson = False,
) -> None:
    """Compare two answer files with a pairwise LLM judge, both orders (win/tie/lose, winning score)."""
    from reflectune.judging.rules import Mode
    from reflectune.judging.run import judge as run_judge

    console = Console(stderr=True)
    http = with_http(JudgeConfig, "judge", locals())
    warn_unknown_price(console, judge, locals())
    bar = Progress(TextColumn("judge"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                   transient=True, disable=quiet)
    task = bar.add_task("judge", total=None, info="")

    def on_progress(done: int, total: int, stats: Any) -> None:
        bar.update(task, completed=done, total=total,
                   info=f"calls {stats.sent} cached {stats.cached} failed {stats.failed}")

    with bar:
        result = run_judge(answers_a, answers_b, config=http, judge=judge, mode=cast(Mode, mode),
                           retry_unparsed=retry_unparsed,
                           max_tokens=max_tokens, run_dir=run_dir, report=report,
                           chart=False if no_chart else chart, name_a=name_a, name_b=name_b,
                           prompts_dir=prompts, template=template, progress=on_progress,
                           pair_by="id" if pair_by_id else "question", **shared_values(locals()))
    data = result.data
    a, b = data["a"]["name"], data["b"]["name"]
    out = console if as_json else Console()  # --json: stdout holds the one JSON object
    out.print(_tally_table(f"{a} vs {b} (judge {data['judge']}, {data['mode']}, both orders)",
                           data["by_dataset"], a, b, data["overall"]))
    if by_category:
        for dataset, categories in data["by_category"].items():
            out.print(_tally_table(f"{dataset} by category", categories, a, b))
    unmatched = data["unmatched"]
    if unmatched["a"] or unmatched["b"]:
        console.print(f"[yellow]unmatched[/yellow]: {unmatched['a']} item(s) of A and {unmatched['b']} of B "
                      "have no counterpart (by dataset+id or instruction); see the report.")
    dup, empty, neut = data["duplicates"], data["empty_answers"], data["neutralised"]
    if dup["a"] or dup["b"]:
        console.print(f"[yellow]duplicates[/yellow]: {dup['a']} row(s) of A and {dup['b']} of B repeat an "
                      "earlier item; only the first is judged.")
    if empty["a"] or empty["b"]:
        console.print(f"[red]empty answers[/red]: {empty['a']} of A and {empty['b']} of B; those items are "
                      "errors, not judged.")
    if neut["a"] or neut["b"] or neut["question"]:
        console.print(f"[yellow]neutralised[/yellow]: {neut['a']} answer(s) of A, {neut['b']} of B and "
                      f"{neut['question']} question(s) held judge-prompt headers (brackets replaced).")
    overall = data["overall"]
    if overall["errors"]:
        console.print(f"[red]{overall['errors']} item(s) could not be judged[/red] (unreadable review or "
                      "failed call; not counted as ties): see 'errors' in the report"
                      + ("" if retry_unparsed else "; --retry-unparsed re-asks unreadable reviews") + ".")
    if overall["skipped"]:
        console.print(f"[yellow]{overall['skipped']} item(s) skipped[/yellow]: a generation failed.")
    cost = data["cost_usd"]
    console.print(f"judge calls made {data['calls']['sent']:,}, from store {data['calls']['cached']:,}; "
                  f"cost {'unknown' if cost is None else f'${cost:.4f}'}; {data['elapsed_s']:.1f} s")
    console.print(f"report: {result.report_path}" + (f"\nchart:  {result.chart_path}" if result.chart_path
                                                       else "") + f"\nreviews: {result.judgments_path}")
    page = print_report(console, result.run_dir) if html else None
    if as_json:
        print_json("judge", {key: data[key] for key in ("a", "b", "judge", "mode", "overall", "by_dataset",
                                                        "calls", "cost_usd", "elapsed_s") if key in data},
                   exit_code=result.outcome.exit_code, run_dir=result.run_dir, output=result.report_path,
                   chart=result.chart_path, reviews=result.judgments_path, report=page)
    finish(console, result.outcome)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("judge")(judge_command)
