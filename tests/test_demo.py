"""The README's first command, ``reflectune demo``, on 3 rows with the real embedded model and the
network blocked at the socket; killed with -9 mid-run, then rerun: no completed call is made again."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Runs the CLI with every outbound connection and name lookup refused, as on an offline laptop.
GUARDED = """
import socket, sys
def refuse(*args, **kwargs):
    sys.stderr.write("NETWORK ATTEMPTED %r\\n" % (args[1:] if len(args) > 1 else args,))
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
from reflectune.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Gates off: on 3 rows at these budgets a 135M oracle may pass none, and this test is about resuming.
DEMO_ARGS = ["demo", "--rows", "3", "--max-tokens", "48", "--critique-tokens", "12", "--batch-size", "4",
             "--gates", "none"]


def demo(run_dir: Path) -> list[str]:
    return [sys.executable, "-c", GUARDED, *DEMO_ARGS, "--run-dir", str(run_dir)]


def ok_calls(store: Path) -> int:
    try:
        with sqlite3.connect(store) as db:
            return db.execute("SELECT COUNT(*) FROM calls WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked mid-write
        return 0


def test_demo_offline_killed_then_rerun_repeats_no_completed_call(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = run / "store.sqlite"
    proc = subprocess.Popen(demo(run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and ok_calls(store) == 0 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, first_err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the kill must land mid-run:\n{first_err}"
    committed = ok_calls(store)
    assert committed > 0, first_err

    done = subprocess.run(demo(run), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "NETWORK ATTEMPTED" not in first_err + done.stderr
    section = json.loads((run / "run.json").read_text())["recycle"]
    engine, in_store = section["engine"], ok_calls(store)
    assert section["status"] == "complete"
    # every call committed before the kill came from the store; only the rest went to the model
    assert engine["cached"] == committed, engine
    assert engine["sent"] == in_store - committed and engine["sent"] > 0, engine
    lines = [json.loads(x) for x in (run / "variants.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(set(line["variants"]) >= {"ori", "Q", "A", "QA"} for line in lines)
    assert "before / after" in done.stderr and str(run) in done.stderr.replace("\n", "")
