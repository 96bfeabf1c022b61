"""Writing the columnar formats (Parquet, CSV, ``datasets`` folders) from a JSON-lines spool.

A columnar file fixes its columns (and for Arrow, their types) up front, while rows arrive one at a
time and need not agree: a column that is null for the first thousand rows, a key that only a later
row has. Guessing from the first batch breaks on exactly those files. So rows are spooled to a temp
JSON-lines file as they come (memory stays flat), and on close two passes over the spool settle the
column list and each column's type before the real file is written. A column whose values have no
common Arrow type (a number here, a list there) is written as strings, JSON-encoding non-strings; one
that is null in every row is a string column too (Arrow's ``null`` type is no type a reader can use).

When the input is itself Arrow (Parquet, a datasets folder) the output is built from it instead
(``Exact``): every column the writer did not rewrite is taken from the input by row number, as the very
Arrow values it held, and the rewritten ones are stored back in the input's type; only the new columns
(``reflect_status`` and the like) are typed from the spool. JSON cannot carry float32, ``timestamp[us]``,
a dictionary column or a binary value, so a Parquet round trip through the spool alone would change them.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reflectune.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

    from reflectune.io.sources import ArrowSource

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


class Exact:
    """Where each written row came from in an Arrow input, and which of its columns were rewritten.

    Two small arrays per row (the input's 0-based row, an index into the few distinct sets of rewritten
    column names), so 50,000 rows cost well under a megabyte. Rows must come in input order, which lets
    the output be built in one streaming pass over the input; ``add`` says False when one does not.
    """

    def __init__(self, source: ArrowSource) -> None:
        self.source = source
        self.rows = array("q")
        self.kinds = array("I")
        self.sets: list[frozenset[str]] = []
        self._ids: dict[frozenset[str], int] = {}

    def add(self, index: int, rewritten: Iterable[str]) -> bool:
        if index < 0 or (self.rows and index <= self.rows[-1]):
            return False
        key = frozenset(rewritten)
        kind = self._ids.get(key)
        if kind is None:
            kind = self._ids[key] = len(self.sets)
            self.sets.append(key)
        self.rows.append(index)
        self.kinds.append(kind)
        return True


def write_parquet(spool: Spool, dest: Path, exact: Exact | None = None) -> None:
    import pyarrow.parquet as pq

    schema, batches = _plan(spool, exact)
    with pq.ParquetWriter(dest, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def write_arrow_stream(spool: Spool, dest: Path, exact: Exact | None = None) -> None:
    """An Arrow IPC stream, the layout ``datasets`` memory-maps."""
    import pyarrow as pa

    schema, batches = _plan(spool, exact)
    with pa.OSFile(str(dest), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _plan(spool: Spool, exact: Exact | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    if exact is None:
        schema = arrow_schema(spool)
        return schema, arrow_batches(spool, schema)
    schema = exact_schema(spool, exact)
    return schema, exact_batches(spool, exact, schema)


def exact_schema(spool: Spool, exact: Exact) -> pa.Schema:
    """The input's schema (metadata and all), then the new columns, typed from the spool."""
    import pyarrow as pa

    source = exact.source.schema()
    rewritten = set().union(*exact.sets)
    untyped = [f.name for f in source if f.name in rewritten and pa.types.is_null(f.type)]
    new = [c for c in spool.columns if c not in source.names]
    inferred = arrow_schema(spool, [*untyped, *new])
    fields = [f.with_type(inferred.field(f.name).type) if f.name in untyped else f for f in source]
    return pa.schema([*fields, *(inferred.field(c) for c in new)], metadata=source.metadata)


def exact_batches(spool: Spool, exact: Exact, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The written rows as record batches of ``schema``, in one pass over the input and the spool."""
    import pyarrow as pa

    names = set(exact.source.schema().names)
    rewritten = set().union(*exact.sets)
    records = itertools.chain.from_iterable(spool.batches())
    rows, pos, offset = exact.rows, 0, 0
    for batch in exact.source.batches():
        if pos == len(rows):
            break
        end = bisect_left(rows, offset + batch.num_rows, lo=pos)
        if end > pos:
            taken = batch.take(pa.array([r - offset for r in rows[pos:end]], pa.int64()))
            recs = list(itertools.islice(records, end - pos))
            sets = [exact.sets[k] for k in exact.kinds[pos:end]]
            arrays = []
            for field in schema:
                if field.name in names and field.name not in rewritten:
                    arrays.append(_whole(taken.column(field.name), field.type))
                    continue
                if field.name in names:  # the input's value where this row did not rewrite it
                    given = taken.column(field.name).to_pylist()
                    values = [r.get(field.name) if field.name in s else g
                              for r, s, g in zip(recs, sets, given, strict=True)]
                else:
                    values = [r.get(field.name) for r in recs]
                arrays.append(_typed(values, field))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
            pos = end
        offset += batch.num_rows
    if pos < len(rows):
        raise DataError(f"has {offset} rows now, but row {rows[pos] + 1} was read from it: it changed while "
                        "being recycled; rerun", path=str(exact.source.path))


def _whole(column: Any, type_: pa.DataType) -> pa.Array:
    """One array of ``type_`` from a batch's column (a table's comes in chunks)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    return column if column.type == type_ else column.cast(type_)


def _typed(values: list[Any], field: pa.Field) -> pa.Array:
    import pyarrow as pa

    if field.type == pa.string():
        values = [_as_text(v) for v in values]
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"cannot store the written values as {field.type}, the column's type: {e}",
                        field=field.name) from None


def arrow_schema(spool: Spool, columns: Iterable[str] | None = None) -> pa.Schema:
    """First pass: one Arrow type per column (default: all) that every batch's values fit, else string."""
    import pyarrow as pa

    types: dict[str, pa.DataType | None] = dict.fromkeys(spool.columns if columns is None else columns)
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
        if column in as_text or type_ is None or pa.types.is_null(type_) or _has_empty_struct(type_):
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
