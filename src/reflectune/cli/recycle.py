"""``reflectune recycle``: flags -> ``RecycleConfig`` -> ``recycle()``, with a live display."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from reflectune.cli.display import finish, print_json, print_report, progress_table, summary_table
from reflectune.cli.options import (
    ENGINE,
    ORACLE,
    AllowInsecureHttp,
    ApiKeyEnv,
    AsJson,
    BaseUrl,
    BatchSize,
    Concurrency,
    Context,
    Device,
    Dtype,
    ExtraBody,
    Forcing,
    Header,
    MaxAttempts,
    MaxCost,
    MaxFailureRate,
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
    engine_values,
    oracle_values,
    warn_unknown_price,
)
from reflectune.config import RecycleConfig, SamplingConfig, gates_option, merged
from reflectune.errors import ConfigError
from reflectune.io import parse_fields

SAMPLING = SamplingConfig()


def build_config(**o: Any) -> RecycleConfig:
    """CLI values -> a validated config; a bad value becomes a one-line ConfigError."""
    return merged(RecycleConfig, None, {
        "oracle": oracle_values(o["oracle"], o),
        "sampling": {k: o[k] for k in ("temperature", "top_p", "max_tokens", "seed", "critique_tokens")},
        "engine": engine_values(o),
        "phases": tuple(p.strip() for p in o["phases"].split(",") if p.strip()),
        "input_merge": o["input_merge"], "prompts_dir": o["prompts"],
        "fields": parse_fields(o["fields"]) if o["fields"] else None,
        "limit": o["limit"], "output_format": o["output_format"], "on_bad_record": o["on_bad_record"],
        "gates": gates_option(o["gates"]),
        "verify": {"judge": {"spec": o["verify"], "base_url": o["verify_base_url"],
                             "api_key_env": o["verify_api_key_env"]},
                   "accept": o["verify_accept"].replace("-", "_")} if o["verify"] else None})


def recycle_command(
    input: Path = typer.Argument(..., help="Dataset: Alpaca JSON, JSONL, ShareGPT, Parquet, CSV, or a "
                                 "save_to_disk folder."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Recycled dataset; its extension "
                                       "decides the format, none: a datasets folder; - writes JSON lines "
                                       "to standard output (default: in the run folder, in the input's "
                                       "format)."),
    oracle: str = typer.Option(ORACLE.spec, help="embedded | openai:MODEL | hf:PATH | fake."),
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = ORACLE.api_key_env,
    allow_insecure_http: AllowInsecureHttp = False,
    forcing: Forcing = "off",
    request_rules: RequestRules = ORACLE.request_rules,
    extra_body: ExtraBody = None,
    header: Header = None,
    run_dir: RunDir = None,
    phases: str = typer.Option("instruction,response", help="instruction, response, or both."),
    input_merge: str = typer.Option("oracle", help="Merge a non-empty input into the instruction before "
                                    "instruction reflection: oracle | rule."),
    prompts: Prompts = None,
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    limit: int | None = typer.Option(None, help="Only the first N rows."),
    input_format: str | None = typer.Option(None, help="json | jsonl | csv | parquet | hf_disk instead of "
                                            "detecting it; needed to read - (standard input)."),
    output_format: str | None = typer.Option(None, help="json | jsonl | parquet | csv | hf_disk: the format "
                                             "of the default output, or of an -o name without a data "
                                             "extension; it may not contradict -o's extension."),
    split: str | None = typer.Option(None, help="The split to recycle of a DatasetDict save_to_disk folder "
                                     "(needed when it has several)."),
    on_bad_record: str = typer.Option("error", help="error: stop on a bad row; skip: write it to "
                                      "rejects.jsonl."),
    temperature: float = typer.Option(SAMPLING.temperature),
    top_p: float = typer.Option(SAMPLING.top_p),
    max_tokens: int | None = typer.Option(None, help="Default: min(2048, context - prompt tokens)."),
    context: Context = None,
    seed: int | None = typer.Option(None),
    timeout: Timeout = ORACLE.timeout,
    concurrency: Concurrency = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_attempts: MaxAttempts = ENGINE.max_attempts,
    max_failure_rate: MaxFailureRate = ENGINE.max_failure_rate,
    max_cost: MaxCost = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    retry_failed: RetryFailed = False,
    device: Device = None,
    dtype: Dtype = None,
    batch_size: BatchSize = ORACLE.batch_size,
    critique_tokens: int = typer.Option(SAMPLING.critique_tokens, help="Forced formats (local models, "
                                        "--forcing): critique budget before the markers."),
    gates: str = typer.Option("all", help="Quality gates a parsed rewrite must pass: all | none | a list "
                              "of refusal, degenerate, echo, unchanged, copy, collapsed, language, each with "
                              "an optional threshold (echo=0.3,unchanged). Changing them re-decides from the "
                              "store: no new call."),
    verify: str | None = typer.Option(None, help="Judge-verified acceptance: a judge (e.g. "
                                      "openai:gpt-4o-mini) compares each reflected answer with the one it "
                                      "rewrote, in both orders; only answers it prefers are kept."),
    verify_base_url: str | None = typer.Option(None, help="The judge's OpenAI-compatible endpoint."),
    verify_api_key_env: str = typer.Option(ORACLE.api_key_env, help="Environment variable with the judge's "
                                           "API key."),
    verify_accept: str = typer.Option("win", help="win: keep only answers the judge prefers; win-or-tie: "
                                      "also those it cannot tell apart."),
    dry_run: bool = typer.Option(False, help="Estimate calls, tokens and cost; call nothing."),
    quiet: Quiet = False,
    html: WriteReport = True,
    as_json: AsJson = False,
) -> None:
    """Reflect every (instruction, response) pair with an oracle LLM (Reflection-Tuning, V1)."""
    config = build_config(**locals())
    console = Console(stderr=True)
    if as_json and output is not None and str(output) == "-":
        raise ConfigError("--json and -o - both write to standard output: give -o a file, or drop --json")
    if dry_run:
        _print_estimate(console, input, config, input_format, split)
        return
    from reflectune.recycling.run import recycle

    warn_unknown_price(console, config.oracle.spec, config.oracle.model_dump() | config.engine.model_dump())
    live = None if quiet else Live(console=console, refresh_per_second=4, transient=True)
    started = time.monotonic()

    def on_tick(progress: Any, stats: Any) -> None:
        if live is not None:
            live.update(progress_table(progress, stats, time.monotonic() - started))

    if live is not None:
        live.start()
    try:
        summary = recycle(input, output, config=config, run_dir=run_dir, on_tick=on_tick,
                          input_format=input_format, split=split)
    finally:
        if live is not None:
            live.stop()
    console.print(summary_table(summary))
    written = f"standard output (a copy: {summary.output})" if str(output) == "-" else summary.output
    console.print(f"output:   {written}\nvariants: {summary.variants}\nrun:      {summary.run_dir}")
    if summary.rejects:
        console.print(f"rejects:  {summary.rejects} ({summary.rejected} rows)")
    page = print_report(console, summary.run_dir, medians=True) if html else None
    if as_json:
        print_json("recycle", summary, exit_code=summary.outcome.exit_code, report=page)
    finish(console, summary.outcome)


def _print_estimate(console: Console, input: Path, config: RecycleConfig, input_format: str | None,
                    split: str | None) -> None:
    from reflectune.oracles.dry_run import DecodeProbe, is_local, without_key
    from reflectune.oracles.pricing import price_label
    from reflectune.recycling.run import estimate
    from reflectune.units import duration

    with without_key(config.oracle) as key_note:
        est = estimate(input, config=config, input_format=input_format, split=split)
    table = Table(title=f"dry run: {input} with {config.oracle.spec}", show_header=False)
    approx = "" if est.exact_tokens else " (approx., 4 chars/token)"
    table.add_row("rows", f"{est.rows:,}")
    table.add_row("oracle calls", f"{est.calls:,} (+ up to as many retries on parse failures)")
    table.add_row("prompt tokens", f"{est.prompt_tokens:,}{approx}")
    table.add_row("completion tokens", f"~{est.completion_tokens_expected:,} expected, "
                  f"{est.completion_tokens_max:,} at most")
    low, high = est.cost(est.completion_tokens_expected), est.cost(est.completion_tokens_max)
    listed = config.oracle.spec.startswith("openai:") and config.engine.price_in is None \
        and config.engine.price_out is None
    label = f" ({price_label()})" if listed else ""
    table.add_row("cost (USD)", f"unknown model price{label}: pass --price-in/--price-out" if low is None
                  else f"~${low:,.2f} expected, ${high:,.2f} at most{label}")
    if is_local(config.oracle.spec) and est.rows:  # time is a local model's cost: measure it
        rate = DecodeProbe().rate(config.oracle, est.first_prompt) if est.first_prompt else None
        if rate is not None:
            table.add_row("time (decoding)", f"~{duration(rate.seconds_for(est.completion_tokens_expected))} "
                          f"expected, {duration(rate.seconds_for(est.completion_tokens_max))} at most; "
                          f"{rate.describe()}")
        else:
            table.add_row("time (decoding)", "unknown: the probe could not run the model")
    if key_note:
        table.add_row("API key", key_note)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("recycle")(recycle_command)
