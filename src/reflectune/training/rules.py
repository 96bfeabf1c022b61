"""The training recipe as data: ``TrainConfig``, its validation, and the ``--sft`` pass-through.

Kept apart from :mod:`reflectune.training.run` so that the CLI, the dry-run planner and a future
``RunConfig`` can build and check a configuration without importing torch or TRL. Defaults are the
papers' (METHOD.md §6) and live here only: the CLI reads its defaults from ``TrainConfig()``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError
from reflectune.prompts.student import STUDENT_TEMPLATES

__all__ = [
    "ACCELERATE_CONFIGS",
    "TEMPLATES",
    "TrainConfig",
    "accelerate_config_path",
    "make_config",
    "parse_sft_overrides",
    "resolve_world_size",
]

TEMPLATES = STUDENT_TEMPLATES  # vicuna, alpaca, wiz, chat: the same prompts IFD scoring uses
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj"
ACCELERATE_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml",
                      "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}

# SFTConfig keys that TrainConfig owns: ``--sft`` may not set them behind the config's back.
_OWNED_SFT_KEYS = {
    "num_train_epochs": "epochs", "learning_rate": "learning_rate", "warmup_steps": "warmup_ratio",
    "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay", "lr_scheduler_type": "lr_scheduler",
    "max_length": "max_length", "per_device_train_batch_size": "per_device_batch",
    "gradient_accumulation_steps": "global_batch", "seed": "seed", "save_steps": "save_steps",
    "save_total_limit": "save_total_limit", "report_to": "report_to", "bf16": "dtype", "fp16": "dtype",
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing", "output_dir": "output_dir (-o)",
    "completion_only_loss": "template (loss is always on the response)",
}


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Defaults are the papers' (METHOD.md §6); ``sft`` passes anything else to
    TRL's ``SFTConfig`` (JSON values, e.g. ``{"logging_steps": 1, "optim": "adamw_torch_fused"}``)."""

    epochs: float = 3.0
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_length: int = 2048
    global_batch: int = 128
    per_device_batch: int = 4
    template: str = "vicuna"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = DEFAULT_LORA_TARGETS
    merge: bool = True
    dtype: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 42
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool = False
    report_to: str = "none"
    world_size: int | None = None
    max_samples: int | None = None
    sft: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(f"unknown template '{self.template}'{_did_you_mean(self.template, TEMPLATES)}: "
                              f"choose {', '.join(TEMPLATES)}")
        for name in ("global_batch", "per_device_batch", "max_length", "save_steps", "lora_r"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("epochs and learning_rate must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"dtype must be auto, bfloat16, float16 or float32, got '{self.dtype}'")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"report_to must be none, tensorboard or wandb, got '{self.report_to}'")
        if self.world_size is not None and self.world_size < 1:
            raise ConfigError(f"world_size must be at least 1, got {self.world_size}")
        for key in self.sft:
            if key in _OWNED_SFT_KEYS:
                raise ConfigError(f"--sft {key}=...: set `{_OWNED_SFT_KEYS[key]}` instead "
                                  "(reflectune owns that setting)")

    def lora_target_modules(self) -> str | list[str]:
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        if not targets:
            raise ConfigError("lora_targets is empty: give module names (q_proj,v_proj) or all-linear")
        return targets

    def grad_accumulation(self, world_size: int) -> int:
        """global batch / (per-device batch x world size); it must divide exactly."""
        per_step = self.per_device_batch * world_size
        if self.global_batch % per_step:
            raise ConfigError(
                f"global batch {self.global_batch} is not divisible by per-device batch "
                f"{self.per_device_batch} x world size {world_size} = {per_step}: change --global-batch "
                "or --per-device-batch")
        return self.global_batch // per_step


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def make_config(config: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """``config`` (or the defaults) with ``options`` applied; unknown names raise ``ConfigError``."""
    known = {f.name for f in fields(TrainConfig)}
    for key in options:
        if key not in known:
            raise ConfigError(f"unknown training option '{key}'{_did_you_mean(key, known)}")
    options = {k: v for k, v in options.items() if v is not None or k in ("world_size", "max_samples")}
    if "sft" in options:
        options["sft"] = dict(options["sft"])
    return replace(config or TrainConfig(), **options)


def parse_sft_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["logging_steps=1", "optim=adamw_torch"]`` -> ``{"logging_steps": 1, "optim": "adamw_torch"}``.

    Values are parsed as JSON when they parse (numbers, booleans, null, lists, objects), else kept as
    strings. Key names are checked against ``SFTConfig`` when the trainer is built.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--sft expects KEY=VALUE, got '{item}'")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def sft_field_names() -> set[str]:
    from trl import SFTConfig

    return {f.name for f in fields(SFTConfig) if f.init}


def check_sft_keys(sft: Mapping[str, Any]) -> None:
    valid = sft_field_names()
    for key in sft:
        if key not in valid:
            raise ConfigError(f"--sft {key}: not an SFTConfig field{_did_you_mean(key, valid)}")


def resolve_world_size(config: TrainConfig) -> int:
    """The override, else ``WORLD_SIZE`` (set by ``accelerate launch``/torchrun), else 1."""
    if config.world_size:
        return config.world_size
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def accelerate_config_path(name: str) -> Path:
    """Path of a shipped accelerate config: ``ddp``, ``fsdp``, ``zero2`` or ``zero3``."""
    if name not in ACCELERATE_CONFIGS:
        raise ConfigError(f"unknown accelerate config '{name}'{_did_you_mean(name, ACCELERATE_CONFIGS)}: "
                          f"choose {', '.join(ACCELERATE_CONFIGS)}")
    from importlib.resources import files

    return Path(str(files("reflectune") / "configs" / "accelerate" / ACCELERATE_CONFIGS[name]))
