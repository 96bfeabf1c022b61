"""The call executor and its limits."""

from reflectune.engine.limits import RateLimiter, TokenBucket
from reflectune.engine.runner import Engine, EngineStats

__all__ = ["Engine", "EngineStats", "RateLimiter", "TokenBucket"]
