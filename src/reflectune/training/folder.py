"""The training run folder and the model folder: what may be written where, and what may be resumed.

A training has two folders. The *run folder* (``--run-dir``, default ``runs/<data>-<base>-train``) is
a run folder like every stage's: ``run.json`` with its ``train`` section, ``metrics.jsonl``,
``checkpoint-N/``, the start record, and for LoRA ``adapter/``. The *model folder* (``-o``, default
``RUN/model``) is what the run produces: a plain Hugging Face folder. Three promises the Trainer does
not keep by itself:

- ``-o`` never overwrites a model without being told: not a folder that already holds a trained
  model (unless ``--overwrite``), never the base model's own folder, and never a file; the run
  folder may not be the base's folder or a file either.
- ``--resume`` continues only the run it started: the run folder records, at the start, the
  options, base model and data it was started with (``reflectune-train.start.json``); a resume with
  other ones is refused, naming what differs, instead of training on the checkpoint's schedule while
  the manifest records the new one.
- ``--resume`` starts from the newest *complete* checkpoint. A ``kill -9`` during a save leaves a
  ``checkpoint-N`` folder without its ``trainer_state.json`` (the Trainer writes it last); that one
  is skipped, and the complete one before it is used. A checkpoint of the other kind (``--resume
  --lora`` on a full fine-tuning checkpoint, or the reverse) is refused in one line, start record or
  not: the Trainer would fail on it with a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from reflectune.config import TrainConfig
from reflectune.errors import ConfigError
from reflectune.io.atomic import write_text_atomic
from reflectune.models.source import MODEL_RECORD, content_sha256

START = "reflectune-train.start.json"
#: Files that make a folder a trained model (or a training run's output).
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter", "adapter_model.safetensors", MODEL_RECORD)
#: Options that may change between a run and its resume: they do not change what is trained.
RESUMABLE = frozenset({"resume", "overwrite", "report_to", "save_total_limit", "save_steps"})
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: What a checkpoint needs to be resumed: the Trainer's state (written last), and the weights.
_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_WEIGHTS = _FULL_WEIGHTS + _ADAPTER_WEIGHTS


def check_output(out: Path, base_dir: Path | None, cfg: TrainConfig, *, resuming: bool,
                 what: str = "-o") -> None:
    """Refuse a model folder (``-o``, or the run's ``adapter/``: ``what`` names it) that would
    overwrite what it should not."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is a file: training writes a folder (the model and its tokenizer)")
    if base_dir is not None and out.exists() and out.resolve() == base_dir.resolve():
        raise ConfigError(f"{what} {out} is the base model's own folder: training would overwrite the model "
                          "it starts from; choose another folder")
    if resuming or cfg.overwrite or not out.is_dir():
        return
    held = [name for name in MODEL_FILES if (out / name).exists()]
    if held:
        raise ConfigError(f"{what} {out} already holds a trained model ({', '.join(held)}): pass --overwrite "
                          "to replace it, or choose another folder")


def check_run_dir(run_dir: Path, base_dir: Path | None) -> None:
    """Refuse a run folder that is a file or the base model's own folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file: training keeps a folder (run.json, metrics, "
                          "checkpoints)")
    if base_dir is not None and run_dir.exists() and run_dir.resolve() == base_dir.resolve():
        raise ConfigError(f"--run-dir {run_dir} is the base model's own folder: choose another folder")


def complete_checkpoint(out: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that can be resumed, and the names of newer incomplete ones skipped."""
    if not out.is_dir():
        return None, []
    found = sorted(((int(m.group(1)), p) for p in out.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True)
    skipped: list[str] = []
    for _, path in found:
        if (path / "trainer_state.json").is_file() and any((path / w).exists() for w in _WEIGHTS):
            return path, skipped
        skipped.append(path.name)
    return None, skipped


def check_checkpoint_kind(checkpoint: Path, lora: bool) -> None:
    """Refuse resuming a full fine-tuning checkpoint as LoRA, or a LoRA one as full fine-tuning.

    The start record already refuses a changed ``--lora`` (``lora False then, True now``); this holds
    for a run folder without one too. Only a checkpoint that is plainly the other kind is refused: a
    layout with neither kind of weights (a sharded save) is left to the Trainer.
    """
    adapter = any((checkpoint / name).exists() for name in _ADAPTER_WEIGHTS)
    full = any((checkpoint / name).exists() for name in _FULL_WEIGHTS)
    if lora and full and not adapter:
        raise ConfigError(f"--resume --lora: {checkpoint} is a full fine-tuning checkpoint (no adapter "
                          "weights): resume without --lora, or train LoRA into another --run-dir")
    if not lora and adapter and not full:
        raise ConfigError(f"--resume: {checkpoint} is a LoRA checkpoint (adapter weights only): resume "
                          "with --lora, or train into another --run-dir")


def data_identity(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, str | Path):
        return None  # samples in memory: nothing to compare
    path = Path(data)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return {"path": str(data)}
    return {"path": str(path.resolve()), "sha256": content_sha256(files)}


def start_record(cfg: TrainConfig, base: str, base_identity: str | None, data: Any) -> dict[str, Any]:
    """What this run is: the options that shape training, the base model, the data (by content)."""
    options = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RESUMABLE}
    return {"config": options, "base": base, "base_identity": base_identity, "data": data_identity(data)}


def write_start(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / START, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    found = []
    for key in sorted(set(before["config"]) | set(now["config"])):
        old, new = before["config"].get(key), now["config"].get(key)
        if old != new:
            found.append(f"{key} {old!r} then, {new!r} now")
    if before.get("base_identity") != now.get("base_identity") or before.get("base") != now.get("base"):
        found.append(f"the base model ({before.get('base')} then, {now.get('base')} now)")
    old_data, new_data = before.get("data"), now.get("data")
    if old_data and new_data and old_data != new_data:
        same_path = old_data.get("path") == new_data.get("path")
        found.append("the data file's content" if same_path else
                     f"the data ({old_data.get('path')} then, {new_data.get('path')} now)")
    return found


def check_resume(out: Path, record: dict[str, Any]) -> bool:
    """Refuse resuming ``out`` with another configuration, base or data. False when the folder has no
    start record (a run from before this check): then nothing can be compared."""
    path = out / START
    if not path.is_file():
        return False
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"{path} is unreadable: the run it records cannot be checked; train into another "
                          "folder") from None
    differences = _differences(before, record)
    if differences:
        raise ConfigError(f"--resume: {out} was started with other settings ({'; '.join(differences)}): "
                          "resume with the same ones, or train into another folder")
    return True
