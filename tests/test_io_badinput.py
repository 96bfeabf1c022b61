"""Bad input: every case names the file, row and field, and skip mode loses nothing.

The corpus lives in ``tests/data/bad/``, one tiny file per case; big or unusual inputs (a 1 MB field,
a directory) are made in ``tmp_path``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.errors import ConfigError, DataError
from reflectune.io import RejectSink, read_samples

BAD = Path(__file__).parent / "data" / "bad"


def _read_skip(path: Path, tmp_path: Path) -> tuple[list, list[dict]]:
    rejects_path = tmp_path / "rejects.jsonl"
    with RejectSink(rejects_path) as rejects:
        samples = list(read_samples(path, on_bad_record="skip", rejects=rejects))
    assert rejects.count == (len(rejects_path.read_text().splitlines()) if rejects_path.exists() else 0)
    lines = rejects_path.read_text(encoding="utf-8").splitlines() if rejects_path.exists() else []
    return samples, [json.loads(line) for line in lines]


# name, row, field, words in the reason, instructions left in skip mode, the rejected record
ROW_ERRORS = [
    ("malformed_line.jsonl", 2, None, "malformed JSON on line 2", ["Say hi", "Count"],
     '{"instruction": "Say bye", "output":'),
    ("missing_output.json", 2, "output", "missing", ["Say hi"], {"instruction": "Say bye", "input": ""}),
    ("wrong_type.jsonl", 2, "instruction", "expected a string, got a number (42)", ["Say hi"],
     {"instruction": 42, "output": "forty-two"}),
    ("empty_instruction.json", 2, "instruction", "is empty", ["Say hi"],
     {"instruction": "   ", "output": "nothing"}),
    ("invalid_utf8.jsonl", 2, None, "invalid UTF-8 on line 2", ["Say hi", "Count"],
     '{"instruction": "Caf\\xe9 \\xff", "output": "x"}'),
    ("invalid_utf8.json", 2, None, "invalid UTF-8", ["Say hi", "Count"],
     '{"instruction": "Caf\\xe9", "output": "x"}'),
    ("invalid_utf8.csv", 2, "instruction", "invalid UTF-8", ["Say hi"], "Caf\\xe9,,x"),
    ("short_row.csv", 2, None, "has 2 values, the header has 3", ["Say hi", "Count"], "Say bye,"),
    ("duplicate_ids.jsonl", 3, "id", "duplicate id 'a'", ["Say hi", "Say bye"],
     {"id": "a", "instruction": "Count", "output": "1 2 3"}),
    ("not_object.jsonl", 2, None, "expected an object, got a list", ["Say hi"], ["Say bye", "Bye"]),
    ("bad_conversation.jsonl", 2, "conversations", "expected a non-empty list of turns", ["Say hi"],
     {"conversations": "Say bye"}),
]


@pytest.mark.parametrize(("name", "row", "field", "reason", "kept", "record"), ROW_ERRORS,
                         ids=[c[0] for c in ROW_ERRORS])
def test_bad_row_raises_with_row_and_field(name, row, field, reason, kept, record):
    with pytest.raises(DataError) as info:
        list(read_samples(BAD / name))
    err = info.value
    assert type(err) is DataError
    assert (err.path, err.row, err.field) == (str(BAD / name), row, field)
    assert reason in err.reason
    assert str(err).startswith(f"{BAD / name}, row {row}")


@pytest.mark.parametrize(("name", "row", "field", "reason", "kept", "record"), ROW_ERRORS,
                         ids=[c[0] for c in ROW_ERRORS])
def test_bad_row_skipped_into_rejects(tmp_path, name, row, field, reason, kept, record):
    samples, rejected = _read_skip(BAD / name, tmp_path)
    assert [s.instruction for s in samples] == kept
    assert len(rejected) == 1
    assert rejected[0]["row"] == row and rejected[0]["field"] == field
    assert reason in rejected[0]["reason"]
    assert rejected[0]["record"] == record
    assert set(rejected[0]) == {"row", "field", "reason", "record"}


def test_malformed_json_array_stops_even_in_skip_mode(tmp_path):
    for mode in ("error", "skip"):
        with RejectSink(tmp_path / "rejects.jsonl") as rejects, pytest.raises(DataError) as info:
            list(read_samples(BAD / "malformed.json", on_bad_record=mode, rejects=rejects))
        assert (info.value.row, info.value.field) == (2, None)
        assert "malformed JSON at line 3" in info.value.reason
        assert "cannot be resumed" in info.value.reason
    assert not (tmp_path / "rejects.jsonl").exists()


def test_malformed_array_yields_rows_before_the_error():
    rows = read_samples(BAD / "malformed.json")
    assert next(rows).instruction == "Say hi"
    with pytest.raises(DataError):
        next(rows)


def test_data_after_the_array_is_an_error():
    with pytest.raises(DataError, match="unexpected data after the JSON array at line 2"):
        list(read_samples(BAD / "trailing_data.json"))


@pytest.mark.parametrize("name", ["zero_rows.json", "empty.jsonl"])
def test_zero_rows(tmp_path, name):
    with pytest.raises(DataError) as info:
        list(read_samples(BAD / name))
    assert info.value.reason == "no rows" and info.value.row is None and info.value.field is None


def test_empty_csv_and_header_only_csv_have_no_rows(tmp_path):
    for text in ("", "instruction,input,output\n"):
        path = tmp_path / "x.csv"
        path.write_text(text)
        with pytest.raises(DataError, match="no rows"):
            list(read_samples(path))


@pytest.mark.parametrize("name", ["bom.json", "bom.jsonl"])
def test_bom_is_accepted(name):
    [sample] = read_samples(BAD / name)
    assert (sample.instruction, sample.output) == ("Say hi", "Hi")


def test_bom_csv_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfinstruction,output\nSay hi,Hi\n")
    [sample] = read_samples(path)
    assert (sample.instruction, sample.output, sample.extra) == ("Say hi", "Hi", {})


def test_extra_fields_are_kept():
    first, second = read_samples(BAD / "extra_fields.jsonl")
    assert first.extra == {"source": "seed", "score": 0.5}
    assert second.extra == {"tags": ["a", "b"]} and second.input == ""


@pytest.mark.parametrize("ext", ["json", "jsonl", "csv"])
def test_one_megabyte_field_is_accepted(tmp_path, ext):
    big = "x" * (1 << 20) + "é"
    path = tmp_path / f"big.{ext}"
    if ext == "csv":
        path.write_text(f"instruction,output\nSay a lot,{big}\n", encoding="utf-8")
    else:
        row = json.dumps({"instruction": "Say a lot", "output": big}, ensure_ascii=False)
        path.write_text(f"[{row}]" if ext == "json" else row, encoding="utf-8")
    [sample] = read_samples(path)
    assert sample.output == big


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError) as info:
        read_samples(tmp_path)
    assert "is a directory, expected a file" in info.value.reason
    assert info.value.path == str(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_samples(tmp_path / "nope.json")


def test_format_cannot_be_told(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="cannot tell the file format"):
        read_samples(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        list(read_samples(path))


def test_top_level_not_an_array(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('"just a string"')
    with pytest.raises(DataError, match="expected a JSON array"):
        list(read_samples(path))


def test_deep_nesting_is_a_data_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match="row 1"):
        list(read_samples(path))


def test_lone_surrogate_in_text_is_rejected(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"instruction": "a\\ud800", "output": "b"}\n')
    with pytest.raises(DataError, match="lone surrogate") as info:
        list(read_samples(path))
    assert info.value.field == "instruction"
    samples, rejected = _read_skip(path, tmp_path)
    assert samples == [] and rejected[0]["record"] == {"instruction": "a\ud800", "output": "b"}


def test_skip_needs_a_sink_and_modes_are_checked():
    with pytest.raises(ConfigError, match="rejects sink"):
        read_samples(BAD / "bom.json", on_bad_record="skip")
    with pytest.raises(ConfigError, match="on_bad_record"):
        read_samples(BAD / "bom.json", on_bad_record="ignore")  # type: ignore[arg-type]


def test_no_rejects_file_when_nothing_is_rejected(tmp_path):
    samples, rejected = _read_skip(BAD / "extra_fields.jsonl", tmp_path)
    assert len(samples) == 2 and rejected == []
    assert not (tmp_path / "rejects.jsonl").exists()


def test_selfinstruct_without_mapping_names_output():
    path = Path(__file__).parents[1].parent / "shared" / "data" / "selfinstruct_seed_tasks_175.jsonl"
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert (info.value.row, info.value.field) == (1, "output")
    assert "missing" in str(info.value)
