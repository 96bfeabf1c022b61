"""``score()``: a recycle run folder (or a plain dataset) in, ``scores.jsonl`` and a manifest out.

Two sources, one loop. A recycle run folder gives ``variants.jsonl`` (ori, Q, A, QA per sample); a
plain dataset gives only ``ori`` (Cherry LLM mode) and gets its own run folder. Samples stream in
chunks: each chunk is tokenized, looked up in the store, computed batch by batch (each batch
committed), and its lines appended to a temporary ``scores.jsonl`` renamed into place at the end.
A killed run resumes from the store; a finished one reruns without loading the model.
A signal (SIGINT, SIGTERM, SIGHUP) stops after the batch being computed, run.json's ``score`` says
``interrupted`` and ``Interrupted`` exits 128 + its number; a rerun sweeps the temporaries a kill -9
left, since under the folder's lock no live process can own them.

The store namespace carries everything that changes a loss: scoring version, student fingerprint,
template, max_length and dtype, and in reduced precision the batch budget (``--batch-tokens``), since
a bf16 loss moves with its batch's composition. Change one and only the affected computations run
again; a run resumed with another batch budget after an out-of-memory error never mixes both.

The ``score`` section of run.json records what was scored: ``inputs`` holds the sha256 of the
``variants.jsonl`` (or dataset) bytes, so ``select`` can tell stale scores from fresh ones; and every
variant entry of ``scores.jsonl`` ends with ``text_key``, a short hash of the texts it was computed
for, so no row is ever written with a score computed for other text.

Every check comes before the folder is opened, in ``prepare``, which the dry run
(``scoring.plan.plan_score``) calls too: a dry run refuses what a run refuses, with the same line.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from reflectune.config import ScoreConfig, merged
from reflectune.contracts import MANIFEST_FILE, SCORES_FILE, VARIANT_NAMES, VARIANTS_FILE, VariantsLine
from reflectune.errors import ConfigError, DataError, Interrupted, ReflectuneError, stop_status
from reflectune.io.atomic import atomic_open
from reflectune.io.jsonl import read_jsonl
from reflectune.keys import text_key
from reflectune.models.source import ModelSource
from reflectune.scoring.rules import precision_key, score_namespace, scoring_dtype
from reflectune.scoring.scorer import IFDScorer, ScorerStats
from reflectune.store.calls import Store
from reflectune.store.inputs import input_hashes, is_run_folder
from reflectune.store.rundir import RunFolder, default_run_dir

BACKENDS = ("hf", "vllm")
#: which statistic ``select`` ranks and compares by default (recorded in run.json).
SELECTION_METRIC = "ppl_ratio"


@dataclass(frozen=True, slots=True)
class ScoreProgress:
    """Fed to the progress callback after every batch and every chunk."""

    samples_done: float
    samples_total: int | None
    computed: int
    cached: int
    tokens: int
    tokens_per_s: float


@dataclass
class ScoreSummary:
    """What ``score()`` did; ``manifest`` is the ``score`` section written to run.json."""

    run_dir: Path
    scores: Path
    mode: str
    samples: int
    candidates: int
    computed: int
    cached: int
    nan: dict[str, int]
    seconds: float
    tokens_per_s: float
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Record:
    id: str
    row: int
    variants: dict[str, tuple[str, str, str, str]]  # name -> (status, instruction, input, output)


def _iter_variants(path: Path) -> Iterator[_Record]:
    for line_no, line in read_jsonl(path, VariantsLine.model_validate):
        variants: dict[str, tuple[str, str, str, str]] = {}
        for name in VARIANT_NAMES:
            v = line.variants.get(name)
            if v is None:
                variants[name] = ("missing", "", "", "")
                continue
            status = v.status
            if status == "ok" and (v.instruction is None or v.output is None):
                status = "invalid"
            variants[name] = (status, v.instruction or "", v.input or "", v.output or "")
        yield _Record(line.id, line.row if line.row is not None else line_no, variants)


def _iter_dataset(path: Path, fields: Mapping[str, str] | None, fmt: str | None) -> Iterator[_Record]:
    from reflectune.io import read_samples

    for s in read_samples(path, fields=fields, fmt=fmt):
        status = "skipped" if s.passthrough else "ok"
        yield _Record(s.id, s.row, {"ori": (status, s.instruction, s.input, s.output)})


SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _StopOnSignal:
    """SIGINT, SIGTERM, SIGHUP while scoring: the first stops after the batch being computed (it is
    committed, so a rerun does not compute it again), a second aborts that batch at once. Either way
    ``Interrupted`` (exit status 128 + the first signal's number) reaches ``score()``, which records it.

    Handlers go in only in the main thread, and never over a signal the process was started to ignore
    (``nohup`` ignores SIGHUP); the previous ones come back when the block ends.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        #: set once the run has ended (``Interrupted`` raised, or the work done): signals are ignored
        self.ended = False
        #: the scorer's running stats, for the message
        self.stats: ScorerStats | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                with contextlib.suppress(OSError, ValueError):
                    previous = signal.getsignal(signum)
                    if previous is not signal.SIG_IGN:
                        signal.signal(signum, self._on_signal)
                        self._previous[signum] = previous
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.ended:
            return
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            print(f"reflectune: {name}: stopping after the batch being computed, which is kept "
                  "(signal again to abort it)", file=sys.stderr, flush=True)
            return
        self.ended = True
        raise self._interrupted(f"a second {name} aborted the batch being computed; ")

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal came: called where the work so far is committed."""
        if self.signum is not None and not self.ended:
            self.ended = True
            raise self._interrupted()

    def _interrupted(self, how: str = "") -> Interrupted:
        assert self.signum is not None
        stats = self.stats
        done = (f" after {stats.batches} batches ({stats.computed} computations committed, "
                f"{stats.cached} from the store)") if stats is not None else " before the first batch"
        exc = Interrupted(f"interrupted by {signal.Signals(self.signum).name}{done}; {how}"
                          "rerun the same command to resume")
        exc.exit_code = 128 + self.signum
        return exc


def _remove_temporaries(folder: Path) -> None:
    """Delete the temporaries of ``scores.jsonl`` and ``run.json`` a killed run left in ``folder``.

    Only a process holding the folder's lock writes them, and we hold it: every one is litter, even
    when its pid looks alive (a killed child its parent has not reaped yet, or a pid reused, as in a
    fresh container), which is where ``remove_stale``'s liveness test keeps them.
    """
    for name in (SCORES_FILE, MANIFEST_FILE):
        for tmp in folder.glob(f"{glob.escape(f'.{name}.tmp')}*"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _count(records: Iterator[_Record]) -> int:
    return sum(1 for _ in records)


@dataclass(frozen=True)
class ScoreSetup:
    """What a score run is, decided and checked before any weight loads: ``score()`` and its dry run
    (``scoring.plan.plan_score``) both start here, so the dry run refuses exactly what a run refuses.

    ``source`` is what is read: the run folder, the dataset, or the split's folder of a dataset dict.
    """

    config: ScoreConfig
    source: Path
    mode: str
    folder: Path
    with_rifd: bool
    model_source: ModelSource
    fingerprint: str
    device: str
    dtype: str
    #: why this dtype (``scoring.rules.scoring_dtype``), shown and recorded
    dtype_reason: str
    namespace: str

    def records(self) -> Iterator[_Record]:
        """The samples, streamed from the source (each call reads it again)."""
        if self.mode == "variants":
            return _iter_variants(self.source / VARIANTS_FILE)
        return _iter_dataset(self.source, self.config.fields, self.config.fmt)

    def manifest(self, inputs: Mapping[str, str]) -> dict[str, Any]:
        """run.json's ``score`` section as the run starts (``inputs``: what ``input_hashes`` gave)."""
        c = self.config
        section: dict[str, Any] = {
            "student": c.student, "fingerprint": self.fingerprint, "template": c.template,
            "max_length": c.max_length, "batch_tokens": c.batch_tokens, "dtype": self.dtype,
            "dtype_reason": self.dtype_reason, "device": self.device, "backend": c.backend,
            "namespace": self.namespace, "mode": self.mode,
            "threads": c.threads, "rifd": self.with_rifd, "source": str(self.source.resolve()),
            "inputs": dict(inputs), "selection_metric": SELECTION_METRIC}
        if self.mode == "cherry":
            from reflectune.io import detect_format

            section["input"] = {"path": str(self.source.resolve()),
                                "format": c.fmt or detect_format(self.source),
                                "fields": dict(c.fields or {}), **({"split": c.split} if c.split else {})}
        return section


def score_config(config: ScoreConfig | None, options: Mapping[str, Any]) -> ScoreConfig:
    """``config`` (or the defaults) with the keyword options given (None: keep the config's)."""
    return merged(ScoreConfig, config, options)


def prepare(source: str | os.PathLike[str], config: ScoreConfig,
            run_dir: str | os.PathLike[str] | None = None) -> ScoreSetup:
    """Check the options and the source, and decide the mode, folder, device, dtype and namespace.

    Reads nothing but the source's kind and the model's identity; writes nothing.

    Raises:
        ConfigError: a bad option, or one that contradicts the source (``--no-rifd`` or ``--run-dir``
            on a run folder, ``--backend vllm`` without a CUDA GPU or with a GGUF file).
        DataError: the source does not exist.
    """
    from reflectune.models import model_fingerprint, pick_device, pick_dtype, resolve_model
    from reflectune.prompts.student import STUDENT_TEMPLATES

    c = config
    if c.template not in STUDENT_TEMPLATES:
        raise ConfigError(f"unknown template '{c.template}': choose one of {', '.join(STUDENT_TEMPLATES)}")
    if c.backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{c.backend}': choose one of {', '.join(BACKENDS)}")
    if (c.max_length < 2 or c.batch_tokens < 1 or c.chunk_size < 1
            or (c.threads is not None and c.threads < 1)):
        raise ConfigError("max_length must be >= 2; batch_tokens, chunk_size and threads >= 1")
    if c.dtype not in (None, "auto", "bfloat16", "float16", "float32"):
        raise ConfigError(f"unknown dtype '{c.dtype}': choose bfloat16, float16 or float32")
    src = Path(source)
    if is_run_folder(src):
        mode = "variants"
        if c.rifd is False:
            raise ConfigError(f"{src} is a run folder: selection needs r-IFD, drop --no-rifd")
        if run_dir is not None and Path(run_dir).resolve() != src.resolve():
            raise ConfigError(f"{src} is a run folder: scores go there, drop --run-dir")
        if c.split is not None:
            raise ConfigError(f"--split {c.split}: {src} is a run folder, which has no splits; drop --split")
        folder = read = src
    else:
        if not src.exists():
            raise DataError("no such file or run folder", path=str(src))
        mode = "cherry"
        read, like = src, src
        if c.split is not None:  # one split of a dataset dict: read (and recorded) as its own folder
            from reflectune.io.readers import open_input

            with open_input(src, fmt=c.fmt, split=c.split) as chosen:
                read, like = chosen.path, chosen.like
        folder = Path(run_dir) if run_dir is not None else default_run_dir(like, c.student, "score")

    with_rifd = mode == "variants" if c.rifd is None else c.rifd
    model_source = resolve_model(c.student)
    fingerprint = model_fingerprint(model_source)
    chosen_device = pick_device(c.device)
    chosen_dtype, dtype_why = scoring_dtype(
        chosen_device, c.dtype, pick_dtype(chosen_device) if chosen_device.startswith("cuda") else "bfloat16")
    if c.backend == "vllm" and not chosen_device.startswith("cuda"):
        raise ConfigError(f"--backend vllm needs a CUDA GPU; the device here is {chosen_device}")
    if c.backend == "vllm" and model_source.gguf_file:
        raise ConfigError(f"{c.student}: --backend vllm takes a model folder, not a GGUF file")
    if c.backend == "vllm":
        from reflectune.scoring.vllm_losses import require_vllm

        require_vllm()
    namespace = score_namespace(fingerprint, c.template, c.max_length,
                                precision_key(chosen_dtype, c.batch_tokens, c.backend))
    return ScoreSetup(config=c, source=read, mode=mode, folder=folder, with_rifd=with_rifd,
                      model_source=model_source, fingerprint=fingerprint, device=chosen_device,
                      dtype=chosen_dtype, dtype_reason=dtype_why, namespace=namespace)


def make_scorer(setup: ScoreSetup, tokenizer: Any, load_model: Callable[[], Any], *,
                store: Store | None, on_batch: Callable[[ScorerStats], None] | None = None) -> IFDScorer:
    """The scorer of ``setup``, as a run builds it (the dry run's probe builds the same one)."""
    c = setup.config
    compute = None
    if c.backend == "vllm":
        from reflectune.scoring.vllm_losses import VLLMLosses

        compute = VLLMLosses(str(setup.model_source.path), dtype=setup.dtype, max_length=c.max_length)
    try:
        return IFDScorer(tokenizer, load_model=load_model, template=c.template, max_length=c.max_length,
                         batch_tokens=c.batch_tokens, store=store, namespace=setup.namespace,
                         on_batch=on_batch, compute=compute, prompts_dir=c.prompts_dir)
    except ValueError as exc:  # e.g. the chat template on a tokenizer that has none
        raise ConfigError(f"{c.student}: {exc}") from None


def load_student(setup: ScoreSetup) -> Any:
    """The student's weights on the chosen device, in the chosen dtype, with ``threads`` set first."""
    from reflectune.models import import_torch, load_causal_lm

    if setup.config.threads is not None:
        import_torch().set_num_threads(setup.config.threads)
    return load_causal_lm(setup.config.student, device=setup.device, dtype=setup.dtype)[0]


def score(source: str | os.PathLike[str], config: ScoreConfig | None = None, *,
          run_dir: str | os.PathLike[str] | None = None,
          progress: Callable[[ScoreProgress], None] | None = None,
          student: str | None = None, template: str | None = None, max_length: int | None = None,
          batch_tokens: int | None = None, dtype: str | None = None, device: str | None = None,
          backend: str | None = None, fields: Mapping[str, str] | None = None, fmt: str | None = None,
          chunk_size: int | None = None, threads: int | None = None, rifd: bool | None = None,
          prompts_dir: str | None = None, split: str | None = None) -> ScoreSummary:
    """Score IFD and r-IFD of every candidate with a student model (METHOD.md §5.1), resumably.

    Args:
        source: a recycle run folder (scores ori, Q, A, QA) or a dataset file (scores ori only,
            Cherry LLM mode, in ``run_dir`` or ``runs/<stem>-<student>-score``).
        config: a ``ScoreConfig``; the keyword arguments below that are given override its fields.
        student: ``embedded``, ``hf:PATH``, a model folder or a ``.gguf`` file.
        template: ``vicuna`` (default), ``alpaca``, ``wiz`` or ``chat``.
        max_length: tokens per sequence; the target is truncated, never the prompt.
        batch_tokens: padded tokens per forward pass.
        dtype, device: default bf16 on CPU, the GPU when there is one.
        backend: ``hf`` (transformers) or ``vllm`` (prompt logprobs on a CUDA GPU; untested, see
            ``scoring/vllm_losses.py``).
        fields, fmt: how to read a dataset source (as for ``read_samples``).
        split: the split to score of a ``DatasetDict`` folder (needed when it has several); its own
            folder is then the source recorded in run.json, and names the default run folder.
        chunk_size: samples tokenized and packed together (bigger packs tighter, holds more memory).
        threads: CPU threads for torch (process-wide; default torch's, one per core). On a busy
            shared machine fewer threads can be much faster (see docs/selection.md).
        rifd: also compute r-IFD (Q_direct, Q_condition). Default: yes for a run folder (``select``
            needs it), no for a dataset, whose Cherry-style selection ranks by IFD alone; that
            halves the work. Items are cached one by one, so asking for r-IFD later adds only them.
        prompts_dir: a folder of template overrides (``student_<template>.txt``,
            ``guess_instruction.txt``); their text enters every item's key.
        progress: called after every batch with a ``ScoreProgress``.

    Returns:
        A ``ScoreSummary``; ``scores.jsonl`` and run.json's ``score`` section are in ``run_dir``.

    Example::

        summary = score("runs/alpaca-embedded", student="embedded")
        summary.scores  # runs/alpaca-embedded/scores.jsonl
    """
    from reflectune.models import load_tokenizer

    config = score_config(config, {
        "student": student, "template": template, "max_length": max_length, "batch_tokens": batch_tokens,
        "dtype": dtype, "device": device, "backend": backend, "fields": fields, "fmt": fmt,
        "chunk_size": chunk_size, "threads": threads, "rifd": rifd, "prompts_dir": prompts_dir,
        "split": split})
    started = time.monotonic()
    ready = prepare(source, config, run_dir)
    folder, records, with_rifd, chunk_size = ready.folder, ready.records, ready.with_rifd, config.chunk_size
    inputs = input_hashes(ready.source)  # before the first read: a later edit shows up as a text_key mismatch
    total = _count(records())
    setup = ready.manifest(inputs)

    with _StopOnSignal() as stop, RunFolder(folder, check_calls=False) as run:  # no oracle call
        assert run.store is not None
        _remove_temporaries(folder)  # a killed score's: we hold the lock, so no live writer has them
        run.update_manifest("score", {**setup, "status": "running"})
        if progress is not None:  # the checks passed and the run has begun: a progress display may start
            progress(ScoreProgress(0, total, 0, 0, 0, 0.0))
        try:
            tokenizer = load_tokenizer(ready.model_source)
            done_samples = 0
            chunk_mark = {"tokens": 0, "size": 0}

            def on_batch(stats: ScorerStats) -> None:
                stop.check()  # the batch is committed: a signal since stops here
                if progress is None:
                    return
                frac = min(1.0, (stats.tokens - chunk_mark["tokens"]) / max(stats.queued_tokens, 1))
                progress(ScoreProgress(done_samples + frac * chunk_mark["size"], total, stats.computed,
                                       stats.cached, stats.tokens, stats.tokens_per_s))

            def load_model() -> Any:
                model = load_student(ready)
                stop.check()  # loading can be long: a signal during it stops before the first batch
                return model

            scorer = make_scorer(ready, tokenizer, load_model, store=run.store, on_batch=on_batch)
            stop.stats = scorer.stats
            counts: Counter[str] = Counter()
            out_path = run.file(SCORES_FILE)
            with atomic_open(out_path) as out:
                chunk: list[_Record] = []
                for record in records():
                    chunk.append(record)
                    if len(chunk) >= chunk_size:
                        stop.check()
                        chunk_mark.update(tokens=scorer.stats.tokens, size=len(chunk))
                        _score_chunk(scorer, chunk, out, counts, with_rifd)
                        done_samples += len(chunk)
                        chunk = []
                if chunk:
                    stop.check()
                    chunk_mark.update(tokens=scorer.stats.tokens, size=len(chunk))
                    _score_chunk(scorer, chunk, out, counts, with_rifd)
                    done_samples += len(chunk)
        except BaseException as exc:  # run.json must not say "running" for a run that has ended
            stop.ended = True  # a signal from here on changes nothing: let the manifest be written
            live = stop.stats.to_json() if stop.stats is not None else {}
            with contextlib.suppress(ReflectuneError):
                run.update_manifest("score", {**setup, **live, "status": stop_status(exc),
                                              "stop_reason": str(exc) or type(exc).__name__,
                                              "seconds": round(time.monotonic() - started, 2)})
            raise
        stop.ended = True  # the work is done: finish (write the outputs) rather than stop now
        if progress is not None:
            progress(ScoreProgress(done_samples, total, scorer.stats.computed, scorer.stats.cached,
                                   scorer.stats.tokens, scorer.stats.tokens_per_s))
        seconds = time.monotonic() - started
        nan = {"candidates": counts["nan_candidates"], "ifd": counts["nan_ifd"],
               "rifd": counts["nan_rifd"], "losses": counts["nan_losses"]}
        manifest = {**setup, "status": "done", "samples": done_samples, "candidates": counts["candidates"],
                    "unavailable": counts["unavailable"], "nan": nan,
                    "seconds": round(seconds, 2), **scorer.stats.to_json(),
                    "scores": SCORES_FILE}
        run.update_manifest("score", manifest)
    return ScoreSummary(run_dir=folder, scores=out_path, mode=ready.mode, samples=done_samples,
                        candidates=counts["candidates"], computed=scorer.stats.computed,
                        cached=scorer.stats.cached, nan=nan, seconds=seconds,
                        tokens_per_s=scorer.stats.tokens_per_s, manifest=manifest)


def available(chunk: list[_Record]) -> tuple[list[tuple[int, str]], list[tuple[str, str, str]]]:
    """The candidates of a chunk that get scored (status ``ok``): where each is (record index, variant
    name), and its (instruction, input, output)."""
    where: list[tuple[int, str]] = []
    triples: list[tuple[str, str, str]] = []
    for index, record in enumerate(chunk):
        for name, (status, instruction, input, output) in record.variants.items():
            if status == "ok":
                where.append((index, name))
                triples.append((instruction, input, output))
    return where, triples


def unavailable(chunk: list[_Record]) -> int:
    """Variants of a chunk that exist but failed (not scored)."""
    return sum(1 for r in chunk for v in r.variants.values() if v[0] not in ("ok", "missing"))


def _score_chunk(scorer: IFDScorer, chunk: list[_Record], out: Any, counts: Counter[str],
                 rifd: bool) -> None:
    """Score one chunk's available candidates and append one line per sample."""
    where, triples = available(chunk)
    scores = scorer.score(triples, rifd=rifd) if triples else []
    lines: list[dict[str, Any]] = [
        {"id": r.id, "row": r.row,
         "variants": {name: {"status": v[0]} for name, v in r.variants.items() if v[0] != "missing"}}
        for r in chunk]
    for (index, name), s in zip(where, scores, strict=True):
        lines[index]["variants"][name].update(s.to_json())
        counts["candidates"] += 1
        counts["nan_candidates"] += s.has_nan
        counts["nan_ifd"] += s.ifd is None
        counts["nan_rifd"] += s.with_rifd and s.rifd is None
        counts["nan_losses"] += sum(v is None for v in s.losses)
    counts["unavailable"] += unavailable(chunk)
    for record, line in zip(chunk, lines, strict=True):
        for name, entry in line["variants"].items():
            if entry["status"] == "ok":  # a scored candidate: the texts its numbers belong to
                entry["text_key"] = text_key(*record.variants[name][1:])  # last: existing fields keep order
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
