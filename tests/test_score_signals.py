"""``score`` killed or signalled mid-run (issue: ``scores.jsonl.tmp<pid>`` left after kill -9, run.json
"running" after SIGTERM). A rerun sweeps what a killed score left, even when the dead writer's pid still
looks alive; SIGTERM/SIGINT stop after the batch being computed (it is kept), run.json says
``interrupted`` and the command exits 128 + the signal's number with one line and no traceback.

One small real run folder: the fake oracle recycles 3 short demo rows, the embedded student scores
them in float32 (batch-invariant, so a resumed run gives an uninterrupted run's very numbers). The
interrupted child is the real CLI with each batch slowed by a sleep, so a signal lands mid-score."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "src/reflectune/data/demo_alpaca20.json"
ARGS = ("--max-length", "128", "--batch-tokens", "256", "--dtype", "float32", "-q")
#: the CLI with every batch slowed, and SIGINT handled as in a terminal even if the test runner's
#: parent ignores it (a background job)
SLOW_CLI = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "import reflectune.scoring.scorer as scorer\n"
            "real = scorer.batch_losses\n"
            "def slow(*a, **k):\n"
            "    time.sleep(0.3)\n"
            "    return real(*a, **k)\n"
            "scorer.batch_losses = slow\n"
            "from reflectune.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          timeout=600)


def start_slow(run: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, "score", str(run), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored(run: Path) -> int:
    """Losses committed to the run's store so far (read while the scorer writes: WAL)."""
    if not (run / "store.sqlite").exists():
        return 0
    db = sqlite3.connect(run / "store.sqlite", timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM results WHERE namespace LIKE 'ifd:%'").fetchone()[0])
    except sqlite3.OperationalError:  # no results table yet
        return 0
    finally:
        db.close()


def wait_for_rows(run: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while stored(run) == 0:
        assert proc.poll() is None, f"score ended before its first batch: {proc.communicate()}"
        assert time.monotonic() < deadline, "score never committed a batch"
        time.sleep(0.05)


def temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp" in p.name)


def section(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))["score"]


def scores(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "scores.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def recycled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recycle run folder, not scored yet."""
    base = tmp_path_factory.mktemp("score_signals")
    data = base / "demo3.json"
    rows = json.loads(DEMO.read_text(encoding="utf-8"))
    data.write_text(json.dumps([rows[3], rows[5], rows[6]]), encoding="utf-8")
    run = base / "recycled"
    result = cli("recycle", str(data), "--oracle", "fake", "--run-dir", str(run), "-q")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def reference(recycled: Path) -> tuple[list[dict[str, Any]], int]:
    """An uninterrupted score's lines and its number of computations."""
    run = recycled.parent / "reference"
    shutil.copytree(recycled, run)
    result = cli("score", str(run), *ARGS)
    assert result.returncode == 0, result.stderr
    return scores(run), section(run)["computed"]


def test_a_rerun_after_kill_9_sweeps_the_killed_temporaries_and_recomputes_nothing_committed(
        recycled: Path, reference: tuple[list[dict[str, Any]], int], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(recycled, run)
    proc = start_slow(run)
    try:
        wait_for_rows(run, proc)
        proc.send_signal(signal.SIGKILL)
        # not reaped yet: a zombie's pid still answers kill(pid, 0), as a reused pid would
        deadline = time.monotonic() + 30
        while f".scores.jsonl.tmp{proc.pid}" not in " ".join(temporaries(run)) or stored(run) == 0:
            assert time.monotonic() < deadline, temporaries(run)
            time.sleep(0.05)
        time.sleep(0.5)  # the kill has landed: the store no longer grows
        committed = stored(run)
        assert not (run / "scores.jsonl").exists(), "score finished before the kill: give it more work"
        assert any(name.startswith(f".scores.jsonl.tmp{proc.pid}-") for name in temporaries(run))
        # and one left by a "killed" writer whose pid is now a live process's (ours)
        (run / f".scores.jsonl.tmp{os.getpid()}-0").write_text("{}\n", encoding="utf-8")

        again = cli("score", str(run), *ARGS)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert again.returncode == 0, again.stderr
    assert temporaries(run) == []
    lines, total = reference
    assert scores(run) == lines
    done = section(run)
    print(f"kill -9 after {committed} committed; rerun computed {done['computed']}, cached {done['cached']}"
          f" (uninterrupted: {total})")
    assert done["status"] == "done" and done["cached"] == committed > 0
    assert done["computed"] == total - committed > 0


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_batch_and_run_json_says_interrupted(
        recycled: Path, reference: tuple[list[dict[str, Any]], int], tmp_path: Path,
        signum: int, code: int) -> None:
    run = tmp_path / "run"
    shutil.copytree(recycled, run)
    proc = start_slow(run)
    try:
        wait_for_rows(run, proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {name} after ") and last.endswith(
        "rerun the same command to resume"), err
    done = section(run)
    assert done["status"] == "interrupted" and done["stop_reason"] == last
    committed = stored(run)
    assert done["computed"] == committed > 0 and done["batches"] >= 1  # the batch on the go was kept
    assert temporaries(run) == [] and not (run / "scores.jsonl").exists()
    if signum != signal.SIGTERM:
        return
    again = cli("score", str(run), *ARGS)
    assert again.returncode == 0, again.stderr
    lines, total = reference
    finished = section(run)
    print(f"{name}: exit {proc.returncode} after {committed} committed; rerun computed "
          f"{finished['computed']}, cached {finished['cached']} (uninterrupted: {total})")
    assert finished["status"] == "done" and "stop_reason" not in finished
    assert finished["cached"] == committed > 0 and finished["computed"] == total - committed
    assert scores(run) == lines


def test_the_first_signal_waits_for_a_commit_point_a_second_aborts_and_ignored_stays_ignored() -> None:
    """In process, no model: what the handlers do, and that they are put back."""
    from reflectune.errors import Interrupted
    from reflectune.scoring.run import _StopOnSignal
    from reflectune.scoring.scorer import ScorerStats

    before = signal.getsignal(signal.SIGTERM)
    hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with _StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            stop.stats = ScorerStats(batches=2, computed=5, cached=1)
            stop.check()  # no signal yet
            os.kill(os.getpid(), signal.SIGTERM)  # the first: noted, nothing raised
            expected = (r"^interrupted by SIGTERM after 2 batches \(5 computations committed, 1 from the "
                        r"store\); rerun the same command to resume$")
            with pytest.raises(Interrupted, match=expected) as stopped:
                stop.check()
            assert stopped.value.exit_code == 143
            os.kill(os.getpid(), signal.SIGTERM)  # after the stop: ignored while run.json is written
        assert signal.getsignal(signal.SIGTERM) == before
        with pytest.raises(Interrupted, match="a second SIGINT aborted") as aborted, _StopOnSignal():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode
        assert aborted.value.exit_code == 130
    finally:
        signal.signal(signal.SIGHUP, hup)
