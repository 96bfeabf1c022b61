"""The TRL ``SFTTrainer`` for a run: our options as ``SFTConfig`` arguments, the data as TRL rows,
and a callback that writes ``metrics.jsonl`` and reports progress through ``on_log(dict)``.

The loop itself is TRL's. :func:`build_trainer` loads the base and the data and returns a trainer
ready to ``train()``; :func:`reflectune.training.run.train` wraps it in a run folder. torch,
transformers, trl and peft are imported inside functions only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from pathlib import Path
from typing import Any, cast

from reflectune.errors import ConfigError
from reflectune.training.data import build_examples, load_training_samples, too_long_error
from reflectune.training.rules import TrainConfig, check_sft_keys, make_config, sft_field_names
from reflectune.types import Sample

__all__ = ["METRICS", "build_trainer", "check_options", "check_schedule"]

METRICS = "metrics.jsonl"


def check_schedule(steps: int, warmup: int) -> None:
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
            check_schedule(state.max_steps, args.get_warmup_steps(state.max_steps))
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


def check_options(config: TrainConfig) -> None:
    """What can be checked before any folder is touched or weight loaded: ``--sft`` keys, and that a
    ``--report-to`` integration is installed."""
    check_sft_keys(config.sft)
    if config.report_to != "none":
        import importlib.util

        if importlib.util.find_spec(config.report_to) is None:
            raise ConfigError(f"--report-to {config.report_to}: not installed "
                              f"(pip install {config.report_to})")


def _sft_args(config: TrainConfig, output_dir: Path, *, device: str, dtype: str, accumulation: int,
              quiet: bool) -> Any:
    from trl import SFTConfig

    check_options(config)
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


def _chat_template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else None


def _quiet_libraries() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_trainer(data: str | Path | Iterable[Sample], base: str, run_dir: str | Path, *,
                  config: TrainConfig | None = None, on_log: Callable[[dict[str, Any]], None] | None = None,
                  fields: Mapping[str, str] | None = None, **options: Any) -> tuple[Any, dict[str, Any]]:
    """Load the base model and the data and return a ready ``(SFTTrainer, info)`` without training.

    :func:`~reflectune.training.run.train` calls this; use it directly for a custom loop or to
    inspect the tokenized rows (``trainer.train_dataset[0]["labels"]``). ``run_dir`` is the
    Trainer's ``output_dir`` (checkpoints, ``metrics.jsonl``). ``info`` holds rows, skipped counts
    (``prompt_too_long``: rows TRL dropped because their prompt alone fills ``max_length``), world
    size, gradient accumulation, device, dtype, the base's chat template and timings.

    Raises:
        DataError: every row was dropped for its prompt's length (nothing would train).
    """
    from reflectune.models import load_causal_lm, pick_device, pick_dtype

    cfg = make_config(config, **options)
    out = Path(run_dir)
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
    trained = len(cast(Sized, trainer.train_dataset))
    if not getattr(trainer.args, "packing", False):  # TRL dropped the rows truncation left without a label
        skipped = {**skipped, "prompt_too_long": len(samples) - trained}
        if trained == 0:
            raise too_long_error(data, len(samples), cfg.max_length)
    info = {"rows": len(samples), "trained_rows": trained, "skipped": skipped,
            "world_size": world, "gradient_accumulation": accumulation, "device": device, "dtype": dtype,
            "weights_dtype": weights_dtype, "config": cfg, "base_chat_template": _chat_template(tokenizer),
            "timings": {"load_s": round(loaded - started, 2),
                        "prepare_s": round(time.monotonic() - loaded, 2)}}
    return trainer, info

