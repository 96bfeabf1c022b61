"""Format detection for input files and output paths, and what kind of thing an input path is.

Users hand us whatever they have, often with the wrong extension (a ``.json`` that is really JSON
lines is the classic). So the reader looks at both the extension and the first bytes, and only asks
for an explicit ``fmt`` when neither tells. Output paths are ours to choose, so there the extension
alone decides. Detection reads a few KiB at most and never parses the file.

An input path can also be ``-`` (standard input) or a named pipe: both can be read once only, so
detection never opens them, and they are read as json, jsonl or csv (Parquet and ``save_to_disk``
folders need a seekable file). A file compressed with gzip, bz2 or xz (told by its magic bytes, not its
name) is decompressed while it is read, json, jsonl and csv alike, in constant memory; zstd files and
zip archives, which the standard library cannot stream, get a message saying how to unpack them.
Missing paths, symlink loops and dangling symlinks each get their own one-line ``DataError``.

An output's name and format always agree: a format given with a path whose extension names another
(``x.json`` written as Parquet) is refused, since the next reader goes by the name.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import shlex
import stat
import zlib
from pathlib import Path
from typing import BinaryIO, cast

from reflectune.errors import ConfigError, DataError

FORMATS = ("json", "jsonl", "parquet", "csv", "hf_disk")
BOM = b"\xef\xbb\xbf"
STDIN = "-"
STDIN_NAME = "<stdin>"
#: formats a stream (standard input, a pipe) can be read as: the others need a seekable file
STREAM_FORMATS = ("json", "jsonl", "csv")
HEAD_BYTES = 4096
_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
             ".pq": "parquet", ".csv": "csv"}
_HF_MARKERS = ("state.json", "dataset_dict.json")

#: compression told by magic bytes; the first three are undone while reading, the others refused
_MAGIC = (("gzip", b"\x1f\x8b"), ("bz2", b"BZh"), ("xz", b"\xfd7zXZ\x00"), ("zstd", b"\x28\xb5\x2f\xfd"),
          ("zip", b"PK\x03\x04"))
READABLE_COMPRESSION = ("gzip", "bz2", "xz")
_UNPACK = {"gzip": "gunzip", "bz2": "bunzip2", "xz": "unxz", "zstd": "unzstd", "zip": "unzip"}
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd", ".zip")
#: what a read of a (compressed) file raises when the bytes are bad or the device fails
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def is_stdin(path: str | os.PathLike[str]) -> bool:
    """``-`` means standard input (a file really named ``-`` is ``./-``)."""
    return os.fspath(path) == STDIN


def stdin_needs_format() -> ConfigError:
    return ConfigError("reading standard input needs --input-format json|jsonl|csv (fmt= in Python)")


def input_kind(path: str | os.PathLike[str]) -> str:
    """``"stdin"``, ``"dir"``, ``"file"`` or ``"stream"`` (a named pipe or a character device).

    Raises:
        DataError: the path is missing, is a symlink loop or a dangling symlink, cannot be looked
            at, or is something else (a socket, a block device).
    """
    if is_stdin(path):
        return "stdin"
    where = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        try:
            target = os.readlink(path)
        except OSError:
            raise DataError("no such file", path=where) from None
        raise DataError(f"broken symlink -> {target}", path=where) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError("symlink loop", path=where) from None
        raise DataError(f"cannot read: {e.strerror or e}", path=where) from None
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "stream"
    raise DataError("is neither a file, a folder nor a pipe", path=where)


def stream_format(fmt: str | None, where: str) -> str | None:
    """Check a format for standard input or a pipe (None: to be told from the stream's first bytes)."""
    if fmt is None:
        if where == STDIN_NAME:
            raise stdin_needs_format()
        return None
    if fmt not in STREAM_FORMATS:
        what = "standard input" if where == STDIN_NAME else f"{where} (a pipe)"
        raise ConfigError(f"{what} can be read as json, jsonl or csv, not {fmt}: {fmt} needs a seekable "
                          "file or folder, so save the data there and pass its path")
    return fmt


#: bytes of a container's header that ``compression`` checks: short files are never taken for one
SIGNATURE_BYTES = 32


def compression(head: bytes) -> str | None:
    """The compression a file's first bytes announce, or None.

    A whole header must be there, not just the magic: a JSON lines file whose first bytes happen to
    be ``PK\\x03\\x04`` or ``\\x1f\\x8b`` is bad rows, not an archive (``--on-bad-record skip`` must
    account for every line of it).
    """
    for kind, magic in _MAGIC:
        if not head.startswith(magic):
            continue
        if kind == "gzip" and (len(head) < 10 or head[2] != 8 or head[3] & 0xE0):
            continue  # deflate is gzip's only method; the top flag bits are reserved
        if kind == "bz2" and (head[3:4] not in [bytes([c]) for c in b"123456789"]
                              or head[4:10] not in (b"1AY&SY", b"\x17rE8P\x90")):
            continue
        if kind == "zip" and len(head) < 30:  # a local file header is 30 bytes
            continue
        if kind == "zstd" and len(head) < 6:
            continue
        return kind
    return None


def refuse_compression(kind: str, where: str) -> None:
    """Raise for a compression that cannot be undone while streaming."""
    if kind in READABLE_COMPRESSION:
        return
    unpack = _UNPACK[kind] + ("" if where.startswith("<") else " " + shlex.quote(where))
    if kind == "zip":
        raise DataError(f"is a zip archive: extract it first ({unpack})", path=where)
    raise DataError(f"is {kind}-compressed: decompress it first ({unpack})", path=where)


def decompressor(kind: str, f: BinaryIO) -> BinaryIO:
    """A file object that reads ``f`` decompressed (gzip, bz2 or xz), streaming."""
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=f, mode="rb"))
    if kind == "bz2":
        return cast(BinaryIO, bz2.BZ2File(f))
    return cast(BinaryIO, lzma.LZMAFile(f))


def damaged(kind: str | None, e: BaseException, where: str, *, row: int | None = None) -> DataError:
    """The error for a read that failed: a device error, or compressed data that is bad."""
    if kind is None:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        return DataError(f"cannot read: {reason}", path=where, row=row)
    return DataError(f"its {kind} data is damaged: {e or type(e).__name__}", path=where, row=row)


def read_head(f: BinaryIO, *, enough: int = HEAD_BYTES) -> bytes:
    """Up to ``HEAD_BYTES`` from ``f``; stops early once ``enough`` bytes with some text have come
    (so a slow pipe is not waited on for a whole 4 KiB)."""
    head, read = b"", getattr(f, "read1", f.read)  # read1: what has arrived, not a full buffer
    while len(head) < HEAD_BYTES:
        chunk = read(HEAD_BYTES - len(head))
        if not chunk:
            break
        head += chunk
        if len(head) >= enough and head.removeprefix(BOM).strip():
            break
    return head


def inner_suffix(path: str | os.PathLike[str]) -> str:
    """The extension that names the data: ``.jsonl`` for ``data.jsonl.gz``."""
    p = Path(path)
    if p.suffix.lower() in _COMPRESSED_SUFFIXES:
        p = p.with_suffix("")
    return p.suffix.lower()


def sniff(head: bytes, suffix: str, where: str) -> str:
    """The format that an extension and a file's first (decompressed) bytes tell."""
    if _SUFFIXES.get(suffix) in ("parquet", "csv", "jsonl"):
        return _SUFFIXES[suffix]
    if head.startswith(b"PAR1"):
        return "parquet"
    first = head.removeprefix(BOM).lstrip()[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"
    if suffix == ".json":
        return "json"
    empty = "" if head.strip() else " of an empty file"
    raise DataError(f"cannot tell the file format{empty}; pass fmt= one of " + ", ".join(FORMATS),
                    path=where)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell the format of an input file or folder.

    ``.jsonl``, ``.parquet`` and ``.csv`` are taken at their word. A ``.json`` file, or one with another
    extension, is sniffed: an object first means JSON lines, ``[`` a JSON array, ``PAR1`` Parquet.
    Alpaca vs ShareGPT is not a format but a per-row shape, decided while reading. A gzip, bz2 or xz
    file is sniffed decompressed, by the extension under ``.gz`` and its first bytes. A named pipe is
    never opened here (that would block, or consume what it sniffs): its extension must tell
    (``.jsonl``, ``.ndjson``, ``.csv``); ``read_samples`` sniffs a pipe as it reads it.

    Returns:
        One of ``"json"``, ``"jsonl"``, ``"parquet"``, ``"csv"``, ``"hf_disk"``.

    Raises:
        DataError: the path is missing, a symlink loop or a dangling symlink, is a folder that
            ``datasets.save_to_disk`` did not write, is compressed in a way that cannot be streamed,
            or nothing tells its format.
        ConfigError: the path is ``-`` (standard input): its format must be given.
    """
    kind = input_kind(path)
    if kind == "stdin":
        raise stdin_needs_format()
    p, where = Path(path), str(path)
    if kind == "dir":
        if any((p / marker).is_file() for marker in _HF_MARKERS):
            return "hf_disk"
        raise DataError("is a directory, expected a file (or a datasets.save_to_disk folder)", path=where)
    if kind == "stream":
        fmt = _SUFFIXES.get(p.suffix.lower())
        if fmt in ("jsonl", "csv"):
            return fmt
        raise DataError("is a pipe whose name does not tell its format, and reading it to find out would "
                        "consume it; pass fmt= one of json, jsonl, csv", path=where)
    return sniff_file(p, where)


def sniff_file(p: Path, where: str) -> str:
    """``detect_format`` for a regular file, with ``where`` naming it in messages."""
    try:
        with open(p, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=where) from None
    kind = compression(head)
    if kind is None:
        return sniff(head, p.suffix.lower(), where)
    refuse_compression(kind, where)
    try:
        with open(p, "rb") as f, decompressor(kind, f) as d:
            head = read_head(d)
    except READ_ERRORS as e:
        raise DataError(f"cannot tell the file format: its {kind} data is damaged ({e or type(e).__name__});"
                        f" {kind}-compressed json, jsonl and csv are read as they are", path=where) from None
    fmt = sniff(head, inner_suffix(p), where)
    if fmt not in STREAM_FORMATS:
        raise DataError(f"is {kind}-compressed Parquet, which is read in place, not streamed: "
                        f"decompress it first ({_UNPACK[kind]} {shlex.quote(where)})", path=where)
    return fmt


def output_format(path: str | os.PathLike[str]) -> str:
    """Infer the format to write from an output path's extension; no extension means a folder."""
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if not suffix or Path(path).is_dir():
        return "hf_disk"
    raise ConfigError(f"cannot tell the output format from {str(path)!r}; use one of "
                      f"{', '.join(sorted(_SUFFIXES))}, a folder, or pass fmt=")


#: the extension each written format gets; a datasets folder gets none (a dot would say a file format)
OUTPUT_SUFFIXES = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "hf_disk": ""}


def named_format(path: str | os.PathLike[str]) -> str | None:
    """The format an output path's extension names (``x.pq``: parquet), or None for any other name."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def check_format(fmt: str) -> str:
    """Validate an explicit ``fmt`` argument."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt
