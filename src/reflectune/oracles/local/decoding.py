"""Chunked batched decoding: one ``model.generate`` over rows that each carry their own budget,
stop strings and keys and values.

Rows are left-padded; ``generate`` derives position ids from the attention mask, so a row's tokens
do not depend on its neighbours (up to rounding). Each row ends on its own terms
(:mod:`~reflectune.oracles.local.stopping`). Rows carry their keys and values from call to call
(:mod:`~reflectune.oracles.local.kv_rows`): a call decodes at most ``max_steps`` tokens, then rows
that have not ended come back to go on in a later call beside new ones (continuous batching), and
a forced request's next segment does not prefill its prompt again.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reflectune.models import cache_keyword
from reflectune.oracles.local.kv_rows import Past, can_carry, cut_row, layout, merged_cache, prefill
from reflectune.oracles.local.rows import Row, RowResult, Sampling
from reflectune.oracles.local.stopping import NoEmptySection, RowStopper, vocab_classes

__all__ = ["generate_rows"]


def generate_rows(model: Any, tokenizer: Any, rows: Sequence[Row], sampling: Sampling, *,
                  eos_ids: set[int], pad_id: int, max_steps: int | None = None) -> list[RowResult]:
    """Continue every row in one batched ``generate`` call; rows with no budget get ``""``.

    Without ``max_steps`` (or for a model whose cache cannot be cut into rows: ``can_carry``) this
    is one left-padded ``generate`` until every row has ended. With it, rows carry keys and values
    (``Row.past``): the rows that need more than one new token are prefilled first, on their own,
    then all decode together for at most ``max_steps`` tokens, and rows that have not ended come
    back as ``"more"``, with their ``past``, to go on in a later call beside other rows. That is
    continuous batching at the granularity of ``max_steps``: a row that ends early frees its slot.

    Example::

        [result] = generate_rows(model, tok, [Row(ids, 32, ("[End]",))], Sampling(),
                                 eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id)
    """
    import dataclasses

    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    results: list[RowResult] = [RowResult("", 0, "length")] * len(rows)
    live = [i for i, row in enumerate(rows) if row.budget > 0]
    if not live:
        return results
    batch = [rows[i] for i in live]
    carry = can_carry(model) and (max_steps is not None or any(row.keep or row.past for row in batch))
    if not carry:
        batch = [dataclasses.replace(row, past=None, keep=False) for row in batch]
    reuse = [row.reuse for row in batch]
    # 1. rows that need more than one new token are prefilled on their own first (with ``max_steps``)
    fresh = [b for b, row in enumerate(batch) if len(row.ids) - reuse[b] > 1] if max_steps and carry else []
    if fresh:
        pasts = prefill(model, [batch[b].ids for b in fresh], [batch[b].past for b in fresh],
                        [reuse[b] for b in fresh], pad_id)
        for b, prefilled in zip(fresh, pasts, strict=True):
            batch[b] = dataclasses.replace(batch[b], past=prefilled)
            reuse[b] = len(batch[b].ids) - 1
    input_ids, mask, cached = layout([row.ids for row in batch], reuse, [len(row.ids) for row in batch],
                                     pad_id)
    start = input_ids.shape[1]
    cache = merged_cache(model, [row.past for row in batch], reuse, cached) if carry else None
    # 2. one generate; the stopper ends each row on its own terms
    stopper = RowStopper(tokenizer, start, batch, eos_ids)
    guards = ([NoEmptySection(start, batch, eos_ids, vocab_classes(tokenizer))]
              if any(row.end_loops for row in batch) else [])
    sample = sampling.temperature > 0
    steps_cap = max(row.budget for row in batch)
    config = GenerationConfig(
        max_new_tokens=min(steps_cap, max_steps) if max_steps and carry else steps_cap,
        do_sample=sample, num_beams=1, pad_token_id=pad_id, eos_token_id=sorted(eos_ids), use_cache=True,
        **({"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0} if sample else {}))
    if sample and sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    device = model.device
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             generation_config=config, stopping_criteria=StoppingCriteriaList([stopper]),
                             logits_processor=LogitsProcessorList(guards),
                             **({cache_keyword(model): cache} if cache is not None else {}))
    # 3. (B, start + T) -> each row's own tokens, up to where the stopper ended it
    generated = out[:, start:].tolist()
    steps = out.shape[1] - start
    # the cache holds every fed position: the inputs and all generated tokens but the last
    cut = cache is not None and cache.layers[0].keys.shape[-2] == start + steps - 1
    for b, i in enumerate(live):
        row = batch[b]
        end, ended = stopper.end[b], stopper.reason[b]
        if end is None:  # still going when the call's steps ran out
            end, ended = steps, ("length" if steps >= row.budget else "more")
        new = generated[b][:end]
        segment = [*row.prior, *new]
        kept = segment[:stopper.loop[b]] if ended == "loop" else segment
        past: Past | None = None
        if (row.keep or ended == "more") and cut:
            fed = min(len(new), steps - 1)
            columns = torch.cat([mask[b].nonzero().flatten(), torch.arange(start, start + fed)])
            past = cut_row(cache, b, columns.to(device), (*row.ids, *new[:fed]))
        if ended == "eos":
            kept = kept[:-1]
        results[i] = RowResult(tokenizer.decode(kept, skip_special_tokens=True), end, ended, past,
                               tuple(new))
    return results
