"""What a training run will do, worked out before any weight is loaded (``reflectune train --dry-run``).

A 7B run that dies on the first step because of a batch-size typo or an out-of-memory wastes a GPU
queue slot. The plan needs only the model's ``config.json`` (parameters are counted on the ``meta``
device under ``accelerate.init_empty_weights``), the tokenizer when there is one, and the data. It
prints the batch arithmetic (effective batch = per-device x world size x accumulation), steps, tokens
per step and a memory estimate. The memory figures are estimates (about +-30 %), not promises.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError
from reflectune.training.rules import TrainConfig, make_config, resolve_world_size
from reflectune.training.run import build_examples, load_training_samples
from reflectune.types import Sample

__all__ = ["TrainPlan", "format_plan", "plan_training"]

_LENGTH_SAMPLE = 2000  # rows tokenized for the length statistics
_GIB = 1024**3


@dataclass(frozen=True)
class TrainPlan:
    """The effective configuration and estimates of a run. Memory is in bytes per device."""

    config: TrainConfig
    base: str
    rows: int
    skipped: dict[str, int]
    world_size: int
    gradient_accumulation: int
    effective_batch: int
    steps_per_epoch: int
    total_steps: int
    mean_tokens: float
    max_tokens: int
    tokens_per_step: int
    tokens_estimated_from_chars: bool
    params: int
    trainable_params: int
    dtype: str
    memory: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "config"}


def _count_params(source: Any, config: TrainConfig) -> tuple[int, int, Any]:
    """(all parameters, trainable parameters, model config), built on the meta device."""
    from accelerate import init_empty_weights
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        model_config = AutoConfig.from_pretrained(str(source.path), local_files_only=True, **kwargs)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(model_config)
        model.tie_weights()  # tied embeddings count once (not tied yet on the meta device)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the model config in {source.path}: "
                          f"{str(exc).splitlines()[0]}") from None
    total = sum(p.numel() for p in model.parameters())
    if not config.lora:
        return total, total, model_config
    targets = config.lora_target_modules()
    output = model.get_output_embeddings()
    adapter = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        if targets == "all-linear" or name.rsplit(".", 1)[-1] in targets:
            adapter += config.lora_r * (module.in_features + module.out_features)
    if adapter == 0:
        raise ConfigError(f"--lora-targets {config.lora_targets}: no linear layer of this model matches")
    return total, adapter, model_config


def _lengths(samples: list[Sample], config: TrainConfig, tokenizer: Any) -> tuple[list[int], bool]:
    """Token counts of prompt+response for up to 2,000 rows (a seeded sample), or chars/4 without a
    tokenizer."""
    rows = samples if len(samples) <= _LENGTH_SAMPLE else random.Random(config.seed).sample(
        samples, _LENGTH_SAMPLE)
    if tokenizer is None:
        return [max(1, len(s.instruction) + len(s.input) + len(s.output) + 200) // 4 for s in rows], True
    lengths = []
    for example in build_examples(rows, config.template, tokenizer, config.prompts_dir):
        if isinstance(example["prompt"], list):
            ids = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer(example["prompt"] + example["completion"])["input_ids"]
        lengths.append(len(ids))
    return lengths, False


def _memory(config: TrainConfig, model_config: Any, params: int, trainable: int, dtype: str, seq: int,
            world: int) -> dict[str, int]:
    """Bytes per device. Full fine-tuning keeps fp32 master weights (4 B) and grads (4 B) plus
    AdamW's two fp32 moments (8 B): 16 B per parameter, the figure behind "a 7B model needs about
    112 GB before activations". LoRA keeps the frozen base in the half dtype and trains only the
    adapters. Activations follow Korthikanti et al. (2022): about 34 x seq x hidden x batch bytes
    per layer in 16-bit with fused attention; with checkpointing only each layer's input is kept,
    plus one layer being recomputed. Logits are counted at 8 B per vocabulary entry (16-bit logits,
    fp32 copy for the loss)."""
    half = 4 if dtype == "float32" else 2
    if config.lora:
        weights, grads_opt = params * half + trainable * 4, trainable * (4 + 8)
    else:
        weights, grads_opt = params * 4, params * (4 + 8)
    hidden = int(getattr(model_config, "hidden_size", 0) or getattr(model_config, "n_embd", 0) or 0)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or getattr(model_config, "n_layer", 0) or 0)
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    tokens = config.per_device_batch * seq
    per_layer = 34 * tokens * hidden * half // 2
    if config.gradient_checkpointing:
        activations = layers * tokens * hidden * half + per_layer
    else:
        activations = layers * per_layer
    activations += tokens * vocab * 8
    states = weights + grads_opt
    return {"weights": weights, "grads_and_optimizer": grads_opt, "activations": activations,
            "total_unsharded": states + activations,
            "total_fully_sharded": math.ceil(states / world) + activations}


def plan_training(data: str | Path | Iterable[Sample], base: str, *, config: TrainConfig | None = None,
                  fields: Mapping[str, str] | None = None, **options: Any) -> TrainPlan:
    """Work out a run without loading weights: batch arithmetic, steps, tokens and memory.

    Example::

        plan = plan_training("recycled.json", "hf:/models/llama-2-7b", world_size=8)
        assert plan.effective_batch == 128 and plan.gradient_accumulation == 4
    """
    from reflectune.models import load_tokenizer, pick_device, pick_dtype, resolve_model

    cfg = make_config(config, **options)
    world = resolve_world_size(cfg)
    accumulation = cfg.grad_accumulation(world)
    source = resolve_model(base)
    params, trainable, model_config = _count_params(source, cfg)
    try:
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError, TypeError):  # a config-only folder: estimate from characters
        tokenizer = None
    samples, skipped = load_training_samples(data, cfg.max_samples, fields=fields)
    lengths, from_chars = _lengths(samples, cfg, tokenizer)
    capped = [min(n, cfg.max_length) for n in lengths]
    mean_tokens = sum(capped) / len(capped)
    micro_batches = math.ceil(len(samples) / (cfg.per_device_batch * world))
    steps_per_epoch = max(1, math.ceil(micro_batches / accumulation))
    device = pick_device()
    dtype = "float32" if device == "cpu" and cfg.dtype == "auto" else pick_dtype(device, cfg.dtype)
    if device == "cpu" and cfg.dtype == "auto" and world > 1:
        dtype = "bfloat16"  # a multi-process plan made on a CPU box is for GPUs
    seq = max(capped)
    return TrainPlan(
        config=cfg, base=base, rows=len(samples), skipped=skipped, world_size=world,
        gradient_accumulation=accumulation,
        effective_batch=cfg.per_device_batch * world * accumulation,
        steps_per_epoch=steps_per_epoch, total_steps=math.ceil(steps_per_epoch * cfg.epochs),
        mean_tokens=round(mean_tokens, 1), max_tokens=seq,
        tokens_per_step=round(mean_tokens * cfg.global_batch), tokens_estimated_from_chars=from_chars,
        params=params, trainable_params=trainable, dtype=dtype,
        memory=_memory(cfg, model_config, params, trainable, dtype, seq, world))


def format_plan(plan: TrainPlan) -> list[tuple[str, str]]:
    """(label, value) rows for printing; plain strings so any UI can render them."""
    cfg, mem = plan.config, plan.memory
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in plan.skipped.items() if v) or "none"
    approx = " (chars/4: no tokenizer)" if plan.tokens_estimated_from_chars else ""

    def gib(n: int) -> str:
        return f"{n / _GIB:,.1f} GiB" if n >= _GIB else f"{n / 1024**2:,.0f} MiB"

    return [
        ("base", plan.base),
        ("rows", f"{plan.rows:,} (skipped: {skipped})"),
        ("template", cfg.template),
        ("method", f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} targets={cfg.lora_targets}"
         if cfg.lora else "full fine-tuning"),
        ("world size", str(plan.world_size)),
        ("per-device batch", str(cfg.per_device_batch)),
        ("gradient accumulation", str(plan.gradient_accumulation)),
        ("effective batch", str(plan.effective_batch)),
        ("epochs", f"{cfg.epochs:g}"),
        ("steps per epoch", f"{plan.steps_per_epoch:,}"),
        ("total steps", f"{plan.total_steps:,}"),
        ("learning rate", f"{cfg.learning_rate:g} ({cfg.lr_scheduler}, warmup {cfg.warmup_ratio:g})"),
        ("max length", str(cfg.max_length)),
        ("tokens per row", f"mean {plan.mean_tokens:,.0f}, max {plan.max_tokens:,}{approx}"),
        ("tokens per step", f"{plan.tokens_per_step:,}"),
        ("parameters", f"{plan.params:,} ({plan.trainable_params:,} trainable)"),
        ("dtype", plan.dtype),
        ("memory: weights", gib(mem["weights"])),
        ("memory: grads + AdamW", gib(mem["grads_and_optimizer"])),
        ("memory: activations", f"{gib(mem['activations'])} (batch {cfg.per_device_batch} x "
         f"{plan.max_tokens} tokens, checkpointing {'on' if cfg.gradient_checkpointing else 'off'})"),
        ("memory per device", f"{gib(mem['total_unsharded'])} (DDP); {gib(mem['total_fully_sharded'])} "
         f"(FSDP / ZeRO-3 over {plan.world_size})"),
    ]
