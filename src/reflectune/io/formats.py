"""Format detection for input files and output paths.

Users hand us whatever they have, often with the wrong extension (a ``.json`` that is really JSON
lines is the classic). So the reader looks at both the extension and the first bytes, and only asks
for an explicit ``fmt`` when neither tells. Output paths are ours to choose, so there the extension
alone decides. Detection reads a few KiB at most and never parses the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from reflectune.errors import ConfigError, DataError

FORMATS = ("json", "jsonl", "parquet", "csv", "hf_disk")
BOM = b"\xef\xbb\xbf"
_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
             ".pq": "parquet", ".csv": "csv"}
_HF_MARKERS = ("state.json", "dataset_dict.json")


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell the format of an input file or folder.

    ``.jsonl``, ``.parquet`` and ``.csv`` are taken at their word. A ``.json`` file, or one with another
    extension, is sniffed: an object first means JSON lines, ``[`` a JSON array, ``PAR1`` Parquet.
    Alpaca vs ShareGPT is not a format but a per-row shape, decided while reading.

    Returns:
        One of ``"json"``, ``"jsonl"``, ``"parquet"``, ``"csv"``, ``"hf_disk"``.

    Raises:
        DataError: the path is missing, is a folder that ``datasets.save_to_disk`` did not write, or
            nothing tells its format.
    """
    p = Path(path)
    if p.is_dir():
        if any((p / marker).is_file() for marker in _HF_MARKERS):
            return "hf_disk"
        raise DataError("is a directory, expected a file (or a datasets.save_to_disk folder)",
                        path=str(path))
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise DataError("no such file", path=str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    suffix = p.suffix.lower()
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
    raise DataError("cannot tell the file format; pass fmt= one of " + ", ".join(FORMATS),
                    path=str(path))


def output_format(path: str | os.PathLike[str]) -> str:
    """Infer the format to write from an output path's extension; no extension means a folder."""
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if not suffix or Path(path).is_dir():
        return "hf_disk"
    raise ConfigError(f"cannot tell the output format from {str(path)!r}; use one of "
                      f"{', '.join(sorted(_SUFFIXES))}, a folder, or pass fmt=")


def check_format(fmt: str) -> str:
    """Validate an explicit ``fmt`` argument."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt
