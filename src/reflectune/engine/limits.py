"""Client-side rate limits: requests per minute and tokens per minute.

A token bucket per limit, refilled continuously, with one second of burst. A request whose token
estimate exceeds the bucket may drive it negative (debt), so a single large request is never
blocked forever; later requests then wait for the debt to clear. One event loop, no locks needed
beyond an ``asyncio.Lock`` that keeps waiters in FIFO order.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, per_minute: float, *, burst_seconds: float = 1.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float = 1.0) -> None:
        async with self._lock:
            self._refill()
            if self.level < min(amount, self.capacity):
                need = min(amount, self.capacity) - self.level
                await asyncio.sleep(need / self.rate)
                self._refill()
            self.level -= amount


class RateLimiter:
    """Combined RPM and TPM limits; either may be ``None`` (unlimited)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self._requests = TokenBucket(rpm) if rpm else None
        self._tokens = TokenBucket(tpm) if tpm else None

    async def acquire(self, tokens: int) -> None:
        if self._requests is not None:
            await self._requests.take(1.0)
        if self._tokens is not None:
            await self._tokens.take(float(tokens))
