"""A signal stops spending: no call starts after it, calls on the wire finish and are kept, and a rerun
resumes. SIGINT (Ctrl-C), SIGTERM (docker stop, Kubernetes, systemd, timeout) and SIGHUP alike."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reflectune.testing.server import running_server

ROWS = 400
CONCURRENCY = 64


def _start(src: Path, out: Path, run: Path, base_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "reflectune", "recycle", str(src), "-o", str(out), "--oracle",
            "openai:test", "--base-url", base_url, "--phases", "response", "--concurrency", str(CONCURRENCY),
            "--run-dir", str(run), "-q", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_requests(server, at_least: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while server.stats()["requests"] < at_least:
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.02)


@pytest.fixture
def source(alpaca_path: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in.jsonl"
    rows = json.loads(alpaca_path.read_text())[:ROWS]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_starts_no_new_call_and_keeps_the_calls_on_the_wire(source: Path, tmp_path: Path,
                                                                      signum: int) -> None:
    out, run = tmp_path / "out.jsonl", tmp_path / "run"
    with running_server(latency=1.0) as server:
        proc = _start(source, out, run, server.base_url)
        _wait_for_requests(server, CONCURRENCY + 10)  # past the pre-flight call, fanned out
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        at_exit = server.stats()
    assert proc.returncode == 128 + signum, err
    # the client says how many requests it had sent when the signal arrived; the server saw no more
    found = re.search(r"after (\d+) requests: stopping; (\d+) calls on the wire", err)
    assert found, err
    at_signal, on_wire = int(found[1]), int(found[2])
    assert 0 < on_wire <= CONCURRENCY
    started_after = at_exit["requests"] - at_signal
    assert started_after == 0, f"{started_after} calls started after the signal"
    manifest = json.loads((run / "run.json").read_text())["recycle"]
    assert manifest["status"] == "interrupted" and "interrupted by" in manifest["stop_reason"]
    assert "Rerun the same command to resume" in err and "Traceback" not in err
    # the answers that came back within the grace period are in the store
    with sqlite3.connect(run / "store.sqlite") as db:
        stored = db.execute("SELECT COUNT(*) FROM calls WHERE status = 'ok'").fetchone()[0]
    assert stored == at_signal, "an answer on the wire at the signal was not kept"
    assert not out.exists() and not [p for p in tmp_path.rglob("*.tmp*")], "a temp file was left"


def test_after_an_interrupt_a_rerun_finishes_without_paying_twice(source: Path, tmp_path: Path) -> None:
    out, run = tmp_path / "out.jsonl", tmp_path / "run"
    with running_server(latency=0.5) as server:
        proc = _start(source, out, run, server.base_url)
        _wait_for_requests(server, CONCURRENCY + 10)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        paid = server.stats()["requests"]
        again = _start(source, out, run, server.base_url)
        _, err = again.communicate(timeout=120)
        total = server.stats()["requests"]
    assert again.returncode == 0, err
    assert total == ROWS, f"{total - ROWS} calls were paid twice ({paid} before the interrupt)"
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == ROWS and {r["reflect_status"] for r in rows} == {"A"}


def test_a_second_signal_aborts_at_once(source: Path, tmp_path: Path) -> None:
    out, run = tmp_path / "out.jsonl", tmp_path / "run"
    with running_server(latency=20.0) as server:  # answers would take far longer than the test
        proc = _start(source, out, run, server.base_url)
        _wait_for_requests(server, 1)  # the pre-flight call, on the wire for 20 s
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    assert proc.returncode == 128 + signal.SIGINT, err
    assert took < 10, f"the second signal took {took:.1f} s to abort"
    manifest = json.loads((run / "run.json").read_text())["recycle"]
    assert manifest["status"] == "interrupted" and "aborted" in manifest["stop_reason"]
    assert not [p for p in tmp_path.rglob("*.tmp*")], "a temp file was left"
