"""The one JSON lines reader for the files stages hand each other.

Every run-folder file (``variants.jsonl``, ``scores.jsonl``, ``judgments.jsonl``, rejects, metrics)
is read here, optionally through its model in :mod:`reflectune.contracts`, so a damaged or foreign
line fails the same way everywhere: a ``DataError`` naming the file and the line. Blank lines are
skipped; line numbers count every line, so they match an editor's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

from reflectune.errors import DataError

__all__ = ["read_jsonl"]

T = TypeVar("T")


def _why(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic's ValidationError: name the first bad field
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        return f"{where}: {first['msg']}"
    return str(exc).splitlines()[0]


@overload
def read_jsonl(path: str | os.PathLike[str], model: None = None) -> Iterator[tuple[int, dict[str, Any]]]: ...


@overload
def read_jsonl(path: str | os.PathLike[str], model: Callable[[Any], T]) -> Iterator[tuple[int, T]]: ...


def read_jsonl(path: str | os.PathLike[str],
               model: Callable[[Any], Any] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for every non-blank line, as a dict or as ``model(record)``.

    ``model`` is a validator such as ``VariantsLine.model_validate``; the ``ValueError`` it raises
    (pydantic's ``ValidationError`` is one) becomes a ``DataError`` naming the record type.
    """
    source = Path(path)
    try:
        fh = source.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path=str(source)) from None
    except OSError as exc:
        raise DataError(f"cannot read ({exc.strerror})", path=str(source)) from None
    with fh:
        line_no = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError:
                raise DataError(f"invalid UTF-8 on line {line_no + 1}", path=str(source),
                                row=line_no + 1) from None
            if not line:
                return
            line_no += 1
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not JSON ({exc.msg})", path=str(source), row=line_no) from None
            if not isinstance(value, dict):
                raise DataError(f"expected a JSON object, got {type(value).__name__}", path=str(source),
                                row=line_no)
            if model is None:
                yield line_no, value
                continue
            try:
                record = model(value)
            except ValueError as exc:  # pydantic's ValidationError is one
                kind = getattr(getattr(model, "__self__", model), "__name__", "valid")
                raise DataError(f"not a {kind} record ({_why(exc)})", path=str(source),
                                row=line_no) from None
            yield line_no, record
