"""USD prices per 1M tokens for common hosted models, and the cost of a call.

Prices change; the table is a convenience and ``--price-in``/``--price-out`` override it. Local
models cost nothing. An unknown hosted model costs ``None`` (reported as unknown, never as 0).
"""

from __future__ import annotations

# (input, output) USD per 1M tokens, as published by the providers (2025-2026 list prices).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


def price_for(spec: str, price_in: float | None = None,
              price_out: float | None = None) -> tuple[float, float] | None:
    """Prices for an oracle spec: explicit overrides win, local backends are free."""
    if price_in is not None or price_out is not None:
        return (price_in or 0.0, price_out or 0.0)
    backend, _, model = spec.partition(":")
    if backend in ("embedded", "hf", "fake"):
        return (0.0, 0.0)
    model = model.lower()
    if model in PRICES:
        return PRICES[model]
    # dated snapshots ("gpt-4o-mini-2024-07-18") take their family's price: longest prefix wins
    for name in sorted(PRICES, key=len, reverse=True):
        if model.startswith(name + "-"):
            return PRICES[name]
    return None


def cost_usd(prices: tuple[float, float] | None, prompt_tokens: int, completion_tokens: int) -> float:
    if prices is None:
        return 0.0
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1_000_000
