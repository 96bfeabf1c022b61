"""The torch runtime for local models: importing torch, and choosing the device and the dtype.

Kept apart from finding and loading weights because the oracle asks for its dtype (its fingerprint)
before any weights are read, and because OpenMP's wait policy only counts before torch's first
import: :func:`import_torch` is the one door. torch is imported only inside functions.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["cache_keyword", "cpu_has_fast_bf16", "import_torch", "pick_device", "pick_dtype"]


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


def cache_keyword(module: Any) -> str:
    """The keyword ``module.forward`` takes a ready key/value cache by: ``past_key_values`` became
    ``cache`` in transformers 5.x. Shared by the scorer's template heads and the oracle's rows."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
