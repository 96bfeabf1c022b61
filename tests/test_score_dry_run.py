"""``reflectune score --dry-run`` (issue 19, item 3): the computations it counts are the ones a real run
then computes, it creates no folder and no file, its time estimate is near the real compute time,
and it refuses what a real run refuses, with the same line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.cli import main
from tests.conftest import ALPACA

ARGS = ("--max-length", "256", "--threads", "1")  # one thread: the fastest on a busy 2-core machine


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "240")  # table rows on one line each, to read them back


def _score(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["score", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def six_rows(tmp_path: Path) -> Path:
    data = tmp_path / "six.json"
    data.write_text(json.dumps(json.loads(ALPACA.read_text(encoding="utf-8"))[:6]), encoding="utf-8")
    return data


def _run_folder(path: Path, rows: list[dict[str, str]], *, truncate: bool = False) -> Path:
    """A recycle run folder by hand: ori and A for each row (made-up A texts)."""
    path.mkdir()
    lines = [json.dumps({"id": f"r{n}", "row": n + 1, "status": "ok", "variants": {
        "ori": {**r, "status": "ok"}, "A": {**r, "output": "Sure. " + r["output"], "status": "ok"}}})
        for n, r in enumerate(rows)]
    text = "\n".join(lines) + "\n"
    (path / "variants.jsonl").write_text(text[:-20] if truncate else text, encoding="utf-8")
    return path


def test_the_dry_run_counts_what_the_run_computes_writes_nothing_and_times_it(
        six_rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _files(tmp_path)
    code, out, err = _score(capsys, str(six_rows), *ARGS, "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)  # the table went to stderr: stdout is one JSON object
    assert (plan["command"], plan["dry_run"], plan["mode"], plan["samples"]) == ("score", True, "cherry", 6)
    assert plan["new"] == plan["computations"] > 0 and plan["from_store"] == 0 and plan["store"] is None
    assert plan["probe"]["tokens"] > 0 and plan["seconds_low"] <= plan["seconds"] <= plan["seconds_high"]
    assert "time (compute)" in err and "0 from the store" in err
    assert _files(tmp_path) == before and not (tmp_path / "runs").exists()  # no folder, no file

    folder = tmp_path / "scored"
    code, _, err = _score(capsys, str(six_rows), *ARGS, "--run-dir", str(folder), "-q")
    assert code == 0, err
    real = json.loads((folder / "run.json").read_text(encoding="utf-8"))["score"]
    assert (real["computed"], real["cached"]) == (plan["new"], 0)
    assert (real["tokens"], real["padded_tokens"], real["batches"]) == (
        plan["tokens"], plan["padded_tokens"], plan["batches"])
    with capsys.disabled():
        print(f"\nscore dry run: estimate {plan['seconds']:.2f} s ({plan['seconds_low']:.2f}-"
              f"{plan['seconds_high']:.2f}), probe {plan['probe']['tokens_per_s']:.0f} tok/s; real compute "
              f"{real['compute_seconds']:.2f} s ({real['tokens_per_s']:.0f} tok/s), {real['tokens']} tokens")
    assert real["compute_seconds"] / 5 <= plan["seconds"] <= real["compute_seconds"] * 5

    # on the scored folder, everything comes from the store, and the dry run still writes nothing
    kept = _files(folder)
    code, out, err = _score(capsys, str(six_rows), *ARGS, "--run-dir", str(folder), "--dry-run", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert (again["new"], again["from_store"], again["probe"]) == (0, real["computed"], None)
    assert "every computation comes from the store" in err
    assert _files(folder) == kept


@pytest.mark.parametrize("case", ["template", "no-rifd", "truncated", "missing"])
def test_the_dry_run_refuses_what_a_run_refuses_with_the_same_line(
        case: str, six_rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(six_rows.read_text(encoding="utf-8"))[:2]
    if case == "template":
        args = [str(six_rows), "--template", "nope"]
    elif case == "missing":
        args = [str(tmp_path / "absent.json")]
    else:
        args = [str(_run_folder(tmp_path / "run", rows, truncate=case == "truncated"))]
        args += ["--no-rifd"] if case == "no-rifd" else []
    files = _files(tmp_path)
    dry = _score(capsys, *args, "--dry-run")
    assert dry[0] != 0 and dry[2].startswith("error: ") and len(dry[2].strip().splitlines()) == 1
    assert _score(capsys, *args) == dry  # the same exit code and the same line
    assert _files(tmp_path) == files
    if case in ("template", "no-rifd"):
        assert dry[0] == 2


def test_no_probe_goes_with_dry_run(six_rows: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _score(capsys, str(six_rows), "--no-probe")
    assert code == 2 and err.strip() == "error: --no-probe is a --dry-run option: add --dry-run"


def test_split_picks_one_split_of_a_dataset_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import Dataset, DatasetDict

    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    DatasetDict({"train": Dataset.from_list(rows[:4]), "test": Dataset.from_list(rows[4:7])}).save_to_disk(
        str(tmp_path / "dd"))
    code, out, err = _score(capsys, str(tmp_path / "dd"), "--split", "test", "--dry-run", "--no-probe",
                            "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["samples"] == 3 and plan["source"] == str(tmp_path / "dd" / "test")
    assert plan["run_dir"] == "runs/dd-test-embedded-score" and plan["seconds"] is None
    code, _, err = _score(capsys, str(tmp_path / "dd"), "--dry-run", "--no-probe")
    assert code == 2 and "holds splits train, test: pick one with --split" in err
    assert len(err.strip().splitlines()) == 1

    code, _, err = _score(capsys, str(tmp_path / "dd"), "--split", "test", "--max-length", "64", "--threads",
                          "1", "-q")
    assert code == 0, err
    section = json.loads((tmp_path / plan["run_dir"] / "run.json").read_text(encoding="utf-8"))["score"]
    assert section["samples"] == 3 and section["computed"] == plan["new"]
    assert section["source"] == section["input"]["path"] == plan["source"]
    assert section["input"]["split"] == "test"


def test_the_pipeline_plans_score_with_the_real_count(six_rows: Path, tmp_path: Path) -> None:
    from reflectune.pipeline import load_run_config
    from reflectune.pipeline.plan import plan

    path = tmp_path / "p.yaml"
    path.write_text(f"data: {six_rows}\nrecycle:\n  enabled: false\nscore:\n  max_length: 256\n"
                    "train:\n  enabled: false\ngenerate:\n  enabled: false\njudge:\n  enabled: false\n",
                    encoding="utf-8")
    row = next(r for r in plan(load_run_config(path), probe=False) if r.stage == "score")
    assert row.rows == "6" and any(d.startswith("12 computations to run") for d in row.details)
    assert row.seconds is None and not (tmp_path / "runs").exists()


def test_the_store_is_read_without_creating_a_file(tmp_path: Path) -> None:
    from reflectune.scoring.plan import _StoreView
    from reflectune.store.calls import Store

    path = tmp_path / "store.sqlite"
    writer = Store(path)  # open, with a write-ahead log: what a live (or killed) run leaves
    writer.put_results("ns", [("k1", {"loss": 1.0}), ("k2", {"loss": 2.0})])
    live = _files(tmp_path)
    view = _StoreView(path)
    assert view.has_results("ns", ["k1", "k3"]) == {"k1"} and view.has_results("other", ["k1"]) == set()
    view.close()
    assert _files(tmp_path) == live
    writer.close()  # a finished run: the log is folded into the file and removed
    closed = _files(tmp_path)
    assert closed == {"store.sqlite"}
    view = _StoreView(path)
    assert view.has_results("ns", ["k1", "k2"]) == {"k1", "k2"}
    view.close()
    assert _files(tmp_path) == closed
