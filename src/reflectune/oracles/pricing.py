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


def list_price(model: str) -> tuple[float, float] | None:
    """A hosted model's list price; dated snapshots ("gpt-4o-mini-2024-07-18") take their family's."""
    model = model.lower()
    if model in PRICES:
        return PRICES[model]
    for name in sorted(PRICES, key=len, reverse=True):  # longest prefix wins
        if model.startswith(name + "-"):
            return PRICES[name]
    return None


def with_overrides(price: tuple[float, float] | None, price_in: float | None = None,
                   price_out: float | None = None) -> tuple[float, float] | None:
    """The price a run pays: explicit ``--price-in``/``--price-out`` win over the backend's own."""
    if price_in is not None or price_out is not None:
        return (price_in or 0.0, price_out or 0.0)
    return price


def cost_usd(prices: tuple[float, float] | None, prompt_tokens: int, completion_tokens: int) -> float:
    if prices is None:
        return 0.0
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1_000_000
