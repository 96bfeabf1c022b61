"""A pipeline file in, a validated ``RunConfig`` out: every mistake is one line naming the file, the
line and the key's path.

Why not ``RunConfig(**yaml.safe_load(text))``: pydantic would say ``judge.judge.sepc: extra inputs are
not permitted`` with no line and no hint, and relative paths would be read against wherever the
user happens to stand. Here unknown keys are found first, walking the YAML nodes beside the models,
so each error has its line and a did-you-mean; then paths are made absolute against the file's
folder; then pydantic validates, its first complaint mapped back to a line too.

Secrets never live in the file: keys are named by an environment variable (``api_key_env``), and a
value that looks like an API key is refused.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from reflectune.config import STAGES, RunConfig, did_you_mean
from reflectune.errors import ConfigError

__all__ = ["load_run_config", "resolve_paths"]

#: Section -> its keys that hold a path, read against the pipeline file's folder.
PATH_KEYS: dict[str, tuple[str, ...]] = {
    "": ("data", "run_dir"),
    "recycle": ("input", "prompts_dir"),
    "score": ("input", "prompts_dir"),
    "select": ("input",),
    "train": ("input", "prompts_dir"),
    "generate": ("prompts_file",),
    "judge": ("input", "baseline", "prompts_dir"),
}
#: Section -> its keys that hold a model spec (``embedded``, ``openai:M``, ``hf:PATH`` or a path).
SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "score": ("student",), "train": ("base",), "generate": ("input", "baseline"),
}
#: Section -> its oracle blocks (each with a ``spec``).
ORACLE_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "recycle": (("oracle",), ("verify", "judge")), "generate": (("model",),), "judge": (("judge",),),
}
_SECRET = re.compile(r"^(sk-[A-Za-z0-9_-]{16,}|sk-ant-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|"
                     r"Bearer\s+\S{16,})$")


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a pipeline file; relative paths are resolved against its folder.

    ``overrides``: ``KEY.PATH=VALUE`` strings (``select.top_k=10%``), the value read as YAML, applied
    before validation (``reflectune run FILE --set ...``); their relative paths are read against the
    current folder, like any command-line path.

    Raises:
        ConfigError: ``FILE:LINE: KEY.PATH: what is wrong`` for the first problem found.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such pipeline file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the pipeline file ({exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{file}{where}: not valid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1: a pipeline file is a mapping of sections ({', '.join(STAGES)}), "
                          f"not a YAML {type(data).__name__}")
    lines = _key_lines(node)
    _check_keys(data, RunConfig, (), lines, file)
    data = resolve_paths(data, file.resolve().parent)
    for text in overrides:
        data = _override(data, text)
    _check_keys(data, RunConfig, (), lines, file)
    _check_secrets(data, (), lines, file)
    data = resolve_paths(data, Path.cwd())  # what the overrides added; the file's paths are absolute
    data.setdefault("run_dir", str(Path.cwd() / "runs" / file.name.split(".")[0]))
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        key = ".".join(loc) or "pipeline"
        raise ConfigError(f"{file}{_line(lines, loc)}: {key}: {first['msg']}") from None
    except ConfigError as exc:  # a Config's own check (TrainConfig's recipe rules): find its section
        section = next((name for name in STAGES if isinstance(data.get(name), dict)
                        and _fails(name, data[name])), None)
        where = f"{_line(lines, (section,))}: {section}" if section else ""
        raise ConfigError(f"{file}{where}: {exc}") from None


def _override(data: dict[str, Any], text: str) -> dict[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected KEY.PATH=VALUE, e.g. select.top_k=10%")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    out = dict(data)
    block = out
    for part in parts[:-1]:
        inner = block.get(part)
        inner = dict(inner) if isinstance(inner, dict) else {}
        block[part] = inner
        block = inner
    block[parts[-1]] = value
    return out


def _fails(section: str, values: dict[str, Any]) -> bool:
    model = _model_of(RunConfig.model_fields[section].annotation)
    assert model is not None
    try:
        model(**values)
    except (ConfigError, ValidationError):
        return True
    return False


def resolve_paths(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """``data`` with relative paths (and ``hf:``/path model specs) made absolute against ``root``."""
    out = dict(data)
    for section, keys in PATH_KEYS.items():
        block = out if not section else out.get(section)
        if not isinstance(block, dict):
            continue
        block = dict(block)
        for key in keys:
            if section == "generate" and key == "input":
                continue
            value = block.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                block[key] = str((root / value).resolve())
        for key in SPEC_KEYS.get(section, ()):
            if key in block:
                block[key] = _spec(block[key], root)
        for keys in ORACLE_KEYS.get(section, ()):
            block = _with_spec(block, keys, root)
        if section:
            out[section] = block
        else:
            out = block
    return out


def _with_spec(block: dict[str, Any], keys: tuple[str, ...], root: Path) -> dict[str, Any]:
    """``block`` with the ``spec`` at ``keys`` (``("verify", "judge")``) resolved."""
    inner = block.get(keys[0])
    if not isinstance(inner, dict):
        return block
    inner = _with_spec(inner, keys[1:], root) if len(keys) > 1 else (
        inner | ({"spec": _spec(inner["spec"], root)} if "spec" in inner else {}))
    return block | {keys[0]: inner}


def _spec(value: Any, root: Path) -> Any:
    """A model spec with a relative path made absolute; names (``embedded``, ``openai:M``, ``base``)
    and hub ids are kept as they are."""
    if not isinstance(value, str):
        return value
    prefix, rest = ("hf:", value[3:]) if value.startswith("hf:") else ("", value)
    looks_local = rest.startswith((".", "~")) or (root / rest).exists()
    if (prefix or ":" not in value) and looks_local and not Path(rest).is_absolute():
        return prefix + str((root / Path(rest).expanduser()).resolve())
    return value


def _key_lines(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """The 1-based line of every mapping key in the YAML, by its path."""
    found: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, str(key.value))
            found[here] = key.start_mark.line + 1
            found.update(_key_lines(value, here))
    return found


def _line(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f":{lines[loc[:end]]}"
    return ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``X``, ``X | None``), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _check_keys(data: dict[str, Any], model: type[BaseModel], path: tuple[str, ...],
                lines: dict[tuple[str, ...], int], file: Path) -> None:
    fields = model.model_fields
    for key, value in data.items():
        here = (*path, str(key))
        if key not in fields:
            where = "section" if not path else "key"
            choices = list(fields)
            raise ConfigError(f"{file}{_line(lines, here)}: {'.'.join(here)}: unknown {where}"
                              f"{did_you_mean(str(key), choices)}")
        sub = _model_of(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_keys(value, sub, here, lines, file)


def _check_secrets(data: Any, path: tuple[str, ...], lines: dict[tuple[str, ...], int], file: Path) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _check_secrets(value, (*path, str(key)), lines, file)
    elif isinstance(data, list):
        for value in data:
            _check_secrets(value, path, lines, file)
    elif isinstance(data, str) and _SECRET.match(data.strip()):
        raise ConfigError(f"{file}{_line(lines, path)}: {'.'.join(path)}: this looks like a secret; a "
                          "pipeline file is a record to share: put the key in an environment variable and "
                          "name it (api_key_env: MY_KEY)")
