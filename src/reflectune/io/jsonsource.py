"""Row sources for JSON arrays and JSON lines, streamed.

A JSON array is parsed one element at a time with ``json.JSONDecoder.raw_decode`` over a sliding text
buffer, so memory stays at about one chunk plus the largest row whatever the file size, with no
dependency beyond the standard library. The buffer is refilled (in growing chunks, so a huge row costs
linear time) when a parse fails only because the row runs past the end of the buffer.

Bytes are decoded with "surrogateescape", so invalid UTF-8 is found per row instead of killing the
stream: in JSON lines such a line is skipped like any bad row. Inside an array the element is still
delimited, so it is a skippable row too; a syntax error in an array is not, because nothing tells
where the next element starts.

Both read a binary stream from ``sources.open_stream`` (a file, a pipe or standard input, decompressed if
need be); ``iter_jsonl`` and ``iter_json_array`` open a path themselves.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from reflectune.errors import DataError
from reflectune.io.formats import BOM
from reflectune.io.sources import RawRow, bad_bytes_at, open_stream, readable

_CHUNK = 1 << 18
_NON_WS = re.compile(r"[^ \t\n\r]")
_DECODER = json.JSONDecoder()
_NEAR_END = 64  # a parse error this close to the buffer's end may just be a row cut in two


def iter_jsonl(path: Path) -> Iterator[RawRow]:
    """Rows of a JSON lines file; blank lines are ignored and do not count as rows."""
    with open_stream(path, str(path)) as stream:
        yield from jsonl_rows(stream.file, str(path))


def jsonl_rows(f: BinaryIO, where: str) -> Iterator[RawRow]:
    """Rows of a JSON lines stream (see ``iter_jsonl``); ``where`` names it in messages."""
    row = 0
    for lineno, line in enumerate(f, 1):
        if lineno == 1:
            line = line.removeprefix(BOM)
        text = line.decode("utf-8", "surrogateescape").strip(" \t\r\n")
        if not text:
            continue
        row += 1
        bad = bad_bytes_at(text)
        if bad is not None:
            yield RawRow(row, error=f"invalid UTF-8 on line {lineno} at character {bad + 1}",
                         text=readable(text))
            continue
        try:
            yield RawRow(row, json.loads(text))
        except json.JSONDecodeError as e:
            yield RawRow(row, error=f"malformed JSON on line {lineno}, column {e.colno}: {e.msg}",
                         text=text)
        except (ValueError, RecursionError) as e:  # int digit limit, nesting depth
            yield RawRow(row, error=f"unreadable JSON on line {lineno}: {_short(e)}", text=text)


def iter_json_array(path: Path) -> Iterator[RawRow]:
    """Rows of a file holding one JSON array, parsed one element at a time."""
    with open_stream(path, str(path)) as stream:
        yield from json_array_rows(stream.file, str(path))


def json_array_rows(f: BinaryIO, where: str) -> Iterator[RawRow]:
    """Rows of a stream holding one JSON array (see ``iter_json_array``)."""
    buf = _Buffer(f, where)
    first = buf.next_char()
    if not first:
        return
    if first != "[":
        raise DataError("expected a JSON array '[' or one JSON object per line", path=where)
    buf.pos += 1
    if buf.next_char() == "]":
        buf.pos += 1
        buf.expect_end()
        return
    row = 0
    while True:
        row += 1
        buf.next_char()
        value, start, end = buf.decode(row)
        text = buf.text[start:end]
        buf.pos = end
        if bad_bytes_at(text) is not None:
            yield RawRow(row, error="invalid UTF-8", text=readable(text))
        else:
            yield RawRow(row, value)
        c = buf.next_char()
        buf.pos += 1
        if c == "]":
            break
        if c != ",":
            buf.fail(row + 1, "expected ',' or ']' after the previous row")
    buf.expect_end()


class _Buffer:
    """A sliding window of decoded text over a binary file; ``pos`` indexes into ``text``."""

    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text, self.pos, self.eof, self.lines_before = "", 0, False, 0
        self.refill(_CHUNK)
        self.pos = 1 if self.text.startswith("\ufeff") else 0

    def refill(self, size: int) -> bool:
        """Drop consumed text and read at least ``size`` more bytes; False at end of file."""
        if self.eof:
            return False
        self.lines_before += self.text.count("\n", 0, self.pos)
        data = self.f.read(size)
        self.eof = not data
        self.text = self.text[self.pos:] + self.decoder.decode(data, final=self.eof)
        self.pos = 0
        return True

    def next_char(self) -> str:
        """Skip JSON whitespace and return the next character ('' at end of file)."""
        while True:
            found = _NON_WS.search(self.text, self.pos)
            self.pos = found.start() if found else len(self.text)
            if self.pos < len(self.text) or not self.refill(_CHUNK):
                return self.text[self.pos:self.pos + 1]

    def decode(self, row: int) -> tuple[object, int, int]:
        """Parse the value at ``pos``, reading more of the file while it is cut off."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                cut = e.pos >= len(self.text) - _NEAR_END or e.msg.startswith("Unterminated string")
                if cut and self.refill(max(_CHUNK, len(self.text) - self.pos)):
                    continue
                self.fail(row, f"malformed JSON at line {self.lines_before + e.lineno}, "
                               f"column {e.colno}: {e.msg}")
            except (ValueError, RecursionError) as e:
                self.fail(row, f"unreadable JSON: {_short(e)}")
            if end >= len(self.text) - _NEAR_END and self.refill(_CHUNK):
                continue  # a number near the end ("0" of "0.5") may go on in the next chunk
            return value, self.pos, end

    def expect_end(self) -> None:
        if self.next_char():
            line = self.lines_before + self.text.count("\n", 0, self.pos) + 1
            raise DataError(f"unexpected data after the JSON array at line {line}", path=self.path)

    def fail(self, row: int, reason: str) -> None:
        raise DataError(f"{reason}; a JSON array cannot be resumed after a syntax error, so this "
                        "stops even with on_bad_record='skip' (JSON lines can skip bad rows)",
                        path=self.path, row=row)


def _short(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0][:200]
