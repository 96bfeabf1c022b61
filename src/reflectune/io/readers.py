"""``read_samples``: any supported file in, a stream of checked ``Sample`` out.

The reader is a generator over a format's row source, so memory stays flat whatever the row count.
Everything that can be checked before the first row (the mapping, the format, the path) is checked
when ``read_samples`` is called, not when iteration starts, so a bad argument fails at once.

Each row goes through one place, ``_read``, that decides between raising and rejecting: sources yield
rows they could not parse instead of raising, and the shape check raises ``DataError`` with the row and
field. Errors that leave no next row to go to (a syntax error inside a JSON array, a broken Parquet
file) are raised by the source and stop the read in either mode.

Standard input (``-``) and named pipes are read once, as they come: ``read_samples`` streams them (a
pipe's format is sniffed from its first bytes as it is read). A consumer that reads its input twice,
like ``recycle`` (a validating pass, then the real one), opens it with ``open_input``, which copies a
stream once into a temporary file and hands back an ``InputFile`` that can be read any number of times.

A ``DatasetDict`` folder is read through one split (``split=``, or its only one): ``open_input`` points the
``InputFile`` at that split's own folder, so the split travels as a path (in run.json too).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reflectune.errors import ConfigError, DataError, StoreError
from reflectune.io.fields import resolve_fields
from reflectune.io.formats import (
    READ_ERRORS,
    SIGNATURE_BYTES,
    STDIN,
    STDIN_NAME,
    STREAM_FORMATS,
    check_format,
    compression,
    damaged,
    detect_format,
    inner_suffix,
    input_kind,
    refuse_compression,
    sniff,
    sniff_file,
    stream_format,
)
from reflectune.io.jsonsource import json_array_rows, jsonl_rows
from reflectune.io.rejects import RejectSink
from reflectune.io.shapes import to_sample
from reflectune.io.sources import (
    RawRow,
    csv_rows,
    iter_hf_disk,
    iter_parquet,
    open_binary,
    open_stream,
    split_folder,
)
from reflectune.types import Sample

_SOURCES = {"parquet": iter_parquet, "hf_disk": iter_hf_disk}
_STREAMS = {"json": json_array_rows, "jsonl": jsonl_rows, "csv": csv_rows}
_SPOOL_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class InputFile:
    """An input that can be read more than once (see ``open_input``); ``str()`` is its ``name``.

    Attributes:
        path: what is read: the file or folder itself, or the spooled copy of a stream.
        fmt: its format, given or detected.
        name: how messages name it: the path as given, or ``<stdin>``.
        origin: for a manifest: the resolved path, or ``-`` for standard input.
        like: a path whose name stands for the input when naming run folders and default outputs
            (``stdin.jsonl``; ``data.jsonl`` for ``data.jsonl.gz``, since outputs are not compressed;
            ``dd-test`` for the ``test`` split of the dataset dict ``dd``).
        split: the split of a dataset dict that ``path`` is the folder of (None: not a dict).
    """

    path: Path
    fmt: str
    name: str
    origin: str
    like: Path
    split: str | None = None

    def __str__(self) -> str:
        return self.name


@contextmanager
def open_input(path: str | os.PathLike[str], *, fmt: str | None = None,
               spool_dir: str | os.PathLike[str] | None = None,
               split: str | None = None) -> Iterator[InputFile]:
    """Make an input readable twice: files and folders as they are, streams copied once.

    Standard input (``-``, which needs ``fmt``) and named pipes can be read only once, so they are
    copied, in 1 MiB chunks, into a temporary folder under ``spool_dir`` (default: the system's, see
    ``TMPDIR``), removed on exit. A pipe's format is then told from the copy. Streams are read as json,
    jsonl or csv (compressed or not); Parquet and ``save_to_disk`` folders need a real path. ``split``
    picks a split of a ``DatasetDict`` folder (see ``sources.split_folder``).

    Raises:
        ConfigError: ``-`` without ``fmt``, a stream with a format that needs a seekable file, or a
            ``split`` that the input does not have.
        DataError: the path is missing, a symlink loop, a dangling symlink, or unreadable; or a dataset
            dict with several splits and no ``split``.
        StoreError: the copy could not be written (a full disk).
    """
    fmt = check_format(fmt) if fmt is not None else None
    kind = input_kind(path)
    if kind not in ("stdin", "stream"):
        fmt = fmt or detect_format(path)
        if fmt == "hf_disk" and kind == "dir":
            chosen = split_folder(Path(path), split)
            if chosen != Path(path):  # one split of a dict: named by its own folder from here on
                yield InputFile(chosen, fmt, str(chosen), str(chosen.resolve()),
                                chosen.resolve().parent.with_name(f"{chosen.resolve().parent.name}-{chosen.name}"),
                                chosen.name)
                return
        elif split is not None:
            raise _split_needs_dict(split, str(Path(path)), fmt)
        yield InputFile(Path(path), fmt, str(Path(path)), str(Path(path).resolve()), _like(Path(path)))
        return
    where = STDIN_NAME if kind == "stdin" else str(Path(path))
    if split is not None:
        raise _split_needs_dict(split, where, fmt or "a stream")
    fmt = stream_format(fmt, where)
    try:
        spool = tempfile.TemporaryDirectory(prefix="reflectune-input-", dir=spool_dir)
    except OSError as e:
        raise StoreError(f"cannot make a folder to copy {where} into: {e.strerror or e} "
                         f"({e.filename or spool_dir or tempfile.gettempdir()})") from None
    with spool as folder:
        copy = Path(folder) / ("stdin" if kind == "stdin" else Path(path).name)
        _spool(None if kind == "stdin" else Path(path), copy, where)
        if fmt is None:
            fmt = sniff_file(copy, where)
            if fmt not in STREAM_FORMATS:
                raise DataError(f"is a pipe holding {fmt}, which needs a seekable file: save it to a file "
                                "and pass its path", path=where)
        if kind == "stdin":
            yield InputFile(copy, fmt, where, STDIN, Path(f"stdin.{fmt}"))
        else:
            yield InputFile(copy, fmt, where, str(Path(path).resolve()), _like(Path(path)))


def _split_needs_dict(split: str, where: str, fmt: str) -> ConfigError:
    return ConfigError(f"--split {split}: {where} is {fmt}, and splits are a datasets folder's "
                       "(a DatasetDict saved with save_to_disk); drop --split")


def _like(path: Path) -> Path:
    return path.with_suffix("") if inner_suffix(path) != path.suffix.lower() else path


def _spool(path: Path | None, copy: Path, where: str) -> None:
    """Copy a stream to ``copy`` in constant memory: read errors are the input's, write errors ours."""
    with ExitStack() as stack:
        source = open_binary(path, where, stack)
        try:
            out = stack.enter_context(open(copy, "wb"))
            while True:
                try:
                    chunk = source.read(_SPOOL_CHUNK)
                except READ_ERRORS as e:
                    raise damaged(None, e, where) from None
                if not chunk:
                    break
                out.write(chunk)
        except OSError as e:
            raise StoreError(f"cannot copy {where} to {copy.parent}: {e.strerror or e}") from None


def read_samples(path: str | os.PathLike[str] | InputFile, *, fields: Mapping[str, str] | None = None,
                 fmt: str | None = None, on_bad_record: Literal["error", "skip"] = "error",
                 rejects: RejectSink | None = None, split: str | None = None) -> Iterator[Sample]:
    """Stream the samples of a dataset file, one checked ``Sample`` per row.

    Args:
        path: an Alpaca or ShareGPT JSON array or JSON lines file, Parquet, CSV, or a
            ``datasets.save_to_disk`` folder; gzip, bz2 and xz files are decompressed as they are read.
            ``-`` is standard input (needs ``fmt``: json, jsonl or csv); a named pipe is read as it
            comes, once. An ``InputFile`` from ``open_input`` is read under its name and format.
        fields: canonical name -> the file's column, e.g. ``{"output": "completion"}``.
        fmt: force a format instead of detecting it (see ``detect_format``).
        on_bad_record: ``"error"`` raises on the first bad row; ``"skip"`` sends it to ``rejects``.
        rejects: where skipped rows go; required with ``"skip"``.
        split: the split to read of a ``DatasetDict`` folder; needed when it has several.

    Returns:
        A generator of samples in file order. Multi-turn ShareGPT rows come as
        ``Sample(passthrough=True, raw=...)`` for the caller to write back unchanged.

    Raises:
        DataError: naming the file, the 1-based row and the field; or the path is missing, a symlink
            loop, a dangling symlink, unreadable, or compressed in a way that cannot be streamed.
        ConfigError: for a bad ``fields``, ``fmt`` or ``on_bad_record``; ``-`` without ``fmt``.

    Example:
        >>> for sample in read_samples("alpaca.json", fields={"output": "response"}):
        ...     print(sample.id, sample.instruction)
    """
    if on_bad_record not in ("error", "skip"):
        raise ConfigError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    if on_bad_record == "skip" and rejects is None:
        raise ConfigError("on_bad_record='skip' needs a rejects sink to keep the skipped rows")
    resolved = resolve_fields(fields)
    sink = rejects if on_bad_record == "skip" else None
    if isinstance(path, InputFile):
        target, where = path.path, path.name
        fmt = path.fmt if fmt is None else fmt
    else:
        target, where = Path(path), str(path)
    fmt = check_format(fmt) if fmt is not None else None
    kind = input_kind(path if not isinstance(path, InputFile) else target)
    if split is not None and kind in ("stdin", "stream"):
        raise _split_needs_dict(split, STDIN_NAME if kind == "stdin" else where, fmt or "a stream")
    if kind == "stdin":
        return _read(None, stream_format(fmt, STDIN_NAME), resolved, sink, STDIN_NAME)
    if kind == "stream":
        return _read(target, stream_format(fmt, where), resolved, sink, where)
    if fmt is None:
        fmt = sniff_file(target, where) if kind == "file" else detect_format(target)
    if fmt != "hf_disk" and kind == "dir":
        raise DataError("is a directory, expected a file", path=where)
    if fmt == "hf_disk" and kind != "dir":
        raise DataError("expected a datasets.save_to_disk folder", path=where)
    if fmt == "hf_disk":
        folder = split_folder(target, split)
        target, where = folder, where if folder == target else str(folder)
    elif split is not None:
        raise _split_needs_dict(split, where, fmt)
    if kind == "file":
        _check_head(target, fmt, where)
    return _read(target, fmt, resolved, sink, where)


def _check_head(path: Path, fmt: str, where: str) -> None:
    """Fail now, not at the first row, on a file that cannot be opened or streamed in ``fmt``."""
    try:
        with open(path, "rb") as f:
            kind = compression(f.read(SIGNATURE_BYTES))
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=where) from None
    if kind is not None:
        refuse_compression(kind, where)
        if fmt == "parquet":
            raise DataError(f"is {kind}-compressed Parquet, which is read in place, not streamed: "
                            "decompress it first", path=where)


def _read(path: Path | None, fmt: str | None, fields: dict[str, str], rejects: RejectSink | None,
          where: str) -> Iterator[Sample]:
    """``path`` None is standard input; ``fmt`` None (a pipe) is sniffed from the first bytes."""
    ids = _IdRegistry(fields["id"])
    seen_rows = 0
    with ExitStack() as stack:
        if fmt in _SOURCES:
            assert path is not None
            rows = _SOURCES[fmt](path)
        else:
            stream = stack.enter_context(open_stream(path, where))
            if fmt is None:
                fmt = sniff(stream.head, inner_suffix(path) if path else "", where)
                if fmt not in _STREAMS:
                    raise DataError(f"is a pipe holding {fmt}, which needs a seekable file: save it to a "
                                    "file and pass its path", path=where)
            rows = _STREAMS[fmt](stream.file, where)
        for raw in rows:
            seen_rows += 1
            try:
                if raw.error is not None:
                    raise DataError(raw.error, path=where, row=raw.row, field=raw.field)
                sample = to_sample(raw.value, row=raw.row, fields=fields, path=where)
                ids.add(sample, path=where)
            except DataError as e:
                if rejects is None:
                    raise
                rejects.add(e.row, e.field, e.reason, _reject_record(raw))
                continue
            yield sample
    if not seen_rows:
        raise DataError("no rows", path=where)


def _reject_record(raw: RawRow) -> object:
    return raw.text if raw.error is not None else raw.value


class _IdRegistry:
    """Finds duplicate ids in memory that stays small for files without ids of their own.

    Own ids are kept as 16-byte digests. Generated ids (``row{i}-{hash}``) cannot collide with each
    other, because ``i`` differs, only with an own id of the same spelling; so for them only the
    5-byte hash is kept, at position ``i`` of a byte array (1 MB per 200,000 rows).
    """

    _GENERATED = re.compile(r"row(\d{1,18})-([0-9a-f]{10})")

    def __init__(self, column: str) -> None:
        self.column = column
        self.own: set[bytes] = set()
        self.generated = bytearray()  # 6 bytes per row: a flag and the hash

    def add(self, sample: Sample, *, path: str) -> None:
        index, sid = sample.row - 1, sample.id
        if len(self.generated) < 6 * index:  # rows rejected before this one
            self.generated.extend(bytes(6 * index - len(self.generated)))
        own = sample.extra.get(self.column) not in (None, "")  # the id column is kept in extra
        if not own and not self.own:  # the common case: no own ids, nothing to collide with
            self.generated += b"\1" + bytes.fromhex(sid[-10:])
            return
        key = hashlib.blake2b(sid.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if key in self.own:
            self._fail(sample, path)
        if not own:
            self.generated += b"\1" + bytes.fromhex(sid[-10:])
            return
        looks_generated = self._GENERATED.fullmatch(sid)
        if looks_generated and (j := int(looks_generated[1])) < index \
                and self.generated[6 * j:6 * j + 6] == b"\1" + bytes.fromhex(looks_generated[2]):
            self._fail(sample, path)
        self.own.add(key)
        self.generated += bytes(6)

    def _fail(self, sample: Sample, path: str) -> None:
        raise DataError(f"duplicate id {sample.id!r}", path=path, row=sample.row, field=self.column)
