"""The one seam between the engine and any model that answers chat requests.

An oracle knows how to send messages and nothing about prompts, parsing, retries or storage.
Failures are raised as ``OracleError`` subclasses so the engine alone decides what to retry.
Keys and URLs are configuration, not subclasses.

What a backend *can* do is declared, not sniffed: ``capabilities`` says whether it can prefill the
assistant turn (force the reflection format), whether its token counts are exact, how many requests
it wants in flight, what a token costs, and (local models) the prompt format it renders with.
Stages read these; none tests a backend by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reflectune.types import ChatRequest, Completion

#: USD per 1M (prompt, completion) tokens.
Prices = tuple[float, float]
FREE: Prices = (0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do, declared by the backend itself."""

    #: It forces the reflection format when a request names ``ChatRequest.sections``: it writes the
    #: markers into the assistant turn itself (local models, ``--forcing prefill``) or constrains the
    #: answer to them (``--forcing grammar``).
    prefill: bool = False
    #: ``count_tokens`` uses the model's own tokenizer (dry-run estimates are exact).
    exact_tokens: bool = False
    #: Requests it wants in flight to stay busy (local batching); ``None``: the engine's default.
    concurrency: int | None = None
    #: List price; ``None`` when unknown (reported as unknown, never as free).
    price: Prices | None = FREE
    #: Its endpoint can be misconfigured (a key, a URL): the engine proves it with one call first.
    preflight: bool = False
    #: ``context`` is the model's real window (not a guess): a longer prompt fails before it is sent.
    context_known: bool = True
    #: The prompt format a local backend renders chat requests with (a student template, or
    #: ``chat``: the model's chat template), for the records; ``None``: the server applies its own.
    template: str | None = None


@runtime_checkable
class Oracle(Protocol):
    name: str
    #: The model's context window in tokens, used for the default ``max_tokens``.
    context: int
    capabilities: Capabilities

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
