"""``recycle --verify``: a judge keeps only the reflected answers it prefers, by the judge's own rules,
with every verdict stored, resumable and reported."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from reflectune.testing.server import running_server
from tests.conftest import run_cli


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "variants.jsonl").read_text().splitlines()]


def test_verified_acceptance_keeps_what_the_judge_prefers_and_reruns_free(alpaca_path: Path,
                                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["recycle", str(alpaca_path), "--oracle", "openai:test", "--limit", "30", "--run-dir", str(run),
            "-q", "--verify", "openai:judge"]
    with running_server() as server:
        where = ["--base-url", server.base_url, "--verify-base-url", server.base_url]
        first = run_cli(*args, *where)
        calls = sum(server.stats()["by_key"].values())
        lines = _lines(run)
        again = run_cli(*args, *where)
        assert sum(server.stats()["by_key"].values()) == calls, "a rerun asked the oracle or the judge again"
        assert _lines(run) == lines
        lenient = run_cli(*args, *where, "--verify-accept", "win-or-tie")
        assert sum(server.stats()["by_key"].values()) == calls, "changing the acceptance rule made a call"
    assert first.returncode == 0 and again.returncode == 0 and lenient.returncode == 0, first.stderr
    verdicts: Counter[str] = Counter()
    for line in lines:
        for name in ("A", "QA"):
            v = line["variants"][name]
            verdict = v["verdict"]
            assert len(verdict["scores"]) == 2, "both orders are judged"
            verdicts[verdict["outcome"]] += 1
            assert (v["status"] == "ok") == (verdict["outcome"] == "win"), v
            if v["status"] == "rejected":
                assert v["gate"] == "verify" and verdict["outcome"] in v["reason"]
        assert "verdict" not in line["variants"]["Q"], "Q's instruction is new: it has nothing to meet"
        expected = "QA" if line["variants"]["QA"]["status"] == "ok" else "Q"
        assert line["status"] == expected
    assert sum(verdicts.values()) == 60 and set(verdicts) >= {"win", "lose"}
    manifest = json.loads((run / "run.json").read_text())["recycle"]
    assert manifest["verify"]["verdicts"] == dict(sorted(verdicts.items()))
    assert manifest["verify"]["judge"]["sent"] == 0 and manifest["verify"]["judge"]["cached"] == 120
    assert "judge verdicts: win" in first.stderr  # -q hides the live display, not the summary
    # win-or-tie keeps the ties too: more QA, re-decided from the store.
    relaxed = _lines(run)
    kept = sum(x["variants"]["QA"]["status"] == "ok" for x in relaxed)
    assert kept == sum(x["variants"]["QA"]["verdict"]["outcome"] in ("win", "tie") for x in relaxed)
    assert kept > sum(x["variants"]["QA"]["status"] == "ok" for x in lines)


def test_a_judge_that_cannot_be_reached_stops_the_run_in_one_line(alpaca_path: Path, tmp_path: Path) -> None:
    with running_server() as server:
        proc = run_cli("recycle", str(alpaca_path), "--oracle", "openai:test", "--limit", "3", "-q",
                       "--run-dir", str(tmp_path / "run"), "--base-url", server.base_url,
                       "--verify", "openai:judge", "--verify-base-url", "http://127.0.0.1:9/v1")
    assert proc.returncode not in (0, 1) and "Traceback" not in proc.stderr
    assert "connection refused" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
