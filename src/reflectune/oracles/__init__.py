"""Oracle backends, chosen by name from a lazy registry.

A spec is ``BACKEND:ARG`` (``openai:gpt-4o-mini``, ``hf:/models/llama``, ``hf:model.gguf``) or a bare
name (``embedded``, ``fake``). Backends are imported only when used, so the HTTP path never imports
torch.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

from reflectune.config import OracleConfig, validated
from reflectune.errors import ConfigError
from reflectune.oracles.base import Capabilities, Oracle

ORACLES: dict[str, str] = {
    "openai": "reflectune.oracles.openai_http:OpenAIOracle",
    "hf": "reflectune.oracles.local.oracle:HFOracle",
    "embedded": "reflectune.oracles.local.oracle:EmbeddedOracle",
    "fake": "reflectune.oracles.fake:FakeOracle",
}

__all__ = ["ORACLES", "Capabilities", "Oracle", "make_oracle", "model_name", "resolve_spec", "split_spec"]


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


def resolve_spec(model: str) -> str:
    """A model argument as an oracle spec: a bare path (folder or ``.gguf``) means ``hf:PATH``.

    Example:
        >>> resolve_spec("embedded"), resolve_spec("openai:gpt-4o")
        ('embedded', 'openai:gpt-4o')
    """
    model = model.strip()
    if not model:
        raise ConfigError("no model given: pass embedded, hf:PATH, a model folder, or openai:MODEL")
    backend = model.partition(":")[0].lower()
    if backend in ORACLES and not (len(backend) == 1 and Path(model).exists()):  # "C:\\..." is a path
        return model
    if Path(model).exists() or model.lower().endswith(".gguf") or "/" in model:
        return f"hf:{model}"
    return model  # make_oracle gives the "unknown backend, did you mean" error


def model_name(spec: str) -> str:
    """The model's own name for a spec (not the backend's), e.g. for AlpacaEval's ``generator``."""
    backend, _, arg = spec.partition(":")
    if backend == "embedded":
        from reflectune.models import EMBEDDED_NAME

        return EMBEDDED_NAME
    if not arg:
        return backend
    path = Path(arg.rstrip("/"))
    name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return name or arg


def make_oracle(spec: str | OracleConfig, *, session: Any = None, **options: Any) -> Oracle:
    """Build the oracle a spec (or an ``OracleConfig``) names.

    ``options`` are ``OracleConfig`` fields (base_url, timeout, batch_size, ...) or options of that
    backend alone (``num_threads`` for local models). A config's fields that a backend has no use for
    are not passed to it; a name that is neither fails, with the closest known name.
    """
    if isinstance(spec, OracleConfig):
        config = spec
    else:
        shared = {k: options.pop(k) for k in list(options) if k in OracleConfig.model_fields}
        config = validated(OracleConfig, spec=spec, **shared)
    backend, arg = split_spec(config.spec)
    module_name, _, class_name = ORACLES[backend].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = inspect.signature(cls.from_spec).parameters
    if config.template is not None and "template" not in accepted:
        raise ConfigError(f"--template applies to local models (embedded, hf:PATH), not {config.spec}; "
                          "the server applies its own chat template")
    http_only = [flag for flag, given in (("--extra-body", config.extra_body), ("--header", config.headers),
                                          ("--request-rules", config.request_rules != "auto")) if given]
    if http_only and "extra_body" not in accepted:
        raise ConfigError(f"{http_only[0]} applies to HTTP oracles (openai:MODEL), not {config.spec}: "
                          "nothing else sends a request body")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = sorted({*OracleConfig.model_fields, *accepted} - {"arg", "spec", "session"})
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown option '{unknown[0]}' for the {backend} oracle.{hint}")
    values = config.model_dump(exclude={"spec"}) | options
    if session is not None:
        values["session"] = session
    return cls.from_spec(arg, **{k: v for k, v in values.items() if k in accepted})
