"""``DatasetWriter``: recycled rows out, in the input's own shape, all or nothing.

Nothing is written in place. Rows go to a unique temporary name beside the target (``io.atomic``), renamed
over the target only when the writer closes without an exception, so a killed run never leaves half a
file where a good one was. JSON and JSON lines stream straight to the temp file; the columnar formats
spool first (see ``tabular``). Output is a pure function of the rows written: keys keep the order
they are given in, nothing carries a timestamp, so identical input gives byte-identical files.

Given the input it read (``source``), a Parquet or datasets-folder writer of an Arrow input keeps the
input's schema: every column's type and value, and typed new columns (see ``tabular.Exact``). A path
whose extension names another format than the one asked for is refused, so names never lie.

While open, a writer holds an ``OutputLock`` on its target (``.NAME.lock`` beside it), so a second
writer of the same path, another run or this process, is refused with a ``StoreError``. Any OS error
(a full disk included) is a one-line ``StoreError`` and removes the temp files at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from reflectune.errors import ConfigError, StoreError
from reflectune.io import tabular
from reflectune.io.atomic import OutputLock, os_reason, remove_stale, temp_path
from reflectune.io.fields import resolve_fields
from reflectune.io.formats import OUTPUT_SUFFIXES, check_format, detect_format, named_format, output_format
from reflectune.io.readers import InputFile
from reflectune.io.shapes import rewritten_columns, to_record
from reflectune.io.sources import ArrowSource, import_datasets, split_folder
from reflectune.types import Sample

#: what a writer can be told the rows were read from
Source = InputFile | ArrowSource | str | os.PathLike[str] | None


class DatasetWriter:
    """Write rows to ``path`` atomically, as json, jsonl, parquet, csv or a ``datasets`` folder.

    Args:
        path: the output file, or folder for ``hf_disk``.
        fmt: one of ``detect_format``'s names; ``None`` infers it from the extension (none: a folder).
        fields: the same mapping the input was read with, so the output keeps the input's names.
        source: the input the rows were read from (a path, or ``open_input``'s ``InputFile``): a
            Parquet or datasets-folder output of a Parquet or datasets-folder input takes the input's
            schema and every column it does not rewrite from it, exactly (rows written with ``write``,
            in input order; ``write_record`` falls back to types inferred from the values).

    Raises:
        ConfigError: ``fmt`` disagrees with the extension of ``path`` (``x.json`` as parquet), or
            ``path`` is a folder for a file format or a file for a folder.

    Example:
        >>> with DatasetWriter("out.json") as out:
        ...     for s in read_samples("data.json"):
        ...         out.write(s, s.instruction, s.input, better(s), {"reflect_status": "ok"})
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str | None = None, *,
                 fields: Mapping[str, str] | None = None, source: Source = None) -> None:
        self.path = Path(path)
        self.fmt = check_format(fmt) if fmt is not None else output_format(path)
        named = named_format(self.path)
        if named is not None and named != self.fmt:
            raise ConfigError(f"{self.path} is named as {named} but would be written as {self.fmt}: "
                              f"name it {self.path.with_suffix(OUTPUT_SUFFIXES[self.fmt])} or write {named}")
        self.fields = resolve_fields(fields)
        arrow = arrow_source(source) if self.fmt in ("parquet", "hf_disk") else None
        self._exact = tabular.Exact(arrow) if arrow is not None else None
        self.count = 0
        self.tmp = temp_path(self.path)
        self._file: IO[bytes] | None = None
        self._spool: tabular.Spool | None = None
        self._lock = OutputLock(self.path)
        self._failed: StoreError | None = None
        if self.fmt != "hf_disk" and self.path.is_dir():
            raise ConfigError(f"{self.path} is a directory; a {self.fmt} output must be a file")
        if self.fmt == "hf_disk" and self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file; a datasets folder output must be a folder")

    def __enter__(self) -> DatasetWriter:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Lock the target and create the temp file; ``__enter__`` calls this.

        Raises ``StoreError`` if another writer (another run, or this process) holds the target.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except OSError as exc:
            raise self._os_error(exc) from None
        try:
            remove_stale(self.path)  # what a killed writer of this file left
            if self.fmt in ("json", "jsonl"):
                self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
            else:
                self._spool = tabular.Spool(Path(f"{self.tmp}.spool"))
        except OSError as exc:
            self.abort()
            raise self._os_error(exc) from None
        except BaseException:
            self.abort()
            raise

    def _os_error(self, exc: OSError) -> StoreError:
        return StoreError(f"{self.path}: cannot write the output ({os_reason(exc)}); "
                          "finished work is kept in the run's store, fix the cause and rerun")

    def write(self, sample: Sample, instruction: str, input: str, output: str,
              columns: Mapping[str, Any] | None = None) -> None:
        """Write ``sample`` back with new texts in its own shape, ``columns`` appended.

        A passthrough sample is written as its untouched ``raw`` record (plus ``columns``, if any).
        """
        columns = columns or {}
        if self._exact is not None and not self._exact.add(sample.row - 1, (*rewritten_columns(
                sample, self.fields), *columns)):
            self._exact = None  # out of input order: the input cannot be streamed alongside
        self._write(to_record(sample, instruction, input, output, columns, self.fields))

    def write_record(self, record: Mapping[str, Any]) -> None:
        """Write one raw dict as one row (typed from the values alone: it names no input row).

        After an OS error (disk full) the temp files are gone and every later write raises it again.
        """
        self._exact = None
        self._write(record)

    def _write(self, record: Mapping[str, Any]) -> None:
        if self._failed is not None:
            raise self._failed
        try:
            self._write_record(dict(record))
        except OSError as exc:
            self._failed = self._os_error(exc)
            self.abort()
            raise self._failed from None

    def _write_record(self, record: dict[str, Any]) -> None:
        line = dumps_line(record)
        if self._spool is not None:
            self._spool.add(record, line)
        elif self._file is not None:
            if self.fmt == "json":
                self._file.write(b",\n" if self.count else b"[\n")
                line = line[:-1]
            self._file.write(line)
        else:
            raise ConfigError("DatasetWriter is not open; use it in a with block")
        self.count += 1

    def close(self) -> None:
        """Finish the temp file and rename it over the target."""
        if self._failed is not None:  # a write failed and was swallowed: there is nothing to commit
            self.abort()
            raise self._failed
        try:
            if self._file is not None:
                if self.fmt == "json":
                    self._file.write(b"\n]\n" if self.count else b"[]\n")
                self._file.close()
                self._file = None
                os.replace(self.tmp, self.path)
            elif self._spool is not None:
                self._finish_spool(self._spool)
                self._spool = None
        except OSError as exc:
            self.abort()
            raise self._os_error(exc) from None
        except BaseException:
            self.abort()
            raise
        self._lock.release()

    def abort(self) -> None:
        """Drop everything written; the target is left as it was. Safe to call more than once."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the final flush again
                self._file.close()
            self._file = None
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.finish()
            self._spool = None
        for leftover in (self.tmp, Path(f"{self.tmp}.spool"), Path(f"{self.tmp}.arrow")):
            with contextlib.suppress(OSError):
                _remove(leftover)
        self._lock.release()

    def _finish_spool(self, spool: tabular.Spool) -> None:
        digest = spool.finish()
        if self.fmt == "csv":
            tabular.write_csv(spool, self.tmp)
        elif self.fmt == "parquet":
            tabular.write_parquet(spool, self.tmp, self._exact)
        else:
            self._save_to_disk(spool, digest)
        _remove(spool.path)
        if self.fmt != "hf_disk":
            os.replace(self.tmp, self.path)
            return
        old = Path(f"{self.path}.old")
        _remove(old)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        _remove(old)

    def _save_to_disk(self, spool: tabular.Spool, digest: str) -> None:
        datasets = import_datasets()
        from datasets.table import MemoryMappedTable

        arrow = Path(f"{self.tmp}.arrow")
        tabular.write_arrow_stream(spool, arrow, self._exact)
        _remove(self.tmp)
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:  # a fingerprint from the content keeps state.json byte-identical across runs
            datasets.Dataset(MemoryMappedTable.from_file(str(arrow)), fingerprint=digest[:16]) \
                .save_to_disk(str(self.tmp))
        finally:
            if bars:
                datasets.enable_progress_bars()
            _remove(arrow)


def arrow_source(source: Source) -> ArrowSource | None:
    """The Arrow input behind ``source``, if it is one (a dataset dict's path: its only split)."""
    if source is None or isinstance(source, ArrowSource):
        return source
    if isinstance(source, InputFile):
        path, fmt = source.path, source.fmt
    else:
        path = Path(source)
        fmt = detect_format(path)
        if fmt == "hf_disk":
            path = split_folder(path, None)
    return ArrowSource(path, fmt) if fmt in ("parquet", "hf_disk") else None


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSON lines to ``path`` via a temp file and a rename; returns the row count."""
    with DatasetWriter(path, "jsonl") as out:
        for row in rows:
            out.write_record(row)
    return out.count


def dumps_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line, UTF-8; lone surrogates, which UTF-8 cannot hold, are written as escapes."""
    text = json.dumps(record, ensure_ascii=False, default=_json_default)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, default=_json_default) + "\n").encode("ascii")


def _json_default(value: Any) -> Any:
    """Parquet and datasets give bytes, dates and decimals that JSON has no type for."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
