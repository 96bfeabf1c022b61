"""Rows' keys and values, cut out of a batch cache and merged into the next one.

Local decoding goes on across ``generate`` calls (a forced request's next segment, a row that goes
back to the queue every ``CHUNK_STEPS`` tokens). A :class:`Past` holds what a row has computed; the
next call places it, right-aligned, in a fresh ``DynamicCache`` beside other rows' pasts, and feeds
the model only the tokens that follow. Positions come from the attention mask, so the columns left
empty by alignment shift nothing. torch and transformers are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reflectune.models import cache_keyword

__all__ = ["Past", "can_carry", "cut_row", "layout", "merged_cache", "prefill"]


@dataclass(frozen=True, slots=True)
class Past:
    """Keys and values a row has already computed: for the tokens ``ids``, per layer ``(keys,
    values)`` of shape ``(kv_heads, len(ids), head_dim)``. A forced request's next segment begins
    with the text of the last one, so it reuses them instead of prefilling the prompt again."""

    ids: tuple[int, ...]
    layers: tuple[tuple[Any, Any], ...]

    @property
    def nbytes(self) -> int:
        return sum(k.nelement() * k.element_size() + v.nelement() * v.element_size()
                   for k, v in self.layers)

    def reusable(self, ids: Sequence[int]) -> int:
        """How many leading tokens of ``ids`` these keys and values cover: the common prefix, less
        one, since the model must see at least one new token to give the next token's logits."""
        n = 0
        for a, b in zip(self.ids, ids, strict=False):
            if a != b:
                break
            n += 1
        return min(n, len(ids) - 1)


def can_carry(model: Any) -> bool:
    """Whether rows' keys and values can be cut out and merged again: a plain dynamic cache, where
    every layer keeps every position (not sliding windows, not recurrent states)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # an architecture this cache does not describe
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def merged_cache(model: Any, pasts: Sequence[Past | None], reuse: Sequence[int], cached: int) -> Any:
    """A ``DynamicCache`` for a batch: row b's first ``reuse[b]`` keys and values (of ``pasts[b]``),
    right-aligned in ``cached`` columns (the columns to their left are masked out)."""
    from transformers import DynamicCache

    if not cached:
        return DynamicCache(config=model.config)
    template = next(past for past, r in zip(pasts, reuse, strict=True) if r)
    assert template is not None
    layers = []
    for index, (k0, v0) in enumerate(template.layers):
        keys = k0.new_zeros((len(pasts), k0.shape[0], cached, k0.shape[-1]))
        values = v0.new_zeros((len(pasts), v0.shape[0], cached, v0.shape[-1]))
        for b, (past, r) in enumerate(zip(pasts, reuse, strict=True)):
            if r:
                assert past is not None
                k, v = past.layers[index]
                keys[b, :, cached - r:] = k[:, :r]
                values[b, :, cached - r:] = v[:, :r]
        layers.append((keys, values))
    return DynamicCache(layers, config=model.config)


def layout(ids: Sequence[Sequence[int]], reuse: Sequence[int], lengths: Sequence[int], pad_id: int
           ) -> tuple[Any, Any, int]:
    """``[cached | new]`` ids and attention mask: each row's reused tokens right-aligned in the
    cached columns, the rest of its first ``lengths[b]`` ids left-padded after them. Positions come
    from the mask, so the holes shift nothing."""
    import torch

    cached = max(reuse)
    start = cached + max(n - r for n, r in zip(lengths, reuse, strict=True))
    input_ids = torch.full((len(ids), start), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), start), dtype=torch.long)
    for b, (row, r, n) in enumerate(zip(ids, reuse, lengths, strict=True)):
        input_ids[b, cached - r:cached] = torch.tensor(row[:r], dtype=torch.long)
        mask[b, cached - r:cached] = 1
        input_ids[b, start - (n - r):] = torch.tensor(row[r:n], dtype=torch.long)
        mask[b, start - (n - r):] = 1
    return input_ids, mask, cached


def cut_row(cache: Any, b: int, columns: Any, ids: tuple[int, ...]) -> Past:
    """Row ``b``'s keys and values at ``columns`` of a batch cache, as a compact ``Past``."""
    return Past(ids, tuple((layer.keys[b].index_select(1, columns), layer.values[b].index_select(1, columns))
                           for layer in cache.layers))


def prefill(model: Any, ids: Sequence[Sequence[int]], pasts: Sequence[Past | None], reuse: Sequence[int],
            pad_id: int) -> list[Past]:
    """Keys and values of every row's ids but the last, in one forward over these rows only.

    Decoding then feeds each row a single token, so rows that start a prompt and rows deep in their
    answer share one ``generate`` without padding the latter to the prompt's length."""
    import inspect

    import torch

    input_ids, mask, cached = layout(ids, reuse, [len(row) - 1 for row in ids], pad_id)
    cache = merged_cache(model, pasts, reuse, cached)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model.device
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with torch.inference_mode():
        model(input_ids=input_ids[:, cached:].to(device), attention_mask=mask.to(device),
              position_ids=positions[:, cached:].to(device), use_cache=True,
              **{cache_keyword(model): cache}, **extra)
    return [cut_row(cache, b, mask[b].nonzero().flatten().to(device), tuple(row[:-1]))
            for b, row in enumerate(ids)]
