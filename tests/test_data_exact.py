"""Data kept exactly: a recycled dataset keeps the input's types, names agree with formats, every row counts.

Parquet and ``save_to_disk`` round trips keep each column's Arrow type and value (float32, int32,
``timestamp[us]``, dictionary, list, struct, ClassLabel), with the new columns typed; a dataset dict is read
through ``--split``; ``-o -`` writes JSON lines to standard output; a name and a format that disagree are
one line, exit 2; a multi-turn ShareGPT row gets its status and its variants.jsonl line like any other.
All against the loopback OpenAI-compatible server, response phase only, to stay quick.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reflectune.errors import ConfigError
from reflectune.io import DatasetWriter
from reflectune.testing.server import ServerHandle, running_server
from tests.conftest import ALPACA, run_cli

ROWS = 8
TEXTS = ("instruction", "input", "output")
NEW = ("reflect_status", "reflect_reason")


@pytest.fixture(autouse=True)
def _no_progress_bars() -> None:
    try:
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with running_server() as handle:
        yield handle


def recycle(src: Path, server: ServerHandle, *args: str):
    return run_cli("recycle", str(src), "--oracle", "openai:test", "--base-url", server.base_url,
                   "--phases", "response", "-q", "--no-html", *args)


def alpaca_rows() -> list[dict[str, str]]:
    return json.loads(ALPACA.read_text(encoding="utf-8"))[:ROWS]


def typed_table() -> pa.Table:
    """The first Alpaca rows plus one column of each type a JSON round trip would lose."""
    rows = alpaca_rows()
    stamps = [dt.datetime(2024, 1, 1, 12, 30, 15, 123457) + dt.timedelta(days=i, microseconds=i) for i in
              range(ROWS)]
    return pa.table({
        **{name: pa.array([r[name] for r in rows], pa.string()) for name in TEXTS},
        "score": pa.array([0.1 * i + 1 / 3 for i in range(ROWS)], pa.float32()),
        "rank": pa.array(range(ROWS), pa.int32()),
        "created": pa.array([None if i == 3 else s for i, s in enumerate(stamps)], pa.timestamp("us")),
        "label": pa.array(["pos", "neg"] * (ROWS // 2)).dictionary_encode().cast(
            pa.dictionary(pa.int8(), pa.string())),
        "tags": pa.array([[f"t{i}", "x"][: i % 3] for i in range(ROWS)], pa.list_(pa.string())),
        "meta": pa.array([{"source": f"s{i}", "weight": 0.7 * i, "turns": i} for i in range(ROWS)],
                         pa.struct([("source", pa.string()), ("weight", pa.float32()),
                                    ("turns", pa.int16())])),
    })


def show(title: str, schema: pa.Schema) -> None:
    print(f"\n--- {title} ---\n{schema}")


def check_kept(before: pa.Table, after: pa.Table) -> None:
    """Every input column: the same field (name, type, nullability) and, but the rewritten output, the
    same values; the new columns have a concrete type."""
    assert after.num_rows == before.num_rows
    assert after.schema.names[: len(before.schema)] == before.schema.names
    for field in before.schema:
        assert after.schema.field(field.name).equals(field), field.name
        if field.name != "output":
            assert after.column(field.name).equals(before.column(field.name)), field.name
    assert after.column("output").to_pylist() != before.column("output").to_pylist()
    for name in NEW:
        assert after.schema.field(name).type == pa.string(), name
    assert not any(pa.types.is_null(f.type) for f in after.schema)
    assert set(after.column("reflect_status").to_pylist()) == {"A"}


def test_a_parquet_round_trip_keeps_every_column_type_and_value(tmp_path: Path,
                                                                 server: ServerHandle) -> None:
    src, out = tmp_path / "typed.parquet", tmp_path / "recycled.parquet"
    pq.write_table(typed_table(), src)
    proc = recycle(src, server, "-o", str(out), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    before, after = pq.read_table(src), pq.read_table(out)
    show("input schema (pyarrow)", before.schema)
    show("recycled schema (pyarrow)", after.schema)
    check_kept(before, after)
    assert after.schema.metadata == before.schema.metadata
    lines = (tmp_path / "run" / "variants.jsonl").read_text().splitlines()
    assert len(lines) == ROWS


def test_a_datasets_folder_round_trip_keeps_features_and_the_default_name_is_a_folder(
        tmp_path: Path, server: ServerHandle) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        **{name: datasets.Value("string") for name in TEXTS}, "score": datasets.Value("float32"),
        "rank": datasets.Value("int32"), "created": datasets.Value("timestamp[us]"),
        "label": datasets.ClassLabel(names=["neg", "pos"]),
        "tags": datasets.Sequence(datasets.Value("string")),
        "meta": {"source": datasets.Value("string"), "weight": datasets.Value("float32")}})
    table = typed_table()
    columns = {name: table.column(name).to_pylist() for name in (*TEXTS, "score", "rank", "created", "tags")}
    columns["label"] = [i % 2 for i in range(ROWS)]
    columns["meta"] = [{"source": m["source"], "weight": m["weight"]}
                       for m in table.column("meta").to_pylist()]
    src = tmp_path / "typed_ds"
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(src))
    proc = recycle(src, server, "--run-dir", str(tmp_path / "run"))  # no -o: the default name
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run" / "recycled"
    assert out.is_dir() and not (tmp_path / "run" / "recycled.jsonl").exists()
    before, after = datasets.load_from_disk(str(src)), datasets.load_from_disk(str(out))
    show("input datasets folder schema", before.data.schema)
    show("recycled datasets folder schema", after.data.schema)
    check_kept(before.data.table, after.data.table)
    assert all(after.features[name] == feature for name, feature in before.features.items())


def test_a_dataset_dict_needs_split_when_it_has_several(tmp_path: Path, server: ServerHandle) -> None:
    datasets = pytest.importorskip("datasets")
    rows = alpaca_rows()
    split = {"train": datasets.Dataset.from_list(rows[:5]), "test": datasets.Dataset.from_list(rows[5:])}
    src = tmp_path / "dd"
    datasets.DatasetDict(split).save_to_disk(str(src))
    refused = recycle(src, server, "--run-dir", str(tmp_path / "none"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [f"error: {src}: holds splits train, test: pick one with "
                                                   f"--split NAME (split= in Python) or point at its folder "
                                                   f"({src / 'train'})"]
    wrong = recycle(src, server, "--split", "dev", "--run-dir", str(tmp_path / "none"))
    assert wrong.returncode == 2 and "its splits are train, test" in wrong.stderr
    out = tmp_path / "test.jsonl"
    proc = recycle(src, server, "--split", "test", "-o", str(out), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in written] == [r["instruction"] for r in rows[5:]]
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["recycle"]["input"]
    assert Path(recorded["path"]) == (src / "test").resolve() and recorded["split"] == "test"


def test_o_dash_writes_jsonl_to_stdout_and_the_summary_to_stderr(tmp_path: Path,
                                                                  server: ServerHandle) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows()))
    proc = recycle(src, server, "-o", "-", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(written) == ROWS and all(r["reflect_status"] == "A" for r in written)
    assert "output:   standard output" in proc.stderr and "output:" not in proc.stdout
    assert not (tmp_path / "-").exists()
    assert (tmp_path / "run" / "recycled.jsonl").read_text() == proc.stdout


def test_a_name_and_a_format_that_disagree_are_one_line_exit_2(tmp_path: Path,
                                                                server: ServerHandle) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows()))
    proc = recycle(src, server, "-o", str(tmp_path / "x.json"), "--output-format", "parquet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: -o {tmp_path / 'x.json'} is a json name but --output-format is parquet: "
        f"drop --output-format, or name the output {tmp_path / 'x.parquet'}"]
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ConfigError, match=r"y\.jsonl is named as jsonl but would be written as parquet"):
        DatasetWriter(tmp_path / "y.jsonl", "parquet")  # the library refuses such a pair too


def test_every_sharegpt_row_has_a_status_and_a_variants_line(tmp_path: Path,
                                                              server: ServerHandle) -> None:
    single = [{"id": f"c{i}", "conversations": [{"from": "human", "value": r["instruction"]},
                                                 {"from": "gpt", "value": r["output"]}]}
              for i, r in enumerate(alpaca_rows()[:5])]
    turns = [("human", "Hi"), ("gpt", "Hello"), ("human", "Bye"), ("gpt", "Bye!")]
    multi = {"id": "long", "conversations": [{"from": who, "value": text} for who, text in turns]}
    rows = [*single[:2], multi, *single[2:]]
    src, out = tmp_path / "chat.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = recycle(src, server, "-o", str(out), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    lines = [json.loads(line) for line in (tmp_path / "run" / "variants.jsonl").read_text().splitlines()]
    assert len(written) == len(lines) == len(rows)
    assert [line["id"] for line in lines] == [r["id"] for r in rows]
    assert all(line["status"] and r["reflect_status"] for line, r in zip(lines, written, strict=True))
    assert lines[2]["status"] == written[2]["reflect_status"] == "passed_through"
    assert {k: written[2][k] for k in multi} == multi and "4 turns" in written[2]["reflect_reason"]
    assert {v["status"] for v in lines[2]["variants"].values()} == {"skipped"}
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["recycle"]
    assert manifest["done"] == len(rows) and manifest["passed_through"] == 1
