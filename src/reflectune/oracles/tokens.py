"""Token counts for budgets and dry runs, without touching the network.

tiktoken fetches its BPE tables from the internet on first use, which reflectune must never do
at run time. So tiktoken is used only when its table is already in the local cache
(``TIKTOKEN_CACHE_DIR``); otherwise counts fall back to a documented estimate of one token per
four characters, which is within about 10-20 % for English prose. Local models count with their
own tokenizer instead (see the hf backend).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def _encoding_name(model: str) -> str:
    return "cl100k_base" if model.startswith(("gpt-3.5", "gpt-4-", "gpt-4")) and \
        not model.startswith(("gpt-4o", "gpt-4.1")) else "o200k_base"


@functools.lru_cache(maxsize=4)
def _cached_encoding(name: str) -> Any | None:
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or Path(tempfile.gettempdir()) / "data-gym-cache")
    blob = cache / hashlib.sha1(_ENCODING_URLS[name].encode()).hexdigest()
    if not blob.is_file():
        return None
    try:
        import tiktoken

        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding(name)
    except Exception:  # a corrupt cache must not break a run; fall back to the estimate
        return None


def exact_tokens_available(model: str) -> bool:
    return _cached_encoding(_encoding_name(model)) is not None


def approx_tokens(text: str, model: str = "") -> int:
    """tiktoken's count when its table is cached locally, else ``ceil(len/4)``."""
    encoding = _cached_encoding(_encoding_name(model))
    if encoding is not None:
        return len(encoding.encode(text, disallowed_special=()))
    return (len(text) + 3) // 4


#: Tokens the chat format adds around each message, and to prime the reply (OpenAI's cookbook figures
#: for its chat models; close enough for any chat template when a server sends no counts).
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3


def chat_prompt_tokens(contents: Iterable[str], count: Callable[[str], int]) -> int:
    """An estimate of a chat prompt's tokens: ``count`` over each message plus the format's overhead."""
    texts = list(contents)
    return sum(count(text) + MESSAGE_OVERHEAD for text in texts) + REPLY_OVERHEAD
