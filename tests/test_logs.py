"""Logging: every run folder keeps ``log.txt`` (calls, retries with reasons, stops), ``-v``/``-vv`` show
it on stderr, and no key ever reaches it. Real CLI runs against the loopback server."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from reflectune import logs
from reflectune.testing.server import running_server
from tests.conftest import ALPACA, run_cli

SECRET = "sk-reflectune-LOG-SECRET-77c1a9"


def _rows(path: Path, n: int) -> Path:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_run_log_holds_calls_retries_and_stages_and_never_the_key(tmp_path: Path) -> None:
    src, run = _rows(tmp_path / "in.jsonl", 6), tmp_path / "run"
    with running_server(require_key=SECRET, faults="500:0.5", fault_attempts=1, seed=7) as server:
        args = ["recycle", str(src), "--oracle", "openai:test", "--base-url", server.base_url, "--run-dir",
                str(run), "--phases", "response", "--api-key-env", "MY_KEY", "-q", "--no-html"]
        first = run_cli("-v", *args, env={"MY_KEY": SECRET})
        served = server.stats()
        again = run_cli(*args, env={"MY_KEY": SECRET})
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    text = (run / "log.txt").read_text(encoding="utf-8")
    assert SECRET not in text and SECRET not in first.stderr
    lines = text.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \d+ (DEBUG|INFO|WARNING|ERROR) ", line)
               for line in lines), lines[:3]
    assert sum(" opened " in line for line in lines) == 2  # appended: both runs are in it
    assert any("recycle: oracle {" in line and '"api_key_env":"MY_KEY"' in line for line in lines)
    calls = [line for line in lines if "reflectune.calls:" in line]
    retries = [line for line in lines if "retrying in" in line]
    assert len(calls) == served["completed"] > 0  # the rerun answered all from the store
    assert all(" ok sample=" in line for line in calls), calls[:2]
    assert retries and all("http_500" in line for line in retries)
    assert len(retries) == sum(served["faults"].values())
    assert sum("recycle complete" in line for line in lines) == 2
    # -v shows retries on stderr; the per-call lines are for the file and -vv
    assert "retrying in" in first.stderr and "reflectune.calls" not in first.stderr
    assert "INFO" not in again.stderr  # no -v: the log stays off the terminal


def test_vv_shows_every_call_on_stderr(tmp_path: Path) -> None:
    src, run = _rows(tmp_path / "in.jsonl", 2), tmp_path / "run"
    with running_server() as server:
        done = run_cli("-vv", "recycle", str(src), "--oracle", "openai:test", "--base-url", server.base_url,
                       "--run-dir", str(run), "--phases", "response", "-q", "--no-html")
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stderr.splitlines() if "reflectune.calls:" in line]
    kept = [line for line in (run / "log.txt").read_text().splitlines() if "reflectune.calls:" in line]
    assert len(shown) == len(kept) == 2


def test_registered_secrets_are_masked_and_the_library_level_is_restored(tmp_path: Path) -> None:
    root = logging.getLogger("reflectune")
    before = root.level
    logs.secret("hdr-value-0123456789")
    with logs.run_log(tmp_path):
        assert root.getEffectiveLevel() <= logging.INFO
        logs.get_logger("tests").warning("sent header %s", "hdr-value-0123456789")
        with logs.run_log(tmp_path):  # nested: one handler, one file
            logs.get_logger("tests").info("inner")
    assert root.level == before and not any(isinstance(h, logging.FileHandler) for h in root.handlers)
    text = (tmp_path / "log.txt").read_text()
    assert "hdr-value-0123456789" not in text and "sent header ***" in text
    assert text.count("inner") == 1
