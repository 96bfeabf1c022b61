"""Stages know what they consumed (issue 21): score records the hash of the variants it scored, select
rescores stale scores (only what changed, by content key), never writes a row with a score computed for
other text, refuses a truncated or mismatched run folder, and says bad bytes in one line (exit 2).

One real run folder: the fake oracle recycles 4 demo rows, the embedded student scores them."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reflectune.errors import DataError

DEMO = Path(__file__).resolve().parents[1] / "src/reflectune/data/demo_alpaca20.json"
MAX_LENGTH = 128  # not the defaults: a rescore must reuse what the first score recorded
DTYPE = "float32"  # batch-invariant: a rescore (other batches) gives a fresh score's very numbers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("stage_inputs")
    data = base / "demo4.json"
    data.write_text(json.dumps(json.loads(DEMO.read_text(encoding="utf-8"))[:4]), encoding="utf-8")
    run = base / "run"
    result = cli("recycle", str(data), "--oracle", "fake", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    result = cli("score", str(run), "--max-length", str(MAX_LENGTH), "--dtype", DTYPE)
    assert result.returncode == 0, result.stderr
    return run


def clone(run: Path, dest: Path) -> Path:
    """A copy of the run folder that still counts as scored (run.json's score source is the folder)."""
    shutil.copytree(run, dest)
    manifest = json.loads((dest / "run.json").read_text())
    manifest["score"]["source"] = str(dest.resolve())
    (dest / "run.json").write_text(json.dumps(manifest))
    return dest


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def same(a: Any, b: Any) -> bool:
    """Equal, floats to a relative 1e-5."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_score_records_the_hash_of_the_variants_it_scored_and_a_text_key_per_entry(scored: Path) -> None:
    import hashlib

    from reflectune.keys import text_key

    section = json.loads((scored / "run.json").read_text())["score"]
    digest = hashlib.sha256((scored / "variants.jsonl").read_bytes()).hexdigest()
    assert section["inputs"] == {"variants": digest}
    pairs = zip(lines(scored / "variants.jsonl"), lines(scored / "scores.jsonl"), strict=True)
    for v_line, s_line in pairs:
        for name, entry in s_line["variants"].items():
            assert list(entry)[-1] == "text_key" and next(iter(entry)) == "status"  # added last
            v = v_line["variants"][name]
            assert entry["text_key"] == text_key(v["instruction"] or "", v["input"] or "", v["output"] or "")


@pytest.mark.slow
def test_select_refuses_stale_scores_and_a_rescore_by_content_key_equals_a_fresh_score(
        scored: Path, tmp_path: Path) -> None:
    """recycle --retry-failed into the same folder, simulated: one row's A and QA texts change. select
    does not score behind the user's back: it names the command; score then computes only the change."""
    from reflectune.scoring.run import score
    from reflectune.selection.run import select

    rows = lines(scored / "variants.jsonl")
    changed = rows[1]["id"]
    rows[1]["variants"]["A"]["output"] = "A brand-new, much longer and more careful answer. " * 3
    rows[1]["variants"]["QA"]["output"] = "Another new reflected answer, different from before."
    stale = clone(scored, tmp_path / "stale")
    write_lines(stale / "variants.jsonl", rows)
    fresh = tmp_path / "fresh"
    shutil.copytree(stale, fresh)
    for name in ("scores.jsonl", "store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
        (fresh / name).unlink(missing_ok=True)

    with pytest.raises(DataError, match=r"inputs changed since scoring: score it first \(reflectune score "):
        select(stale, tmp_path / "stale.jsonl", below_one_filter=False)
    assert not (tmp_path / "stale.jsonl").exists()
    again = score(stale, max_length=MAX_LENGTH, dtype=DTYPE)
    computed, cached = again.computed, again.cached
    select(stale, tmp_path / "stale.jsonl", below_one_filter=False, allow_empty=True)
    print(f"rescore after one row changed: computed {computed}, cached {cached}")
    assert (computed, computed + cached) == (6, 56)  # A's and QA's new outputs: 3 losses each
    section = json.loads((stale / "run.json").read_text())["score"]
    assert (section["max_length"], section["dtype"]) == (MAX_LENGTH, DTYPE)

    done = score(fresh, max_length=MAX_LENGTH, dtype=DTYPE)
    assert done.cached == 0
    select(fresh, tmp_path / "fresh.jsonl", below_one_filter=False, allow_empty=True)
    # fp32 numbers agree to ~1e-7 (other batch shapes); texts, keys and the selection exactly
    assert same(lines(stale / "scores.jsonl"), lines(fresh / "scores.jsonl"))
    picked, expected = lines(tmp_path / "stale.jsonl"), lines(tmp_path / "fresh.jsonl")
    assert same(picked, expected)  # (the fake oracle's reflections rarely win: often none kept, hence
    # allow_empty: an empty selection is an error otherwise)
    old = {r["id"]: r for r in lines(scored / "scores.jsonl")}[changed]["variants"]["A"]
    new = {r["id"]: r for r in lines(stale / "scores.jsonl")}[changed]["variants"]["A"]
    assert new["ifd"] != old["ifd"] and new["text_key"] != old["text_key"]


def test_a_score_for_other_text_is_never_written(scored: Path, tmp_path: Path) -> None:
    """Even when run.json's hash is made to agree (a race, a hand edit), the row's text_key refuses it."""
    from reflectune.selection.run import select
    from reflectune.store.inputs import input_hashes

    run = clone(scored, tmp_path / "run")
    scores = lines(run / "scores.jsonl")  # make row 0 land on A and be kept (its text_key untouched)
    for name, (ifd, rifd) in {"ori": (0.5, 0.9), "Q": (0.1, 0.9), "A": (0.5, 0.5)}.items():
        scores[0]["variants"][name].update(ifd=ifd, rifd=rifd)
    write_lines(run / "scores.jsonl", scores)
    first = select(run, tmp_path / "a.jsonl", below_one_filter=False)
    assert first.kept > 0
    assert lines(tmp_path / "a.jsonl")[0]["variant"] == "A"
    rows = lines(run / "variants.jsonl")
    rows[0]["variants"]["A"]["output"] += " (edited)"
    write_lines(run / "variants.jsonl", rows)
    manifest = json.loads((run / "run.json").read_text())
    manifest["score"]["inputs"] = input_hashes(run)
    (run / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"sample '{rows[0]['id']}'.*other text"):
        select(run, tmp_path / "b.jsonl", below_one_filter=False)


def test_a_truncated_variants_file_is_one_line_exit_2(scored: Path, tmp_path: Path) -> None:
    run = clone(scored, tmp_path / "run")
    rows = lines(run / "variants.jsonl")
    write_lines(run / "variants.jsonl", rows[:2])
    result = cli("select", str(run), "-o", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2, result.stderr
    assert "variants.jsonl has 2 samples but recycle wrote 4" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_scores_covering_other_samples_are_refused(scored: Path, tmp_path: Path) -> None:
    from reflectune.selection.run import select

    run = clone(scored, tmp_path / "run")
    scores = lines(run / "scores.jsonl")
    write_lines(run / "scores.jsonl", scores[:3])
    with pytest.raises(DataError, match=r"scores\.jsonl covers 3 samples, variants\.jsonl 4"):
        select(run, tmp_path / "o.jsonl")
    scores[0]["id"], scores[1]["id"] = scores[1]["id"], scores[0]["id"]
    write_lines(run / "scores.jsonl", scores)
    with pytest.raises(DataError, match="differ line 1"):
        select(run, tmp_path / "o.jsonl")


@pytest.mark.parametrize("command", ["score", "select"])
def test_a_non_utf8_byte_is_one_line_exit_2(scored: Path, tmp_path: Path, command: str) -> None:
    """A bad byte in variants.jsonl (score) or scores.jsonl (select): one line naming the file."""
    run = clone(scored, tmp_path / "run")
    name = "variants.jsonl" if command == "score" else "scores.jsonl"
    raw = (run / name).read_bytes()
    (run / name).write_bytes(raw[:40] + b"\xff\xfe" + raw[40:])
    result = cli(command, str(run), *(["--max-length", str(MAX_LENGTH)] if command == "score" else []))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert name in result.stderr
