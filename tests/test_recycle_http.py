"""``reflectune recycle`` end to end against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reflectune.testing.responder import messages_key
from reflectune.testing.server import running_server
from tests.conftest import run_cli

VARIANT_NAMES = {"ori", "Q", "A", "QA"}


def recycle_args(src: Path, out: Path, server, *extra: str) -> list[str]:
    return ["recycle", str(src), "-o", str(out), "--oracle", "openai:test", "--base-url", server.base_url,
            "-q", *extra]


def completed_calls(stats: dict) -> int:
    return sum(stats["by_key"].values())


def test_full_dataset_recycles_every_row_in_alpaca_format(alpaca_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with running_server() as server:
        proc = run_cli(*recycle_args(alpaca_path, out, server, "--run-dir", str(tmp_path / "run"),
                                     "--concurrency", "128"))
        stats = server.stats()
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 3111
    assert set(rows[0]) >= {"instruction", "input", "output", "reflect_status"}
    assert all(r["reflect_status"] == "QA" and r["input"] == "" for r in rows)
    lines = [json.loads(line) for line in (tmp_path / "run" / "variants.jsonl").read_text().splitlines()]
    assert len(lines) == 3111 and all(set(line["variants"]) == VARIANT_NAMES for line in lines)
    assert all(v["status"] == "ok" for line in lines for v in line["variants"].values())
    # 3 reflections per row, plus one oracle input-merge for each of the 579 rows with an input
    assert completed_calls(stats) == 3 * 3111 + 579
    assert max(stats["by_key"].values()) == 1
    assert "kept QA" in proc.stderr and "3,111" in proc.stderr
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["recycle"]
    assert manifest["status"] == "complete" and manifest["chosen"] == {"QA": 3111}


def test_kill_9_then_rerun_repeats_no_completed_call(alpaca_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = json.loads(alpaca_path.read_text())[:300]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with running_server(latency=0.05) as server:
        clean = tmp_path / "clean.jsonl"
        assert run_cli(*recycle_args(src, clean, server, "--run-dir", str(tmp_path / "a"))).returncode == 0
        needed = completed_calls(server.stats())
        server.reset()

        out, run = tmp_path / "out.jsonl", tmp_path / "b"
        cmd = [sys.executable, "-m", "reflectune", *recycle_args(src, out, server, "--run-dir", str(run),
                                                                 "--concurrency", "16")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline and stored < needed // 3:
            time.sleep(0.1)
            if (run / "store.sqlite").exists():
                try:
                    with sqlite3.connect(run / "store.sqlite") as db:
                        stored = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < stored < needed, "the kill must land mid-run"
        assert not out.exists(), "no partial output after a kill"
        committed = stored_server_keys(run / "store.sqlite")

        resumed = run_cli(*recycle_args(src, out, server, "--run-dir", str(run)))
        assert resumed.returncode == 0, resumed.stderr
        stats = server.stats()
    assert out.read_bytes() == clean.read_bytes()
    assert all(stats["by_key"][key] == 1 for key in committed), "a committed call was made again"
    # Only answers still in transit at the kill (sent by the server, not yet committed) can be
    # fetched twice; there are at most as many as calls in flight.
    in_transit = [k for k, n in stats["by_key"].items() if n > 1]
    assert not set(in_transit) & committed and len(in_transit) <= 16
    assert completed_calls(stats) == needed + len(in_transit)


def stored_server_keys(store: Path) -> set[str]:
    """The server's key of every call committed in a store (it hashes the messages)."""
    with sqlite3.connect(store) as db:
        requests = [json.loads(r) for (r,) in db.execute("SELECT request FROM calls WHERE status = 'ok'")]
    return {messages_key(r["messages"])[:16] for r in requests}


def test_api_key_is_sent_but_never_written(alpaca_path: Path, tmp_path: Path) -> None:
    secret = "sk-reflectune-TEST-7f3a9c51e2"
    src = tmp_path / "in.json"
    src.write_text(json.dumps(json.loads(alpaca_path.read_text())[:20]))
    with running_server(require_key=secret) as server:
        ok = run_cli(*recycle_args(src, tmp_path / "out.json", server, "--run-dir", str(tmp_path / "run"),
                                   "--api-key-env", "MY_KEY"), env={"MY_KEY": secret})
        denied = run_cli(*recycle_args(src, tmp_path / "denied.json", server, "--run-dir",
                                       str(tmp_path / "run2"), "--api-key-env", "MY_KEY"),
                         env={"MY_KEY": "sk-wrong"})
    assert ok.returncode == 0, ok.stderr
    assert denied.returncode != 0 or "failed" in denied.stderr
    for text in (ok.stdout, ok.stderr, denied.stdout, denied.stderr):
        assert secret not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"key leaked into {path}"


def test_response_phase_only_and_limit(alpaca_path: Path, tmp_path: Path) -> None:
    with running_server() as server:
        proc = run_cli(*recycle_args(alpaca_path, tmp_path / "out.jsonl", server, "--phases", "response",
                                     "--limit", "25", "--run-dir", str(tmp_path / "run")))
        stats = server.stats()
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 25 and {r["reflect_status"] for r in rows} == {"A"}
    assert completed_calls(stats) == 25
    line = json.loads((tmp_path / "run" / "variants.jsonl").read_text().splitlines()[0])
    assert line["variants"]["Q"]["status"] == "skipped"


def test_parse_failure_gets_one_retry_with_a_reminder(alpaca_path: Path, tmp_path: Path) -> None:
    with running_server(bad_format_ratio=1.0) as server:
        proc = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, "--limit", "10",
                                     "--phases", "response", "--run-dir", str(tmp_path / "run")))
        stats = server.stats()
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "out.json").read_text())
    assert {r["reflect_status"] for r in rows} == {"A"}, "the reminder retry must rescue every row"
    assert completed_calls(stats) == 20


def test_retry_failed_reruns_only_failures(alpaca_path: Path, tmp_path: Path) -> None:
    args_common = ["--limit", "12", "--phases", "response", "--run-dir", str(tmp_path / "run"),
                   "--max-failure-rate", "1"]
    with running_server(faults="400:0.5", fault_attempts=1) as server:
        first = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, *args_common))
        # the one exit rule: calls are still failed, so the run did not do what was asked
        assert first.returncode == 1, first.stderr
        assert "x http_400: HTTP 400" in first.stderr and "--retry-failed" in first.stderr
        rows = json.loads((tmp_path / "out.json").read_text())
        failed = sum(r["reflect_status"] == "ori" for r in rows)
        assert 0 < failed < 12 and all("HTTP 400" in (r["reflect_reason"] or "")
                                       for r in rows if r["reflect_status"] == "ori")
        server.reset()
        again = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, *args_common))
        assert completed_calls(server.stats()) == 0, "failures are not retried without --retry-failed"
        server.reset(faults="")  # the cause is fixed
        retried = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, *args_common,
                                        "--retry-failed"))
        stats = server.stats()
    assert again.returncode == 1 and "final" in again.stderr  # a 400 is deterministic: still failed
    assert retried.returncode == 0, retried.stderr
    assert completed_calls(stats) == failed
    assert {r["reflect_status"] for r in json.loads((tmp_path / "out.json").read_text())} == {"A"}


def test_cost_cap_stops_cleanly_and_resumes(alpaca_path: Path, tmp_path: Path) -> None:
    args = ["--limit", "40", "--phases", "response", "--run-dir", str(tmp_path / "run"),
            "--price-in", "1000", "--price-out", "1000", "--concurrency", "4"]
    with running_server() as server:
        capped = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, *args, "--max-cost", "1"))
        made = completed_calls(server.stats())
        assert not (tmp_path / "out.json").exists(), "a stopped run writes no partial output"
        resumed = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, *args))
        total = completed_calls(server.stats())
    assert capped.returncode == 4 and "cost cap reached" in capped.stderr
    assert "Traceback" not in capped.stderr
    assert 0 < made < 40
    assert resumed.returncode == 0 and total == 40


def test_failure_rate_stops_the_run(alpaca_path: Path, tmp_path: Path) -> None:
    with running_server(faults="400") as server:  # 401 now stops at the first call (test_hostile_server)
        proc = run_cli(*recycle_args(alpaca_path, tmp_path / "out.json", server, "--limit", "200",
                                     "--phases", "response", "--run-dir", str(tmp_path / "run")))
    assert proc.returncode == 4
    assert "failed" in proc.stderr and "rerun to resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_dry_run_estimates_without_calling(alpaca_path: Path, tmp_path: Path) -> None:
    proc = run_cli("recycle", str(alpaca_path), "--oracle", "openai:gpt-4o-mini", "--dry-run",
                   "--limit", "100", env={"OPENAI_API_KEY": "sk-dry"})
    assert proc.returncode == 0, proc.stderr
    assert "oracle calls" in proc.stderr and "cost (USD)" in proc.stderr
    # 100 rows: 3 reflections each + a merge per row with an input
    merges = sum(1 for r in json.loads(alpaca_path.read_text())[:100] if r["input"].strip())
    assert f"{300 + merges:,}" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("content", "needle"), [
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', "row 2"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "field 'output'"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": 7, "output": "d"}\n', "field 'instruction'"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "c\xff", "output": "d"}\n', "row 2"),
])
def test_bad_input_is_one_line_exit_2_and_skippable(tmp_path: Path, content: bytes, needle: str) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    with running_server() as server:
        proc = run_cli(*recycle_args(src, tmp_path / "out.jsonl", server, "--run-dir", str(tmp_path / "r")))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "bad.jsonl" in lines[0] and needle in lines[0], proc.stderr
        assert server.stats()["requests"] == 0, "nothing is paid for before the input is validated"
        skipped = run_cli(*recycle_args(src, tmp_path / "out.jsonl", server, "--run-dir", str(tmp_path / "s"),
                                        "--on-bad-record", "skip"))
    assert skipped.returncode == 0, skipped.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
    rejects = [json.loads(x) for x in (tmp_path / "s" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["row"] == 2 and rejects[0]["reason"]


def test_second_process_on_the_same_run_folder_is_refused(alpaca_path: Path, tmp_path: Path) -> None:
    with running_server(latency=0.2) as server:
        cmd = [sys.executable, "-m", "reflectune",
               *recycle_args(alpaca_path, tmp_path / "a.json", server, "--limit", "40",
                             "--run-dir", str(tmp_path / "run"), "--concurrency", "2")]
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ})
        deadline = time.monotonic() + 30
        while not (tmp_path / "run" / "store.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_cli(*recycle_args(alpaca_path, tmp_path / "b.json", server, "--limit", "40",
                                       "--run-dir", str(tmp_path / "run")))
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 3
    assert "in use by reflectune pid" in second.stderr and "Traceback" not in second.stderr
