"""``reflectune report``: one self-contained HTML page showing what a run folder holds.

``gather`` reads the folder (recycle, score, select, judge, or a pipeline folder of them) into plain
data, ``page`` renders it, ``charts`` draws the SVG. The page needs no network and no server: open it
from disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reflectune.io.atomic import write_text_atomic
from reflectune.report.gather import ReportData, folders_of, gather, median
from reflectune.report.page import render

__all__ = ["REPORT_FILE", "ReportResult", "report", "summary_lines"]

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class ReportResult:
    """Where the page went, what it shows, and how long it took."""

    path: Path
    samples: int
    judgments: int
    length_unit: str
    bytes: int
    seconds: float
    notes: tuple[str, ...] = ()
    #: before/after medians, one line each (what recycle and select print)
    summary: tuple[str, ...] = ()


def _token_counter(student: str | None) -> tuple[Callable[[list[str]], list[int]] | None, str | None]:
    """The scoring student's tokenizer, so lengths are in the tokens the papers count; words when the
    folder was never scored or the student is not on this machine (the page says which)."""
    if not student:
        return None, None
    try:
        from reflectune.models.load import load_tokenizer
        from reflectune.models.resolve import resolve_model

        tokenizer = load_tokenizer(resolve_model(student))
    except Exception as exc:  # any failure to load means words, said on the page, never a crash
        return None, f"lengths are in words: the student '{student}' could not be loaded here ({exc})"

    def count(texts: list[str]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(texts), 4096):
            ids = tokenizer(texts[start:start + 4096], add_special_tokens=False)["input_ids"]
            out += [len(x) for x in ids]
        return out

    return count, None


def report(run_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
           tokens: bool = True) -> ReportResult:
    """Write the report of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``).

    Args:
        run_dir: a recycle, score/select or judge run folder, or a pipeline folder.
        output: the HTML file to write.
        tokens: count lengths with the scoring student's tokenizer when the folder was scored (else,
            or when False, in words).

    Raises:
        DataError: not a run folder, or a damaged file in it (named, with its line).

    Example:
        >>> report("runs/v2-embedded").path  # doctest: +SKIP
        PosixPath('runs/v2-embedded/report.html')
    """
    started = time.monotonic()
    root = Path(run_dir)
    folders, _ = folders_of(root)
    student = next((f.section("score").get("student") for f in folders if f.section("score")), None)
    counter, note = _token_counter(student if tokens else None)
    data = gather(root, count_tokens=counter, unit="tokens")
    if note:
        data.notes.append(note)
    page = render(data)
    path = Path(output) if output is not None else root / REPORT_FILE
    write_text_atomic(path, page)
    return ReportResult(path=path, samples=len(data.samples), judgments=len(data.judgments),
                        length_unit=data.length_unit, bytes=len(page.encode("utf-8")),
                        seconds=round(time.monotonic() - started, 3), notes=tuple(data.notes),
                        summary=summary_lines(data))


def summary_lines(data: ReportData) -> tuple[str, ...]:
    """Before/after medians of lengths and IFD, one line each, for a stage's terminal summary."""
    lines = []
    if data.lengths:
        def med(name: str, part: str) -> str:
            value = median((data.lengths.get(name) or {}).get(part) or [])
            return "-" if value is None else f"{value:g}"

        lines.append(f"median {data.length_unit}: instruction {med('ori', 'instruction')} -> "
                     f"{med('Q', 'instruction')} (Q); response {med('ori', 'response')} -> "
                     f"{med('A', 'response')} (A), {med('QA', 'response')} (QA)")
    if data.ifd:
        def mi(name: str) -> str:
            value = median(data.ifd.get(name) or [])
            return "-" if value is None else f"{value:.3f}"

        lines.append("median IFD: " + ", ".join(f"{n} {mi(n)}" for n in ("ori", "Q", "A", "QA")
                                                 if n in data.ifd))
    return tuple(lines)
