"""Input edge cases (issue 13, item 11): standard input, named pipes, symlinks, compressed files, odd paths.

``-`` is standard input and needs a format (json, jsonl or csv); standard input and pipes are read once:
``read_samples`` streams them, ``open_input`` (used by ``recycle``, which reads its input twice) copies
them once into a temporary file. gzip, bz2 and xz are decompressed while reading; zstd and zip are
refused with how to unpack them. Symlink loops and dangling symlinks get their own one-line errors.
Every pipe test runs under a timeout: a second open of a pipe, or an open during detection, hangs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reflectune.errors import ConfigError, DataError, StoreError
from reflectune.io import detect_format, read_samples
from reflectune.io.readers import open_input

ROWS = [{"instruction": "Say hi", "output": "Hi"},
        {"instruction": "Count", "input": "1 to 3", "output": "1 2 3", "tag": "x"},
        {"instruction": "Échos 📚", "output": "ü"}]
JSONL = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode()
JSON = json.dumps(ROWS, ensure_ascii=False, indent=1).encode()
CSV = ("instruction,input,output\nSay hi,,Hi\nCount,1 to 3,1 2 3\n\"Échos, 📚\",,ü\n").encode()
TEXTS = {"jsonl": JSONL, "json": JSON, "csv": CSV}
PIPE_TIMEOUT = 10


def triples(samples) -> list[tuple[str, str, str]]:
    return [(s.instruction, s.input, s.output) for s in samples]


def expected(fmt: str, tmp_path: Path) -> list[tuple[str, str, str]]:
    path = tmp_path / f"plain.{fmt}"
    path.write_bytes(TEXTS[fmt])
    return triples(read_samples(path))


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch):
    """Replace standard input with the given bytes (``sys.stdin.buffer`` is what is read)."""
    def feed(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return feed


class Writer:
    """Writes ``data`` into a named pipe from a thread; opening blocks until a reader opens it."""

    def __init__(self, fifo: Path, data: bytes) -> None:
        self.thread = threading.Thread(target=self._write, args=(fifo, data), daemon=True)
        self.thread.start()

    @staticmethod
    def _write(fifo: Path, data: bytes) -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    def join(self) -> None:
        self.thread.join(PIPE_TIMEOUT)
        assert not self.thread.is_alive(), "the reader never read the pipe to its end"


def fifo(tmp_path: Path, name: str = "pipe") -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes need os.mkfifo (POSIX)")
    path = tmp_path / name
    os.mkfifo(path)
    return path


# -- standard input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_standard_input_reads_like_the_file(tmp_path, stdin, fmt):
    stdin(TEXTS[fmt])
    assert triples(read_samples("-", fmt=fmt)) == expected(fmt, tmp_path)


def test_standard_input_needs_a_format(stdin):
    stdin(JSONL)
    for call in (lambda: read_samples("-"), lambda: detect_format("-"), lambda: open_input("-").__enter__()):
        with pytest.raises(ConfigError, match="reading standard input needs --input-format") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["parquet", "hf_disk"])
def test_standard_input_refuses_formats_that_need_a_seekable_file(stdin, fmt):
    stdin(b"PAR1")
    for call in (lambda: read_samples("-", fmt=fmt), lambda: open_input("-", fmt=fmt).__enter__()):
        with pytest.raises(ConfigError, match=f"standard input can be read as json, jsonl or csv, not {fmt}"):
            call()


def test_bad_row_on_standard_input_is_named_stdin(stdin):
    stdin(b'{"instruction": "q", "output": "a"}\n{"instruction": "", "output": "a"}\n')
    with pytest.raises(DataError) as info:
        list(read_samples("-", fmt="jsonl"))
    assert (info.value.path, info.value.row, info.value.field) == ("<stdin>", 2, "instruction")


def test_empty_standard_input_has_no_rows(stdin):
    stdin(b"")
    with pytest.raises(DataError) as info:
        list(read_samples("-", fmt="jsonl"))
    assert (info.value.path, info.value.reason) == ("<stdin>", "no rows")


def test_open_input_spools_standard_input_once_and_reads_it_twice(tmp_path, stdin):
    stdin(JSONL)
    with open_input("-", fmt="jsonl", spool_dir=tmp_path) as source:
        assert (str(source), source.origin, source.like, source.fmt) == ("<stdin>", "-", Path("stdin.jsonl"),
                                                                         "jsonl")
        assert source.path.parent.parent == tmp_path
        first, second = triples(read_samples(source)), triples(read_samples(source))
        assert sys.stdin.buffer.read() == b"", "standard input was read to its end, once"
    assert first == second == expected("jsonl", tmp_path)
    assert list(tmp_path.glob("reflectune-input-*")) == [], "the copy is removed on exit"


def test_spooled_errors_name_stdin_not_the_copy(tmp_path, stdin):
    stdin(b'{"instruction": "q", "output": "a"}\n{"instruction": "q2"}\n')
    with open_input("-", fmt="jsonl", spool_dir=tmp_path) as source, pytest.raises(DataError) as info:
        list(read_samples(source))
    assert (info.value.path, info.value.row) == ("<stdin>", 2) and str(tmp_path) not in str(info.value)


def test_a_spool_folder_that_cannot_be_made_is_a_store_error(tmp_path, stdin):
    stdin(JSONL)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot make a folder to copy <stdin> into"):
        open_input("-", fmt="jsonl", spool_dir=blocker).__enter__()


def test_open_input_leaves_a_regular_file_in_place(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(JSONL)
    with open_input(path) as source:
        assert (source.path, source.fmt, source.name, source.origin) == (path, "jsonl", str(path),
                                                                         str(path.resolve()))


# -- named pipes -------------------------------------------------------------------------------------------

@pytest.mark.timeout(PIPE_TIMEOUT)
@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_pipe_is_streamed_once_and_its_format_sniffed(tmp_path, fmt):
    pipe = fifo(tmp_path)  # no extension: the format comes from the first bytes
    writer = Writer(pipe, TEXTS[fmt])
    assert triples(read_samples(pipe)) == expected(fmt, tmp_path)
    writer.join()


@pytest.mark.timeout(PIPE_TIMEOUT)
def test_detect_format_never_opens_a_pipe(tmp_path):
    """No writer: opening the pipe would block, so each answer proves it was not opened."""
    assert detect_format(fifo(tmp_path, "p.jsonl")) == "jsonl"
    assert detect_format(fifo(tmp_path, "p.csv")) == "csv"
    with pytest.raises(DataError, match="is a pipe whose name does not tell its format"):
        detect_format(fifo(tmp_path, "p.json"))


@pytest.mark.timeout(PIPE_TIMEOUT)
def test_open_input_copies_a_pipe_once_then_reads_it_twice(tmp_path):
    pipe = fifo(tmp_path, "in.csv")
    writer = Writer(pipe, CSV)
    with open_input(pipe, spool_dir=tmp_path) as source:
        writer.join()
        assert (source.fmt, source.name, source.like) == ("csv", str(pipe), pipe)
        assert triples(read_samples(source)) == triples(read_samples(source)) == expected("csv", tmp_path)


@pytest.mark.timeout(PIPE_TIMEOUT)
def test_a_pipe_holding_parquet_or_forced_to_parquet_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\(a pipe\) can be read as json, jsonl or csv, not parquet"):
        read_samples(fifo(tmp_path, "a"), fmt="parquet")
    pipe = fifo(tmp_path, "b")
    writer = Writer(pipe, b"PAR1" + bytes(64))
    with pytest.raises(DataError, match="is a pipe holding parquet, which needs a seekable file"):
        open_input(pipe, spool_dir=tmp_path).__enter__()
    writer.join()


def test_a_character_device_is_a_stream():
    with pytest.raises(DataError, match="no rows"):
        list(read_samples("/dev/null", fmt="jsonl"))


# -- symlinks ---------------------------------------------------------------------------------------------

def test_symlink_loop_says_so(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for call in (read_samples, detect_format, lambda p: open_input(p).__enter__()):
        with pytest.raises(DataError) as info:
            call(tmp_path / "a")
        assert (info.value.reason, info.value.path) == ("symlink loop", str(tmp_path / "a"))


def test_dangling_symlink_names_its_target(tmp_path):
    (tmp_path / "link.jsonl").symlink_to("gone.jsonl")
    for call in (read_samples, detect_format, lambda p: open_input(p).__enter__()):
        with pytest.raises(DataError) as info:
            call(tmp_path / "link.jsonl")
        assert info.value.reason == "broken symlink -> gone.jsonl"
        assert info.value.path == str(tmp_path / "link.jsonl")


def test_a_symlink_to_a_file_is_read(tmp_path):
    (tmp_path / "real.jsonl").write_bytes(JSONL)
    (tmp_path / "link").symlink_to("real.jsonl")
    assert triples(read_samples(tmp_path / "link")) == expected("jsonl", tmp_path)


# -- compressed files -------------------------------------------------------------------------------------

COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.mark.parametrize("ext", list(COMPRESS))
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_gzip_bz2_and_xz_are_read_as_they_are(tmp_path, fmt, ext):
    path = tmp_path / f"data.{fmt}{ext}"
    path.write_bytes(COMPRESS[ext](TEXTS[fmt]))
    assert detect_format(path) == fmt
    assert triples(read_samples(path)) == expected(fmt, tmp_path)


def test_compression_is_told_by_magic_bytes_not_the_name(tmp_path, stdin):
    path = tmp_path / "data.txt"  # no .gz, and no extension that tells the format: sniffed decompressed
    path.write_bytes(gzip.compress(JSON))
    assert detect_format(path) == "json"
    assert triples(read_samples(path)) == expected("json", tmp_path)
    stdin(gzip.compress(JSONL))
    assert triples(read_samples("-", fmt="jsonl")) == expected("jsonl", tmp_path)


def _zip_of(data: bytes) -> bytes:
    """A real zip archive holding ``data`` (its first bytes are a whole local file header)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.jsonl", data)
    return buffer.getvalue()


def test_a_line_that_only_starts_like_an_archive_is_a_bad_row(tmp_path):
    """The magic alone is not an archive: ``PK\\x03\\x04`` on a JSON lines file is a bad row."""
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"PK\x03\x04\n")
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert "zip" not in info.value.reason and info.value.row == 1


@pytest.mark.parametrize(("magic", "reason"), [
    (b"\x28\xb5\x2f\xfd" + bytes(20), "is zstd-compressed: decompress it first (unzstd {path})"),
    (_zip_of(JSONL), "is a zip archive: extract it first (unzip {path})")])
def test_zstd_and_zip_say_how_to_unpack(tmp_path, magic, reason):
    path = tmp_path / "my data.jsonl"
    path.write_bytes(magic)
    want = reason.format(path=f"'{path}'")
    for call in (detect_format, read_samples, lambda p: read_samples(p, fmt="jsonl")):
        with pytest.raises(DataError) as info:
            call(path)  # refused when called, not at the first row, even with a forced format
        assert (info.value.reason, info.value.path) == (want, str(path))


def test_compressed_parquet_is_refused(tmp_path):
    path = tmp_path / "data.parquet.gz"
    path.write_bytes(gzip.compress(b"PAR1" + bytes(64)))
    with pytest.raises(DataError, match="is gzip-compressed Parquet, which is read in place"):
        detect_format(path)
    with pytest.raises(DataError, match="is gzip-compressed Parquet"):
        read_samples(path, fmt="parquet")


def test_truncated_gzip_gives_the_rows_before_then_names_the_file(tmp_path):
    rows = "".join(json.dumps({"instruction": f"q{i}", "output": "a" * 40}) + "\n" for i in range(3000))
    path = tmp_path / "data.jsonl.gz"
    whole = gzip.compress(rows.encode())
    path.write_bytes(whole[: len(whole) // 2])
    samples = read_samples(path)
    assert next(samples).instruction == "q0"
    with pytest.raises(DataError) as info:
        list(samples)
    assert info.value.path == str(path) and info.value.reason.startswith("its gzip data is damaged")


def test_gzip_garbage_inside_is_a_data_error(tmp_path):
    whole = bytearray(gzip.compress(JSONL * 50))
    whole[20:40] = b"\xff" * 20
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(bytes(whole))
    with pytest.raises(DataError, match="gzip data is damaged") as info:
        list(read_samples(path))
    assert info.value.path == str(path)


# -- odd paths and files ----------------------------------------------------------------------------------

def test_path_with_spaces_and_unicode(tmp_path):
    folder = tmp_path / "dätä sets 📚"
    folder.mkdir()
    path = folder / "my file é.jsonl"
    path.write_bytes(JSONL + b'{"instruction": "q"}\n')
    samples = read_samples(path)
    assert [s.instruction for s in [next(samples), next(samples), next(samples)]] == [
        "Say hi", "Count", "Échos 📚"]
    with pytest.raises(DataError) as info:
        next(samples)
    assert str(info.value).startswith(f"{path}, row 4, field 'output': ")


def test_empty_file_without_a_telling_name(tmp_path):
    (tmp_path / "data").write_bytes(b"")
    with pytest.raises(DataError, match="cannot tell the file format of an empty file; pass fmt="):
        detect_format(tmp_path / "data")
    with pytest.raises(DataError, match="no rows"):
        list(read_samples(tmp_path / "data", fmt="csv"))


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() == 0,
                    reason="root reads files whatever their permission bits")
def test_unreadable_file_fails_when_called_with_or_without_a_format(tmp_path):
    path = tmp_path / "secret.jsonl"
    path.write_bytes(JSONL)
    path.chmod(0)
    for kwargs in ({}, {"fmt": "jsonl"}):
        with pytest.raises(DataError, match="cannot read: Permission denied"):
            read_samples(path, **kwargs)


# -- the command line -------------------------------------------------------------------------------------

def cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "reflectune", "recycle", *args, "--oracle", "fake", "-q"],
                          input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout)


def outputs(run: Path, fmt: str) -> tuple[bytes, bytes]:
    return (run / f"recycled.{fmt}").read_bytes(), (run / "variants.jsonl").read_bytes()


@pytest.fixture
def reference(tmp_path):
    """The recycled output of the real file, per format, to compare the other routes with."""
    def run(fmt: str) -> tuple[Path, tuple[bytes, bytes]]:
        path = tmp_path / f"data.{fmt}"
        path.write_bytes(TEXTS[fmt])
        proc = cli(str(path), "--run-dir", str(tmp_path / f"file-{fmt}"))
        assert proc.returncode == 0, proc.stderr
        return path, outputs(tmp_path / f"file-{fmt}", fmt)
    return run


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_standard_input_gives_the_same_output_as_the_file(tmp_path, reference, fmt):
    path, want = reference(fmt)
    proc = cli("-", "--input-format", fmt, "--run-dir", str(tmp_path / "stdin"), stdin=path.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert outputs(tmp_path / "stdin", fmt) == want
    manifest = json.loads((tmp_path / "stdin" / "run.json").read_text())
    assert manifest["recycle"]["input"]["path"] == "-"


def test_cli_standard_input_without_a_format_is_one_line_exit_2(tmp_path):
    proc = cli("-", "--run-dir", str(tmp_path / "run"), stdin=JSONL)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines() == [
        "error: reading standard input needs --input-format json|jsonl|csv (fmt= in Python)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(90)
def test_cli_pipe_completes_with_the_same_output_as_the_file(tmp_path, reference):
    path, want = reference("jsonl")
    pipe = fifo(tmp_path, "in.jsonl")
    writer = Writer(pipe, path.read_bytes())
    proc = cli(str(pipe), "--run-dir", str(tmp_path / "pipe"), timeout=60)
    writer.join()
    assert proc.returncode == 0, proc.stderr
    assert outputs(tmp_path / "pipe", "jsonl") == want


def test_cli_gzip_file_gives_the_same_output_as_the_file(tmp_path, reference):
    path, want = reference("jsonl")
    packed = tmp_path / "packed.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    proc = cli(str(packed), "--run-dir", str(tmp_path / "gz"))
    assert proc.returncode == 0, proc.stderr
    assert outputs(tmp_path / "gz", "jsonl") == want, "written uncompressed, as recycled.jsonl"


def test_cli_symlink_loop_is_one_line_exit_2(tmp_path):
    (tmp_path / "a.jsonl").symlink_to("b.jsonl")
    (tmp_path / "b.jsonl").symlink_to("a.jsonl")
    proc = cli(str(tmp_path / "a.jsonl"), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines() == [f"error: {tmp_path / 'a.jsonl'}: symlink loop"]


def test_cli_dry_run_reads_standard_input(tmp_path):
    proc = cli("-", "--input-format", "jsonl", "--dry-run", stdin=JSONL)
    assert proc.returncode == 0, proc.stderr
    assert "rows" in proc.stderr.decode() and " 3 " in proc.stderr.decode()
