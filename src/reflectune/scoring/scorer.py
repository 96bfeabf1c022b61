"""The IFD scorer: candidates in, four losses and the two ratios out, cached per computation.

``IFDScorer.score`` takes a chunk of (instruction, input, output) candidates and reads top to bottom:

1. tokenize every text of the chunk once, build the four items of each candidate (``batching``);
2. deduplicate items by content key (ori and A share Q_direct; Q and QA share theirs);
3. look the keys up in the store, so a rerun computes only what is missing;
4. pack the rest longest-first under a padded-token budget and run the model batch by batch
   (``losses``), committing each batch to the store before the next starts;
5. assemble each candidate's losses into IFD and r-IFD.

The store is optional (tests and the benchmark run without one). The model is loaded only when the
first missing item needs it, so a fully cached rerun never loads weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reflectune.scoring.batching import IFD_STATS, STATS, Item, Tokenized, pack
from reflectune.scoring.losses import HeadCache, batch_losses
from reflectune.scoring.rules import CandidateScores
from reflectune.store.calls import Store


@dataclass
class ScorerStats:
    """What the scorer did so far: ``computed`` items ran on the model, ``cached`` came from the store."""

    computed: int = 0
    cached: int = 0
    empty: int = 0           # unique items with no target token left (NaN)
    tokens: int = 0          # tokens of the scored sequences (shared heads counted in full)
    model_tokens: int = 0    # tokens that actually went through the body (shared heads once)
    padded_tokens: int = 0   # batch width x rows, after the shared head
    batches: int = 0
    compute_seconds: float = 0.0
    load_seconds: float = 0.0
    queued_tokens: int = 0   # tokens the current ``losses`` call has to compute (progress)
    _seen: set[bytes] = field(default_factory=set, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.compute_seconds if self.compute_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"computed": self.computed, "cached": self.cached, "empty_targets": self.empty,
                "tokens": self.tokens, "model_tokens": self.model_tokens,
                "padded_tokens": self.padded_tokens, "batches": self.batches,
                "compute_seconds": round(self.compute_seconds, 3),
                "load_seconds": round(self.load_seconds, 3),
                "tokens_per_s": round(self.tokens_per_s, 1)}


BatchCallback = Callable[[ScorerStats], None]


class IFDScorer:
    """Score candidates with one student, exactly and in batches.

    Args:
        tokenizer: the student's tokenizer.
        model: the loaded student, or None with ``load_model`` to load it on first need.
        template: student prompt template (``vicuna``, ``alpaca``, ``wiz``, ``chat``).
        max_length: tokens per conditioned sequence; the target is truncated, never the prompt.
        batch_tokens: padded tokens per forward pass.
        store, namespace: where finished computations are committed and looked up (optional).
        on_batch: called with the running stats after each committed batch.
        compute: computes a batch's ``[(mean_nll, n_counted), ...]`` instead of the transformers
            model (the vLLM path, ``VLLMLosses``); then ``model`` and ``load_model`` are not needed.

    Example::

        model, tok = load_causal_lm("embedded", dtype="float32")
        scores = IFDScorer(tok, model).score([("Name a colour.", "", "Blue.")])
        scores[0].ifd
    """

    def __init__(self, tokenizer: Any, model: Any = None, *, load_model: Callable[[], Any] | None = None,
                 template: str = "vicuna", max_length: int = 2048, batch_tokens: int = 8192,
                 store: Store | None = None, namespace: str = "ifd",
                 on_batch: BatchCallback | None = None,
                 compute: Callable[[Sequence[Item]], list[tuple[float, int]]] | None = None,
                 prompts_dir: str | None = None) -> None:
        if model is None and load_model is None and compute is None:
            raise ValueError("IFDScorer needs a model, a load_model callable or a compute callable")
        if batch_tokens < 1:
            raise ValueError("batch_tokens must be positive")
        self.tokenizer = tokenizer
        self.model = model
        self._load_model = load_model
        self.tokens = Tokenized(tokenizer, template=template, max_length=max_length, prompts_dir=prompts_dir)
        self.batch_tokens = batch_tokens
        self.store = store
        self.namespace = namespace
        self.on_batch = on_batch
        self._compute = compute
        self.stats = ScorerStats()
        self._heads: HeadCache | None = None
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    def _model(self) -> Any:
        if self.model is None:
            assert self._load_model is not None
            started = time.monotonic()
            self.model = self._load_model()
            self.stats.load_seconds += time.monotonic() - started
        if self._heads is None:
            self._heads = HeadCache(self.model)
        return self.model

    @property
    def shares_heads(self) -> bool:
        """Whether batches skip their shared template head (known once the model is loaded): then a
        batch's work is its rows x its longest item after the head, else x its longest item."""
        return self._heads is not None and self._heads.enabled

    def _count(self, key: str) -> bool:
        """True the first time this scorer meets ``key`` (so counters count unique items)."""
        digest = bytes.fromhex(key[:32])
        if digest in self.stats._seen:
            return False
        self.stats._seen.add(digest)
        return True

    def losses(self, items: Sequence[Item]) -> dict[str, float | None]:
        """Mean loss per unique item key; the store answers what it can, the model the rest."""
        unique: dict[str, Item] = {}
        for item in items:
            unique.setdefault(item.key, item)
        values: dict[str, float | None] = {}
        todo: list[Item] = []
        live = [item for item in unique.values() if item.n_counted > 0]
        for item in unique.values():
            if item.n_counted == 0:
                values[item.key] = None
                if self._count(item.key):
                    self.stats.empty += 1
        found = self.store.has_results(self.namespace, [i.key for i in live]) if self.store else set()
        for item in live:
            if item.key in found:
                value = self.store.get_result(self.namespace, item.key) if self.store else None
                values[item.key] = None if value is None else value["loss"]
                if self._count(item.key):
                    self.stats.cached += 1
            else:
                todo.append(item)
        self.stats.queued_tokens = sum(len(i) for i in todo)
        for batch in pack(todo, self.batch_tokens):
            if self._compute is not None:
                started = time.monotonic()
                results = self._compute(batch)
            else:
                model = self._model()  # loading is timed apart, in load_seconds
                started = time.monotonic()
                results = batch_losses(model, batch, pad_id=self.pad_id, heads=self._heads)
            self.stats.compute_seconds += time.monotonic() - started
            rows = []
            for item, (loss, n) in zip(batch, results, strict=True):
                finite = loss if math.isfinite(loss) else None
                values[item.key] = finite
                rows.append((item.key, {"loss": finite, "n": n}))
                if self._count(item.key):
                    self.stats.computed += 1
            if self.store is not None:
                self.store.put_results(self.namespace, rows)
            self.stats.batches += 1
            self.stats.tokens += sum(len(i) for i in batch)
            shared = self.shares_heads
            self.stats.model_tokens += sum(i.work if shared else len(i) for i in batch)
            self.stats.padded_tokens += len(batch) * max(i.work if shared else len(i) for i in batch)
            if self.on_batch is not None:
                self.on_batch(self.stats)
        return values

    def score(self, candidates: Sequence[tuple[str, str, str]], *,
              rifd: bool = True) -> list[CandidateScores]:
        """Scores of (instruction, input, output) candidates, in order. Call it chunk by chunk.

        ``rifd=False`` computes IFD's two losses only (about half the work): enough to rank by IFD.
        """
        built = self.tokens.chunk(candidates, rifd=rifd)
        values = self.losses([item for b in built for item in b.items.values()])
        names = STATS if rifd else IFD_STATS
        return [CandidateScores(**{name: values[b.items[name].key] for name in names}, with_rifd=rifd)
                for b in built]
