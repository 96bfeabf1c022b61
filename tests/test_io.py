"""reflectune.io on real files: round trips in every format, shapes, ids, mapping, streaming, atomicity."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

import reflectune.io as rio
from reflectune.errors import ConfigError, DataError
from reflectune.io import DatasetWriter, detect_format, parse_fields, read_samples, write_jsonl_atomic
from reflectune.types import Sample

DATA = Path(__file__).parents[1].parent / "shared" / "data"
CHERRY = DATA / "alpaca_cherry5pct_3111.json"
EVAL = DATA / "alpacaeval805_alpaca-7b.json"
SELFINSTRUCT = DATA / "selfinstruct_seed_tasks_175.jsonl"
OUTPUTS = {"json": "out.json", "jsonl": "out.jsonl", "parquet": "out.parquet", "csv": "out.csv",
           "hf_disk": "out_folder"}


def _texts(samples: list[Sample]) -> list[tuple[str, str, str, str]]:
    return [(s.id, s.instruction, s.input, s.output) for s in samples]


def _write_all(path: Path, samples: list[Sample], fmt: str | None = None, **kwargs) -> None:
    with DatasetWriter(path, fmt, **kwargs) as out:
        for s in samples:
            out.write(s, s.instruction, s.input, s.output, {"reflect_status": "ok"})


def _tree_bytes(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {path.name: path.read_bytes()}


@pytest.fixture(scope="module")
def cherry() -> list[Sample]:
    return list(read_samples(CHERRY))


def test_cherry_file_reads_whole(cherry):
    assert len(cherry) == 3111
    assert sum(1 for s in cherry if s.input) == 579
    assert [s.row for s in cherry[:3]] == [1, 2, 3]
    assert all(s.extra == {} and not s.passthrough for s in cherry)


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_round_trip_real_file(tmp_path, cherry, fmt):
    path = tmp_path / OUTPUTS[fmt]
    _write_all(path, cherry)
    assert detect_format(path) == fmt
    back = list(read_samples(path))
    assert _texts(back) == _texts(cherry)
    assert all(s.extra == {"reflect_status": "ok"} for s in back)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_output_is_byte_identical(tmp_path, fmt):
    samples = list(read_samples(EVAL))[:200]
    first, second = tmp_path / "a" / OUTPUTS[fmt], tmp_path / "b" / OUTPUTS[fmt]
    _write_all(first, samples)
    _write_all(second, samples)
    assert _tree_bytes(first) == _tree_bytes(second)


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv"])
def test_extra_columns_survive(tmp_path, fmt):
    samples = list(read_samples(EVAL))
    assert len(samples) == 805
    assert samples[0].extra == {"source": "helpful_base"}  # this file has no `generator` column
    path = tmp_path / OUTPUTS[fmt]
    _write_all(path, samples)
    back = list(read_samples(path))
    assert [s.extra for s in back] == [{**s.extra, "reflect_status": "ok"} for s in samples]


def test_json_output_layout(tmp_path):
    path = tmp_path / "o.json"
    sample = Sample(id="x", row=1, instruction="Décris", output="Ça va", extra={"k": 1})
    with DatasetWriter(path) as out:
        out.write(sample, "Décris Paris", "", "Une ville", {"reflect_status": "ok"})
        out.write_record({"b": 1, "a": [1, 2]})
    assert path.read_text(encoding="utf-8") == (
        '[\n{"instruction": "Décris Paris", "input": "", "output": "Une ville", "k": 1, '
        '"reflect_status": "ok"},\n{"b": 1, "a": [1, 2]}\n]\n')
    with DatasetWriter(path) as out:
        pass
    assert path.read_text() == "[]\n"


def test_ids_are_stable_and_own_ids_win(tmp_path, cherry):
    again = list(read_samples(CHERRY))
    assert [s.id for s in again] == [s.id for s in cherry]
    assert cherry[0].id.startswith("row0-") and len(cherry[0].id) == len("row0-") + 10
    assert len({s.id for s in cherry}) == len(cherry)
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": 7, "instruction": "a", "output": "b"}\n{"id": "x", "instruction": "a", '
                    '"output": "b"}\n{"instruction": "a", "output": "b"}\n')
    ids = [s.id for s in read_samples(path)]
    assert ids[:2] == ["7", "x"] and ids[2].startswith("row2-")


def test_own_id_equal_to_a_generated_id_is_a_duplicate(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n')
    generated = next(read_samples(path)).id
    path.write_text(f'{{"instruction": "a", "output": "b"}}\n{{"id": "{generated}", "instruction": "c", '
                    f'"output": "d"}}\n')
    with pytest.raises(DataError, match="duplicate id") as info:
        list(read_samples(path))
    assert (info.value.row, info.value.field) == (2, "id")


def test_selfinstruct_with_a_mapping(tmp_path):
    samples = list(read_samples(SELFINSTRUCT, fields={"output": "name"}))
    assert len(samples) == 175
    assert samples[0].id == "seed_task_0" and samples[0].output == "breakfast_suggestion"
    assert set(samples[0].extra) == {"id", "instances", "is_classification"}
    path = tmp_path / "o.jsonl"
    _write_all(path, samples, fields={"output": "name"})
    first = json.loads(path.read_text().splitlines()[0])
    assert first["name"] == "breakfast_suggestion" and first["id"] == "seed_task_0"
    assert "output" not in first and first["instances"] == samples[0].extra["instances"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_field_mapping_round_trip(tmp_path, fmt):
    fields = parse_fields("instruction=prompt, output=completion,input=context")
    rows = [{"prompt": "Add", "context": "1 and 2", "completion": "3", "meta": "m"},
            {"prompt": "Greet", "context": "", "completion": "Hello", "meta": "n"}]
    src = tmp_path / "src.jsonl"
    write_jsonl_atomic(src, rows)
    samples = list(read_samples(src, fields=fields))
    assert [(s.instruction, s.input, s.output, s.extra) for s in samples] == [
        ("Add", "1 and 2", "3", {"meta": "m"}), ("Greet", "", "Hello", {"meta": "n"})]
    path = tmp_path / OUTPUTS[fmt]
    with DatasetWriter(path, fields=fields) as out:
        for s in samples:
            out.write(s, s.instruction, s.input, s.output.upper(), {})
    back = list(read_samples(path, fields=fields))
    assert [s.output for s in back] == ["3", "HELLO"]
    with pytest.raises(DataError) as info:  # without the mapping the columns are not found
        list(read_samples(path))
    assert info.value.field == "instruction"


def test_parse_fields():
    assert parse_fields("") == {}
    assert parse_fields(" instruction = q ,output=a,") == {"instruction": "q", "output": "a"}
    assert parse_fields("id=uid") == {"id": "uid"}
    for bad in ("instruction", "instruction=", "=q", "question=q", "output=a,output=b",
                "instruction=x,output=x", "input=instruction"):
        with pytest.raises(ConfigError):
            parse_fields(bad)
    with pytest.raises(ConfigError, match="unknown field 'prompt'"):
        read_samples(CHERRY, fields={"prompt": "q"})


def _sharegpt_rows(cherry: list[Sample]) -> list[dict]:
    rows = []
    for s in cherry[:40]:
        human = f"{s.instruction}\n\n{s.input}" if s.input else s.instruction
        rows.append({"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": s.output}],
                     "source": "alpaca"})
    rows.append({"id": "sys-1", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Name a colour."},
                                             {"role": "assistant", "content": "Red."}]})
    rows.append({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                   {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]})
    return rows


@pytest.mark.parametrize("ext", ["json", "jsonl", "parquet", "csv"])
def test_sharegpt_round_trip(tmp_path, cherry, ext):
    rows = _sharegpt_rows(cherry)
    src = tmp_path / f"share.{ext}"
    if ext == "json":
        src.write_text(json.dumps(rows, indent=1))
    else:
        _write_records(src, rows)
    samples = list(read_samples(src))
    assert len(samples) == 42
    assert samples[0].instruction == cherry[0].instruction + "\n\n" + cherry[0].input
    assert samples[0].output == cherry[0].output and samples[0].extra["source"] == "alpaca"
    assert (samples[40].id, samples[40].instruction, samples[40].output) == (
        "sys-1", "Name a colour.", "Red.")
    multi = samples[41]
    assert multi.passthrough and multi.instruction == "Hi"
    assert {k: v for k, v in multi.raw.items() if v not in (None, "")} == rows[41]  # tables add nulls

    out = tmp_path / f"out.{ext}"
    with DatasetWriter(out) as w:
        for s in samples:
            w.write(s, s.instruction, "context" if s.row == 41 else "", "NEW " + s.output, {})
    back = list(read_samples(out))
    assert len(back) == 42 and back[40].id == "sys-1" and back[41].id == samples[41].id
    assert back[0].output == "NEW " + cherry[0].output and back[0].extra["source"] == "alpaca"
    assert back[40].instruction == "Name a colour.\n\ncontext"
    assert back[40].extra["messages"][0] == {"role": "system", "content": "Be brief."}
    assert back[41].passthrough
    assert {k: v for k, v in back[41].raw.items() if v not in (None, "")} == rows[41]


def _write_records(path: Path, rows: list[dict]) -> None:
    with DatasetWriter(path) as out:
        for row in rows:
            out.write_record(row)


def test_json_file_that_is_really_jsonl(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    assert detect_format(path) == "jsonl"
    assert [s.output for s in read_samples(path)] == ["b", "d"]


def test_detect_format(tmp_path):
    cases = {"a.jsonl": b"[1]\n", "b.parquet": b"", "c.csv": b"x", "d.data": b"  [", "e.json": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    assert [detect_format(tmp_path / n) for n in cases] == ["jsonl", "parquet", "csv", "json", "json"]
    _write_all(tmp_path / "folder", list(read_samples(CHERRY))[:3])
    assert detect_format(tmp_path / "folder") == "hf_disk"
    assert rio.output_format("x.JSONL") == "jsonl" and rio.output_format(tmp_path / "dir") == "hf_disk"
    with pytest.raises(ConfigError):
        rio.output_format("x.txt")
    with pytest.raises(ConfigError, match="unknown format"):
        read_samples(CHERRY, fmt="xml")


def test_dataset_dict_folder(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(
        [{"instruction": "a", "output": "b"}])}).save_to_disk(str(tmp_path / "dd"))
    assert [s.output for s in read_samples(tmp_path / "dd")] == ["b"]


def test_streaming_memory_stays_flat(tmp_path):
    """Peak memory stays far below the file size: rows are parsed and dropped one at a time."""
    rows, payload = 4_000, "lorem ipsum " * 600
    line = '{"instruction": "Summarise text %d", "input": "%s", "output": "short"}'
    path, array = tmp_path / "big.jsonl", tmp_path / "big.json"
    with open(path, "w") as f:
        f.writelines(line % (i, payload) + "\n" for i in range(rows))
    with open(array, "w") as f:
        f.write("[\n" + ",\n".join(line % (i, payload) for i in range(rows)) + "\n]\n")
    for source in (path, array):
        size = source.stat().st_size
        assert size > 25 * 2**20
        tracemalloc.start()
        try:
            n = sum(1 for _ in read_samples(source))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert n == rows
        assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"


def test_reader_is_lazy(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n')
    samples = read_samples(path)
    path.write_text('{"instruction": "changed", "output": "b"}\n')  # nothing read yet
    assert next(samples).instruction == "changed"


def test_writer_is_atomic(tmp_path):
    for fmt, name in OUTPUTS.items():
        path = tmp_path / name
        _write_all(path, [Sample(id="a", row=1, instruction="old", output="x")])
        before = _tree_bytes(path)
        with pytest.raises(RuntimeError), DatasetWriter(path) as out:
            out.write_record({"instruction": "new", "output": "y"})
            raise RuntimeError("killed")
        assert _tree_bytes(path) == before, fmt
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS[f] for f in OUTPUTS
                                                                     if list(OUTPUTS).index(f)
                                                                     <= list(OUTPUTS).index(fmt))


def test_write_jsonl_atomic_and_unopened_writer(tmp_path):
    assert write_jsonl_atomic(tmp_path / "sub" / "x.jsonl", [{"a": 1}, {"b": "é"}]) == 2
    assert (tmp_path / "sub" / "x.jsonl").read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'
    with pytest.raises(ConfigError, match="not open"):
        DatasetWriter(tmp_path / "y.jsonl").write_record({"a": 1})
    with pytest.raises(ConfigError, match="is a directory"):
        DatasetWriter(tmp_path / "sub", "jsonl")


def test_parquet_mixed_and_late_columns(tmp_path):
    rows = ([{"instruction": f"q{i}", "output": "a", "late": None, "mixed": i, "empty": {}}
             for i in range(1500)]
            + [{"instruction": "q", "output": "a", "late": "now", "mixed": "text", "empty": {},
                "new": [1, 2]}])
    path = tmp_path / "m.parquet"
    _write_records(path, rows)
    back = list(read_samples(path))
    assert len(back) == 1501
    assert back[0].extra == {"late": None, "mixed": "0", "empty": "{}", "new": None}
    assert back[-1].extra == {"late": "now", "mixed": "text", "empty": "{}", "new": [1, 2]}
    csv_path = tmp_path / "m.csv"
    _write_records(csv_path, rows)
    assert list(read_samples(csv_path))[-1].extra == {"late": "now", "mixed": "text", "empty": "{}",
                                                        "new": "[1, 2]"}


def test_all_is_pinned_and_sorted():
    assert rio.__all__ == ["CANONICAL", "FORMATS", "DatasetWriter", "RejectSink", "detect_format",
                           "output_format", "parse_fields", "read_samples", "resolve_fields",
                           "write_jsonl_atomic"]
    assert all(hasattr(rio, name) for name in rio.__all__)


def test_io_imports_only_its_layer():
    allowed_reflectune = {"reflectune.types", "reflectune.errors"}
    io_dir = Path(rio.__file__).parent
    for module in io_dir.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                if top == "reflectune":
                    assert name in allowed_reflectune or name.startswith("reflectune.io"), (module, name)
                else:
                    assert top in sys.stdlib_module_names or top in {"pyarrow", "datasets", "filelock",
                                                                     "__future__"}, (
                        module, name)
    code = ("import sys, reflectune; before = set(sys.modules); import reflectune.io; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("torch", "typer", "rich", "pyarrow", "datasets"):
        assert f"'{heavy}'" not in loaded
