"""Mean target NLL for a batch of packed sequences, without full-vocabulary logits everywhere.

The reference scorer runs ``model(ids, labels=...)``: logits for *every* position over the 49,152-word
vocabulary, upcast to fp32, then a log-softmax, one sample at a time. Most positions are prompt
tokens whose logits are thrown away. Here the body runs once over a right-padded batch, the hidden
states of the positions that predict a counted target token are gathered, and only those go through
the LM head, in chunks, into ``cross_entropy(reduction="none")``. Same arithmetic per token (the head
output is upcast to fp32 before the softmax, as transformers' loss does), a fraction of the work and
memory. torch is imported inside functions only.

A batch whose items share a constant template opening (``Item.head``: the vicuna system line, the
fixed "Below is the response..." line) runs only what follows it: the head's keys and values are
computed once (``HeadCache``) and handed to every batch of its group as ``past_key_values``. Same
attention, same positions, fewer tokens through the body (about a quarter fewer on Alpaca).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reflectune.scoring.batching import Item

#: target positions projected through the LM head at once (x vocab x 4 bytes of fp32 logits).
HEAD_CHUNK = 1024


def _split_model(model: Any) -> tuple[Any, Any] | None:
    """(body, head) when the model is the usual ``<base> + lm_head`` pair, else None."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or body is model:
        return None
    return body, head


def _shareable(model: Any) -> bool:
    """Prefix sharing needs the plain body/head split and no sliding-window layers."""
    config = model.config
    return (_split_model(model) is not None and not getattr(config, "sliding_window", None)
            and not getattr(config, "is_encoder_decoder", False))


class HeadCache:
    """Keys and values of each shared head, computed once per model (batch of one)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.enabled = _shareable(model)
        self._cache: dict[tuple[int, ...], Any] = {}
        self.cache_arg = "past_key_values"
        if self.enabled:
            from reflectune.models import cache_keyword

            body, _ = _split_model(model)  # type: ignore[misc]
            self.cache_arg = cache_keyword(body)

    def get(self, head: tuple[int, ...]) -> Any:
        import torch

        if head not in self._cache:
            body, _ = _split_model(self.model)  # type: ignore[misc]
            device = next(self.model.parameters()).device
            with torch.inference_mode():
                out = body(input_ids=torch.tensor([head], device=device), use_cache=True)
            cache = getattr(out, "past_key_values", None) or out.cache
            self._cache[head] = [(layer.keys, layer.values) for layer in cache.layers]
        return self._cache[head]

    def expanded(self, head: tuple[int, ...], batch: int) -> Any:
        """A fresh ``DynamicCache`` holding the head for ``batch`` rows (the forward appends to it)."""
        from transformers import DynamicCache

        layers = [(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
                  for k, v in self.get(head)]
        return DynamicCache(layers, config=self.model.config)


def _post_logits(model: Any, logits: Any) -> Any:
    """Architectures that rescale or soft-cap logits after the head (Cohere, Gemma 2)."""
    import torch

    config = model.config
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, int | float) and scale != 1:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def batch_losses(model: Any, batch: Sequence[Item], *, pad_id: int = 0, heads: HeadCache | None = None,
                 head_chunk: int = HEAD_CHUNK) -> list[tuple[float, int]]:
    """Mean NLL over each item's counted target tokens, and how many tokens counted.

    Args:
        model: a transformers causal LM in eval mode.
        batch: items to run together; each must have ``n_counted > 0``.
        pad_id: any valid id; padded positions are masked and never read.
        heads: the shared-head cache; without it (or for a model that cannot share) every item runs
            in full. All items of a batch must have the same ``head``.

    Returns:
        ``[(mean_nll, n_counted), ...]`` in the order of ``batch``.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    head = batch[0].head if heads is not None and heads.enabled else ()
    if any(item.head != batch[0].head for item in batch):
        raise ValueError("batch_losses needs one shared head per batch (see batching.pack)")
    skip = len(head)  # positions [0, skip) come from the head cache
    width = max(len(item) for item in batch) - skip
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), skip + width), dtype=torch.long)
    attention[:, :skip] = 1
    # 1. Gather (row, hidden position, next token) for every counted target token.
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    for row, item in enumerate(batch):
        n = len(item)
        input_ids[row, :n - skip] = torch.tensor(item.ids[skip:], dtype=torch.long)
        attention[row, skip:n] = 1
        first = max(item.start, 1)
        rows.extend([row] * (n - first))
        cols.extend(range(first - 1 - skip, n - 1 - skip))  # hidden state at j-1 predicts token j
        targets.extend(item.ids[first:])
    counts = torch.tensor([item.n_counted for item in batch], dtype=torch.float64)
    if (counts == 0).any():
        raise ValueError("batch_losses got an item with no counted target token")
    row_index = torch.tensor(rows, dtype=torch.long)
    col_index = torch.tensor(cols, dtype=torch.long)
    target_ids = torch.tensor(targets, dtype=torch.long, device=device)

    with torch.inference_mode():
        split = _split_model(model)
        input_ids, attention = input_ids.to(device), attention.to(device)
        if split is not None:
            # 2. Body once over the padded batch: [B, T, H]; then only the needed rows: [N, H].
            body, lm_head = split
            if skip:
                assert heads is not None
                hidden = body(input_ids=input_ids, attention_mask=attention, use_cache=True,
                              **{heads.cache_arg: heads.expanded(head, len(batch))}).last_hidden_state
            else:
                hidden = body(input_ids=input_ids, attention_mask=attention,
                              use_cache=False).last_hidden_state
            picked = hidden[row_index.to(device), col_index.to(device)]
            del hidden
            losses = torch.empty(len(targets), dtype=torch.float32, device=device)
            # 3. LM head and fp32 cross-entropy chunk by chunk: at most [head_chunk, V] logits live.
            for lo in range(0, len(targets), head_chunk):
                logits = _post_logits(model, lm_head(picked[lo:lo + head_chunk])).float()
                losses[lo:lo + head_chunk] = F.cross_entropy(logits, target_ids[lo:lo + head_chunk],
                                                             reduction="none")
        else:  # unknown layout: full logits for this one batch
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            picked = logits[row_index.to(device), col_index.to(device)].float()
            losses = F.cross_entropy(picked, target_ids, reduction="none")
        # 4. Per-item mean: segment sums in fp64.
        sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(
            0, row_index, losses.double().cpu())
    means = (sums / counts).tolist()
    return [(float(m), int(c)) for m, c in zip(means, counts.tolist(), strict=True)]
