"""Fine-tune a student on (recycled) instruction data: a thin, typed wrapper over TRL's ``SFTTrainer``.

Why a wrapper at all: the papers' recipe (METHOD.md §6) is a handful of numbers (global batch 128,
lr 2e-5, 3 epochs, cosine, warmup 0.03, max length 2048, the vicuna template, loss on the response
only) that must be turned into TRL/transformers arguments the same way on one CPU and on eight GPUs.
:class:`~reflectune.training.rules.TrainConfig` holds those and a few more of our own; everything
else TRL offers is reachable through ``sft={"key": value}`` (``--sft KEY=VALUE``), checked against
``SFTConfig``'s fields. Rows are built in :mod:`~reflectune.training.data`, the trainer in
:mod:`~reflectune.training.trainer`, the saved folder's extras in :mod:`~reflectune.training.save`.

A training is a run like every stage's: its run folder (``run_dir``, default
``runs/<data>-<base>-train``) is opened as a :class:`~reflectune.store.rundir.RunFolder` for the
whole training, so its lock refuses a second process, and ``run.json``'s ``train`` section says
``running``, then ``complete``, or ``stopped`` / ``interrupted`` with the reason. The folder is the
Trainer's ``output_dir``: ``metrics.jsonl``, ``checkpoint-N/``, the start record, and for LoRA
``adapter/``. The model goes to ``output`` (default ``RUN/model``; LoRA: the merged model there
unless ``merge=False``), a plain Hugging Face folder that also carries its prompt template.
torch, transformers, trl and peft are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from reflectune.errors import ConfigError, Interrupted, ReflectuneError, stop_status
from reflectune.io.atomic import write_text_atomic
from reflectune.models import ModelSource
from reflectune.store.rundir import MANIFEST, RunFolder, default_run_dir
from reflectune.training.data import build_examples, data_label, load_training_samples
from reflectune.training.folder import (
    check_checkpoint_kind,
    check_output,
    check_resume,
    check_run_dir,
    complete_checkpoint,
    data_identity,
    start_record,
    write_start,
)
from reflectune.training.rules import (
    ACCELERATE_CONFIGS,
    TrainConfig,
    accelerate_config_path,
    make_config,
    parse_sft_overrides,
)
from reflectune.training.save import finish_model_folder, portable_adapter, portable_base_name
from reflectune.training.trainer import METRICS, build_trainer, check_options
from reflectune.types import Sample

__all__ = [
    "ACCELERATE_CONFIGS",
    "ADAPTER_DIR",
    "MODEL_DIR",
    "TrainConfig",
    "TrainResult",
    "accelerate_config_path",
    "build_examples",
    "build_trainer",
    "load_training_samples",
    "make_config",
    "parse_sft_overrides",
    "train",
]

STAGE = "train"
#: The model folder's default name inside the run folder, and the LoRA adapter's.
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
#: The Trainer's pickled arguments, saved with every model: not kept in ours (no pickle; run.json
#: holds them as JSON). Checkpoints keep theirs.
_ARGS_PICKLE = "training_args.bin"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced. ``model_dir`` loads with ``hf:`` (None for an unmerged LoRA run)."""

    #: the model folder asked for (``output``, default ``run_dir/model``)
    output_dir: Path
    model_dir: Path | None
    adapter_dir: Path | None
    #: rows trained on, after every skip (``skipped`` says which and why)
    rows: int
    skipped: dict[str, int]
    steps: int
    epochs: float
    first_loss: float | None
    final_loss: float | None
    train_seconds: float
    #: ``run_dir/run.json``: its ``train`` section is the run's record
    manifest: Path
    metrics: Path
    run_dir: Path
    #: the checkpoint step this run resumed from; None when it started fresh
    resumed_from_step: int | None
    #: the prompt template it trained with (recorded in the model folder too)
    template: str


class _Section:
    """The ``train`` section of ``run.json``: fixed fields plus each write's; a no-op off rank 0."""

    def __init__(self, run: RunFolder | None, fields: dict[str, Any]) -> None:
        self.run, self.fields = run, fields

    def write(self, status: str, **extra: Any) -> None:
        if self.run is not None:
            self.run.update_manifest(STAGE, self.fields | extra | {"status": status})


def _is_main_process() -> bool:
    """Rank 0 (or a single process): the one that locks the folder and writes the records."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While training: SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (exit 128 + N), so the run
    is recorded as interrupted and the CLI prints one line instead of dying silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        exc = Interrupted(f"interrupted by {signal.Signals(signum).name}: rerun with --resume to continue "
                          "from the newest complete checkpoint")
        exc.exit_code = 128 + signum
        raise exc

    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(ValueError, OSError):
                previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the metrics of steps after ``step``: a resume trains them again and logs them anew, so
    each step appears once."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut by the kill
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


# --------------------------------------------------------------------------- train


def train(data: str | Path | Iterable[Sample], base: str, output: str | Path | None = None, *,
          run_dir: str | Path | None = None, config: TrainConfig | None = None,
          on_log: Callable[[dict[str, Any]], None] | None = None, fields: Mapping[str, str] | None = None,
          **options: Any) -> TrainResult:
    """Fine-tune ``base`` on ``data``; the run lives in ``run_dir``, the model goes to ``output``.

    Args:
        data: an instruction file/folder (Alpaca JSON, JSONL, ShareGPT, parquet, CSV, HF disk) or samples.
        base: a model spec: ``embedded``, ``hf:PATH`` or a folder/``.gguf`` path.
        output: the model folder (default ``run_dir/model``); for LoRA the merged model, none with
            ``merge=False``. It gets the tokenizer's chat template for the training template and
            ``reflectune-model.json``, so ``generate``/``judge`` prompt it as it was trained.
        run_dir: the run folder (default ``runs/<data stem>-<base>-train``): ``run.json`` (its
            ``train`` section), ``metrics.jsonl``, ``checkpoint-N/``, and for LoRA ``adapter/``.
            Locked for the whole training.
        config: a :class:`TrainConfig`; ``options`` override its fields (``epochs=1, lora=True``).
        on_log: called with ``{"event": "begin"|"log"|"note"|"saved", ...}`` dicts for a progress display.
        fields: column mapping for the reader, e.g. ``{"instruction": "prompt"}``.

    Returns:
        A :class:`TrainResult` (paths, row counts, steps, first and final loss, seconds, resume step).

    Example::

        result = train("recycled.json", "hf:/models/llama-2-7b", run_dir="runs/7b", lora=True, epochs=1)
        print(result.model_dir, result.final_loss)   # runs/7b/model
    """
    from reflectune.models import resolve_model

    cfg = make_config(config, **options)
    check_options(cfg)  # before any folder exists
    source = resolve_model(base)
    folder = Path(run_dir) if run_dir is not None else default_run_dir(data_label(data) or "samples", base,
                                                                       STAGE)
    out = Path(output) if output is not None else folder / MODEL_DIR
    check_run_dir(folder, source.path if source.path.is_dir() else None)
    if not _is_main_process():  # ranks > 0 train alongside rank 0, which holds the folder
        return _train(_Job(None, data, base, source, folder, out, cfg, on_log, fields))
    with RunFolder(folder, check_calls=False) as run:
        return _train(_Job(run, data, base, source, folder, out, cfg, on_log, fields))


@dataclass
class _Job:
    """One training, as checked in step 1: what ``_run`` needs, in one place."""

    run: RunFolder | None
    data: str | Path | Iterable[Sample]
    base: str
    source: ModelSource
    folder: Path
    out: Path
    cfg: TrainConfig
    on_log: Callable[[dict[str, Any]], None] | None
    fields: Mapping[str, str] | None
    checkpoint: Path | None = None
    incomplete: tuple[str, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)
    portable: str = ""

    @property
    def main(self) -> bool:
        return self.run is not None

    @property
    def resumed_from(self) -> int | None:
        return int(self.checkpoint.name.rsplit("-", 1)[1]) if self.checkpoint else None

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_log is not None:
            self.on_log(event)


def _train(job: _Job) -> TrainResult:
    """Step 1 (check the folders, refuse before anything is written), then the run, recorded."""
    from reflectune.models import model_fingerprint

    cfg, folder = job.cfg, job.folder
    base_dir = job.source.path if job.source.path.is_dir() else None
    checkpoint, incomplete = complete_checkpoint(folder)
    if checkpoint and not cfg.resume:
        raise ConfigError(f"{folder} already holds {checkpoint.name}: pass --resume to continue it, "
                          "or choose another --run-dir")
    resuming = cfg.resume and checkpoint is not None
    check_output(job.out, base_dir, cfg, resuming=resuming)
    if cfg.lora:
        check_output(folder / ADAPTER_DIR, base_dir, cfg, resuming=resuming, what="the adapter folder")
    fingerprint = model_fingerprint(job.source)
    job.checkpoint, job.incomplete = checkpoint, tuple(incomplete)
    job.record = start_record(cfg, job.base, fingerprint, job.data)
    if checkpoint and not check_resume(folder, job.record):
        job.emit({"event": "note", "message": f"{folder} records no start settings (an older run): the "
                  "resume cannot check that its options and data are the same"})
    if checkpoint:
        check_checkpoint_kind(checkpoint, cfg.lora)
    job.portable = portable_base_name(job.base, job.source)
    section = _Section(job.run, {
        "config": cfg.model_dump(mode="json"), "config_hash": cfg.config_hash(),
        "base": {"spec": job.base, "name": job.portable, "path": str(job.source.path.resolve()),
                 "gguf_file": job.source.gguf_file, "fingerprint": fingerprint},
        "data": data_label(job.data) or "<samples>", "inputs": {"data": data_identity(job.data)},
        "template": cfg.template, "run_dir": str(folder),
        "resumed_from": {"step": job.resumed_from, "checkpoint": str(checkpoint)} if checkpoint else None,
        "outputs": {"model_dir": str(job.out) if not cfg.lora or cfg.merge else None,
                    "adapter_dir": str(folder / ADAPTER_DIR) if cfg.lora else None,
                    "metrics": str(folder / METRICS), "manifest": str(folder / MANIFEST)},
        "versions": _versions()})
    section.write("running")
    try:
        with _stop_on_signals():
            return _run(job, section)
    except BaseException as exc:
        with contextlib.suppress(ReflectuneError):  # a failed write never hides the original error
            reason = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
            section.write(stop_status(exc), stop_reason=reason)
        raise


def _run(job: _Job, section: _Section) -> TrainResult:
    """Steps 2-6: resume or start, build the trainer, train, save, record."""
    cfg, folder, checkpoint = job.cfg, job.folder, job.checkpoint
    # 2. resume from the newest complete checkpoint, or start afresh
    if checkpoint:
        if job.main:
            _keep_metrics_until(folder / METRICS, int(checkpoint.name.rsplit("-", 1)[1]))
        for name in job.incomplete:  # a save that was killed: garbage the Trainer would trip over
            job.emit({"event": "note", "message": f"skipping {name}: incomplete (its save was "
                      f"interrupted); resuming from {checkpoint.name}"})
            if job.main:
                shutil.rmtree(folder / name, ignore_errors=True)
    else:
        if cfg.resume:
            job.emit({"event": "note", "message": f"no complete checkpoint in {folder}: starting from the "
                      "beginning"})
        if job.main:
            (folder / METRICS).unlink(missing_ok=True)
    # 3. the trainer: loads the base and the data (both are valid once it exists)
    trainer, info = build_trainer(job.data, job.base, folder, config=cfg, on_log=job.on_log,
                                  fields=job.fields)
    if not checkpoint and job.main:
        write_start(folder, job.record)
    section.fields.update(
        rows=info["rows"], trained_rows=info["trained_rows"], skipped=info["skipped"],
        world_size=info["world_size"], gradient_accumulation=info["gradient_accumulation"],
        effective_batch=cfg.per_device_batch * info["world_size"] * info["gradient_accumulation"],
        device=info["device"], dtype=info["dtype"], weights_dtype=info["weights_dtype"])
    section.write("running")
    # 4. train
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_s = time.monotonic() - started
    # 5. save the model, with its prompt template and a portable base name
    saved = time.monotonic()
    model_dir, adapter_dir = _save(trainer, folder, job.out, cfg, job.base, info)
    if job.main:
        finish = {"template": cfg.template, "base": job.portable, "run_dir": folder,
                  "base_chat_template": info["base_chat_template"], "prompts_dir": cfg.prompts_dir}
        if adapter_dir is not None:
            portable_adapter(adapter_dir, job.source, job.portable)
            finish_model_folder(adapter_dir, trainer.processing_class, **finish)
        if model_dir is not None:
            tokenizer = info.get("merged_tokenizer") or trainer.processing_class
            finish_model_folder(model_dir, tokenizer, **finish)
    info["timings"].update(train_s=round(train_s, 2), save_s=round(time.monotonic() - saved, 2))
    # 6. the record
    records = [r for r in _read_metrics(folder / METRICS) if "loss" in r]
    losses = [r["loss"] for r in records]
    result = TrainResult(
        output_dir=job.out, model_dir=model_dir, adapter_dir=adapter_dir, rows=info["trained_rows"],
        skipped=info["skipped"], steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0),
        first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
        train_seconds=round(train_s, 2), manifest=folder / MANIFEST, metrics=folder / METRICS,
        run_dir=folder, resumed_from_step=job.resumed_from, template=cfg.template)
    outputs = {**section.fields["outputs"], "model_dir": str(model_dir) if model_dir else None,
               "adapter_dir": str(adapter_dir) if adapter_dir else None}
    section.write("complete", steps=result.steps, epochs=result.epochs, first_loss=result.first_loss,
                  final_loss=result.final_loss, train_loss=output.training_loss,
                  losses=[[r.get("step"), r["loss"]] for r in records],
                  num_tokens=records[-1].get("num_tokens") if records else None, timings=info["timings"],
                  outputs=outputs, sft_config={k: v for k, v in trainer.args.to_dict().items()
                                               if isinstance(v, str | int | float | bool | type(None))})
    if job.main:
        job.emit({"event": "saved", "model_dir": outputs["model_dir"], "adapter_dir": outputs["adapter_dir"]})
    return result


def _save(trainer: Any, folder: Path, out: Path, cfg: TrainConfig, base: str, info: dict[str, Any]) -> tuple[
        Path | None, Path | None]:
    """Full: the model and tokenizer in ``out``. LoRA: the adapter in ``folder/adapter``, then (main
    process only) the base reloaded in the training dtype, the adapter merged in, saved in ``out``."""
    if not cfg.lora:
        if trainer.accelerator.num_processes == 1:  # sharded runs save what the trainer gathers (fp32)
            import torch

            trainer.model.to(getattr(torch, info["dtype"]))
        trainer.save_model(str(out))
        (out / _ARGS_PICKLE).unlink(missing_ok=True)
        return out, None
    adapter = folder / ADAPTER_DIR
    with warnings.catch_warnings():  # PEFT's save reads a deprecated transformers property
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer.save_model(str(adapter))
    (adapter / _ARGS_PICKLE).unlink(missing_ok=True)
    if not cfg.merge:
        return None, adapter
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        from peft import PeftModel

        from reflectune.models import load_causal_lm

        model, tokenizer = load_causal_lm(base, dtype=info["dtype"], train=True)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        info["merged_tokenizer"] = tokenizer
    trainer.accelerator.wait_for_everyone()
    return out, adapter


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("reflectune", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found
