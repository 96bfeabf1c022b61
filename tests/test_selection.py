"""The Selective Reflection-Tuning rule on hand-built score tables, top-k, and ``select()`` end to end
on a hand-built run folder (scores written by hand: no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reflectune.errors import ConfigError
from reflectune.selection.rules import TopK, choose_variant, count_outcomes, parse_top_k, select_top_k


def table(ori=(0.8, 0.7), q=(0.9, 0.6), a=(0.7, 0.5), qa=(0.85, 0.4), **status: str) -> dict:
    """ifd/rifd per variant; a None pair entry means the variant is absent; status overrides."""
    out = {}
    for name, pair in (("ori", ori), ("Q", q), ("A", a), ("QA", qa)):
        if pair is not None:
            out[name] = {"status": status.get(name, "ok"), "ifd": pair[0], "rifd": pair[1],
                         "ifd_loss_ratio": pair[0], "rifd_loss_ratio": pair[1]}
    return out


def test_both_reflected() -> None:
    c = choose_variant(table())
    assert (c.variant, c.outcome, c.kept, c.reason) == ("QA", "both", True, None)
    assert (c.ifd, c.rifd) == (0.85, 0.4)


def test_instruction_only_is_dropped() -> None:
    c = choose_variant(table(qa=(0.85, 0.65)))  # QA does not lower r-IFD below Q's 0.6
    assert (c.variant, c.outcome, c.kept, c.reason) == ("Q", "instruction", False, "response_not_reflected")


def test_response_only() -> None:
    c = choose_variant(table(q=(0.75, 0.6)))  # Q's instruction is easier than ori's: ori branch
    assert (c.variant, c.outcome, c.kept) == ("A", "response", True)


def test_none_reflected() -> None:
    c = choose_variant(table(q=(0.75, 0.6), a=(0.7, 0.9)))
    assert (c.variant, c.outcome, c.kept, c.reason) == ("ori", "none", False, "response_not_reflected")


def test_tie_keeps_the_original() -> None:
    c = choose_variant(table(q=(0.8, 0.6), a=(0.7, 0.7)))  # equal IFD: Q does not win; equal r-IFD either
    assert (c.variant, c.outcome) == ("ori", "none")


@pytest.mark.parametrize(("qa", "reason"), [((1.2, 0.4), "ifd_not_below_1"), ((0.85, 0.4), None),
                                            ((0.85, 1.0), "rifd_not_below_1")])
def test_below_one_filter(qa, reason) -> None:
    q = (0.9, 1.5)  # r-IFD of Q above 1 so that QA at 1.0 still lowers it
    c = choose_variant(table(q=q, qa=qa))
    assert c.variant == "QA" and c.outcome == "both" and c.reason == reason and c.kept is (reason is None)
    assert choose_variant(table(q=q, qa=qa), below_one_filter=False).kept


def test_nan_is_dropped_with_a_reason() -> None:
    assert choose_variant(table(ori=(None, 0.7))).reason == "nan_ifd"
    assert choose_variant(table(qa=(0.85, None))).reason == "nan_rifd"
    c = choose_variant(table(qa=(None, 0.4)))  # kept pair's IFD is NaN: never selected
    assert (c.kept, c.reason, c.variant) == (False, "nan_ifd", "QA")
    assert not choose_variant(table(qa=(float("nan"), 0.4))).kept  # a float NaN is treated the same


def test_failed_variants_degrade() -> None:
    # Q failed (and so QA): the ori branch decides
    c = choose_variant(table(Q="parse_failed", QA="skipped"))
    assert (c.variant, c.outcome, c.kept) == ("A", "response", True)
    # Q absent altogether: same
    assert choose_variant(table(q=None, qa=None)).variant == "A"
    # QA failed on the chosen Q branch: response not reflected
    c = choose_variant(table(QA="call_failed"))
    assert (c.variant, c.outcome, c.kept, c.reason) == ("Q", "instruction", False, "QA_unavailable")
    # A failed on the ori branch
    c = choose_variant(table(q=(0.7, 0.6), A="parse_failed"))
    assert (c.outcome, c.reason) == ("none", "A_unavailable")
    # ori missing: nothing to compare against
    assert choose_variant(table(ori=None)).reason == "ori_unavailable"


def test_loss_ratio_metric_uses_its_own_columns() -> None:
    t = table()
    t["QA"]["ifd_loss_ratio"] = 1.5
    assert choose_variant(t).kept
    assert choose_variant(t, metric="loss_ratio").reason == "ifd_not_below_1"
    with pytest.raises(ConfigError):
        choose_variant(t, metric="nope")


def test_counts() -> None:
    counts = count_outcomes([choose_variant(table()), choose_variant(table(q=(0.75, 0.6))),
                             choose_variant(table(ori=(None, 0.7)))])
    assert counts["outcomes"] == {"both": 1, "instruction": 0, "response": 1, "none": 0}
    assert counts["kept"] == 2 and counts["dropped"] == {"nan_ifd": 1}


def test_parse_top_k() -> None:
    assert parse_top_k("5%") == TopK(fraction=0.05)
    assert parse_top_k("1000") == TopK(count=1000)
    assert parse_top_k(7) == TopK(count=7)
    assert TopK(fraction=0.02).size(46_325) == 926  # the paper's 2 %
    assert TopK(fraction=0.1).size(10) == 1 and TopK(count=50).size(10) == 10
    for bad in ("0.05", "0", "-3", "150%", "0%", "ten", ""):
        with pytest.raises(ConfigError):
            parse_top_k(bad)


def test_select_top_k_by_count_and_percent() -> None:
    ifds = [0.5, None, 0.9, 1.2, 0.7, 0.9, float("nan")]
    assert select_top_k(ifds, "2") == [2, 5]  # ties keep input order; >= 1 and NaN never
    assert select_top_k(ifds, "3") == [2, 5, 4]
    assert select_top_k(ifds, "50%") == [2, 5, 4]  # floor(0.5 * 7) = 3
    assert select_top_k(ifds, "100") == [2, 5, 4, 0]
    assert select_top_k(ifds, "50%", pool=2) == [2]


# -- select() on a hand-built run folder ---------------------------------------------------------------
ROWS = [{"instruction": f"Task {n}", "input": "ctx" if n == 2 else "", "output": f"Answer {n}", "id": f"r{n}",
         "source": "mine"} for n in range(5)]
TABLES = [table(), table(q=(0.75, 0.6)), table(qa=(0.85, 0.65)), table(ori=(None, 0.7)),
          table(q=(0.9, 0.3), qa=(0.95, 0.2))]


def write_scored_run(tmp_path: Path, rows: list[dict], tables: list[dict]) -> Path:
    """A recycle run folder with finished scores, by hand: ``rows`` (each with an ``id``) written as the
    input, four variants per row, ``tables`` (variant -> score entry) as ``scores.jsonl``. No model."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    with (run / "variants.jsonl").open("w") as v, (run / "scores.jsonl").open("w") as s:
        for r, t in zip(rows, tables, strict=True):
            x, i, y = r["instruction"], r["input"], r["output"]
            variants = {"ori": {"instruction": x, "input": i, "output": y, "status": "ok"},
                        "Q": {"instruction": x + "?", "input": "", "output": y, "status": "ok"},
                        "A": {"instruction": x, "input": i, "output": y + "!", "status": "ok"},
                        "QA": {"instruction": x + "?", "input": "", "output": y + "!?", "status": "ok"}}
            v.write(json.dumps({"id": r["id"], "row": 1, "status": "ok", "variants": variants}) + "\n")
            s.write(json.dumps({"id": r["id"], "row": 1, "variants": t}) + "\n")
    (run / "run.json").write_text(json.dumps({
        "recycle": {"input": {"path": str(data), "format": "jsonl", "fields": {}}},
        "score": {"status": "done", "source": str(run), "student": "embedded", "template": "vicuna",
                  "max_length": 2048, "dtype": "float32", "namespace": "ifd:test"}}))
    return run


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    return write_scored_run(tmp_path, ROWS, TABLES)


def test_select_writes_kept_rows_in_the_input_shape(run_folder: Path, tmp_path: Path) -> None:
    from reflectune.selection.run import select

    out = tmp_path / "out.jsonl"
    summary = select(run_folder, out)
    assert summary.outcomes == {"both": 2, "instruction": 1, "response": 1, "none": 0}
    assert summary.dropped == {"nan_ifd": 1, "response_not_reflected": 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["variant"], r["outcome"]) for r in rows] == [
        ("r0", "QA", "both"), ("r1", "A", "response"), ("r4", "QA", "both")]
    assert rows[0]["instruction"] == "Task 0?" and rows[0]["output"] == "Answer 0!?"
    assert rows[1]["source"] == "mine" and rows[1]["ifd"] == 0.7 and rows[1]["rifd"] == 0.5
    manifest = json.loads((run_folder / "run.json").read_text())["select"]
    assert manifest["kept"] == 3 and manifest["metric"] == "ppl_ratio" and manifest["below_one_filter"]

    top = select(run_folder, tmp_path / "top.json", top_k="1")
    kept = json.loads((tmp_path / "top.json").read_text())
    assert [r["id"] for r in kept] == ["r4"] and top.dropped["below_top_k"] == 2  # IFD 0.95 ranks first


def test_select_cli_table(run_folder: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "reflectune", "select", str(run_folder), "-o",
                             str(tmp_path / "o.parquet"), "--top-k", "67%"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for label in ("both reflected", "instruction only", "response only", "dropped: nan_ifd", "kept"):
        assert label in result.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "o.parquet").num_rows == 2  # floor(0.67 * 3 kept)


def test_selection_imports_no_torch() -> None:
    code = ("import sys, reflectune.selection.rules, reflectune.selection.run, reflectune.cli; "
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
