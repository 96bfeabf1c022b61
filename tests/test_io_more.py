"""reflectune.io on hostile but legal data: what ``test_io`` and ``test_io_badinput`` leave out.

Round trips keep every text exactly (unicode, newlines of every kind, quotes, control characters,
long texts, empty inputs) in every file format; detection copes with misleading names; every bad row
names its file, row and field, also in Parquet and through a field mapping; skip mode puts each bad
row in the rejects file with its reason; generated ids do not depend on the format or on skipped
rows; ShareGPT single exchanges are samples and everything else passes through.
"""

from __future__ import annotations

import datetime
import decimal
import json
from pathlib import Path
from unittest.mock import patch

import pytest

from reflectune.errors import ConfigError, DataError, StoreError
from reflectune.io import (
    DatasetWriter,
    RejectSink,
    detect_format,
    output_format,
    read_samples,
    resolve_fields,
)
from reflectune.types import Sample

FORMATS = ["json", "jsonl", "csv", "parquet"]

HOSTILE = [
    "plain",
    "Café, naïve, 東京, שלום, Привет, 🚀👩‍👩‍👧",     # accents, CJK, RTL, Cyrillic, emoji ZWJ sequence
    "e\u0301 vs \u00e9",                          # combining vs precomposed: kept as given
    "line one\nline two\n\nline four",
    "windows\r\nline\r\nends",
    "old mac\rline",
    'quotes "double" and \'single\' and ""doubled""',
    "commas, semicolons; pipes | tabs\tand\\backslashes\\n",
    "  leading and trailing spaces  ",
    "nul \x00 bell \x07 escape \x1b[31m",
    "\u2028line separator\u2029paragraph",
    "[1, 2]",                                     # looks like JSON: stays a string
    "007",                                        # looks like a number: stays a string
    "null",
    "=SUM(A1:A9)",
]


def write_samples(path: Path, triples: list[tuple[str, str, str]], fmt: str | None = None,
                  columns: dict | None = None) -> None:
    with DatasetWriter(path, fmt) as out:
        for i, (instruction, input_, output) in enumerate(triples):
            out.write(Sample(id=f"s{i}", row=i + 1, instruction="x"), instruction, input_, output,
                      columns or {})


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_skip(path: Path, rejects_path: Path, **kwargs) -> tuple[list[Sample], list[dict]]:
    with RejectSink(rejects_path) as rejects:
        samples = list(read_samples(path, on_bad_record="skip", rejects=rejects, **kwargs))
    lines = rejects_path.read_text(encoding="utf-8").splitlines() if rejects_path.exists() else []
    return samples, [json.loads(line) for line in lines]


def parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# -- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_texts_round_trip_exactly(tmp_path, fmt):
    triples = [(text, HOSTILE[-1 - i], text) for i, text in enumerate(HOSTILE)]
    path = tmp_path / f"out.{fmt}"
    write_samples(path, triples)
    back = list(read_samples(path))
    assert [(s.instruction, s.input, s.output) for s in back] == triples
    assert [s.row for s in back] == list(range(1, len(HOSTILE) + 1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_text_and_empty_fields_round_trip(tmp_path, fmt):
    long_text = ("Ünïcödé paragraph with \"quotes\", commas and a newline.\n" * 6000)[:300_000]
    triples = [("Summarise", long_text, ""), (long_text, "", "short"), ("Only an instruction", "", "")]
    path = tmp_path / f"out.{fmt}"
    write_samples(path, triples)
    back = list(read_samples(path))
    assert [(s.instruction, s.input, s.output) for s in back] == triples
    assert len(back[0].input) == 300_000


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_typed_extra_columns_keep_their_types(tmp_path, fmt):
    extra = {"score": 0.25, "count": 3, "flag": True, "tags": ["a", "é"], "meta": {"k": "v"}}
    path = tmp_path / f"out.{fmt}"
    write_samples(path, [("q", "", "a")], columns=extra)
    [sample] = read_samples(path)
    assert sample.extra == extra


def test_csv_extra_columns_come_back_as_text(tmp_path):
    """CSV has no types: numbers and lists are written as JSON text and read back as strings."""
    path = tmp_path / "out.csv"
    write_samples(path, [("q", "", "a")], columns={"count": 3, "tags": ["a", "é"], "none": None})
    [sample] = read_samples(path)
    assert sample.extra == {"count": "3", "tags": '["a", "é"]', "none": ""}


def test_values_json_cannot_hold_are_written_as_text(tmp_path):
    path = tmp_path / "out.jsonl"
    with DatasetWriter(path) as out:
        out.write_record({"blob": b"\x00\x01", "day": datetime.date(2024, 1, 2),
                          "at": datetime.datetime(2024, 1, 2, 3, 4, 5), "price": decimal.Decimal("1.50")})
    assert json.loads(path.read_text()) == {"blob": "AAE=", "day": "2024-01-02",
                                            "at": "2024-01-02T03:04:05", "price": "1.50"}


def test_lone_surrogate_in_an_extra_column_is_escaped_not_lost(tmp_path):
    path = tmp_path / "out.jsonl"
    with DatasetWriter(path) as out:
        out.write_record({"instruction": "q", "output": "a", "note": "bad \udc80 byte"})
    raw = path.read_bytes()
    raw.decode("utf-8")  # the file itself is valid UTF-8
    assert b"\\udc80" in raw
    [sample] = read_samples(path)
    assert sample.extra == {"note": "bad \udc80 byte"}


def test_writer_into_a_path_under_a_file_is_a_store_error_naming_it(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    target = blocker / "out.jsonl"
    with pytest.raises(StoreError, match="cannot write the output") as info, DatasetWriter(target):
        pass
    assert str(target) in str(info.value)
    assert blocker.read_text() == "x"


def test_folder_output_onto_an_existing_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="is a file"):
        DatasetWriter(target)
    assert target.read_text() == "keep me"


# -- format detection --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "content", "expected"), [
    ("data.JSON", b'[{"a": 1}]', "json"),               # case-insensitive suffix, then sniffed
    ("data.Json", b'{"a": 1}\n', "jsonl"),              # .json holding JSON lines
    ("data.txt", b'\n\n  [{"a": 1}]', "json"),          # no known suffix: sniffed past whitespace
    ("data.txt", b'{"a": 1}\n', "jsonl"),
    ("data", b'\xef\xbb\xbf  {"a": 1}\n', "jsonl"),      # no suffix, a BOM, then whitespace
    ("data.v2.json", b"\xef\xbb\xbf[]", "json"),
    ("data.ndjson", b'[{"a": 1}]', "jsonl"),             # .ndjson is taken at its word
    ("data.PQ", b"not really", "parquet"),
    ("export.csv", b'[{"a": 1}]', "csv"),                # .csv is taken at its word
    ("export.json", b"PAR1\x00\x00", "parquet"),         # Parquet magic beats a wrong .json suffix
    ("export.bin", b"PAR1\x00\x00", "parquet"),
    ("empty.json", b"   \n", "json"),
])
def test_detect_format_on_misleading_names(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert detect_format(path) == expected


@pytest.mark.parametrize(("name", "content"), [("data.json.gz", b"\x1f\x8b\x08\x00"), ("data.txt", b"hello"),
                                               ("data", b""), ("data.yaml", b"- a: 1\n")])
def test_undetectable_format_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot tell the file format") as info:
        detect_format(path)
    assert info.value.path == str(path) and "jsonl" in str(info.value)


def test_parquet_named_json_is_read_as_parquet(tmp_path):
    path = parquet(tmp_path / "really.parquet", {"instruction": ["q"], "output": ["a"]})
    renamed = path.rename(tmp_path / "misnamed.json")
    assert [(s.instruction, s.output) for s in read_samples(renamed)] == [("q", "a")]


def test_folder_without_datasets_markers_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "data.json").write_text("[]")
    with pytest.raises(DataError, match="is a directory") as info:
        detect_format(tmp_path / "folder")
    assert info.value.path == str(tmp_path / "folder")


def test_forced_format_must_match_the_kind_of_path(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"instruction": "q", "output": "a"}])
    with pytest.raises(DataError, match="save_to_disk folder"):
        read_samples(path, fmt="hf_disk")
    with pytest.raises(DataError, match="is a directory"):
        read_samples(tmp_path, fmt="jsonl")
    assert [s.instruction for s in read_samples(path, fmt="jsonl")] == ["q"]


@pytest.mark.parametrize(("name", "expected"), [
    ("o.ndjson", "jsonl"), ("o.PQ", "parquet"), ("o.v1.json", "json"), ("o.CSV", "csv"),
    ("outdir", "hf_disk")])
def test_output_format_from_the_extension(name, expected):
    assert output_format(name) == expected


def test_output_format_refuses_unknown_extensions_naming_the_path():
    with pytest.raises(ConfigError, match=r"'recycled\.tar\.gz'"):
        output_format("recycled.tar.gz")


# -- bad records name file, row and field ------------------------------------------------------------
@pytest.mark.parametrize(("row", "field", "reason"), [
    ({"instruction": "q", "output": ["a"]}, "output", "expected a string, got a list"),
    ({"instruction": True, "output": "a"}, "instruction", "expected a string, got a boolean (true)"),
    ({"instruction": "q", "input": 5, "output": "a"}, "input", "expected a string, got a number (5)"),
    ({"instruction": "q", "input": None, "output": None}, "output", "missing"),
    ({"instruction": None, "output": "a"}, "instruction", "missing"),
    ({"instruction": "\t\n ", "output": "a"}, "instruction", "is empty"),
    ({"instruction": "q", "output": {"text": "a"}}, "output", "expected a string, got an object"),
])
def test_bad_field_names_file_row_and_field(tmp_path, row, field, reason):
    good = {"instruction": "fine", "output": "ok"}
    path = write_lines(tmp_path / "data.jsonl", [good, good | {"instruction": "fine too"}, row])
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    err = info.value
    assert (err.path, err.row, err.field) == (str(path), 3, field)
    assert reason in err.reason
    assert str(err) == f"{path}, row 3, field '{field}': {err.reason}"


def test_error_names_the_files_own_column_under_a_mapping(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"prompt": "q", "completion": "a"},
                                                  {"prompt": "  ", "completion": "a"}])
    with pytest.raises(DataError) as info:
        list(read_samples(path, fields={"instruction": "prompt", "output": "completion"}))
    assert (info.value.row, info.value.field) == (2, "prompt") and "is empty" in info.value.reason


def test_jsonl_rows_do_not_count_blank_lines_but_the_reason_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('\n\n{"instruction": "a", "output": "b"}\n\n   \n{"instruction": "c", "output": \n')
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert info.value.row == 2 and "malformed JSON on line 6" in info.value.reason


def test_bom_on_a_later_jsonl_line_is_a_bad_row_not_a_crash(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\n'
                     b'\xef\xbb\xbf{"instruction": "c", "output": "d"}\n'
                     b'{"instruction": "e", "output": "f"}\n')
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert info.value.row == 2 and "BOM" in info.value.reason
    samples, rejected = read_skip(path, tmp_path / "rejects.jsonl")
    assert [s.instruction for s in samples] == ["a", "e"]
    assert rejected[0]["row"] == 2 and rejected[0]["record"].endswith('"output": "d"}')


def test_huge_integer_is_a_bad_row_in_jsonl_and_a_stop_in_an_array(tmp_path):
    row = '{"instruction": "a", "output": "b", "n": ' + "1" * 5000 + "}"
    lines = tmp_path / "data.jsonl"
    lines.write_text('{"instruction": "ok", "output": "b"}\n' + row + "\n")
    samples, rejected = read_skip(lines, tmp_path / "rejects.jsonl")
    assert [s.instruction for s in samples] == ["ok"]
    assert rejected[0]["row"] == 2 and "unreadable JSON on line 2" in rejected[0]["reason"]
    array = tmp_path / "data.json"
    array.write_text(f"[{row}]")
    with pytest.raises(DataError, match="unreadable JSON") as info:
        list(read_samples(array))
    assert info.value.row == 1


def test_utf16_file_is_a_data_error_not_a_crash(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes('[{"instruction": "a", "output": "b"}]'.encode("utf-16"))
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert info.value.path == str(path)


def test_csv_duplicate_header_names_the_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,output,instruction\na,b,c\n")
    with pytest.raises(DataError, match="appears twice") as info:
        list(read_samples(path))
    assert (info.value.path, info.value.field) == (str(path), "instruction")


def test_csv_missing_column_and_extra_values(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,answer\nq,a\n")
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert (info.value.row, info.value.field) == (1, "output")
    assert info.value.reason == "missing (a string is required)"
    path.write_text("instruction,output\nq,a\nq,a,extra,more\n\n\nq3,a3\n")
    samples, rejected = read_skip(path, tmp_path / "rejects.jsonl")
    assert [s.instruction for s in samples] == ["q", "q3"] and [s.row for s in samples] == [1, 3]
    assert rejected == [{"row": 2, "field": None, "reason": "has 4 values, the header has 2",
                         "record": "q,a,extra,more"}]


def test_parquet_bad_rows_name_row_and_field_and_can_be_skipped(tmp_path):
    path = parquet(tmp_path / "data.parquet", {"instruction": ["a", "b", None, "d"],
                                                "output": ["x", None, "z", "w"]})
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert (info.value.path, info.value.row, info.value.field) == (str(path), 2, "output")
    samples, rejected = read_skip(path, tmp_path / "rejects.jsonl")
    assert [(s.row, s.instruction) for s in samples] == [(1, "a"), (4, "d")]
    assert [(r["row"], r["field"], r["record"]) for r in rejected] == [
        (2, "output", {"instruction": "b", "output": None}),
        (3, "instruction", {"instruction": None, "output": "z"})]


def test_parquet_column_of_the_wrong_type_names_the_field(tmp_path):
    path = parquet(tmp_path / "data.parquet", {"instruction": [1, 2], "output": ["x", "y"]})
    with pytest.raises(DataError, match=r"expected a string, got a number \(1\)") as info:
        list(read_samples(path))
    assert (info.value.row, info.value.field) == (1, "instruction")


@pytest.mark.parametrize("damage", ["truncate", "zero_middle"])
def test_damaged_parquet_is_a_data_error_naming_the_file(tmp_path, damage):
    good = parquet(tmp_path / "good.parquet", {"instruction": ["a"] * 50, "output": ["b"] * 50}).read_bytes()
    path = tmp_path / "bad.parquet"
    path.write_bytes(good[: len(good) // 2] if damage == "truncate"
                     else good[:8] + b"\x00" * (len(good) - 16) + good[-8:])
    with pytest.raises(DataError, match="Parquet") as info:
        list(read_samples(path))
    assert info.value.path == str(path)


# -- skip mode and the rejects file ------------------------------------------------------------------
def test_skip_mode_keeps_every_bad_row_with_its_reason_in_order(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "output": "1"}\n'
                    '{"instruction": "", "output": "2"}\n'
                    'not json at all\n'
                    '{"instruction": "d", "output": 4}\n'
                    '"a string"\n'
                    '{"instruction": "f", "output": "6"}\n')
    samples, rejected = read_skip(path, tmp_path / "rejects.jsonl")
    assert [(s.row, s.instruction) for s in samples] == [(1, "a"), (6, "f")]
    assert [(r["row"], r["field"]) for r in rejected] == [(2, "instruction"), (3, None), (4, "output"),
                                                          (5, None)]
    for entry, reason in zip(rejected, ["is empty", "malformed JSON on line 3", "got a number",
                                        "expected an object"], strict=True):
        assert reason in entry["reason"], entry
    assert rejected[1]["record"] == "not json at all" and rejected[3]["record"] == "a string"


def test_rejects_file_is_appended_to_by_a_resumed_run(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a"}])
    rejects_path = tmp_path / "run" / "rejects.jsonl"  # the folder is created on the first reject
    for _ in range(2):
        samples, _ = read_skip(path, rejects_path)
        assert [s.instruction for s in samples] == ["a"]
    rejected = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in rejected] == [(2, "output"), (2, "output")]


def test_reject_sink_escapes_what_utf8_cannot_hold(tmp_path):
    path = tmp_path / "rejects.jsonl"
    with RejectSink(path) as sink:
        sink.add(1, "instruction", "lone surrogate", {"instruction": "bad \ud800", "output": "é"})
        sink.add(2, None, "raw bytes", b"\xff\xfe")
        assert sink.count == 2
    raw = path.read_bytes()
    raw.decode("utf-8")
    first, second = (json.loads(line) for line in raw.decode().splitlines())
    assert first["record"] == {"instruction": "bad \ud800", "output": "é"}
    assert second == {"row": 2, "field": None, "reason": "raw bytes", "record": str(b"\xff\xfe")}


def test_skip_mode_still_stops_on_a_duplicate_header(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,instruction\na,b\n")
    with RejectSink(tmp_path / "rejects.jsonl") as sink, pytest.raises(DataError, match="appears twice"):
        list(read_samples(path, on_bad_record="skip", rejects=sink))


# -- ids ---------------------------------------------------------------------------------------------
def test_generated_ids_are_the_same_in_every_format(tmp_path):
    triples = [("Name a colour.", "", "Red."), ("Add", "1 and 2", "3"), ("Décris", "", "Ça va\nbien")]
    ids = {}
    for fmt in FORMATS:
        path = tmp_path / f"data.{fmt}"
        write_samples(path, triples)
        ids[fmt] = [s.id for s in read_samples(path)]
    assert len({tuple(v) for v in ids.values()}) == 1, ids
    assert [i.split("-")[0] for i in ids["json"]] == ["row0", "row1", "row2"]


def test_generated_id_changes_with_the_texts_and_the_position(tmp_path):
    base = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    first = [s.id for s in read_samples(write_lines(tmp_path / "1.jsonl", base))]
    edited = [s.id for s in read_samples(write_lines(tmp_path / "2.jsonl",
                                                     [base[0], {"instruction": "c", "output": "D"}]))]
    swapped = [s.id for s in read_samples(write_lines(tmp_path / "3.jsonl", base[::-1]))]
    extra = [s.id for s in read_samples(write_lines(tmp_path / "4.jsonl",
                                                    [base[0] | {"meta": 1}, base[1]]))]
    assert edited[0] == first[0] and edited[1] != first[1]
    assert set(swapped).isdisjoint(first)  # a row's id includes its position
    assert extra == first                  # other columns do not enter the id


def test_skipped_rows_do_not_shift_the_ids_of_later_rows(tmp_path):
    fixed = write_lines(tmp_path / "fixed.jsonl", [{"instruction": "a", "output": "1"},
                                                   {"instruction": "b", "output": "2"},
                                                   {"instruction": "c", "output": "3"}])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(fixed.read_text().replace('{"instruction": "b", "output": "2"}', "{oops"))
    samples, rejected = read_skip(broken, tmp_path / "rejects.jsonl")
    good = list(read_samples(fixed))
    assert [s.id for s in samples] == [good[0].id, good[2].id] and len(rejected) == 1


def test_own_ids_of_any_json_type_become_strings_and_collide_by_spelling(tmp_path):
    path = write_lines(tmp_path / "ids.jsonl", [{"id": {"b": 1, "a": 2}, "instruction": "a", "output": "b"},
                                               {"id": 1.5, "instruction": "a", "output": "b"},
                                               {"id": "", "instruction": "a", "output": "b"}])
    ids = [s.id for s in read_samples(path)]
    assert ids[:2] == ['{"a": 2, "b": 1}', "1.5"] and ids[2].startswith("row2-")
    clash = write_lines(tmp_path / "clash.jsonl", [{"id": 1, "instruction": "a", "output": "b"},
                                                  {"id": "1", "instruction": "c", "output": "d"}])
    with pytest.raises(DataError, match="duplicate id '1'") as info:
        list(read_samples(clash))
    assert (info.value.row, info.value.field) == (2, "id")


def test_mapped_id_column_is_used_and_kept(tmp_path):
    path = write_lines(tmp_path / "ids.jsonl", [{"uid": "u-1", "instruction": "a", "output": "b"}])
    [sample] = read_samples(path, fields={"id": "uid"})
    assert sample.id == "u-1" and sample.extra == {"uid": "u-1"}
    out = tmp_path / "out.jsonl"
    with DatasetWriter(out, fields={"id": "uid"}) as writer:
        writer.write(sample, "A", "", "B", {})
    assert json.loads(out.read_text()) == {"instruction": "A", "input": "", "output": "B", "uid": "u-1"}


def test_resolve_fields_rejects_non_string_columns():
    with pytest.raises(ConfigError, match="non-empty column name"):
        resolve_fields({"instruction": 5})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="same column 'q'"):
        resolve_fields({"instruction": "q", "output": "q"})
    assert resolve_fields(None) == {"instruction": "instruction", "input": "input", "output": "output",
                                    "id": "id"}


# -- ShareGPT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("turns", [
    [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "Q"},
     {"from": "chatgpt", "value": "A"}],
    [{"role": "user", "content": "Q"}, {"role": "model", "content": "A"}],
])
def test_single_exchange_is_a_sample_with_a_shape_independent_id(tmp_path, turns):
    path = write_lines(tmp_path / "share.jsonl", [{"conversations": turns}, {"messages": turns}])
    first, second = read_samples(path)
    assert not first.passthrough and (first.instruction, first.input, first.output) == ("Q", "", "A")
    assert not second.passthrough and second.extra == {"messages": turns}
    alpaca = write_lines(tmp_path / "alpaca.jsonl", [{"instruction": "Q", "output": "A"}])
    assert first.id == next(read_samples(alpaca)).id  # the id depends on the texts, not the layout


@pytest.mark.parametrize("turns", [
    [{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Q"}],
    [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"}],
    [{"from": "human", "text": "Q"}, {"from": "gpt", "value": "A"}],  # no value/content key
    [{"from": "system", "value": "Only a system prompt"}],
])
def test_anything_but_one_exchange_passes_through_unchanged(tmp_path, turns):
    row = {"conversations": turns, "source": "x"}
    path = write_lines(tmp_path / "share.jsonl", [row])
    [sample] = read_samples(path)
    assert sample.passthrough and sample.raw == row
    again = next(read_samples(path))
    assert again.id == sample.id and sample.id.startswith("row0-")
    out = tmp_path / "out.jsonl"
    with DatasetWriter(out) as writer:
        writer.write(sample, "ignored", "ignored", "ignored", {"reflect_status": "passthrough"})
    assert json.loads(out.read_text()) == row | {"reflect_status": "passthrough"}


def test_instruction_column_wins_over_a_conversation(tmp_path):
    conversation = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    path = write_lines(tmp_path / "mixed.jsonl", [
        {"instruction": "I", "output": "O", "conversations": conversation},
        {"instruction": None, "conversations": conversation}])
    alpaca, share = read_samples(path)
    assert (alpaca.instruction, alpaca.output, alpaca.extra) == ("I", "O", {"conversations": conversation})
    assert (share.instruction, share.output) == ("Q", "A")
    out = tmp_path / "out.jsonl"
    with DatasetWriter(out) as writer:
        writer.write(alpaca, "I2", "", "O2", {})
    assert json.loads(out.read_text()) == {"instruction": "I2", "input": "", "output": "O2",
                                           "conversations": conversation}


@pytest.mark.parametrize(("turns", "reason"), [
    ([{"from": "human", "value": "  "}, {"from": "gpt", "value": "A"}], "is empty"),
    ([{"from": "human", "value": "Q"}, {"role": 3, "value": "A"}], "turn 2 has no 'from' or 'role' string"),
    ([{"from": "human", "value": "Q"}, "A"], "turn 2 is a string, expected an object"),
    ([], "expected a non-empty list of turns"),
    ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": 5}], "expected a string, got a number (5)"),
])
def test_broken_conversation_names_the_conversation_field(tmp_path, turns, reason):
    path = write_lines(tmp_path / "share.jsonl", [{"messages": [{"role": "user", "content": "fine"},
                                                                {"role": "assistant", "content": "ok"}]},
                                                  {"messages": turns}])
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert (info.value.row, info.value.field) == (2, "messages") and reason in info.value.reason


# -- BOM and JSON arrays -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_bom_followed_by_whitespace_is_accepted(tmp_path, fmt):
    body = {"json": '\n  [{"instruction": "Say hi", "output": "Hi"}]',
            "jsonl": '\n\n{"instruction": "Say hi", "output": "Hi"}\n',
            "csv": "instruction,output\r\nSay hi,Hi\r\n"}[fmt]
    path = tmp_path / f"bom.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    [sample] = read_samples(path)
    assert (sample.instruction, sample.output, sample.extra) == ("Say hi", "Hi", {})


@pytest.mark.parametrize(("tail", "line"), [("\n]\n\n\n  oops\n", 5), ("]\n[]", 2), ("]\x00\x00", 1),
                                            ("]\n{}", 2)])
@pytest.mark.parametrize("chunk", [7, 1 << 18])
def test_trailing_garbage_after_an_array_names_its_line_whatever_the_buffer(tmp_path, tail, line, chunk):
    from reflectune.io import jsonsource

    rows = ",".join(json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(3))
    path = tmp_path / "data.json"
    path.write_text("[" + rows + tail)
    with patch.object(jsonsource, "_CHUNK", chunk), pytest.raises(DataError) as info:
        list(read_samples(path))
    assert info.value.reason == f"unexpected data after the JSON array at line {line}"
    assert info.value.path == str(path)


def test_trailing_whitespace_after_an_array_is_fine(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"instruction": "q", "output": "a"}]\n\r\n\t  \n')
    assert [s.instruction for s in read_samples(path)] == ["q"]


@pytest.mark.parametrize(("text", "row", "reason"), [
    ('[{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": "d"},\n', 3,
     "malformed JSON at line 3"),
    ('[{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": "d"}', 3, "expected ',' or ']'"),
    ('[{"instruction": "a", "output": "b"},\n{"instruction": "c", "outp', 2, "Unterminated string"),
    ('[{"instruction": "a", "output": "b"},]', 2, "malformed JSON at line 1"),
    ('[{"instruction": "a", "output": "b"} {"instruction": "c", "output": "d"}]', 2, "expected ',' or ']'"),
])
def test_truncated_or_broken_array_yields_the_good_rows_then_names_the_row(tmp_path, text, row, reason):
    path = tmp_path / "data.json"
    path.write_text(text)
    samples = read_samples(path)
    assert next(samples).instruction == "a"
    with pytest.raises(DataError) as info:
        list(samples)
    assert (info.value.path, info.value.row) == (str(path), row) and reason in info.value.reason


def test_array_error_line_is_right_after_many_buffer_refills(tmp_path):
    from reflectune.io import jsonsource

    good = ",\n".join(json.dumps({"instruction": f"q{i}", "output": "a" * 50}) for i in range(200))
    path = tmp_path / "data.json"
    path.write_text("[\n" + good + ',\n{"instruction": oops}\n]')
    for chunk in (64, 1 << 18):
        with patch.object(jsonsource, "_CHUNK", chunk), pytest.raises(DataError) as info:
            list(read_samples(path))
        assert info.value.row == 201 and "malformed JSON at line 202, column 17" in info.value.reason


def test_whitespace_only_json_file_has_no_rows(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("  \n\t ")
    with pytest.raises(DataError) as info:
        list(read_samples(path))
    assert (info.value.reason, info.value.path) == ("no rows", str(path))


@pytest.mark.xfail(strict=True, reason="bug: shapes.to_record takes an Alpaca row whose extra holds a "
                   "conversation mirroring its texts for a ShareGPT row, so the writer drops the row's "
                   "instruction/output columns and writes only the conversation")
def test_alpaca_row_with_a_mirrored_conversation_keeps_its_columns(tmp_path):
    conversation = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    path = write_lines(tmp_path / "both.jsonl", [{"instruction": "Q", "output": "A",
                                                  "conversations": conversation}])
    [sample] = read_samples(path)
    assert not sample.passthrough and sample.instruction == "Q"
    out = tmp_path / "out.jsonl"
    with DatasetWriter(out) as writer:
        writer.write(sample, "Q2", "", "A2", {})
    row = json.loads(out.read_text())
    assert (row.get("instruction"), row.get("output")) == ("Q2", "A2")
