"""From a spec string to weights: ``embedded``, ``hf:PATH`` or a path, resolved to a
:class:`~reflectune.models.source.ModelSource` (converting the embedded model on first use) and
loaded. Every stage that runs a model on this machine (the local oracle, the student scorer,
training, generation) comes through here, so device, dtype and offline rules are decided once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError
from reflectune.models.embedded import ensure_embedded
from reflectune.models.load import load_tokenizer, load_weights
from reflectune.models.runtime import pick_device, pick_dtype
from reflectune.models.source import ModelSource

__all__ = ["load_causal_lm", "resolve_model"]


def resolve_model(spec: str) -> ModelSource:
    """``embedded`` | ``hf:PATH`` | ``PATH`` (a HF folder or a ``.gguf`` file) -> a source."""
    spec = spec.strip()
    if spec in ("", "embedded"):
        return ModelSource("embedded", ensure_embedded())
    raw = spec[3:] if spec.startswith("hf:") else spec
    path = Path(raw).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, path.parent, path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(spec, path, ggufs[0].name)
            raise ConfigError(f"{path}: not a Hugging Face model folder (no config.json) "
                              "and not a single .gguf file")
        return ModelSource(spec, path)
    raise ConfigError(f"model '{spec}' not found: give `embedded`, a model folder or a .gguf file "
                      "(nothing is downloaded from a hub)")


def load_causal_lm(spec: str, *, device: str | None = None, dtype: str | None = None,
                   train: bool = False) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a spec, on the best device, in the best dtype, offline.

    ``train=True`` loads a base for fine-tuning instead: in train mode, left where
    ``from_pretrained`` puts it for the trainer to place, a GGUF dequantised for good (see
    :func:`~reflectune.models.load.load_weights`); ``device`` then only informs the default dtype.

    Example::

        model, tokenizer = load_causal_lm("embedded")            # SmolLM2-135M, bf16 on CPU
        model, tokenizer = load_causal_lm("hf:/models/llama-7b", device="cuda")
        model, tokenizer = load_causal_lm("hf:/models/llama-7b", dtype="float32", train=True)
    """
    source = resolve_model(spec)
    chosen = pick_device(device)
    model = load_weights(source, device=chosen, dtype=pick_dtype(chosen, dtype), train=train)
    return model, load_tokenizer(source)
