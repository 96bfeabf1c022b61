"""``reflectune generate``: flags -> ``generation.generate()``, with a progress bar and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from reflectune.cli.display import finish, print_json
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
    Quiet,
    RequestRules,
    RetryFailed,
    Rpm,
    RunDir,
    Timeout,
    Tpm,
    shared_values,
    warn_unknown_price,
    with_http,
)
from reflectune.config import GenerateConfig


def generate_command(
    output: Path | None = typer.Option(None, "-o", "--output", help="Answers file: .jsonl (default) or "
                                       ".json (a JSON array). Default: in the run folder."),
    model: str = typer.Option("embedded", "--model", "-m", help="embedded | hf:PATH (HF folder or .gguf; "
                              "a bare path works) | openai:MODEL (with --base-url for any server)."),
    testset: str = typer.Option("all", help="all | vicuna | koala | wizardlm | sinstruct | lima, or a "
                                "comma-separated list."),
    prompts_file: Path | None = typer.Option(None, help="Any JSONL/JSON array of prompts instead of "
                                             "the test sets."),
    fields: str | None = typer.Option(None, help="Columns of --prompts-file, e.g. "
                                      "instruction=question,id=qid,category=cat,input=context."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N prompts of each set."),
    run_dir: RunDir = None,
    generator: str | None = typer.Option(None, help="The 'generator' name in each row (default: the "
                                         "model's name)."),
    alpaca_eval: bool = typer.Option(False, "--alpaca-eval", help="Write AlpacaEval's model_outputs.json "
                                     "(a JSON array)."),
    max_tokens: int = typer.Option(1024, min=1, help="Max new tokens per answer (papers: 1,024)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (papers)."),
    top_p: float = typer.Option(1.0),
    seed: int | None = typer.Option(None),
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
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Answer the papers' test sets (or any prompts file) with a model: greedy, 1,024 new tokens."""
    from reflectune.generation.run import generate

    console = Console(stderr=True)
    http = with_http(GenerateConfig, "model", locals())
    warn_unknown_price(console, model, locals())
    bar = Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                   transient=True, disable=quiet)
    task = bar.add_task("generate", total=None, info="")

    def on_progress(done: int, total: int, stats: Any) -> None:
        bar.update(task, completed=done, total=total,
                   info=f"new {stats.sent} cached {stats.cached} failed {stats.failed}")

    with bar:
        summary = generate(output, model=model, testset=testset, prompts_file=prompts_file, fields=fields,
                           limit=limit, run_dir=run_dir, generator=generator, alpaca_eval=alpaca_eval,
                           max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                           template=template, progress=on_progress, config=http, **shared_values(locals()))
    table = Table(title=f"generate: {summary.generator}", header_style="bold")
    table.add_column("test set")
    table.add_column("answers", justify="right")
    for name, count in summary.by_dataset.items():
        table.add_row(name, f"{count:,}")
    stats = summary.stats
    table.add_row("[bold]total", f"[bold]{summary.rows:,}")
    console.print(table)
    cost = f"${stats['cost']:.4f}" if stats.get("cost_known") else "unknown (no price for this model)"
    console.print(f"calls made {stats['sent']:,}, from store {stats['cached']:,}, failed {summary.failed:,}, "
                  f"cut at --max-tokens {summary.truncated:,}; tokens {stats['prompt_tokens']:,} in / "
                  f"{stats['completion_tokens']:,} out; cost {cost}; {summary.elapsed_s:.1f} s")
    console.print(f"output: {summary.output}\nrun:    {summary.run_dir}")
    if summary.alpaca_eval_command:
        console.print(f"AlpacaEval: {summary.alpaca_eval_command}")
    if summary.failed:
        for error in summary.errors[:5]:
            console.print(f"[red]failed[/red] {error['dataset']}/{error['id']}: {error['error']}")
        console.print(f"[red]{summary.failed} generation(s) failed[/red]: written with an empty output and "
                      "an 'error' field (the judge skips them).")
    if as_json:
        print_json("generate", summary, exit_code=summary.outcome.exit_code)
    finish(console, summary.outcome)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("generate")(generate_command)
