"""The papers' five test sets, and any JSONL of prompts, read into one shape: ``EvalItem``.

Every test set names its fields differently (Vicuna ``text``, Koala ``prompt``, WizardLM
``Instruction``, Self-Instruct ``instruction`` plus an input, LIMA ``conversations``). Rather than
convert the files, each has a small reader that keeps the file as published (copies ship inside the
package, see ``data/testsets/ATTRIBUTION.md``) and yields the same four fields: ``dataset``, ``id``,
``instruction`` and ``category``. ``(dataset, id)`` is what the judge pairs two answer files on, so
ids are strings and stable: the file's own id where it has one, the 0-based row otherwise.

A user's own prompts go through :func:`load_prompts_file` with a field mapping
(``instruction=question,id=qid,category=cat``). Reading is pure apart from opening the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError, DataError

__all__ = [
    "PROMPT_FIELDS",
    "TESTSETS",
    "TESTSET_ROWS",
    "EvalItem",
    "load_prompts_file",
    "load_testset",
    "load_testsets",
    "packaged_testset_path",
    "parse_prompt_fields",
    "read_records",
    "resolve_testsets",
]

#: The papers' test sets, in the order of their figures.
TESTSETS: tuple[str, ...] = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
#: Rows in each published file (METHOD.md §7.1): 1,030 in all.
TESTSET_ROWS: dict[str, int] = {"vicuna": 80, "koala": 180, "wizardlm": 218, "sinstruct": 252, "lima": 300}
#: Canonical names a ``--fields`` mapping may set for a prompts file.
PROMPT_FIELDS: tuple[str, ...] = ("instruction", "input", "id", "category", "dataset")


@dataclass(frozen=True, slots=True)
class EvalItem:
    """One prompt to answer: ``(dataset, id)`` identifies it across answer files."""

    dataset: str
    id: str
    instruction: str
    category: str | None = None


# -- the five readers: one record -> (id, instruction, category) ------------------------------------

def _text(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"missing or empty string field '{field}'") from None
    return value


def _vicuna(record: Mapping[str, Any], row: int) -> tuple[str, str, str | None]:
    return str(record["question_id"]), _text(record, "text"), record.get("category")


def _koala(record: Mapping[str, Any], row: int) -> tuple[str, str, str | None]:
    return str(record["id"]), _text(record, "prompt"), None


def _wizardlm(record: Mapping[str, Any], row: int) -> tuple[str, str, str | None]:
    return str(record["idx"]), _text(record, "Instruction"), record.get("Skill")


def _sinstruct(record: Mapping[str, Any], row: int) -> tuple[str, str, str | None]:
    instruction = _text(record, "instruction")
    instances = record.get("instances") or []
    first = instances[0] if instances and isinstance(instances[0], Mapping) else {}
    extra = first.get("input") or ""
    if extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    return str(record["id"]), instruction, None


def _lima(record: Mapping[str, Any], row: int) -> tuple[str, str, str | None]:
    turn: Any = record.get("conversations")
    if isinstance(turn, list):
        turn = turn[0] if turn else None
    if isinstance(turn, Mapping):  # ShareGPT-style {"from": ..., "value": ...}
        turn = turn.get("value", turn.get("content"))
    if not isinstance(turn, str) or not turn.strip():
        raise ValueError("missing or empty first turn in field 'conversations'")
    return f"lima_{row - 1}", turn, None


_READERS: dict[str, Callable[[Mapping[str, Any], int], tuple[str, str, str | None]]] = {
    "vicuna": _vicuna, "koala": _koala, "wizardlm": _wizardlm, "sinstruct": _sinstruct, "lima": _lima,
}


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in _READERS:
        raise ConfigError(f"unknown test set '{name}'; known: {', '.join(TESTSETS)}, or 'all'")
    return key


def packaged_testset_path(name: str) -> Path:
    """Path of the packaged copy of test set ``name`` (``vicuna`` ... ``lima``)."""
    key = _check_name(name)
    return Path(str(resources.files("reflectune") / "data" / "testsets" / f"{key}_test_set.jsonl"))


def resolve_testsets(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` -> the five names; ``"vicuna,koala"`` or a list -> those, validated, in order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise ConfigError("no test set named; use one of " + ", ".join(TESTSETS) + ", or 'all'")
    if "all" in names:
        return list(TESTSETS)
    return list(dict.fromkeys(_check_name(n) for n in names))


def read_records(path: str | os.PathLike[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    """(1-based row, record) of a JSON lines file or a JSON array; blank lines skipped.

    Raises:
        DataError: a missing file, invalid JSON or a row that is not an object (file and row named).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such file", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {exc}", path=str(path)) from None
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}, line {exc.lineno})", path=str(path)) from None
        rows: Iterable[tuple[int, Any]] = enumerate(values, 1)
    else:
        rows = _jsonl(path, text)
    for row, value in rows:
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, got {type(value).__name__}", path=str(path), row=row)
        yield row, value


def _jsonl(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    row = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        row += 1
        try:
            yield row, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", path=str(path), row=row) from None


def load_testset(name: str, *, limit: int | None = None,
                 path: str | os.PathLike[str] | None = None) -> list[EvalItem]:
    """Read one of the papers' test sets.

    Args:
        name: ``vicuna``, ``koala``, ``wizardlm``, ``sinstruct`` or ``lima``.
        limit: keep the first ``limit`` rows only.
        path: read this file instead of the packaged copy (same field names).

    Returns:
        The items in file order; Vicuna items carry ``category``, WizardLM items their ``Skill``.

    Raises:
        DataError: a row without the set's instruction field, naming the file, row and field.

    Example:
        >>> len(load_testset("vicuna"))
        80
    """
    key = _check_name(name)
    source = Path(path) if path is not None else packaged_testset_path(key)
    reader = _READERS[key]
    items: list[EvalItem] = []
    for row, record in read_records(source):
        if limit is not None and len(items) >= limit:
            break
        try:
            item_id, instruction, category = reader(record, row)
        except KeyError as exc:
            raise DataError(f"missing field in the {key} test set", path=str(source), row=row,
                            field=str(exc.args[0])) from None
        except ValueError as exc:
            raise DataError(str(exc), path=str(source), row=row) from None
        items.append(EvalItem(key, item_id, instruction, category if isinstance(category, str) else None))
    return items


def load_testsets(spec: str | Sequence[str] = "all", *, limit: int | None = None) -> list[EvalItem]:
    """Items of several test sets (``"all"``, ``"vicuna,lima"`` or a list), ``limit`` per set."""
    return [item for name in resolve_testsets(spec) for item in load_testset(name, limit=limit)]


def parse_prompt_fields(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``"instruction=question,id=qid,category=cat"`` into a full canonical -> column mapping.

    Unset names map to themselves. ``input`` (if present and non-empty) is appended to the instruction
    after a blank line, as for Self-Instruct; ``dataset`` names a column holding the set's name.

    Raises:
        ConfigError: a pair without ``=``, an unknown canonical name or a repeat.
    """
    pairs: dict[str, str] = {}
    items = spec.items() if isinstance(spec, Mapping) else (
        (p.partition("=")[0], p.partition("=")[2]) if "=" in p else (p, "")
        for p in (s.strip() for s in (spec or "").split(",")) if p)
    for name, column in items:
        name, column = name.strip(), column.strip()
        if not name or not column:
            raise ConfigError(f"bad field mapping '{name}={column}': expected canonical=column, "
                              "e.g. 'instruction=question,id=qid'")
        if name not in PROMPT_FIELDS:
            raise ConfigError(f"unknown field '{name}' in field mapping; expected one of "
                              f"{', '.join(PROMPT_FIELDS)}")
        if name in pairs:
            raise ConfigError(f"bad field mapping: '{name}' is mapped twice")
        pairs[name] = column
    return {name: pairs.get(name, name) for name in PROMPT_FIELDS}


def load_prompts_file(path: str | os.PathLike[str], fields: str | Mapping[str, str] | None = None, *,
                      dataset: str | None = None, limit: int | None = None) -> list[EvalItem]:
    """Read any JSON lines (or JSON array) file of prompts.

    Args:
        path: the file.
        fields: mapping of canonical names (``instruction``, ``input``, ``id``, ``category``,
            ``dataset``) to the file's columns, as a dict or ``"instruction=question,id=qid"``.
        dataset: the set's name when no ``dataset`` column is mapped (default: the file's stem).
        limit: keep the first ``limit`` rows only.

    Returns:
        One item per row; a row without an id gets its 0-based row number.

    Raises:
        DataError: a row without a non-empty instruction, naming the file, row and column.
    """
    source = Path(path)
    mapping = parse_prompt_fields(fields)
    default_dataset = dataset or source.name.split(".")[0]
    items: list[EvalItem] = []
    for row, record in read_records(source):
        if limit is not None and len(items) >= limit:
            break
        instruction = record.get(mapping["instruction"])
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError("missing or empty instruction (map it with --fields instruction=COLUMN)",
                            path=str(source), row=row, field=mapping["instruction"])
        extra = record.get(mapping["input"])
        if isinstance(extra, str) and extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        item_id = record.get(mapping["id"])
        category = record.get(mapping["category"])
        name = record.get(mapping["dataset"])
        items.append(EvalItem(
            dataset=str(name) if name not in (None, "") else default_dataset,
            id=str(item_id) if item_id not in (None, "") else str(row - 1),
            instruction=instruction,
            category=str(category) if category not in (None, "") else None,
        ))
    return items
