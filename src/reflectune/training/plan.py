"""What a training run will do, worked out before any weight is loaded (``reflectune train --dry-run``).

A 7B run that dies on the first step because of a batch-size typo or an out-of-memory wastes a GPU
queue slot. The plan needs only the model's ``config.json`` (parameters are counted on the ``meta``
device under ``accelerate.init_empty_weights``), the tokenizer when there is one, and the data. It
prints the batch arithmetic (effective batch = per-device x world size x accumulation), steps, tokens
per step and a memory estimate. The memory figures are estimates (about +-30 %), not promises; the
terms and how they compare with a measured run are in :func:`_memory`. Rows whose prompt alone fills
``max_length`` are counted as ``prompt_too_long`` (TRL drops them), and a plan in which every row is
dropped fails as the run would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError
from reflectune.training.data import build_examples, example_lengths, load_training_samples, too_long_error
from reflectune.training.rules import TrainConfig, make_config, resolve_world_size
from reflectune.types import Sample

__all__ = ["TrainPlan", "format_plan", "plan_training"]

_LENGTH_SAMPLE = 2000  # rows tokenized for the length statistics
_GIB = 1024**3
#: The Python process with torch, transformers and TRL loaded, less the weights (measured 0.69 GiB
#: on CPU); on a GPU the CUDA context and kernels take about as much device memory.
RUNTIME_BYTES = 700 * 1024**2
#: TRL's fused LM head scores this many positions at a time: its logits never exceed it.
_LOGIT_CHUNK = 32768


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


def _lengths(samples: list[Sample], config: TrainConfig, tokenizer: Any) -> tuple[list[int], list[int], bool]:
    """Token counts of (prompt, prompt+response) for up to 2,000 rows (a seeded sample), or chars/4
    without a tokenizer."""
    rows = samples if len(samples) <= _LENGTH_SAMPLE else random.Random(config.seed).sample(
        samples, _LENGTH_SAMPLE)
    if tokenizer is None:
        prompts = [max(1, len(s.instruction) + len(s.input) + 200) // 4 for s in rows]
        return prompts, [p + max(1, len(s.output) // 4) for p, s in zip(prompts, rows, strict=True)], True
    pairs = [example_lengths(example, tokenizer)
             for example in build_examples(rows, config.template, tokenizer, config.prompts_dir)]
    return [p for p, _ in pairs], [n for _, n in pairs], False


def _memory(config: TrainConfig, model_config: Any, params: int, trainable: int, dtype: str, seq: int,
            world: int, *, fused_attention: bool) -> dict[str, int]:
    """Bytes per device, term by term.

    - States. Full fine-tuning keeps fp32 master weights (4 B) and grads (4 B) plus AdamW's two
      fp32 moments (8 B): 16 B per parameter, the figure behind "a 7B model needs about 112 GB
      before activations". The Trainer's default AdamW is the fused one, which makes no temporary
      copy of all parameters (the foreach one would add 4 B). LoRA keeps the frozen base in the
      half dtype and gives the adapters the 16 B.
    - Activations, after Korthikanti et al. (2022): about 34 x tokens x hidden bytes per layer in
      16-bit (68 in fp32), plus the attention probabilities (heads x seq^2 x batch) where attention
      is not fused (the CPU's SDPA math path keeps them; flash/memory-efficient kernels on GPU do
      not). With checkpointing only each layer's input is kept, plus one layer being recomputed.
    - Logits. TRL's fused LM head scores up to 32,768 positions at a time, in fp32: the logits, their
      softmax, the entropy's product and, in the backward, the logits' gradient: 16 B per
      vocabulary entry and position.
    - Runtime: the process (or CUDA context) itself, 700 MiB.

    Measured here (SmolLM2-135M, full, CPU fp32, batch 4 x 512 tokens, peak RSS of a real run):
    4.9 GiB with checkpointing (this estimate: 4.4) and 7.7 GiB without (7.5); the old estimate,
    which left out the runtime, the attention probabilities and half of the logits' copies, said
    3.0 and 5.0.
    """
    width = 4 if dtype == "float32" else 2
    if config.lora:
        weights, grads_opt = params * width + trainable * 4, trainable * (4 + 8)
    else:
        weights, grads_opt = params * 4, params * (4 + 8)
    hidden = int(getattr(model_config, "hidden_size", 0) or getattr(model_config, "n_embd", 0) or 0)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or getattr(model_config, "n_layer", 0) or 0)
    heads = int(getattr(model_config, "num_attention_heads", 0) or getattr(model_config, "n_head", 0) or 0)
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    tokens = config.per_device_batch * seq
    per_layer = 34 * tokens * hidden * width // 2
    if not fused_attention:
        per_layer += heads * seq * seq * config.per_device_batch * width
    if config.gradient_checkpointing:
        activations = layers * tokens * hidden * width + per_layer
    else:
        activations = layers * per_layer
    logits = min(tokens, _LOGIT_CHUNK) * vocab * 16
    states = weights + grads_opt
    fixed = activations + logits + RUNTIME_BYTES
    return {"weights": weights, "grads_and_optimizer": grads_opt, "activations": activations,
            "logits": logits, "runtime": RUNTIME_BYTES,
            "total_unsharded": states + fixed, "total_fully_sharded": math.ceil(states / world) + fixed}


def plan_training(data: str | Path | Iterable[Sample], base: str, *, config: TrainConfig | None = None,
                  fields: Mapping[str, str] | None = None, **options: Any) -> TrainPlan:
    """Work out a run without loading weights: batch arithmetic, steps, tokens and memory.

    Example::

        plan = plan_training("recycled.json", "hf:/models/llama-2-7b", world_size=8)
        assert plan.effective_batch == 128 and plan.gradient_accumulation == 4
    """
    from reflectune.models import load_tokenizer, pick_device, pick_dtype, resolve_model
    from reflectune.training.trainer import check_options

    cfg = make_config(config, **options)
    check_options(cfg)  # every check a real run makes before it starts (--sft keys, --report-to)
    world = resolve_world_size(cfg)
    accumulation = cfg.grad_accumulation(world)
    source = resolve_model(base)
    params, trainable, model_config = _count_params(source, cfg)
    try:
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError, TypeError):  # a config-only folder: estimate from characters
        tokenizer = None
    samples, skipped = load_training_samples(data, cfg.max_samples, fields=fields)
    prompts, lengths, from_chars = _lengths(samples, cfg, tokenizer)
    # TRL drops the rows whose prompt alone fills max_length (no response token is left); with a
    # sample of the rows, the share dropped is scaled to all of them
    kept = [n for p, n in zip(prompts, lengths, strict=True) if p < cfg.max_length]
    dropped = round((len(lengths) - len(kept)) / len(lengths) * len(samples))
    if not kept or dropped >= len(samples):
        raise too_long_error(data, len(samples), cfg.max_length)
    skipped = {**skipped, "prompt_too_long": dropped}
    rows = len(samples) - dropped
    capped = [min(n, cfg.max_length) for n in kept]
    mean_tokens = sum(capped) / len(capped)
    micro_batches = math.ceil(rows / (cfg.per_device_batch * world))
    steps_per_epoch = max(1, math.ceil(micro_batches / accumulation))
    device = pick_device()
    dtype = "float32" if device == "cpu" and cfg.dtype == "auto" else pick_dtype(device, cfg.dtype)
    if device == "cpu" and cfg.dtype == "auto" and world > 1:
        dtype = "bfloat16"  # a multi-process plan made on a CPU box is for GPUs
    seq = max(capped)
    return TrainPlan(
        config=cfg, base=base, rows=rows, skipped=skipped, world_size=world,
        gradient_accumulation=accumulation,
        effective_batch=cfg.per_device_batch * world * accumulation,
        steps_per_epoch=steps_per_epoch, total_steps=math.ceil(steps_per_epoch * cfg.epochs),
        mean_tokens=round(mean_tokens, 1), max_tokens=seq,
        tokens_per_step=round(mean_tokens * cfg.global_batch), tokens_estimated_from_chars=from_chars,
        params=params, trainable_params=trainable, dtype=dtype,
        memory=_memory(cfg, model_config, params, trainable, dtype, seq, world,
                       fused_attention=not (device == "cpu" and world == 1)))


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
        ("memory: logits", f"{gib(mem['logits'])} (fp32, with their softmax and gradient)"),
        ("memory: runtime", f"{gib(mem['runtime'])} (the process or CUDA context)"),
        ("memory per device", f"{gib(mem['total_unsharded'])} (DDP); {gib(mem['total_fully_sharded'])} "
         f"(FSDP / ZeRO-3 over {plan.world_size})"),
    ]
