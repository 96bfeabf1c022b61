"""What a saved model folder holds besides the weights: its prompt format and a portable base name.

A trained folder must prompt the way it was trained wherever it goes. So ``train`` writes the
template into the tokenizer's chat template (vicuna, alpaca and wiz get one built from our template
files, :mod:`reflectune.prompts.chat_template`; ``chat`` keeps the base's) and records it in
``reflectune-model.json``; ``generate`` and ``judge`` then render with it by default.

A folder must not name a path of this machine either: PEFT writes the base's local path (for the
embedded model, a cache folder) into ``adapter_config.json`` and its model card. They get the
user's spec instead, when it is portable (:func:`portable_base_name`); the exact local path and the
weights' fingerprint are kept in the run's ``run.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from reflectune.io.atomic import write_text_atomic
from reflectune.models import ModelSource
from reflectune.models.source import MODEL_RECORD
from reflectune.prompts.chat_template import CHAT_TEMPLATES, student_chat_template

__all__ = ["MODEL_RECORD", "finish_model_folder", "portable_adapter", "portable_base_name"]

#: ``org/name``: what the Hugging Face hub calls a model.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The embedded model's hub id, when ``reflectune.models`` knows one (it does not: its weights are
#: a dequantised Q4_1 GGUF, not the hub's, so an adapter says ``embedded`` rather than misname them).
_EMBEDDED_HUB_ID: str | None = None


def _looks_like_hub_id(name: object) -> bool:
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not Path(name).is_absolute()


def portable_base_name(spec: str, source: ModelSource) -> str:
    """The base model's name as another machine can read it: ``embedded`` (or its hub id), an
    ``hf:`` hub id as given, else the folder's ``config.json`` ``_name_or_path`` when it is a hub id,
    else the folder's (or the GGUF file's) name."""
    raw = spec.strip()
    if source.is_embedded:
        return _EMBEDDED_HUB_ID or source.spec
    arg = raw[3:] if raw.startswith("hf:") else raw
    if raw.startswith("hf:") and _looks_like_hub_id(arg) and not arg.startswith("."):
        return arg
    if source.gguf_file:
        return source.gguf_file
    try:
        name = json.loads((source.path / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        name = None
    if _looks_like_hub_id(name):
        return str(name)
    return source.path.resolve().name


def portable_adapter(adapter: Path, source: ModelSource, name: str) -> None:
    """Name the base portably in a saved PEFT adapter: ``adapter_config.json`` and the model card."""
    config_path = adapter / "adapter_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = name
        write_text_atomic(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = adapter / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        for local in {str(source.path), str(source.path.resolve())}:
            text = text.replace(local, name)
        write_text_atomic(card, text)


def finish_model_folder(folder: Path, tokenizer: Any, *, template: str, base: str, run_dir: Path,
                        base_chat_template: str | None, prompts_dir: str | None = None) -> None:
    """Give a saved folder its prompt format: the tokenizer's chat template (for vicuna, alpaca and
    wiz, the one that renders their prompt; for chat, the base's) and ``reflectune-model.json``."""
    from importlib.metadata import version

    if template in CHAT_TEMPLATES:
        tokenizer.chat_template = student_chat_template(template, prompts_dir)
        tokenizer.save_pretrained(str(folder))
    record = {"template": template, "base": base, "reflectune": version("reflectune"),
              "trained_in": str(run_dir),
              # what --template chat renders with, now that the folder's own template may be vicuna's
              "base_chat_template": base_chat_template}
    write_text_atomic(folder / MODEL_RECORD, json.dumps(record, indent=2) + "\n")
