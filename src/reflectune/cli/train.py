"""``reflectune train``: flags -> ``train()`` / ``plan_training()``, with a live rich progress line.

The training module reports through a plain ``on_log(dict)`` callback; this file is the only place
that turns those dicts into a progress bar and tables. Under ``accelerate launch`` only rank 0 draws.
"""

from __future__ import annotations

import os
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
from reflectune.training.rules import TrainConfig

_D = TrainConfig()  # the defaults live in one place: the config
BASE_HELP = "Base model: embedded | hf:PATH | a model folder | a .gguf file."


@contextmanager
def train_progress(console: Console, quiet: bool) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """A rich progress bar fed by ``train()``'s ``on_log`` events; quiet: the notes only (a skipped
    checkpoint, a resume that cannot be checked are never silent). None on ranks other than 0."""
    if os.environ.get("RANK", "0") != "0":
        yield None
        return
    if quiet:
        def notes(event: dict[str, Any]) -> None:
            if event.get("event") == "note":
                console.print(f"note: {event['message']}")

        yield notes
        return
    bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  lr {task.fields[lr]}  "
                              "{task.fields[rate]} tok/s"),
                   TimeRemainingColumn(), console=console)
    task = bar.add_task("train", total=None, epoch="-", loss="-", lr="-", rate="-")
    started = False

    def update(event: dict[str, Any]) -> None:
        nonlocal started
        kind = event.get("event")
        if kind == "begin":  # drawn from the first step only: loading errors stay one clean line
            bar.update(task, total=event["max_steps"], completed=event["step"])
            bar.start()
            started = True
        elif kind == "log":
            rate = event.get("tokens_per_s")
            bar.update(task, completed=event["step"], total=event["max_steps"], epoch=f"{event['epoch']:.2f}",
                       loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}",
                       rate=f"{rate:,.0f}" if rate else "-")
        elif kind == "note":
            bar.console.print(f"note: {event['message']}")

    try:
        yield update
    finally:
        if started:
            bar.stop()


def _plan_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="training plan (dry run: no weights loaded)", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for label, value in rows:
        table.add_row(label, value)
    return table


def train_command(
    data: Path | None = typer.Argument(None, help="Instruction data: Alpaca JSON, JSONL, ShareGPT, parquet, "
                                       "CSV or a saved HF dataset folder. Multi-turn rows are skipped."),
    base: str = typer.Option("embedded", "--base", help=BASE_HELP),
    output: Path | None = typer.Option(None, "-o", "--output", help="Model folder (default RUN/model): "
                                       "the trained (for LoRA, merged) model, loadable with hf:DIR."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run folder (default "
                                        "runs/<data>-<base>-train): run.json, metrics.jsonl, "
                                        "checkpoint-N/, adapter/; --resume continues it."),
    epochs: float = typer.Option(_D.epochs, help="Epochs (papers: 3)."),
    learning_rate: float = typer.Option(_D.learning_rate, "--lr", "--learning-rate",
                                        help="Peak learning rate (papers: 2e-5 for 7B, 1e-5 for 13B)."),
    warmup_ratio: float = typer.Option(_D.warmup_ratio, help="Linear warmup, as a fraction of all steps."),
    weight_decay: float = typer.Option(_D.weight_decay, help="AdamW weight decay."),
    lr_scheduler: str = typer.Option(_D.lr_scheduler, help="Scheduler: cosine, linear, constant..."),
    max_length: int = typer.Option(_D.max_length, help="Tokens per sequence (prompt + response); longer rows "
                                   "are cut at the end."),
    global_batch: int = typer.Option(_D.global_batch,
                                     help="Effective batch: per-device x world size x accumulation."),
    per_device_batch: int = typer.Option(_D.per_device_batch, help="Micro-batch per device."),
    template: str = typer.Option(_D.template, help="Prompt template: vicuna (papers) | alpaca | wiz | chat."),
    lora: bool = typer.Option(_D.lora, "--lora/--full", help="LoRA adapters instead of full fine-tuning."),
    lora_r: int = typer.Option(_D.lora_r, help="LoRA rank."),
    lora_alpha: int = typer.Option(_D.lora_alpha, help="LoRA alpha."),
    lora_dropout: float = typer.Option(_D.lora_dropout, help="LoRA dropout."),
    lora_targets: str = typer.Option(_D.lora_targets, help="Comma-separated module names, "
                                     "or all-linear."),
    merge: bool = typer.Option(_D.merge, "--merge/--no-merge", help="LoRA: write the merged model to -o "
                               "MODEL_DIR (the adapter stays in RUN/adapter)."),
    dtype: str = typer.Option(_D.dtype, help="auto (fp32 on CPU, bf16 on bf16 GPUs, else fp16) | bfloat16 | "
                              "float16 | float32."),
    gradient_checkpointing: bool = typer.Option(
        _D.gradient_checkpointing, "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations to save memory."),
    seed: int = typer.Option(_D.seed, help="Random seed."),
    save_steps: int = typer.Option(_D.save_steps, help="Save a checkpoint every N optimizer steps."),
    save_total_limit: int = typer.Option(_D.save_total_limit, help="Checkpoints kept (0 keeps all)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last complete checkpoint in "
                                "the run folder (refused if the options or the data differ from the run's "
                                "start)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Let -o MODEL_DIR replace a trained model it "
                                   "holds."),
    report_to: str = typer.Option(_D.report_to, help="none | tensorboard | wandb (must be installed)."),
    world_size: int | None = typer.Option(None, help="Processes to plan for (--dry-run); default: "
                                          "WORLD_SIZE or 1."),
    max_samples: int | None = typer.Option(None, help="Use only the first N trainable rows."),
    sft: list[str] = typer.Option([], "--sft", help="KEY=VALUE passed to TRL's SFTConfig (repeatable; "
                                  "values parsed as JSON), e.g. --sft logging_steps=1."),
    fields: str | None = typer.Option(None, help="Field mapping, e.g. instruction=prompt,output=completion."),
    split: str | None = typer.Option(None, "--split", help="The split of a dataset-dict folder "
                                     "(save_to_disk of a DatasetDict) to train on."),
    prompts: Prompts = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the effective configuration, steps, tokens, "
                                 "a memory estimate and the time a measured training step predicts; train "
                                 "nothing, write nothing."),
    no_probe: bool = typer.Option(False, "--no-probe", help="--dry-run without loading the model (no time "
                                  "estimate)."),
    print_accelerate_config: str | None = typer.Option(
        None, help="Print the path of a shipped accelerate config (ddp | fsdp | zero2 | zero3) and exit."),
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Fine-tune a student on instruction data (TRL SFT; LoRA or full; multi-GPU via accelerate).

    Run folder: --run-dir (default runs/<data>-<base>-train). Model: -o (default RUN/model).
    """
    from reflectune.errors import ConfigError, ReflectuneError
    from reflectune.training.rules import accelerate_config_path, parse_sft_overrides

    if print_accelerate_config:
        typer.echo(str(accelerate_config_path(print_accelerate_config)))
        return
    if data is None:
        raise ConfigError("give the training data: reflectune train DATA --base SPEC [--run-dir RUN] "
                          "[-o MODEL_DIR]")
    if split is not None:  # the split's own folder is a dataset: the path names it everywhere after
        from reflectune.io.sources import split_folder

        data = split_folder(data, split)
    parsed_fields = None
    if fields:
        from reflectune.io import parse_fields

        parsed_fields = parse_fields(fields)
    options: dict[str, Any] = dict(
        epochs=epochs, learning_rate=learning_rate, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
        lr_scheduler=lr_scheduler, max_length=max_length, global_batch=global_batch,
        per_device_batch=per_device_batch, template=template, lora=lora, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets, merge=merge,
        dtype=dtype, gradient_checkpointing=gradient_checkpointing, seed=seed, save_steps=save_steps,
        save_total_limit=save_total_limit or None, resume=resume, overwrite=overwrite, report_to=report_to,
        world_size=world_size, max_samples=max_samples, prompts_dir=prompts, sft=parse_sft_overrides(sft))
    console = Console(stderr=True)
    if dry_run:
        from reflectune.training.plan import format_plan, plan_training

        plan = plan_training(data, base, fields=parsed_fields, **options)
        rows = format_plan(plan)
        probe = None
        if not no_probe:
            from reflectune.training.probe import probe_step
            from reflectune.units import duration

            why = "a multi-process plan runs on other devices"
            try:
                probe = probe_step(plan, data, fields=parsed_fields)
            except (ReflectuneError, OSError, ValueError) as exc:  # a config-only base, no memory, ...
                probe, why = None, f"the probe could not train here ({str(exc).splitlines()[0][:200]})"
            if probe is None:
                rows.append(("time", f"not measured: {why}"))
            else:
                fast, slow = probe.run_seconds(plan)
                steps = ", ".join(f"{s:.1f}" for s in probe.seconds)
                rows.append(("time (measured steps)", f"~{duration(fast)} to {duration(slow)} for "
                             f"{plan.total_steps:,} steps; probe: steps of {steps} s on {probe.device} "
                             f"{probe.dtype}, rows of {probe.mean_tokens:,.0f} tokens (the run's mean "
                             f"{plan.mean_tokens:,.0f}); load {probe.load_seconds:.1f} s"))
        (console if as_json else Console()).print(_plan_table(rows))
        if as_json:
            print_json("train", {"dry_run": True, "plan": plan, "probe": probe})
        return
    from reflectune.training.run import train

    with train_progress(console, quiet) as update:
        result = train(data, base, output, run_dir=run_dir, on_log=update, fields=parsed_fields, **options)
    if os.environ.get("RANK", "0") != "0":
        return
    table = Table(title="training summary", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("rows trained", f"{result.rows:,}" + "".join(f", {v} {k.replace('_', ' ')} skipped"
                                                               for k, v in result.skipped.items() if v))
    table.add_row("template", result.template)
    resumed = f" (resumed from step {result.resumed_from_step:,})" if result.resumed_from_step else ""
    table.add_row("steps / epochs", f"{result.steps:,} / {result.epochs:g}{resumed}")
    if result.first_loss is not None:
        table.add_row("loss (first -> last logged)", f"{result.first_loss:.4f} -> {result.final_loss:.4f}")
    table.add_row("train time", f"{result.train_seconds:,.1f} s")
    console.print(table)
    console.print(f"run:      {result.run_dir}")
    if result.model_dir:
        console.print(f"model:    {result.model_dir}  (--model hf:{result.model_dir}; prompts in "
                      f"{result.template})")
    if result.adapter_dir:
        console.print(f"adapter:  {result.adapter_dir}")
    console.print(f"run.json: {result.manifest}\nmetrics:  {result.metrics}")
    if as_json:
        print_json("train", result)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("train")(train_command)


__all__ = ["register", "train_progress"]
