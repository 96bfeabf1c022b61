"""Writing the columnar formats (Parquet, CSV, ``datasets`` folders) from a JSON-lines spool.

A columnar file fixes its columns (and for Arrow, their types) up front, while rows arrive one at a
time and need not agree: a column that is null for the first thousand rows, a key that only a later
row has. Guessing from the first batch breaks on exactly those files. So rows are spooled to a temp
JSON-lines file as they come (memory stays flat), and on close two passes over the spool settle the
column list and each column's type before the real file is written. A column whose values have no
common Arrow type (a number here, a list there) is written as strings, JSON-encoding non-strings.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reflectune.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 1000


class Spool:
    """Rows appended as JSON lines to a temp file; remembers column order and a content hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: dict[str, None] = {}
        self.count = 0
        self._hash = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 - closed in finish()

    def add(self, record: dict[str, Any], line: bytes) -> None:
        for key in record:
            if key not in self.columns:
                self.columns[key] = None
        self._file.write(line)
        self._hash.update(line)
        self.count += 1

    def finish(self) -> str:
        """Close the spool and return the hex digest of its content."""
        self._file.close()
        return self._hash.hexdigest()

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        with open(self.path, "rb") as f:
            batch: list[dict[str, Any]] = []
            for line in f:
                batch.append(json.loads(line))
                if len(batch) == BATCH_ROWS:
                    yield batch
                    batch = []
            if batch:
                yield batch


def write_csv(spool: Spool, dest: Path) -> None:
    """A header of every column seen, then one line per row; non-strings JSON-encoded, null empty."""
    columns = list(spool.columns)
    with open(dest, "w", encoding="utf-8", errors="backslashreplace", newline="") as f:  # lone surrogates
        if not columns:
            return
        writer = csv.writer(f)
        writer.writerow(columns)
        for batch in spool.batches():
            writer.writerows([_as_text(r.get(c), empty_null=True) for c in columns] for r in batch)


def write_parquet(spool: Spool, dest: Path) -> None:
    import pyarrow.parquet as pq

    schema = arrow_schema(spool)
    with pq.ParquetWriter(dest, schema) as writer:
        for batch in arrow_batches(spool, schema):
            writer.write_batch(batch)


def write_arrow_stream(spool: Spool, dest: Path) -> None:
    """An Arrow IPC stream, the layout ``datasets`` memory-maps."""
    import pyarrow as pa

    schema = arrow_schema(spool)
    with pa.OSFile(str(dest), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in arrow_batches(spool, schema):
            writer.write_batch(batch)


def arrow_schema(spool: Spool) -> pa.Schema:
    """First pass: one Arrow type per column that every batch's values fit, else string."""
    import pyarrow as pa

    types: dict[str, pa.DataType | None] = dict.fromkeys(spool.columns)
    as_text: set[str] = set()
    for batch in spool.batches():
        for column in types:
            if column in as_text:
                continue
            try:
                new = pa.array([r.get(column) for r in batch]).type
                old = types[column]
                types[column] = new if old is None else pa.unify_schemas(
                    [pa.schema([("c", old)]), pa.schema([("c", new)])], promote_options="permissive"
                ).field(0).type
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                as_text.add(column)
    fields = []
    for column, type_ in types.items():
        if column in as_text or type_ is None or _has_empty_struct(type_):
            type_ = pa.string()
        fields.append(pa.field(column, type_))
    return pa.schema(fields)


def arrow_batches(spool: Spool, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Second pass: each spooled batch as a record batch of ``schema``."""
    import pyarrow as pa

    for batch in spool.batches():
        arrays = []
        for field in schema:
            values = [r.get(field.name) for r in batch]
            if field.type == pa.string():
                values = [_as_text(v) for v in values]
            try:
                arrays.append(pa.array(values, type=field.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
                raise DataError(f"cannot store values as {field.type}: {e}", field=field.name) from None
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _as_text(value: Any, empty_null: bool = False) -> str | None:
    if value is None:
        return "" if empty_null else None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _has_empty_struct(type_: pa.DataType) -> bool:
    """Parquet cannot store a struct with no fields (a column of ``{}``)."""
    import pyarrow as pa

    if pa.types.is_struct(type_):
        return type_.num_fields == 0 or any(_has_empty_struct(f.type) for f in type_)
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        return _has_empty_struct(type_.value_type)
    if pa.types.is_map(type_):
        return _has_empty_struct(type_.key_type) or _has_empty_struct(type_.item_type)
    return False
