"""``reflectune recycle``: flags -> ``RecycleConfig`` -> ``recycle()``, with a live display."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from reflectune.cli.display import progress_table, summary_table
from reflectune.config import EngineConfig, OracleConfig, RecycleConfig, SamplingConfig
from reflectune.errors import ConfigError
from reflectune.io import parse_fields


def build_config(**o: Any) -> RecycleConfig:
    """CLI values -> a validated config; pydantic's message becomes a one-line ConfigError."""
    try:
        return RecycleConfig(
            oracle=OracleConfig(spec=o["oracle"], base_url=o["base_url"], api_key_env=o["api_key_env"],
                                timeout=o["timeout"], context=o["context"], device=o["device"],
                                dtype=o["dtype"], batch_size=o["batch_size"]),
            sampling=SamplingConfig(temperature=o["temperature"], top_p=o["top_p"],
                                    max_tokens=o["max_tokens"], seed=o["seed"],
                                    critique_tokens=o["critique_tokens"]),
            engine=EngineConfig(concurrency=o["concurrency"], rpm=o["rpm"], tpm=o["tpm"],
                                max_attempts=o["max_attempts"], max_failure_rate=o["max_failure_rate"],
                                max_cost=o["max_cost"], retry_failed=o["retry_failed"],
                                price_in=o["price_in"], price_out=o["price_out"]),
            phases=tuple(p.strip() for p in o["phases"].split(",") if p.strip()),
            input_merge=o["input_merge"], prompts_dir=o["prompts"],
            fields=parse_fields(o["fields"]) if o["fields"] else {},
            limit=o["limit"], output_format=o["output_format"], on_bad_record=o["on_bad_record"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid option {where}: {first['msg']}") from None


def recycle_command(
    input: Path = typer.Argument(..., help="Dataset: Alpaca JSON, JSONL, ShareGPT, Parquet, CSV, or a "
                                 "save_to_disk folder."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Recycled dataset (default: in the "
                                       "run folder, in the input's format)."),
    oracle: str = typer.Option("embedded", help="embedded | openai:MODEL | hf:PATH | fake."),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint, e.g. "
                                        "http://localhost:8000/v1 (vLLM)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    run_dir: Path | None = typer.Option(None, help="Run folder; rerunning the same command resumes it."),
    phases: str = typer.Option("instruction,response", help="instruction, response, or both."),
    input_merge: str = typer.Option("oracle", help="Merge a non-empty input into the instruction before "
                                    "instruction reflection: oracle | rule."),
    prompts: str | None = typer.Option(None, help="Folder of template overrides (same file names)."),
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    limit: int | None = typer.Option(None, help="Only the first N rows."),
    output_format: str | None = typer.Option(None, help="json | jsonl | parquet | csv | hf_disk."),
    on_bad_record: str = typer.Option("error", help="error: stop on a bad row; skip: write it to "
                                      "rejects.jsonl."),
    temperature: float = typer.Option(0.0),
    top_p: float = typer.Option(1.0),
    max_tokens: int | None = typer.Option(None, help="Default: min(2048, context - prompt tokens)."),
    context: int | None = typer.Option(None, help="Oracle context window in tokens."),
    seed: int | None = typer.Option(None),
    timeout: float = typer.Option(120.0, help="Seconds per request."),
    concurrency: int | None = typer.Option(None, help="Requests in flight (default 64; local: 2x batch)."),
    rpm: float | None = typer.Option(None, help="Requests per minute limit."),
    tpm: float | None = typer.Option(None, help="Tokens per minute limit."),
    max_attempts: int = typer.Option(6, help="Attempts per call for 429/5xx/timeouts."),
    max_failure_rate: float = typer.Option(0.2, help="Stop when more than this share of recent calls fail."),
    max_cost: float | None = typer.Option(None, help="Stop cleanly (resumably) at this many USD."),
    price_in: float | None = typer.Option(None, help="USD per 1M prompt tokens (overrides the table)."),
    price_out: float | None = typer.Option(None, help="USD per 1M completion tokens."),
    retry_failed: bool = typer.Option(False, help="Re-run the calls that failed before."),
    device: str | None = typer.Option(None, help="Local models: cpu | cuda | mps (default: auto)."),
    dtype: str | None = typer.Option(None, help="Local models: bfloat16 | float16 | float32."),
    batch_size: int = typer.Option(8, help="Local models: requests per batch."),
    critique_tokens: int = typer.Option(96, help="Local models: critique budget before the forced markers."),
    dry_run: bool = typer.Option(False, help="Estimate calls, tokens and cost; call nothing."),
    quiet: bool = typer.Option(False, "-q", help="No live display."),
) -> None:
    """Reflect every (instruction, response) pair with an oracle LLM (Reflection-Tuning, V1)."""
    config = build_config(**locals())
    console = Console(stderr=True)
    if dry_run:
        _print_estimate(console, input, config)
        return
    from reflectune.recycling.run import recycle

    live = None if quiet else Live(console=console, refresh_per_second=4, transient=True)
    started = time.monotonic()

    def on_tick(progress: Any, stats: Any) -> None:
        if live is not None:
            live.update(progress_table(progress, stats, time.monotonic() - started))

    if live is not None:
        live.start()
    try:
        summary = recycle(input, output, config=config, run_dir=run_dir, on_tick=on_tick)
    finally:
        if live is not None:
            live.stop()
    console.print(summary_table(summary))
    console.print(f"output:   {summary.output}\nvariants: {summary.variants}\nrun:      {summary.run_dir}")
    if summary.rejects:
        console.print(f"rejects:  {summary.rejects} ({summary.rejected} rows)")


def _print_estimate(console: Console, input: Path, config: RecycleConfig) -> None:
    from reflectune.recycling.run import estimate

    est = estimate(input, config=config)
    table = Table(title=f"dry run: {input} with {config.oracle.spec}", show_header=False)
    approx = "" if est.exact_tokens else " (approx., 4 chars/token)"
    table.add_row("rows", f"{est.rows:,}")
    table.add_row("oracle calls", f"{est.calls:,} (+ up to as many retries on parse failures)")
    table.add_row("prompt tokens", f"{est.prompt_tokens:,}{approx}")
    table.add_row("completion tokens", f"~{est.completion_tokens_expected:,} expected, "
                  f"{est.completion_tokens_max:,} at most")
    low, high = est.cost(est.completion_tokens_expected), est.cost(est.completion_tokens_max)
    table.add_row("cost (USD)", "unknown model price: pass --price-in/--price-out" if low is None
                  else f"~${low:,.2f} expected, ${high:,.2f} at most")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("recycle")(recycle_command)
