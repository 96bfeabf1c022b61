"""Loading a causal LM and its tokenizer from a :class:`~reflectune.models.source.ModelSource`,
offline: the one place that calls transformers' ``from_pretrained`` for weights, so inference (the
local oracle, the scorer), training and the embedded model's conversion load them alike.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

from typing import Any

from reflectune.errors import ConfigError
from reflectune.models.runtime import import_torch
from reflectune.models.source import ModelSource

__all__ = ["dequantise", "load_tokenizer", "load_weights"]


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(source.path), local_files_only=True, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_weights(source: ModelSource, *, dtype: str, device: str | None = None,
                 train: bool = False) -> Any:
    """The model of ``source`` in ``dtype`` (a torch dtype's name), offline.

    For inference (``train=False``): transformers' logging is quieted, the model is moved to
    ``device`` and put in eval mode. For training: logging is left to the caller, the model stays
    where ``from_pretrained`` puts it (the trainer places it; under ZeRO-3 it is partitioned at load
    time), a GGUF's weights are dequantised for good (see :func:`dequantise`), and it is in train
    mode; ``device`` is ignored.
    """
    torch = import_torch()
    from transformers import AutoModelForCausalLM

    if not train:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(source.path), dtype=getattr(torch, dtype), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model from {source.path}: {str(exc).splitlines()[0]}") from None
    if train:
        if source.gguf_file:  # a GGUF base: train (and later save) the dequantised weights
            dequantise(model)
        model.train()
        return model
    if device is not None:
        model.to(device)
    model.eval()
    return model


def dequantise(model: Any) -> None:
    """Forget that ``model`` was loaded from a GGUF: saving a GGUF-loaded model needs its quantizer
    cleared (its weights are already dequantised in memory)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
