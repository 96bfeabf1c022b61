"""One exit rule for every command: 0 only when the job did what was asked.

A run whose endpoint cannot answer stops at its first call (one request, not a concurrency's
worth); a run with calls still failed at its end, or that produced nothing, exits 1 and says what
failed, why, and the command that retries it; a fixed cause plus a plain rerun finishes the job.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from reflectune.testing.server import running_server
from tests.conftest import run_cli

ROWS = 8


@pytest.fixture
def source(alpaca_path: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(json.loads(alpaca_path.read_text())[:ROWS]))
    return src


def _recycle(src: Path, tmp_path: Path, base_url: str, *extra: str, run: str = "run"):
    return run_cli("recycle", str(src), "-o", str(tmp_path / f"{run}.json"), "--oracle", "openai:test",
                   "--base-url", base_url, "--phases", "response", "--run-dir", str(tmp_path / run),
                   "--max-attempts", "2", "-q", *extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("fault", "kind"), [("auth", "401"), ("not_found", "404")])
def test_an_endpoint_that_cannot_answer_stops_at_the_first_call(source: Path, tmp_path: Path, fault: str,
                                                                 kind: str) -> None:
    with running_server(faults=fault) as server:
        proc = _recycle(source, tmp_path, server.base_url, "--concurrency", "64")
        requests = server.stats()["requests"]
    assert proc.returncode == 4, proc.stderr
    assert requests == 1, f"{requests} requests were sent to an endpoint that answered {kind}"
    assert f"HTTP {kind}" in proc.stderr and "rerun to resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_base_url_without_v1_is_a_404_that_stops_at_once(source: Path, tmp_path: Path) -> None:
    with running_server() as server:
        proc = _recycle(source, tmp_path, server.base_url.removesuffix("/v1"))
        requests = server.stats()["requests"]
    assert proc.returncode == 4, proc.stderr
    assert requests <= 1 and "404" in proc.stderr


def test_nothing_listening_stops_then_a_plain_rerun_with_the_server_up_finishes(source: Path,
                                                                               tmp_path: Path) -> None:
    port = _free_port()
    down = _recycle(source, tmp_path, f"http://127.0.0.1:{port}/v1")
    assert down.returncode == 4, down.stderr
    assert "connect" in down.stderr.lower() and "rerun to resume" in down.stderr
    with running_server(port=port) as server:
        up = _recycle(source, tmp_path, server.base_url)
    assert up.returncode == 0, up.stderr
    rows = json.loads((tmp_path / "run.json").read_text())
    assert [r["reflect_status"] for r in rows] == ["A"] * ROWS, "a connection failure must not be final"


def test_not_a_url_is_a_config_error_before_any_call(source: Path, tmp_path: Path) -> None:
    proc = _recycle(source, tmp_path, "notaurl")
    assert proc.returncode == 2, proc.stderr
    assert "notaurl" in proc.stderr and "Traceback" not in proc.stderr


def test_calls_still_failed_at_the_end_exit_1_with_the_reasons_and_the_retry(source: Path,
                                                                           tmp_path: Path) -> None:
    with running_server(faults="500", fault_attempts=100) as server:
        proc = _recycle(source, tmp_path, server.base_url, "--max-failure-rate", "1")
        requests = server.stats()["requests"]
    assert proc.returncode == 1, proc.stderr
    assert requests == 2 * ROWS  # two attempts each, nothing more
    assert f"{ROWS} call(s) failed" in proc.stderr and "http_500" in proc.stderr
    assert "rerun (the failed calls are asked again): reflectune recycle" in proc.stderr
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["recycle"]
    assert manifest["outcome"]["failed_calls"] == ROWS


def test_all_parse_failures_produce_nothing_and_exit_1(source: Path, tmp_path: Path) -> None:
    with running_server(faults="empty", fault_attempts=100) as server:  # every answer empty, reminder too
        proc = _recycle(source, tmp_path, server.base_url)
    assert proc.returncode == 1, proc.stderr
    assert "nothing was produced" in proc.stderr


def test_a_zero_row_input_is_a_data_error(tmp_path: Path) -> None:
    src = tmp_path / "empty.json"
    src.write_text("[]")
    with running_server() as server:
        proc = _recycle(src, tmp_path, server.base_url)
    assert proc.returncode == 2 and "no rows" in proc.stderr


def test_judge_that_judged_nothing_exits_1(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi.", "dataset": "t", "id": "1"}) + "\n")
    b.write_text(json.dumps({"instruction": "Say hi.", "output": "Hello!", "dataset": "t", "id": "1"}) + "\n")
    with running_server(faults="400") as server:
        proc = run_cli("judge", str(a), str(b), "--judge", "openai:judge", "--base-url",
                       server.base_url, "--run-dir", str(tmp_path / "j"), "--no-chart", "-q")
    assert proc.returncode == 1, proc.stderr
    assert "call(s) failed" in proc.stderr and "nothing was produced" in proc.stderr


def test_two_inputs_with_one_name_get_two_default_run_folders(tmp_path: Path) -> None:
    from reflectune.store.rundir import default_run_dir

    a, b = tmp_path / "a" / "train.json", tmp_path / "b" / "train.json"
    folders = {default_run_dir(p, "openai:m", identity=str(p.resolve())) for p in (a, b)}
    assert len(folders) == 2 and all(f.name.startswith("train-") for f in folders)
    assert default_run_dir(a, "openai:m", identity=str(a)) == default_run_dir(a, "openai:m", identity=str(a))


def test_a_run_folder_is_refused_for_another_input(source: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(source.read_text())
    first = run_cli("recycle", str(source), "--oracle", "fake", "--run-dir", str(tmp_path / "r"), "-q")
    assert first.returncode == 0, first.stderr
    second = run_cli("recycle", str(other), "--oracle", "fake", "--run-dir", str(tmp_path / "r"), "-q")
    assert second.returncode == 2, second.stderr
    assert "is the run folder of" in second.stderr and str(source.resolve()) in second.stderr


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(source: Path, tmp_path: Path) -> None:
    before = source.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(source)
    for out in (source, link):
        proc = run_cli("recycle", str(source), "-o", str(out), "--oracle", "fake", "--run-dir",
                       str(tmp_path / "r"), "-q")
        assert proc.returncode == 2 and "is the input" in proc.stderr, proc.stderr
    assert source.read_bytes() == before


@pytest.mark.parametrize("mode", ["usage_strings", "usage_list", "usage_missing", "usage_negative",
                                  "content_parts", "content_int", "bad_utf8", "html_200", "huge"])
def test_no_response_shape_crashes_a_run_or_is_paid_twice(source: Path, tmp_path: Path, mode: str) -> None:
    """Every odd 200 is an answer or a recorded failure; a rerun asks the server nothing new for it."""
    with running_server(faults=mode, fault_attempts=100, huge_mb=3) as server:
        first = _recycle(source, tmp_path, server.base_url, "--max-attempts", "1")
        sent = server.stats()["requests"]
        again = _recycle(source, tmp_path, server.base_url, "--max-attempts", "1")
        resent = server.stats()["requests"] - sent
    for proc in (first, again):
        assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr
    assert sent == ROWS and resent == 0, f"{resent} paid calls were made again on the rerun"


def test_a_prompt_over_a_known_context_fails_before_it_is_sent(source: Path, tmp_path: Path) -> None:
    with running_server() as server:
        proc = _recycle(source, tmp_path, server.base_url, "--context", "64")
        requests = server.stats()["requests"]
    assert requests == 0, "a prompt longer than the window was sent"
    assert proc.returncode == 1 and "over_context" in proc.stderr and "not sent" in proc.stderr
    assert "--retry-failed" in proc.stderr  # final: the same prompt cannot fit next time either


def test_without_a_known_context_nothing_is_refused_on_a_guess(source: Path, tmp_path: Path) -> None:
    long_rows = [{"instruction": "Summarise. " + "word " * 9000, "input": "", "output": "ok"}]
    src = tmp_path / "long.json"
    src.write_text(json.dumps(long_rows))
    with running_server() as server:
        proc = _recycle(src, tmp_path, server.base_url)  # 9,000 words > the 8,192 default guess
        requests = server.stats()["requests"]
    assert requests >= 1 and "over_context" not in proc.stderr, proc.stderr  # sent: the server decides
