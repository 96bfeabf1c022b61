"""The one JSON lines reader for the files stages hand each other.

Every run-folder file (``variants.jsonl``, ``scores.jsonl``, ``judgments.jsonl``, rejects, metrics)
is read here, optionally through its model in :mod:`reflectune.contracts`, so a damaged or foreign
line fails the same way everywhere: a ``DataError`` naming the file and the line. Blank lines are
skipped; line numbers count every line, so they match an editor's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from reflectune.errors import DataError

__all__ = ["read_jsonl"]

T = TypeVar("T", covariant=True)


class Model(Protocol[T]):
    """What a record model offers (a pydantic model class has it); io itself imports no pydantic."""

    __name__: str

    def model_validate(self, obj: Any) -> T: ...


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
def read_jsonl(path: str | os.PathLike[str], model: Model[T]) -> Iterator[tuple[int, T]]: ...


def read_jsonl(path: str | os.PathLike[str], model: Model[Any] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` for every non-blank line, as a dict or validated by ``model``."""
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
                yield line_no, model.model_validate(value)
            except ValueError as exc:  # pydantic's ValidationError is one
                raise DataError(f"not a {model.__name__} record ({_why(exc)})", path=str(source),
                                row=line_no) from None
