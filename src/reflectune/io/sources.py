"""Row sources for the tabular formats: CSV, Parquet and ``datasets.save_to_disk`` folders.

Every source turns a file into a stream of ``RawRow``: a 1-based row number and the parsed record, or
the reason the row could not be parsed plus its raw text. A source raises ``DataError`` itself only
when it cannot go on (a broken Parquet footer, a CSV parser error); a bad row it can step over is
yielded, so the reader alone decides between raising and rejecting. Sources hold at most one batch
(about 1,000 rows) in memory. pyarrow and datasets are imported inside the functions that need them.

The text formats (CSV here, JSON in ``jsonsource``) read from ``open_stream``: one binary stream over a
file, a pipe or standard input, with gzip, bz2 or xz undone on the way (told by magic bytes), whose
first bytes are kept for sniffing without a second open, and whose read errors, a device's or a damaged
archive's, become a ``DataError`` naming the input.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from reflectune.errors import ConfigError, DataError
from reflectune.io.formats import (
    READ_ERRORS,
    SIGNATURE_BYTES,
    compression,
    damaged,
    decompressor,
    read_head,
    refuse_compression,
)

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 1000


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row as a source read it: ``value`` when parsed, else ``error`` and the raw ``text``."""

    row: int
    value: Any = None
    error: str | None = None
    text: str | None = None
    field: str | None = None


def bad_bytes_at(text: str) -> int | None:
    """Where the first byte that was not UTF-8 sits in ``text``, or None.

    Files are decoded with "surrogateescape", so such bytes show up as lone surrogates; raw text never
    holds any otherwise (a JSON "\\udc80" escape is six ASCII characters). So one encode, in C, tells
    whether a row had invalid UTF-8 without failing the whole stream.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def readable(text: str) -> str:
    """Raw text for a rejects file: undecodable bytes become ``\\xNN`` instead of failing."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Stream:
    """An input opened for one read: ``file`` from its first byte, ``head`` its first bytes (already
    decompressed) for sniffing, ``compression`` what was undone (None: plain)."""

    file: BinaryIO
    head: bytes
    compression: str | None


@contextmanager
def open_stream(path: Path | None, where: str) -> Iterator[Stream]:
    """Open a file or pipe, or standard input (``path`` None), for one streaming read.

    gzip, bz2 and xz are undone while reading (constant memory); zstd and zip raise a ``DataError``
    saying how to unpack them. Reading is never repeated, so a pipe is read once.
    """
    with ExitStack() as stack:
        raw = open_binary(path, where, stack, buffering=0)
        head = _head(raw, where, None)
        kind = compression(head)
        if kind is not None:
            refuse_compression(kind, where)
            raw = stack.enter_context(decompressor(kind, _prefixed(head, raw, where, None)))
            head = _head(raw, where, kind)
        yield Stream(_prefixed(head, raw, where, kind), head, kind)


def open_binary(path: Path | None, where: str, stack: ExitStack, *, buffering: int = -1) -> BinaryIO:
    """Standard input (``path`` None: never a terminal) or the file, opened for reading in ``stack``."""
    if path is None:
        if sys.stdin is None:
            raise DataError("there is no standard input", path=where)
        if sys.stdin.buffer.isatty():
            raise DataError("is a terminal: pipe or redirect the data in (... - < data.jsonl)", path=where)
        return sys.stdin.buffer
    try:
        return stack.enter_context(open(path, "rb", buffering=buffering))
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=where) from None


def _head(f: BinaryIO, where: str, kind: str | None) -> bytes:
    try:
        return read_head(f, enough=SIGNATURE_BYTES)
    except READ_ERRORS as e:
        raise damaged(kind, e, where) from None


def _prefixed(head: bytes, rest: BinaryIO, where: str, kind: str | None) -> BinaryIO:
    return io.BufferedReader(_Prefixed(head, rest, where, kind), 1 << 16)


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``rest``, whose read errors become a ``DataError`` naming the input."""

    def __init__(self, head: bytes, rest: BinaryIO, where: str, kind: str | None) -> None:
        self.head, self.where, self.kind = head, where, kind
        # readinto1 hands on what a pipe has delivered instead of waiting for a full buffer
        self.read_more = getattr(rest, "readinto1", None) or getattr(rest, "readinto")  # noqa: B009

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        try:
            return int(self.read_more(buffer))
        except READ_ERRORS as e:
            raise damaged(self.kind, e, self.where) from None


def iter_csv(path: Path) -> Iterator[RawRow]:
    """Rows of a CSV file with a header line; every value is a string."""
    with open_stream(path, str(path)) as stream:
        yield from csv_rows(stream.file, str(path))


def csv_rows(f: BinaryIO, where: str) -> Iterator[RawRow]:
    """Rows of a CSV stream (see ``iter_csv``); ``where`` names it in messages."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a 1 MB field is valid data
    lines = (line.decode("utf-8", "surrogateescape") for line in f)
    reader = csv.reader(_strip_bom(lines))
    try:
        header = next((r for r in reader if r), None)
        if header is None:
            return
        for column in header:
            if header.count(column) > 1:
                raise DataError(f"column {column!r} appears twice in the header", path=where,
                                field=column)
        row = 0
        for values in reader:
            if not values:
                continue
            row += 1
            text = ",".join(values)
            bad = next((c for c, v in zip(header, values, strict=False) if bad_bytes_at(v) is not None),
                       None)
            if bad is not None:
                yield RawRow(row, error="invalid UTF-8", text=readable(text), field=bad)
            elif len(values) != len(header):
                yield RawRow(row, error=f"has {len(values)} values, the header has {len(header)}",
                             text=text)
            else:
                yield RawRow(row, dict(zip(header, values, strict=True)))
    except csv.Error as e:
        raise DataError(f"CSV parse error at line {reader.line_num}: {e}", path=where) from None


def _strip_bom(lines: Iterator[str]) -> Iterator[str]:
    first = next(lines, None)
    if first is None:
        return
    yield first.removeprefix("\ufeff")
    yield from lines


def iter_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file, read one batch at a time through ``iter_batches``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable Parquet file: {e}", path=str(path)) from None
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS):
            for record in batch.to_pylist():
                row += 1
                yield RawRow(row, record)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"Parquet read failed: {e}", path=str(path), row=row + 1) from None


def import_datasets() -> Any:
    """``datasets`` is an optional extra, needed only for ``save_to_disk`` folders."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("datasets folders need the datasets package: "
                          "pip install 'reflectune[datasets]'") from None
    return datasets


DATASET_DICT_FILE = "dataset_dict.json"


def split_folder(path: Path, split: str | None) -> Path:
    """The folder of the dataset to read: ``path`` itself, or one split's of a ``DatasetDict``.

    ``DatasetDict.save_to_disk`` writes each split into its own subfolder, which is a dataset folder of its
    own; reading that folder is reading the split, so everything downstream (run.json, ``select``'s
    second read) can name the split by a path alone. A dict with one split needs no ``split``; with
    several, picking one silently (``train``) would recycle the wrong data without a word.

    Raises:
        ConfigError: ``split`` names no split of the dict, or is given for a folder that is no dict.
        DataError: a dict with several splits and no ``split``, or an unreadable ``dataset_dict.json``.
    """
    marker = path / DATASET_DICT_FILE
    if not marker.is_file():
        if split is not None:
            raise ConfigError(f"--split {split}: {path} is a single dataset, not a dataset dict with splits; "
                              "drop --split")
        return path
    try:
        splits = json.loads(marker.read_text(encoding="utf-8"))["splits"]
        if not isinstance(splits, list) or not all(isinstance(name, str) for name in splits):
            raise TypeError("splits is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"unreadable {DATASET_DICT_FILE}: {e}", path=str(path)) from None
    if split is None:
        if len(splits) == 1:
            return path / splits[0]
        raise DataError(f"holds splits {', '.join(splits)}: pick one with --split NAME (split= in Python) or "
                        f"point at its folder ({path / splits[0]})", path=str(path))
    if split not in splits:
        raise ConfigError(f"--split {split}: {path} has no such split; its splits are {', '.join(splits)}")
    return path / split


def load_hf_disk(path: Path) -> Any:
    """The ``datasets.Dataset`` saved in ``path`` (one split's folder; see ``split_folder``)."""
    datasets = import_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a broken folder
        raise DataError(f"not a readable datasets folder: {e}", path=str(path)) from None
    if isinstance(ds, datasets.DatasetDict):  # a dict nested in a split's folder: not ours to pick from
        raise DataError(f"holds splits {', '.join(ds)}: point at one split's folder", path=str(path))
    return ds


def iter_hf_disk(path: Path, split: str | None = None) -> Iterator[RawRow]:
    """Rows of a ``datasets.save_to_disk`` folder (memory-mapped, read in batches).

    A ``DatasetDict`` folder is read through one split: ``split``, or its only one (see ``split_folder``).
    """
    ds = load_hf_disk(split_folder(path, split))
    row = 0
    for batch in ds.iter(batch_size=BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            row += 1
            yield RawRow(row, dict(zip(columns, values, strict=True)))


@dataclass(frozen=True, slots=True)
class ArrowSource:
    """A Parquet file or datasets folder read as Arrow, for the writer to copy columns from exactly.

    Rows read as Python values and spooled as JSON lose their types (float32 becomes a double,
    ``timestamp[us]`` a string, a dictionary column plain strings); so the writer takes every column it
    did not rewrite from here, by row number, as the Arrow values they were, under the input's schema.
    """

    path: Path
    fmt: str

    def schema(self) -> pa.Schema:
        """The input's schema as its reader sees it, metadata included (a datasets folder's features)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.fmt == "parquet":
            try:
                return pq.ParquetFile(self.path).schema_arrow
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"not a readable Parquet file: {e}", path=str(self.path)) from None
        return load_hf_disk(self.path).data.schema

    def batches(self) -> Iterator[pa.Table | pa.RecordBatch]:
        """The input's rows in order, about ``BATCH_ROWS`` at a time."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.fmt == "hf_disk":  # the arrow format applies a saved selection's indices too
            yield from load_hf_disk(self.path).with_format("arrow").iter(batch_size=BATCH_ROWS)
            return
        try:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=BATCH_ROWS)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"Parquet read failed: {e}", path=str(self.path)) from None
