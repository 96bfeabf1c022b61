"""Training's rules: building a ``TrainConfig`` from options, the ``--sft`` pass-through, world size.

``TrainConfig`` itself lives in :mod:`reflectune.config` with the other stages' configs, so the CLI,
the dry-run planner and ``RunConfig`` build and check it without importing torch or TRL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from reflectune.config import DEFAULT_LORA_TARGETS, STUDENT_TEMPLATES, TrainConfig, did_you_mean, with_options
from reflectune.errors import ConfigError

__all__ = [
    "ACCELERATE_CONFIGS",
    "DEFAULT_LORA_TARGETS",
    "TEMPLATES",
    "TrainConfig",
    "accelerate_config_path",
    "make_config",
    "parse_sft_overrides",
    "resolve_world_size",
]

TEMPLATES = STUDENT_TEMPLATES  # vicuna, alpaca, wiz, chat: the same prompts IFD scoring uses
ACCELERATE_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml",
                      "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}

def make_config(config: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """``config`` (or the defaults) with ``options`` applied; unknown names raise ``ConfigError``."""
    known = TrainConfig.model_fields
    for key in options:
        if key not in known:
            raise ConfigError(f"unknown training option '{key}'{did_you_mean(key, known)}")
    # None means "none" for these (no override, no cap, keep every checkpoint), not "the default"
    options = {k: v for k, v in options.items()
               if v is not None or k in ("world_size", "max_samples", "save_total_limit")}
    if "sft" in options:
        options["sft"] = dict(options["sft"])
    return with_options(TrainConfig, config, options)


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
            raise ConfigError(f"--sft {key}: not an SFTConfig field{did_you_mean(key, valid)}")


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
        raise ConfigError(f"unknown accelerate config '{name}'{did_you_mean(name, ACCELERATE_CONFIGS)}: "
                          f"choose {', '.join(ACCELERATE_CONFIGS)}")
    from importlib.resources import files

    return Path(str(files("reflectune") / "configs" / "accelerate" / ACCELERATE_CONFIGS[name]))
