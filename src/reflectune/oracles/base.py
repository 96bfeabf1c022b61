"""The one seam between the engine and any model that answers chat requests.

An oracle knows how to send messages and nothing about prompts, parsing, retries or storage.
Failures are raised as ``OracleError`` subclasses so the engine alone decides what to retry.
Keys and URLs are configuration, not subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from reflectune.types import ChatRequest, Completion


@runtime_checkable
class Oracle(Protocol):
    name: str
    #: The model's context window in tokens, used for the default ``max_tokens``.
    context: int

    def fingerprint(self) -> str:
        """Stable identity for cache keys: model, weights, backend; never a secret."""
        ...

    def count_tokens(self, text: str) -> int:
        """Token count of ``text`` for budgets and dry runs (exact where the backend can)."""
        ...

    async def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer ``requests`` in order, or raise an ``OracleError`` for the whole call."""
        ...

    async def aclose(self) -> None:
        ...
