"""Canonical JSON and content keys: the identity of anything deterministic.

Every cache key (oracle calls, scores, config hashes) is sha256 over canonical JSON, so two runs that
ask the same question share one answer, whatever process or machine asks it. L1: stdlib only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_key(*parts: Any) -> str:
    """sha256 over canonical JSON: the cache key of anything deterministic."""
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()
