"""Fine-tune a student on (recycled) instruction data: a thin, typed wrapper over TRL's ``SFTTrainer``.

Why a wrapper at all: the papers' recipe (METHOD.md §6) is a handful of numbers (global batch 128,
lr 2e-5, 3 epochs, cosine, warmup 0.03, max length 2048, the vicuna template, loss on the response
only) that must be turned into TRL/transformers arguments the same way on one CPU and on eight GPUs.
:class:`~reflectune.training.rules.TrainConfig` holds those and a few more of our own; everything
else TRL offers is reachable through ``sft={"key": value}`` (``--sft KEY=VALUE``), checked against
``SFTConfig``'s fields.

The loop itself is TRL's. Samples become TRL *prompt/completion* rows (the prompt from
:mod:`reflectune.prompts.student`, shared with IFD scoring) so that ``completion_only_loss`` masks
every prompt token with -100. Progress leaves through a plain ``on_log(dict)`` callback, never
through a UI library; metrics are appended to ``DIR/metrics.jsonl`` and the resolved run to
``DIR/reflectune-train.json``. torch, transformers, trl and peft are imported inside functions only.

Outputs: the trained model is always ``DIR`` (``hf:DIR`` loads it). LoRA runs keep the adapter in
``DIR/adapter`` and, with ``merge=True`` (default), write the merged model to ``DIR``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from reflectune.errors import ConfigError, DataError
from reflectune.io.atomic import write_text_atomic
from reflectune.prompts.student import response_separator, student_prompt
from reflectune.training.folder import (
    check_output,
    check_resume,
    complete_checkpoint,
    start_record,
    write_start,
)
from reflectune.training.rules import (
    ACCELERATE_CONFIGS,
    TrainConfig,
    accelerate_config_path,
    check_sft_keys,
    make_config,
    parse_sft_overrides,
    sft_field_names,
)
from reflectune.types import Sample

__all__ = [
    "ACCELERATE_CONFIGS",
    "TrainConfig",
    "TrainResult",
    "accelerate_config_path",
    "build_examples",
    "build_trainer",
    "load_training_samples",
    "make_config",
    "parse_sft_overrides",
    "train",
]

MANIFEST = "reflectune-train.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. ``model_dir`` loads with ``hf:`` (None for an unmerged LoRA run)."""

    output_dir: Path
    model_dir: Path | None
    adapter_dir: Path | None
    rows: int
    skipped: dict[str, int]
    steps: int
    epochs: float
    first_loss: float | None
    final_loss: float | None
    train_seconds: float
    manifest: Path
    metrics: Path


# --------------------------------------------------------------------------- data


def load_training_samples(data: str | Path | Iterable[Sample], max_samples: int | None = None, *,
                          fields: Mapping[str, str] | None = None) -> tuple[list[Sample], dict[str, int]]:
    """Single-turn samples with a response, plus counts of what was skipped and why.

    ``data`` is a file or folder (read by ``reflectune.io.read_samples``) or samples already read.
    Multi-turn rows (``passthrough``) and rows with an empty output are skipped: the papers train on
    single-turn pairs only.
    """
    if isinstance(data, str | Path):
        from reflectune.io import read_samples

        source: Iterable[Sample] = read_samples(str(data), fields=fields)
    else:
        source = data
    kept: list[Sample] = []
    skipped = {"multi_turn": 0, "empty_output": 0}
    for sample in source:
        if sample.passthrough:
            skipped["multi_turn"] += 1
        elif not sample.output.strip():
            skipped["empty_output"] += 1
        else:
            kept.append(sample)
            if max_samples and len(kept) >= max_samples:
                break
    if not kept:
        raise DataError(f"no trainable rows (skipped: {skipped})", path=str(data) if isinstance(
            data, str | Path) else None)
    return kept, skipped


def build_examples(samples: Iterable[Sample], template: str, tokenizer: Any,
                   prompts_dir: str | None = None) -> list[dict[str, Any]]:
    """TRL prompt/completion rows. Plain templates give strings ending in the tokenizer's eos (the
    ``</s>`` of the vicuna recipe); ``chat`` gives conversational rows rendered by the chat template."""
    rows: list[dict[str, Any]] = []
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; use vicuna or alpaca")
        for s in samples:
            content = f"{s.instruction}\n\n{s.input}" if s.input else s.instruction
            rows.append({"prompt": [{"role": "user", "content": content}],
                         "completion": [{"role": "assistant", "content": s.output}]})
        return rows
    eos, sep = tokenizer.eos_token or "", response_separator(template)
    for s in samples:
        rows.append({"prompt": student_prompt(template, s.instruction, s.input, prompts_dir=prompts_dir),
                     "completion": sep + s.output + eos})
    return rows


# --------------------------------------------------------------------------- trainer


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the metrics of steps after ``step``: a resume trains them again and logs them anew, so
    each step appears once."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut by the kill
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _check_schedule(steps: int, warmup: int) -> None:
    """A schedule that cannot change the weights is an error, not a successful run."""
    if steps < 1:
        raise ConfigError("the schedule has 0 optimizer steps: more data, more epochs or a smaller "
                          "--global-batch")
    if steps <= warmup and steps == 1:
        raise ConfigError(f"the schedule trains at learning rate 0: its one step is a warmup step "
                          f"(warmup {warmup} of {steps}); pass --warmup-ratio 0, or train longer")


def _metrics_callback(path: Path, on_log: Callable[[dict[str, Any]], None] | None) -> Any:
    """A ``TrainerCallback`` that appends each training log to ``metrics.jsonl`` and calls ``on_log``."""
    from transformers import TrainerCallback

    class _Metrics(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last: tuple[float, float] | None = None  # (time, cumulative tokens)
            self.first_step = 0  # > 0 when resumed: the ETA counts this session's steps only

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started, self.first_step = time.monotonic(), state.global_step
            _check_schedule(state.max_steps, args.get_warmup_steps(state.max_steps))
            if on_log and state.is_world_process_zero:
                on_log({"event": "begin", "max_steps": state.max_steps, "step": state.global_step,
                        "epochs": args.num_train_epochs})

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs or not state.is_world_process_zero:
                return
            now = time.monotonic()
            elapsed = now - self.started
            tokens = float(logs.get("num_tokens", 0.0))
            prev_t, prev_tok = self.last or (self.started, 0.0)
            rate = (tokens - prev_tok) / (now - prev_t) if tokens and now > prev_t else None
            self.last = (now, tokens)
            done = max(state.global_step - self.first_step, 1)
            record = {
                "step": state.global_step, "max_steps": state.max_steps,
                "epoch": round(float(logs.get("epoch", state.epoch or 0.0)), 4),
                "loss": float(logs["loss"]), "lr": float(logs.get("learning_rate", 0.0)),
                "tokens_per_s": round(rate, 1) if rate else None, "num_tokens": tokens or None,
                "elapsed_s": round(elapsed, 2),
                "eta_s": round(elapsed / done * (state.max_steps - state.global_step), 1),
            }
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if on_log:
                on_log({"event": "log", **record})

    return _Metrics()


def _sft_args(config: TrainConfig, output_dir: Path, *, device: str, dtype: str, accumulation: int,
              quiet: bool) -> Any:
    from trl import SFTConfig

    check_sft_keys(config.sft)
    if config.report_to != "none":
        import importlib.util

        if importlib.util.find_spec(config.report_to) is None:
            raise ConfigError(f"--report-to {config.report_to}: not installed "
                              f"(pip install {config.report_to})")
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": config.epochs,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        "weight_decay": config.weight_decay,
        "lr_scheduler_type": config.lr_scheduler,
        "max_length": config.max_length,
        "per_device_train_batch_size": config.per_device_batch,
        "gradient_accumulation_steps": accumulation,
        "seed": config.seed,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "report_to": config.report_to,
        "bf16": dtype == "bfloat16",
        "fp16": dtype == "float16",
        "use_cpu": device == "cpu",
        # transformers 5 renamed it; the old name still works there but warns
        ("activation_checkpointing" if "activation_checkpointing" in sft_field_names()
         else "gradient_checkpointing"): config.gradient_checkpointing,
        "completion_only_loss": True,
        "logging_first_step": True,
        "disable_tqdm": quiet,
        **dict(config.sft),
    }
    try:
        return SFTConfig(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid training configuration: {str(exc).splitlines()[0]}") from None


def _quiet_libraries() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_trainer(data: str | Path | Iterable[Sample], base: str, output_dir: str | Path, *,
                  config: TrainConfig | None = None, on_log: Callable[[dict[str, Any]], None] | None = None,
                  fields: Mapping[str, str] | None = None, **options: Any) -> tuple[Any, dict[str, Any]]:
    """Load the base model and the data and return a ready ``(SFTTrainer, info)`` without training.

    :func:`train` calls this; use it directly for a custom loop or to inspect the tokenized rows
    (``trainer.train_dataset[0]["labels"]``). ``info`` holds rows, skipped counts, world size,
    gradient accumulation, device, dtype and timings.
    """
    from reflectune.models import load_causal_lm, pick_device, pick_dtype

    cfg = make_config(config, **options)
    out = Path(output_dir)
    started = time.monotonic()
    if on_log is not None:  # the caller draws its own progress: silence the libraries' bars
        _quiet_libraries()
    samples, skipped = load_training_samples(data, cfg.max_samples, fields=fields)
    from accelerate import PartialState

    state = PartialState()
    world = state.num_processes
    if cfg.world_size and cfg.world_size != world:
        raise ConfigError(f"--world-size {cfg.world_size} but this process group has {world} process(es); "
                          "--world-size is for --dry-run only")
    accumulation = cfg.grad_accumulation(world)
    device = pick_device()
    # CPU trains in fp32 unless asked: bf16 backward was 4-5x slower than fp32 on the 2-core EPYC we
    # measured (no AVX512-BF16), bf16 autocast slower still. pick_dtype's bf16 is for inference.
    dtype = "float32" if device == "cpu" and cfg.dtype == "auto" else pick_dtype(device, cfg.dtype)
    # Full fine-tuning keeps fp32 master weights and autocasts (lr 2e-5 updates vanish in bf16
    # weights); LoRA's base is frozen, so it stays in the half dtype and only adapters train.
    weights_dtype = dtype if cfg.lora else "float32"
    args = _sft_args(cfg, out, device=device, dtype=dtype,
                     accumulation=accumulation, quiet=on_log is not None)
    # the trainer places the model (under ZeRO-3 it is partitioned at load time): train=True
    model, tokenizer = load_causal_lm(base, dtype=weights_dtype, train=True)
    loaded = time.monotonic()
    from datasets import Dataset
    from trl import SFTTrainer

    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules(), task_type="CAUSAL_LM")
    out.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.from_list(build_examples(samples, cfg.template, tokenizer, cfg.prompts_dir))
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config,
                             callbacks=[_metrics_callback(out / METRICS, on_log)])
    except ValueError as exc:  # PEFT target names that match nothing, bad TRL combinations
        raise ConfigError(f"cannot build the trainer: {str(exc).splitlines()[0]}") from None
    if on_log is not None:  # no raw log dicts printed over the caller's display
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    info = {"rows": len(samples), "trained_rows": len(cast(Sized, trainer.train_dataset)), "skipped": skipped,
            "world_size": world, "gradient_accumulation": accumulation, "device": device, "dtype": dtype,
            "weights_dtype": weights_dtype, "config": cfg,
            "timings": {"load_s": round(loaded - started, 2),
                        "prepare_s": round(time.monotonic() - loaded, 2)}}
    return trainer, info


# --------------------------------------------------------------------------- train


def train(data: str | Path | Iterable[Sample], base: str, output_dir: str | Path, *,
          config: TrainConfig | None = None, on_log: Callable[[dict[str, Any]], None] | None = None,
          fields: Mapping[str, str] | None = None, **options: Any) -> TrainResult:
    """Fine-tune ``base`` on ``data`` and save the model in ``output_dir``.

    Args:
        data: an instruction file/folder (Alpaca JSON, JSONL, ShareGPT, parquet, CSV, HF disk) or samples.
        base: a model spec: ``embedded``, ``hf:PATH`` or a folder/``.gguf`` path.
        output_dir: the run folder: model (or merged model), ``adapter/``, ``checkpoint-N/``,
            ``metrics.jsonl`` and ``reflectune-train.json``.
        config: a :class:`TrainConfig`; ``options`` override its fields (``epochs=1, lora=True``).
        on_log: called with ``{"event": "begin"|"log"|"note"|"saved", ...}`` dicts for a progress display.
        fields: column mapping for the reader, e.g. ``{"instruction": "prompt"}``.

    Returns:
        A :class:`TrainResult` (paths, row counts, steps, first and final loss, seconds).

    Example::

        result = train("recycled.json", "hf:/models/llama-2-7b", "runs/7b", lora=True, epochs=1)
        print(result.model_dir, result.final_loss)
    """
    from reflectune.models import model_fingerprint, resolve_model

    cfg = make_config(config, **options)
    out = Path(output_dir)
    emit = on_log or (lambda event: None)
    source = resolve_model(base)
    checkpoint, incomplete = complete_checkpoint(out)
    if checkpoint and not cfg.resume and out.resolve() != source.path.resolve():
        raise ConfigError(f"{out} already holds {checkpoint.name}: pass --resume to continue it, "
                          "or choose another output folder")
    check_output(out, source.path if source.path.is_dir() else None, cfg,
                 resuming=cfg.resume and checkpoint is not None)
    record = start_record(cfg, base, model_fingerprint(source), data)
    if checkpoint:
        if not check_resume(out, record):
            emit({"event": "note", "message": f"{out} records no start settings (an older run): the "
                  "resume cannot check that its options and data are the same"})
        _keep_metrics_until(out / METRICS, int(checkpoint.name.rsplit("-", 1)[1]))
        for name in incomplete:  # a save that was killed: garbage the Trainer would trip over
            emit({"event": "note", "message": f"skipping {name}: incomplete (its save was interrupted); "
                  f"resuming from {checkpoint.name}"})
            shutil.rmtree(out / name, ignore_errors=True)
    else:
        if cfg.resume:
            emit({"event": "note", "message": f"no complete checkpoint in {out}: starting from the "
                  "beginning"})
        (out / METRICS).unlink(missing_ok=True)
    resume_from = str(checkpoint) if checkpoint else None
    trainer, info = build_trainer(data, base, out, config=cfg, on_log=on_log, fields=fields)
    if not checkpoint and trainer.is_world_process_zero():  # the config and data are valid by now
        write_start(out, record)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.monotonic() - started
    saved = time.monotonic()
    model_dir, adapter_dir = _save(trainer, out, cfg, base, info)
    info["timings"].update(train_s=round(train_s, 2), save_s=round(time.monotonic() - saved, 2))
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines() if line.strip()] \
        if (out / METRICS).exists() else []
    losses = [r["loss"] for r in records]
    info["num_tokens"] = records[-1].get("num_tokens") if records else None
    result = TrainResult(
        output_dir=out, model_dir=model_dir, adapter_dir=adapter_dir, rows=info["rows"],
        skipped=info["skipped"], steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0),
        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
        train_seconds=round(train_s, 2), manifest=out / MANIFEST, metrics=out / METRICS)
    if trainer.is_world_process_zero():
        _write_manifest(result, info, base, data, trainer, output, resume_from)
        emit({"event": "saved", "model_dir": str(model_dir) if model_dir else None,
              "adapter_dir": str(adapter_dir) if adapter_dir else None})
    return result


def _save(trainer: Any, out: Path, cfg: TrainConfig, base: str, info: dict[str, Any]) -> tuple[
        Path | None, Path | None]:
    """Full: the model and tokenizer in ``out``. LoRA: the adapter in ``out/adapter``, then (main
    process only) the base reloaded in the training dtype, the adapter merged in, saved in ``out``."""
    if not cfg.lora:
        if trainer.accelerator.num_processes == 1:  # sharded runs save what the trainer gathers (fp32)
            import torch

            trainer.model.to(getattr(torch, info["dtype"]))
        trainer.save_model(str(out))
        return out, None
    adapter = out / "adapter"
    with warnings.catch_warnings():  # PEFT's save reads a deprecated transformers property
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer.save_model(str(adapter))
    if not cfg.merge:
        return None, adapter
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        from peft import PeftModel

        from reflectune.models import load_causal_lm

        model, tokenizer = load_causal_lm(base, dtype=info["dtype"], train=True)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    trainer.accelerator.wait_for_everyone()
    return out, adapter


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("reflectune", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _write_manifest(result: TrainResult, info: dict[str, Any], base: str, data: Any, trainer: Any,
                    output: Any, resume_from: str | None) -> None:
    cfg: TrainConfig = info["config"]
    manifest = {
        "config": cfg.model_dump(mode="json"),
        "base": base, "data": str(data) if isinstance(data, str | Path) else "<samples>",
        "rows": result.rows, "trained_rows": info["trained_rows"], "skipped": result.skipped,
        "world_size": info["world_size"], "gradient_accumulation": info["gradient_accumulation"],
        "effective_batch": cfg.per_device_batch * info["world_size"] * info["gradient_accumulation"],
        "device": info["device"], "dtype": info["dtype"], "weights_dtype": info["weights_dtype"],
        "steps": result.steps, "epochs": result.epochs, "resumed_from": resume_from,
        "first_loss": result.first_loss, "final_loss": result.final_loss,
        "train_loss": output.training_loss, "num_tokens": info["num_tokens"],
        "timings": info["timings"],
        "outputs": {"model_dir": str(result.model_dir) if result.model_dir else None,
                    "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None},
        "sft_config": {k: v for k, v in trainer.args.to_dict().items()
                       if isinstance(v, str | int | float | bool | type(None))},
        "versions": _versions(),
    }
    write_text_atomic(result.manifest, json.dumps(manifest, indent=2, default=str) + "\n")
