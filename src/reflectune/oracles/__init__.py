"""Oracle backends, chosen by name from a lazy registry.

A spec is ``BACKEND:ARG`` (``openai:gpt-4o-mini``, ``hf:/models/llama``, ``hf:model.gguf``) or a bare
name (``embedded``, ``fake``). Backends are imported only when used, so the HTTP path never imports
torch.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from reflectune.errors import ConfigError
from reflectune.oracles.base import Oracle

ORACLES: dict[str, str] = {
    "openai": "reflectune.oracles.openai_http:OpenAIOracle",
    "hf": "reflectune.oracles.local.oracle:HFOracle",
    "embedded": "reflectune.oracles.local.oracle:EmbeddedOracle",
    "fake": "reflectune.oracles.fake:FakeOracle",
}

__all__ = ["ORACLES", "Oracle", "make_oracle", "split_spec"]


def split_spec(spec: str) -> tuple[str, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``; ``"embedded"`` -> ``("embedded", "")``."""
    backend, _, arg = spec.partition(":")
    backend = backend.strip().lower()
    if backend not in ORACLES:
        close = difflib.get_close_matches(backend, ORACLES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown oracle backend '{backend}' in '{spec}'.{hint} "
                          f"Known: {', '.join(sorted(ORACLES))}.")
    return backend, arg.strip()


def make_oracle(spec: str, **options: Any) -> Oracle:
    """Build the oracle a spec names. ``options`` are backend settings (base_url, timeout, ...)."""
    backend, arg = split_spec(spec)
    module_name, _, class_name = ORACLES[backend].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_spec(arg, **options)
