"""``read_samples``: any supported file in, a stream of checked ``Sample`` out.

The reader is a generator over a format's row source, so memory stays flat whatever the row count.
Everything that can be checked before the first row (the mapping, the format, the path) is checked
when ``read_samples`` is called, not when iteration starts, so a bad argument fails at once.

Each row goes through one place, ``_read``, that decides between raising and rejecting: sources yield
rows they could not parse instead of raising, and the shape check raises ``DataError`` with the row and
field. Errors that leave no next row to go to (a syntax error inside a JSON array, a broken Parquet
file) are raised by the source and stop the read in either mode.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from reflectune.errors import ConfigError, DataError
from reflectune.io.fields import resolve_fields
from reflectune.io.formats import check_format, detect_format
from reflectune.io.jsonsource import iter_json_array, iter_jsonl
from reflectune.io.rejects import RejectSink
from reflectune.io.shapes import to_sample
from reflectune.io.sources import RawRow, iter_csv, iter_hf_disk, iter_parquet
from reflectune.types import Sample

_SOURCES = {"json": iter_json_array, "jsonl": iter_jsonl, "csv": iter_csv, "parquet": iter_parquet,
            "hf_disk": iter_hf_disk}


def read_samples(path: str | os.PathLike[str], *, fields: Mapping[str, str] | None = None,
                 fmt: str | None = None, on_bad_record: Literal["error", "skip"] = "error",
                 rejects: RejectSink | None = None) -> Iterator[Sample]:
    """Stream the samples of a dataset file, one checked ``Sample`` per row.

    Args:
        path: an Alpaca or ShareGPT JSON array or JSON lines file, Parquet, CSV, or a
            ``datasets.save_to_disk`` folder.
        fields: canonical name -> the file's column, e.g. ``{"output": "completion"}``.
        fmt: force a format instead of detecting it (see ``detect_format``).
        on_bad_record: ``"error"`` raises on the first bad row; ``"skip"`` sends it to ``rejects``.
        rejects: where skipped rows go; required with ``"skip"``.

    Returns:
        A generator of samples in file order. Multi-turn ShareGPT rows come as
        ``Sample(passthrough=True, raw=...)`` for the caller to write back unchanged.

    Raises:
        DataError: naming the file, the 1-based row and the field.
        ConfigError: for a bad ``fields``, ``fmt`` or ``on_bad_record``.

    Example:
        >>> for sample in read_samples("alpaca.json", fields={"output": "response"}):
        ...     print(sample.id, sample.instruction)
    """
    if on_bad_record not in ("error", "skip"):
        raise ConfigError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    if on_bad_record == "skip" and rejects is None:
        raise ConfigError("on_bad_record='skip' needs a rejects sink to keep the skipped rows")
    resolved = resolve_fields(fields)
    fmt = check_format(fmt) if fmt is not None else detect_format(path)
    if fmt != "hf_disk" and Path(path).is_dir():
        raise DataError("is a directory, expected a file", path=str(path))
    if fmt == "hf_disk" and not Path(path).is_dir():
        raise DataError("expected a datasets.save_to_disk folder", path=str(path))
    if fmt != "hf_disk" and not Path(path).is_file():
        raise DataError("no such file", path=str(path))
    return _read(Path(path), fmt, resolved, rejects if on_bad_record == "skip" else None)


def _read(path: Path, fmt: str, fields: dict[str, str], rejects: RejectSink | None) -> Iterator[Sample]:
    ids = _IdRegistry(fields["id"])
    where, seen_rows = str(path), 0
    for raw in _SOURCES[fmt](path):
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
