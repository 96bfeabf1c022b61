"""What a dry run may do with an oracle: count tokens without its key, and time a local model.

A dry run is what a user runs *before* getting a key, so an HTTP oracle is built for counting with a
placeholder that is never sent (nothing is). Time is a local model's cost, so a local oracle is timed
by a short measured probe: a few greedy tokens of the real first prompt, batched as the run would be.
The estimate is a range (the expected completion tokens to the most the run may ask for), because
decode speed varies with length and batch; the probe's own figure is shown beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from reflectune.config import OracleConfig
from reflectune.errors import ReflectuneError

__all__ = ["PROBE_TOKENS", "DecodeProbe", "ProbeRate", "is_local", "without_key"]

#: new tokens per request of the probe: enough to pass the prefill, short enough to cost seconds
PROBE_TOKENS = 24
_PLACEHOLDER = "dry-run-placeholder-never-sent"


def is_local(spec: str) -> bool:
    """A model this machine runs (its cost is time), as opposed to a hosted API (its cost is money)."""
    return not spec.startswith(("openai:", "anthropic:"))


@contextlib.contextmanager
def without_key(oracle: OracleConfig) -> Iterator[str | None]:
    """Let an HTTP oracle be built for counting while its key is unset; yields the note to show."""
    name = oracle.api_key_env
    if is_local(oracle.spec) or os.environ.get(name):
        yield None
        return
    os.environ[name] = _PLACEHOLDER
    try:
        yield f"{name} is not set: the real run needs it"
    finally:
        if os.environ.get(name) == _PLACEHOLDER:
            del os.environ[name]


@dataclass(frozen=True)
class ProbeRate:
    """A measured decode rate: new tokens per second over a batch of ``requests`` requests."""

    tokens_per_s: float
    tokens: int
    seconds: float
    requests: int

    def seconds_for(self, tokens: int) -> float:
        return tokens / self.tokens_per_s

    def describe(self) -> str:
        return (f"probe: {self.tokens:,} tokens in {self.seconds:.1f} s = {self.tokens_per_s:,.0f} tok/s "
                f"decoding ({self.requests} request(s) in one batch)")


class DecodeProbe:
    """Decode tokens/s of each local model, measured once per model on a real prompt."""

    def __init__(self) -> None:
        self.rates: dict[str, ProbeRate | None] = {}

    def rate(self, oracle: OracleConfig, prompt: str) -> ProbeRate | None:
        """The model's rate, or ``None`` for a hosted model (or when the probe could not run)."""
        if not is_local(oracle.spec):
            return None
        key = oracle.canonical()
        if key not in self.rates:
            self.rates[key] = asyncio.run(self._measure(oracle, prompt))
        return self.rates[key]

    async def _measure(self, oracle: OracleConfig, prompt: str) -> ProbeRate | None:
        from reflectune.oracles import make_oracle
        from reflectune.types import ChatRequest, Message

        backend = make_oracle(oracle)
        try:
            warm = ChatRequest(messages=(Message("user", "Hi"),), max_tokens=2, temperature=0.0)
            await backend.complete([warm])  # loads the weights: not part of the rate
            batch = [ChatRequest(messages=(Message("user", prompt[:2000]),), max_tokens=PROBE_TOKENS,
                                 temperature=0.0)] * max(1, oracle.batch_size)
            began = time.monotonic()
            done = await backend.complete(batch)
            elapsed = time.monotonic() - began
            tokens = sum(c.completion_tokens or 0 for c in done)
            if elapsed <= 0 or not tokens:
                return None
            return ProbeRate(tokens / elapsed, tokens, elapsed, len(batch))
        except ReflectuneError:
            return None
        finally:
            await backend.aclose()
