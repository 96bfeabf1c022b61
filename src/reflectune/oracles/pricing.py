"""USD prices per 1M tokens for common hosted models, and the cost of a call.

Prices change; the table is a convenience and ``--price-in``/``--price-out`` override it. It says
when and where its prices were read (``PRICES_AS_OF``, ``PRICES_SOURCE``), and every place that
shows a price from it or says there is none says so too. Local models cost nothing. An unknown
hosted model costs ``None`` (reported as unknown, never as 0), and a run says so before its first
call (``unknown_price_warning``), not only in its summary.
"""

from __future__ import annotations

#: When the prices below were last checked against the source (a month: list prices change rarely,
#: and a reader needs to know how old they are, not the hour).
PRICES_AS_OF = "2026-03"
#: Where they come from: OpenAI's published list prices (standard tier, no batch or cache discount).
PRICES_SOURCE = "https://openai.com/api/pricing"

# (input, output) USD per 1M tokens, OpenAI's list prices as of PRICES_AS_OF. Only families whose
# variants share the price: a prefix entry ("o3") would price "o3-pro" at o3's rate, a wrong price
# being worse than an unknown one.
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


def price_label() -> str:
    """``OpenAI list prices of 2026-03 (https://openai.com/api/pricing)``: how a price from the table
    is labelled where it is shown."""
    return f"OpenAI list prices of {PRICES_AS_OF} ({PRICES_SOURCE})"


def unknown_price_warning(model: str, *, max_cost: bool = False) -> str:
    """The one line a run prints before its first call when the table has no price for ``model``
    (``max_cost``: a cap was set, which an unknown price never reaches)."""
    cap = " and --max-cost cannot stop the run" if max_cost else ""
    return (f"warning: no list price for the model '{model}' in reflectune's table ({price_label()}): its "
            f"cost will show as unknown{cap}; pass --price-in/--price-out (USD per 1M tokens; 0 for a "
            "server of your own)")
