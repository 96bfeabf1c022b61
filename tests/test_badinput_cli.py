"""Bad input through the real command line: one line naming file, row and field, exit 2, nothing paid.

The readers' corpus (``tests/test_io_badinput.py``, ``tests/test_io_properties.py``) covers every case of
the issue at the API level; ``tests/test_recycle_http.py`` drives malformed JSON lines, a missing field,
a wrong type and invalid UTF-8 through the CLI. This file adds the CLI cases still missing: a malformed
JSON array, an empty string, duplicate ids, zero rows, a directory, and the inputs that must be
accepted as they are (a UTF-8 BOM, extra fields, a 1 MB field).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.testing.server import running_server
from tests.conftest import run_cli

BAD = Path(__file__).parent / "data" / "bad"


@pytest.fixture(scope="module")
def server():
    with running_server() as handle:
        yield handle


def recycle(src: Path, tmp_path: Path, server, *extra: str):
    return run_cli("recycle", str(src), "-o", str(tmp_path / "out.jsonl"), "--oracle", "openai:test",
                   "--base-url", server.base_url, "--phases", "response", "-q", *extra)


# file, row, field, words of the reason, rows kept under --on-bad-record skip (None: stops anyway)
CASES = [
    ("malformed.json", 2, None, "malformed JSON at line 3", None),
    ("empty_instruction.json", 2, "instruction", "is empty", 1),
    ("duplicate_ids.jsonl", 3, "id", "duplicate id 'a'", 2),
    ("zero_rows.json", None, None, "no rows", None),
    ("<directory>", None, None, "is a directory, expected a file", None),
]


@pytest.mark.parametrize(("name", "row", "field", "reason", "kept"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(server, tmp_path, name, row, field, reason, kept):
    if name == "<directory>":
        src = tmp_path / "data"
        src.mkdir()
    else:
        src = BAD / name
    server.reset()
    proc = recycle(src, tmp_path, server, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    where = ", ".join([str(src), *([f"row {row}"] if row else []), *([f"field '{field}'"] if field else [])])
    assert line.startswith(f"error: {where}: ") and reason in line, line
    assert server.stats()["requests"] == 0, "nothing is paid for before the input is validated"
    assert not (tmp_path / "out.jsonl").exists()

    skipped = recycle(src, tmp_path, server, "--run-dir", str(tmp_path / "skip"), "--on-bad-record", "skip")
    if kept is None:  # nothing to resume from: the same one-line error
        assert skipped.returncode == 2 and skipped.stderr == proc.stderr
        return
    assert skipped.returncode == 0, skipped.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == kept and {r["reflect_status"] for r in rows} == {"A"}
    [reject] = [json.loads(x) for x in (tmp_path / "skip" / "rejects.jsonl").read_text().splitlines()]
    assert (reject["row"], reject["field"]) == (row, field) and reason in reject["reason"]


def test_bom_extra_fields_and_a_one_megabyte_field_are_accepted(server, tmp_path):
    big = "x" * (1 << 20) + "é"
    rows = [{"instruction": "Say hi", "output": "Hi", "source": "seed", "score": 0.5},
            {"instruction": "Say a lot", "output": big},
            {"instruction": "Count", "input": "1 to 3", "output": "1 2 3", "tags": ["a"]}]
    src = tmp_path / "in.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    src.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    proc = recycle(src, tmp_path, server, "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["instruction"] for r in out] == ["Say hi", "Say a lot", "Count"]
    assert (out[0]["source"], out[0]["score"], out[2]["tags"]) == ("seed", 0.5, ["a"])
    assert out[0]["reflect_status"] == out[2]["reflect_status"] == "A"
    # the 1 MB answer is read whole; its prompt is too big for the oracle (refused, or the answer is
    # cut off), so the row keeps its original, intact, with the reason recorded
    assert out[1]["reflect_status"] == "ori" and out[1]["output"] == big
    assert out[1]["reflect_reason"].startswith("A ")
    assert not (tmp_path / "run" / "rejects.jsonl").exists()
