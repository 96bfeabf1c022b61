"""The embedded model's one-time conversion: the wheel's GGUF, checksum verified, dequantised once
into a safetensors copy in the user cache (about 2 s to load instead of about 15-30 s). A file lock
makes two processes starting together convert it once. Its own module because it both finds
(:mod:`~reflectune.models.source`) and loads (:mod:`~reflectune.models.load`) weights.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError
from reflectune.models.load import dequantise, load_tokenizer, load_weights
from reflectune.models.source import (
    CONVERTED_MARK,
    EMBEDDED_SHA256,
    EMBEDDED_WHEEL,
    ModelSource,
    embedded_converted_dir,
    embedded_gguf_path,
    sha256_file,
)

__all__ = ["ensure_embedded"]


def ensure_embedded(log: Any = None) -> Path:
    """Return the converted safetensors folder of the embedded model, converting it once.

    The GGUF's checksum is verified before conversion; the copy is marked complete only after
    ``save_pretrained`` finished, and built in a temporary folder renamed into place.
    """
    target = embedded_converted_dir()
    if (target / CONVERTED_MARK).is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=900):
        if (target / CONVERTED_MARK).is_file():  # another process converted it while we waited
            return target
        gguf = embedded_gguf_path()
        actual = sha256_file(gguf)
        if actual != EMBEDDED_SHA256:
            raise ConfigError(f"{gguf}: checksum mismatch (sha256 {actual[:16]}..., expected "
                              f"{EMBEDDED_SHA256[:16]}...); reinstall `{EMBEDDED_WHEEL}`")
        if log:
            log(f"converting the embedded model once into {target} (about 30 s)")
        started = time.monotonic()
        source = ModelSource("embedded", gguf.parent, gguf.name)
        model = load_weights(source, device="cpu", dtype="bfloat16")
        tokenizer = load_tokenizer(source)
        dequantise(model)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARK).write_text(json.dumps({
            "source": str(gguf), "sha256": EMBEDDED_SHA256,
            "seconds": round(time.monotonic() - started, 2)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target
