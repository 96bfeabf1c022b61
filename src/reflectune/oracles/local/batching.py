"""Micro-batching for local oracles: a job queue drained by one worker thread, and one batched
``model.generate`` over rows that each carry their own budget and stop strings.

The engine sends one request per ``complete`` call from many asyncio tasks; a local model is only
fast when it decodes many sequences at once. :class:`MicroBatcher` owns the one thread that touches
the model. It pools queued jobs, picks up to ``batch_size`` of them (the oldest, plus those closest
to it in length, so little is spent on padding), runs their current segment and delivers each
finished job to its own event loop with ``call_soon_threadsafe``. A job goes back to the pool after
every segment, so jobs at different phases of format forcing and newly arrived ones share batches.

``generate`` takes one ``max_new_tokens`` and one list of stop strings for the whole batch, but the
rows here differ (a critique stops at a marker, a section at ``[End]``). So one stopping criterion
tracks every row: it ends a row at EOS, at one of *its* stop strings or at *its* budget, records why,
and ``generate`` pads the row from then on. Rows are left-padded; ``generate`` derives position ids
from the attention mask, so a row's tokens do not depend on its neighbours (up to rounding).

Rows carry their keys and values from call to call (``kv_rows``): a batch decodes at most
``max_steps`` tokens, then unfinished rows go back to the pool and share the next batch with new
ones (continuous batching); a forced request's next segment does not prefill its prompt again.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reflectune.errors import OracleError
from reflectune.models.local import cache_keyword
from reflectune.oracles.local.forcing import FORMAT_HEADER, FormatPlan, Segment
from reflectune.oracles.local.kv_rows import Past, can_carry, cut_row, layout, merged_cache, prefill
from reflectune.types import ChatRequest, Completion

__all__ = ["Job", "MicroBatcher", "Row", "RowResult", "Sampling", "deliver", "generate_rows"]

_STOP = object()  # sentinel that ends the worker thread


@dataclass(eq=False)
class Job:
    """One request in flight: where to deliver it, and its progress through its plan."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completion]
    seq: int
    submitted: float = field(default_factory=time.monotonic)
    plan: FormatPlan = field(init=False)
    prompt_ids: list[int] | None = None  # set by the oracle's ``prepare``
    ids: list[int] = field(default_factory=list)  # the current segment's input: prompt + prefill
    segment: Segment | None = None
    cancelled: bool = False
    past: Past | None = None  # keys and values of its last call, for the next one to reuse
    prior: list[int] = field(default_factory=list)  # tokens of the current segment so far

    def __post_init__(self) -> None:
        self.plan = FormatPlan(self.request)

    @property
    def work(self) -> int:
        """Tokens the model must read for the current segment: those its ``past`` does not cover."""
        return len(self.ids) - (self.past.reusable(self.ids) if self.past is not None else 0)


def deliver(job: Job, *, result: Completion | None = None, error: BaseException | None = None) -> None:
    """Resolve a job's future on its own event loop, from any thread; first delivery wins."""
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(settle)


class MicroBatcher:
    """The worker thread and its pool. The oracle supplies three callbacks, all run on the worker:

    - ``load()``: load the model if needed (its exception fails the pooled jobs);
    - ``prepare(job)``: tokenize a new job and set its first segment; False if it was delivered;
    - ``step(batch)``: run one segment of each job; return the jobs that were delivered.
    """

    def __init__(self, *, load: Callable[[], None], prepare: Callable[[Job], bool],
                 step: Callable[[list[Job]], list[Job]], batch_size: int, gather_s: float = 0.01,
                 name: str = "reflectune-local") -> None:
        self.load, self.prepare, self.step = load, prepare, step
        self.batch_size, self.gather_s, self.name = batch_size, gather_s, name
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs, starting the worker thread if it is not running."""
        if self._thread is None or not self._thread.is_alive():
            self._inbox = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        for job in jobs:
            self._inbox.put(job)

    def stop(self) -> None:
        """Blocking: end the worker after its current segment; queued jobs fail as closed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(_STOP)
            thread.join()

    def _work(self) -> None:
        pool: list[Job] = []
        stopping = False
        while not stopping:
            if not pool:
                item = self._inbox.get()
                if item is _STOP:
                    break
                pool.append(item)
            stopping = self._collect(pool)
            pool[:] = [job for job in pool if not job.cancelled]
            if not pool:
                continue
            try:
                self.load()
            except BaseException as exc:
                for job in pool:
                    deliver(job, error=exc)
                pool.clear()
                continue
            for job in [job for job in pool if job.prompt_ids is None]:
                if not self.prepare(job):
                    pool.remove(job)
            if pool:
                for job in self.step(self._pick(pool)):
                    pool.remove(job)
        closed = OracleError("the local oracle was closed")
        for job in pool:
            deliver(job, error=closed)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                deliver(item, error=closed)

    def _collect(self, pool: list[Job]) -> bool:
        """Move queued jobs into the pool, waiting up to ``gather_s`` for a fuller batch.
        Returns True when asked to stop."""
        deadline = time.monotonic() + self.gather_s
        while True:
            wait = deadline - time.monotonic()
            try:
                item = (self._inbox.get(timeout=wait) if len(pool) < self.batch_size and wait > 0
                        else self._inbox.get_nowait())
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            pool.append(item)

    def _pick(self, pool: list[Job]) -> list[Job]:
        """The oldest job plus up to ``batch_size - 1`` others with the same sampling settings,
        chosen as the window of sorted lengths that contains it with the least spread (lengths of
        what must be computed: a segment that reuses its past is short)."""
        size = self.batch_size
        oldest = min(pool, key=lambda job: job.seq)
        key = _sampling_key(oldest.request)
        same = [job for job in pool if _sampling_key(job.request) == key]
        work = {id(job): job.work for job in same}
        ranked = sorted(same, key=lambda job: work[id(job)])
        if len(ranked) <= size:
            return ranked
        at = ranked.index(oldest)
        starts = range(max(0, at - size + 1), min(at, len(ranked) - size) + 1)
        start = min(starts, key=lambda s: work[id(ranked[s + size - 1])] - work[id(ranked[s])])
        return ranked[start:start + size]


def _sampling_key(request: ChatRequest) -> tuple[float, float]:
    return (0.0, 1.0) if request.temperature <= 0 else (request.temperature, request.top_p)


@dataclass(frozen=True, slots=True)
class Row:
    """Token ids to continue, at most ``budget`` new tokens, and strings that end the row."""

    ids: list[int]
    budget: int
    stops: tuple[str, ...] = ()
    abort: Callable[[], bool] | None = None  # polled every step: True ends the row at once
    end_loops: bool = False  # a forced section: also end it at a verbatim loop (see _loop_period)
    #                          and at a line that is a format header (``FORMAT_HEADER``)
    past: Past | None = None  # keys and values of a previous segment, reused where ``ids`` agree
    keep: bool = False  # return this row's keys and values (``RowResult.past``) for its next segment
    prior: tuple[int, ...] = ()  # tokens this segment generated in earlier calls (``ids`` ends with
    #                              them): stop strings, loops and the empty-section rule see them

    @property
    def reuse(self) -> int:
        return self.past.reusable(self.ids) if self.past is not None else 0


@dataclass(frozen=True, slots=True)
class RowResult:
    """Generated text (EOS excluded; stop strings included, the caller trims), tokens generated,
    and why the row ended: ``"eos"``, ``"stop"``, ``"length"`` or ``"loop"`` (the text keeps the
    loop's first copy; ``tokens`` counts all that were generated), or ``"more"``: the call's
    ``max_steps`` ran out first, and the row goes on in a later call. Text and loops cover the
    whole segment (``prior`` included); ``tokens`` counts this call's. ``past``: the row's keys and
    values when it asked to ``keep`` them and the model's cache allows it."""

    text: str
    tokens: int
    ended: str
    past: Past | None = None
    ids: tuple[int, ...] = ()  # the tokens this call generated (for a row that goes on: ``"more"``)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding settings shared by a batch: greedy when ``temperature`` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


LOOP_COPIES = 2        # a block seen this many times back to back is a loop...
LOOP_MIN_SPAN = 24     # ...once the repeated span is this many tokens (short blocks need more copies:
#                        a sentence of 12+ tokens twice, a 8-token phrase three times, a word 24 times)
LOOP_MAX_PERIOD = 96   # longest block looked for, in tokens


def _loop_period(ids: Sequence[int]) -> tuple[int, int]:
    """``(period, copies)`` of a verbatim loop at the end of ``ids`` (its last ``period * copies``
    tokens are one block repeated), or ``(0, 0)``. The stopper passes token shapes (see
    ``_vocab_classes``), so repeats that differ in spacing or numbering count too. Greedy decoding
    that reaches such a state repeats it to the budget, so generating further is pure waste."""
    n = len(ids)
    for p in range(1, LOOP_MAX_PERIOD + 1):
        copies = max(LOOP_COPIES, -(-LOOP_MIN_SPAN // p))
        span = p * copies
        if span > n or ids[-1] != ids[-1 - p]:
            continue
        if all(ids[n - span + k] == ids[n - span + k + p] for k in range(span - p)):
            return p, copies
    return 0, 0


_VOCAB_CLASSES: dict[int, dict[str, Any]] = {}


def _vocab_classes(tokenizer: Any) -> dict[str, Any]:
    """Token ids by kind, once per tokenizer: ``blank`` (only whitespace), ``bracket`` (starting
    with "[", after any leading space), and ``shape``: each token's text without surrounding
    whitespace, as a small int, all digit-only tokens as -1. Loop detection compares shapes, so
    copies that differ only in spacing, line breaks or numbering still count as one block."""
    key = id(tokenizer)
    if key not in _VOCAB_CLASSES:
        vocab = tokenizer.get_vocab()

        def text(token: str) -> str:  # byte-level BPE writes a space as Ġ, a newline as Ċ
            return token.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")

        texts = {i: text(token) for token, i in vocab.items()}
        words: dict[str, int] = {}
        shape = {i: -1 if t.strip().isdigit() else words.setdefault(t.strip(), len(words))
                 for i, t in texts.items() if t.strip()}
        _VOCAB_CLASSES[key] = {
            "shape": shape,
            "blank": frozenset(i for i, t in texts.items() if t and not t.strip()),
            "bracket": frozenset(i for i, t in texts.items() if t.lstrip().startswith("[")),
        }
    return _VOCAB_CLASSES[key]


class _NoEmptySection:
    """Logits processor: a forced section may not end (EOS) or open a bracket (``[End]``, another
    marker, a placeholder such as ``[Your Answer]``) before it has any visible text. A 135M model
    otherwise often closes a section at once, and the parser rightly rejects an empty one."""

    def __init__(self, start: int, rows: Sequence[Row], eos_ids: set[int], classes: dict[str, Any]) -> None:
        self.start, self.rows = start, rows
        self.banned = sorted(set(eos_ids) | classes["bracket"])
        self.blank = classes["blank"]
        # only forced sections are guarded, until they have visible text (from an earlier call too)
        self.empty = [row.end_loops and all(t in self.blank for t in row.prior) for row in rows]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.start:
            last = input_ids[:, -1].tolist()
            for r, empty in enumerate(self.empty):
                if empty and last[r] not in self.blank:
                    self.empty[r] = False
        rows = [r for r, empty in enumerate(self.empty) if empty]
        if rows:
            guarded = scores[rows]
            guarded[:, self.banned] = -float("inf")
            scores[rows] = guarded
        return scores


class _RowStopper:
    """Per-row stopping criterion for ``generate``; called once per step with all ids so far."""

    def __init__(self, tokenizer: Any, start: int, rows: Sequence[Row], eos_ids: set[int]) -> None:
        self.tokenizer, self.start, self.rows, self.eos_ids = tokenizer, start, rows, eos_ids
        self.end: list[int | None] = [None] * len(rows)
        self.reason: list[str] = ["length"] * len(rows)
        self.loop: list[int] = [0] * len(rows)  # where to cut rows ended by a loop (token count)
        self.shapes: dict[int, int] = (_vocab_classes(tokenizer)["shape"]
                                       if any(row.end_loops for row in rows) else {})
        self.generated: list[list[int]] = [list(row.prior) for row in rows]  # the segment so far
        self.shape: list[list[int]] = [[] for _ in rows]  # shapes of the visible tokens so far
        self.where: list[list[int]] = [[] for _ in rows]  # ... and their positions in ``generated``
        for r, row in enumerate(rows):
            for at, token in enumerate(row.prior if row.end_loops else ()):
                if token in self.shapes:
                    self.shape[r].append(self.shapes[token])
                    self.where[r].append(at)
        # a stop string of c characters spans at most c tokens (+1 for a partial byte)
        self.tail = [max((len(s) for s in row.stops), default=0) + 2 for row in rows]

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.start
        last = input_ids[:, -1].tolist()
        for r, row in enumerate(self.rows):
            if self.end[r] is not None:
                continue
            self.generated[r].append(last[r])
            if row.end_loops and last[r] in self.shapes:  # blank tokens are skipped
                self.shape[r].append(self.shapes[last[r]])
                self.where[r].append(len(self.generated[r]) - 1)
            if last[r] in self.eos_ids:
                self.end[r], self.reason[r] = step, "eos"
            elif self._has_stop(r):
                self.end[r], self.reason[r] = step, "stop"
            elif step >= row.budget or (row.abort is not None and row.abort()):
                self.end[r], self.reason[r] = step, "length"
            elif row.end_loops and (found := _loop_period(self.shape[r]))[0]:
                self.end[r], self.reason[r] = step, "loop"
                period, copies = found
                self.loop[r] = self.where[r][len(self.shape[r]) - period * (copies - 1)]
        return torch.tensor([e is not None for e in self.end], dtype=torch.bool, device=input_ids.device)

    def _has_stop(self, r: int) -> bool:
        row, ids, decode = self.rows[r], self.generated[r], self.tokenizer.decode
        if row.stops:
            tail = decode(ids[-self.tail[r]:], skip_special_tokens=True)
            if any(stop in tail for stop in row.stops):
                return True
        # a format header (at most ~90 characters) can only have just ended if this token closes it
        return (row.end_loops and "]" in decode(ids[-1:])
                and FORMAT_HEADER.search(decode(ids[-48:], skip_special_tokens=True)) is not None)


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
        for b, past in zip(fresh, pasts, strict=True):
            batch[b] = dataclasses.replace(batch[b], past=past)
            reuse[b] = len(batch[b].ids) - 1
    input_ids, mask, cached = layout([row.ids for row in batch], reuse, [len(row.ids) for row in batch],
                                     pad_id)
    start = input_ids.shape[1]
    cache = merged_cache(model, [row.past for row in batch], reuse, cached) if carry else None
    # 2. one generate; the stopper ends each row on its own terms
    stopper = _RowStopper(tokenizer, start, batch, eos_ids)
    guards = ([_NoEmptySection(start, batch, eos_ids, _vocab_classes(tokenizer))]
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
        past = None
        if (row.keep or ended == "more") and cut:
            fed = min(len(new), steps - 1)
            columns = torch.cat([mask[b].nonzero().flatten(), torch.arange(start, start + fed)])
            past = cut_row(cache, b, columns.to(device), (*row.ids, *new[:fed]))
        if ended == "eos":
            kept = kept[:-1]
        results[i] = RowResult(tokenizer.decode(kept, skip_special_tokens=True), end, ended, past,
                               tuple(new))
    return results
