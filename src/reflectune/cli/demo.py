"""``reflectune demo``: the main job, offline, on the bundled 20-row Alpaca sample.

It is the README's first quickstart command: no API key, no network, the embedded SmolLM2 model
as the oracle, with token budgets small enough for a laptop CPU. It prints the summary with the
quality gates' rejections, one kept and one rejected before/after pair, so a new user sees in a few
minutes what reflection does, and how often a 135M oracle fails at it.
"""

from __future__ import annotations

import contextlib
import json
import time
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from reflectune.cli.display import finish, print_json, print_report, progress_table, summary_table
from reflectune.cli.options import AsJson, Quiet
from reflectune.config import (
    EngineConfig,
    GatesConfig,
    OracleConfig,
    RecycleConfig,
    SamplingConfig,
    gates_option,
    validated,
)

DEMO_FILE = "demo_alpaca20.json"


def demo_data_path() -> Path:
    return Path(str(resources.files("reflectune") / "data" / DEMO_FILE))


def _clip(text: str | None, limit: int = 400) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def before_after(line: dict, name: str | None = None) -> Table:
    """The original pair beside variant ``name`` (default: the one the row kept)."""
    variants = line["variants"]
    name = name or line["status"]
    chosen = variants[name]
    ori = variants["ori"]
    table = Table(show_header=True, header_style="bold", expand=True)
    table.add_column("original", ratio=1)
    table.add_column(f"recycled ({name})", ratio=1)
    before_instruction = ori["instruction"] + (f"\n\nInput: {ori['input']}" if ori.get("input") else "")
    table.add_row(_clip(before_instruction), _clip(chosen["instruction"]))
    table.add_row(_clip(ori["output"]), _clip(chosen["output"]))
    return table


def demo_command(
    rows: int = typer.Option(20, help="How many of the 20 bundled rows to recycle."),
    oracle: str = typer.Option("embedded", help="Oracle spec (default: the embedded SmolLM2-135M)."),
    run_dir: Path = typer.Option(Path("runs/demo"), help="Run folder (rerunning resumes)."),
    max_tokens: int = typer.Option(192, help="Completion budget per call."),
    critique_tokens: int = typer.Option(32, help="Critique budget before the forced markers."),
    batch_size: int = typer.Option(16, help="Requests per batch on the local model."),
    gates: str = typer.Option("all", help="Quality gates, as for recycle (all | none | a list)."),
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Recycle the bundled Alpaca sample with the embedded model: offline, no API key."""
    from reflectune.recycling.run import recycle

    console = Console(stderr=True)
    config = RecycleConfig(
        oracle=OracleConfig(spec=oracle, batch_size=batch_size),
        sampling=SamplingConfig(max_tokens=max_tokens, critique_tokens=critique_tokens),
        engine=EngineConfig(max_failure_rate=1.0),
        limit=rows, gates=validated(GatesConfig, **gates_option(gates)))
    console.print(f"[bold]reflectune demo[/]: recycling {rows} Alpaca rows with [bold]{oracle}[/] "
                  "(offline; the first run converts the embedded model once, about 30 s)")
    started = time.monotonic()
    with Live(console=console, refresh_per_second=2, transient=True) if not quiet \
            else contextlib.nullcontext() as live:
        summary = recycle(demo_data_path(), config=config, run_dir=run_dir,
                          on_tick=None if live is None else
                          lambda p, s: live.update(progress_table(p, s, time.monotonic() - started)))
    console.print(summary_table(summary))
    lines = [json.loads(x) for x in summary.variants.read_text(encoding="utf-8").splitlines()]
    kept = next((x for x in lines if x["status"] != "ori"), None)
    if kept is not None:
        console.print(Panel(before_after(kept), title=f"kept: before / after (row {kept['row']})"))
    rejected = next(((x, name) for x in lines for name in ("A", "QA", "Q")
                     if x["variants"][name]["status"] == "rejected"), None)
    if rejected is not None:
        line, name = rejected
        variant = line["variants"][name]
        console.print(Panel(before_after(line, name), title=f"rejected: row {line['row']} {name}",
                            subtitle=f"gate {variant['gate']}"))
        console.print(f"  why: {variant['reason']}", markup=False)
    console.print(f"output:   {summary.output}\nvariants: {summary.variants}\nrun:      {summary.run_dir}")
    parsed = sum(n for key, n in summary.variant_status.items()
                 if key.split(":")[1] in ("ok", "rejected") and not key.startswith("ori:"))
    refused = sum(summary.gates.values())
    console.print(f"The quality gates rejected {refused} of the {parsed} rewrites that parsed: a 135M oracle "
                  "mostly echoes its critique or copies the original, and the gates say so. For real data "
                  "point --oracle at a strong model, e.g. `reflectune recycle data.json --oracle "
                  "openai:gpt-4o-mini --verify openai:gpt-4o-mini`.", soft_wrap=False)
    page = print_report(console, summary.run_dir, medians=True)
    if as_json:
        print_json("demo", summary, exit_code=summary.outcome.exit_code, report=page)
    finish(console, summary.outcome)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
