"""Canonical JSON and content keys: the identity of anything deterministic.

Every cache key (oracle calls, scores, config hashes) is sha256 over canonical JSON, so two runs that
ask the same question share one answer, whatever process or machine asks it. L1: stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_key(*parts: Any) -> str:
    """sha256 over canonical JSON: the cache key of anything deterministic.

    The JSON is hashed as UTF-8. A lone surrogate (a file name decoded with ``surrogateescape``, a
    server's ``"\\ud800"``), which UTF-8 cannot hold, is hashed as its ``surrogatepass`` bytes: never a
    valid UTF-8 sequence, so it collides with no real string, and every other string's key is
    unchanged.
    """
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8", "surrogatepass")).hexdigest()


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def redact_url(url: str) -> str:
    """``url`` without its credentials: userinfo becomes ``***@``, every query value ``***``.

    The one place a URL is made fit to write (run.json, config hashes, reports, error messages). A URL
    without credentials comes back unchanged, character for character, so its config hash is stable.
    A fragment is replaced whole (``#***``): OAuth-style links carry tokens there.

    Example:
        >>> redact_url("https://user:pass@host:8443/v1?api-key=SECRET&x=1")
        'https://***@host:8443/v1?api-key=***&x=***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):  # no scheme: the authority, if any, starts at once
        scheme, sep, rest = "", "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    tail, hash_, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    if question:
        query = "&".join(
            f"{item.partition('=')[0]}=***" if "=" in item else ("***" if item else "")
            for item in query.split("&")
        )
    return (f"{scheme}{sep}{authority}{path}{question}{query}"
            f"{hash_ + '***' if hash_ and fragment else hash_}")


def text_key(instruction: str, input: str, output: str) -> str:
    """A short hash of a candidate's texts: the ``text_key`` of its ``scores.jsonl`` entry."""
    blob = json.dumps([instruction, input, output], ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:16]
