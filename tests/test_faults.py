"""Fault injection: every failure an OpenAI-compatible server can throw at a recycle run.

Each test runs a small recycle (``--phases response``, one call per row) through the Python API
against the loopback server with one fault mode switched on, and checks the outcome row by row:
every row is in the output and in ``variants.jsonl``, transient faults are retried until every row
is reflected, non-retryable outcomes are recorded with their reason, nothing crashes. One server
serves the whole module (``reset`` between tests) and backoff is shortened, so the module runs in
seconds. Timings are checked only as loose lower bounds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reflectune.config import EngineConfig, OracleConfig, RecycleConfig
from reflectune.engine.runner import Engine
from reflectune.oracles.openai_http import OpenAIOracle
from reflectune.recycling.run import recycle
from reflectune.store.calls import Store
from reflectune.testing.server import MIX_MODES, running_server
from reflectune.types import ChatRequest, Message
from tests.conftest import ALPACA

ROWS = 12


@pytest.fixture(scope="module")
def server():
    with running_server() as handle:
        yield handle


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:20]
    path = tmp_path_factory.mktemp("faults") / "in.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@dataclass
class Outcome:
    summary: Any
    rows: list[dict[str, Any]]          # the recycled output
    variants: list[dict[str, Any]]      # variants.jsonl
    calls: list[dict[str, Any]]         # the store's calls table
    server: dict[str, Any]              # the server's /stats after the run
    elapsed: float


def run_recycle(server, source, tmp_path: Path, *, faults: str = "", fault_attempts: int = 1,
                rows: int = ROWS, timeout: float = 30.0, name: str = "run", **engine: Any) -> Outcome:
    """Recycle the first ``rows`` rows with ``faults`` on; gather everything a test checks."""
    server.reset(faults=faults, fault_attempts=fault_attempts)
    src, _ = source
    limits = {"backoff_base": 0.01, "backoff_max": 5.0, "concurrency": ROWS, "max_failure_rate": 1.0}
    config = RecycleConfig(
        oracle=OracleConfig(spec="openai:test", base_url=server.base_url, timeout=timeout),
        engine=EngineConfig(**(limits | engine)), phases=("response",), limit=rows)
    started = time.monotonic()
    summary = recycle(src, tmp_path / f"{name}.jsonl", config=config, run_dir=tmp_path / name)
    elapsed = time.monotonic() - started
    out = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    variants = [json.loads(x) for x in (tmp_path / name / "variants.jsonl").read_text().splitlines()]
    with sqlite3.connect(tmp_path / name / "store.sqlite") as db:
        db.row_factory = sqlite3.Row
        calls = [dict(r) for r in db.execute("SELECT * FROM calls")]
    return Outcome(summary, out, variants, calls, server.stats(), elapsed)


def assert_all_rows_accounted_for(outcome: Outcome, source, rows: int = ROWS) -> None:
    _, original = source
    assert [r["instruction"] for r in outcome.rows] == [r["instruction"] for r in original[:rows]]
    assert [v["row"] for v in outcome.variants] == list(range(1, rows + 1))
    assert [v["status"] for v in outcome.variants] == [r["reflect_status"] for r in outcome.rows]
    assert outcome.summary.rows == rows


RETRYABLE = ["429", "429_noretry", "500", "502", "503", "timeout", "reset", "malformed"]


@pytest.mark.parametrize("mode", RETRYABLE)
def test_transient_fault_is_retried_until_every_row_is_reflected(server, source, tmp_path, mode):
    # every request fails once with `mode`, then gets through
    timeout = 1.0 if mode == "timeout" else 30.0
    outcome = run_recycle(server, source, tmp_path, faults=mode, timeout=timeout)
    assert_all_rows_accounted_for(outcome, source)
    assert {r["reflect_status"] for r in outcome.rows} == {"A"}
    assert all(r["reflect_reason"] is None for r in outcome.rows)
    assert outcome.server["faults"] == {mode: ROWS}
    # one retry per row at least (a slow loaded machine may add a timeout retry, never fewer)
    assert outcome.summary.stats["retries"] >= ROWS
    assert outcome.summary.stats["failed"] == 0
    assert all(c["status"] == "ok" and c["attempts"] >= 2 for c in outcome.calls)
    assert len(outcome.calls) == ROWS
    # each usable answer was delivered once: the retry is not a repeat of a paid answer (with a 1 s
    # client timeout a loaded machine may give up on a delivered answer: then only count the keys)
    delivered = outcome.server["by_key"]
    assert len(delivered) == ROWS and (mode == "timeout" or set(delivered.values()) == {1})
    if mode == "429":  # the server asks for Retry-After: 1
        assert outcome.elapsed >= 1.0, "Retry-After was not honoured"


async def test_retry_after_header_sets_the_backoff(server, tmp_path):
    """The wait after a 429 is the server's Retry-After (1 s), not the short exponential backoff."""
    waits: list[float] = []

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    request = ChatRequest((Message("user", "Say hi."),), max_tokens=64)
    config = EngineConfig(backoff_base=0.01, backoff_max=60.0)
    for mode in ("429", "429_noretry"):
        server.reset(faults=mode, fault_attempts=1)
        waits.clear()
        with Store(tmp_path / f"{mode}.sqlite") as store:
            async with Engine(OpenAIOracle("test", base_url=server.base_url), store, config,
                              sleep=record_sleep) as engine:
                record = await engine.call("probe", request)
        assert record.ok and record.attempts == 2
        assert len(waits) == 1
        if mode == "429":
            assert 1.0 <= waits[0] <= 1.1
        else:
            assert waits[0] <= 0.01


def test_exhausted_retries_are_recorded_not_raised(server, source, tmp_path):
    outcome = run_recycle(server, source, tmp_path, faults="503", fault_attempts=100, max_attempts=3)
    assert_all_rows_accounted_for(outcome, source)
    assert {r["reflect_status"] for r in outcome.rows} == {"ori"}
    assert all("HTTP 503" in r["reflect_reason"] and "gave up after 3 attempts" in r["reflect_reason"]
               for r in outcome.rows)
    assert outcome.server["requests"] == 3 * ROWS
    assert all((c["status"], c["attempts"], c["error_kind"]) == ("failed", 3, "http_503")
               for c in outcome.calls)
    assert outcome.summary.stats["failures_by_kind"] == {"http_503": ROWS}
    # a 503 says nothing about the request: once the server is back, a plain rerun asks those calls
    # again (no flag needed) and every row is reflected; only deterministic failures stay final
    again = run_recycle(server, source, tmp_path, faults="", max_attempts=3)
    assert again.server["requests"] == ROWS
    assert {r["reflect_status"] for r in again.rows} == {"A"}
    assert again.summary.outcome.ok and again.summary.outcome.failed_calls == 0


# a 401 is fatal (OracleFatal): the run stops at the first one, so it is not a per-row failure here;
# tests/test_hostile_server.py::test_engine_records_every_hostile_outcome[auth-...] checks its record
@pytest.mark.parametrize("mode", ["400"])
def test_client_error_is_never_retried(server, source, tmp_path, mode):
    outcome = run_recycle(server, source, tmp_path, faults=mode)
    assert_all_rows_accounted_for(outcome, source)
    assert outcome.server["requests"] == ROWS, "a 4xx must not be retried"
    assert outcome.summary.stats["retries"] == 0
    assert all(r["reflect_status"] == "ori" and f"HTTP {mode}" in r["reflect_reason"] for r in outcome.rows)
    assert all((c["status"], c["attempts"], c["error_kind"]) == ("failed", 1, f"http_{mode}")
               for c in outcome.calls)


@pytest.mark.parametrize(("mode", "reason"), [("empty", "empty output"),
                                              ("length", "generation cut off (finish_reason=length)")],
                         ids=["empty", "length"])
def test_unusable_answer_gets_one_reminder_then_is_recorded(server, source, tmp_path, mode, reason):
    """A completed call whose answer cannot be parsed is paid for and kept; the row gets one retry
    with a format reminder (a different prompt, so a new call), then keeps its original."""
    outcome = run_recycle(server, source, tmp_path, faults=mode)
    assert_all_rows_accounted_for(outcome, source)
    assert all(r["reflect_status"] == "ori" and r["reflect_reason"] == f"A parse_failed: {reason}"
               for r in outcome.rows)
    assert all(len(v["variants"]["A"]["calls"]) == 2 for v in outcome.variants)
    assert outcome.server["completed"] == 2 * ROWS and outcome.server["faults"] == {mode: 2 * ROWS}
    # both answers are committed as completed calls (status ok): never paid for twice
    assert len(outcome.calls) == 2 * ROWS and all(c["status"] == "ok" for c in outcome.calls)
    assert outcome.summary.stats["retries"] == 0
    before = (tmp_path / "run.jsonl").read_bytes()
    again = run_recycle(server, source, tmp_path, faults="")
    assert again.server["requests"] == 0
    assert (tmp_path / "run.jsonl").read_bytes() == before


def test_reminder_rescues_some_unusable_answers(server, source, tmp_path):
    outcome = run_recycle(server, source, tmp_path, faults="empty:0.5", rows=20)
    assert_all_rows_accounted_for(outcome, source, rows=20)
    statuses = [r["reflect_status"] for r in outcome.rows]
    assert set(statuses) <= {"A", "ori"}
    rescued = [v for v in outcome.variants if v["status"] == "A" and len(v["variants"]["A"]["calls"]) == 2]
    assert rescued, "with 50 % empty answers, some rows need and get the reminder"
    for row, line in zip(outcome.rows, outcome.variants, strict=True):
        if row["reflect_status"] == "ori":
            assert row["reflect_reason"] == "A parse_failed: empty output"
            assert len(line["variants"]["A"]["calls"]) == 2


def test_trickled_response_completes_without_retry(server, source, tmp_path):
    outcome = run_recycle(server, source, tmp_path, faults="trickle")
    assert_all_rows_accounted_for(outcome, source)
    assert {r["reflect_status"] for r in outcome.rows} == {"A"}
    assert outcome.server["faults"] == {"trickle": ROWS}
    assert outcome.summary.stats["retries"] == 0
    assert sorted(outcome.server["by_key"].values()) == [1] * ROWS
    assert outcome.elapsed >= 0.5  # each body takes at least 0.5 s to arrive


def test_random_mix_of_faults_loses_nothing(server, source, tmp_path):
    outcome = run_recycle(server, source, tmp_path, faults="mix:0.5", fault_attempts=2, rows=20,
                          concurrency=4)
    assert_all_rows_accounted_for(outcome, source, rows=20)
    assert {r["reflect_status"] for r in outcome.rows} == {"A"}
    faults = outcome.server["faults"]
    assert set(faults) <= set(MIX_MODES) and len(faults) >= 3
    # every fault but a slow body costs exactly one retry
    assert outcome.summary.stats["retries"] == sum(n for m, n in faults.items() if m != "trickle")
    assert sorted(outcome.server["by_key"].values()) == [1] * 20
    assert outcome.server["max_in_flight"] <= 4, "the concurrency limit was exceeded"


def test_client_rpm_limit_spaces_requests(server, source, tmp_path):
    # 300 rpm = 5 requests/s with a one-second burst: 12 calls need at least 7 / 5 s
    outcome = run_recycle(server, source, tmp_path, rpm=300)
    assert {r["reflect_status"] for r in outcome.rows} == {"A"}
    assert outcome.server["faults"] == {}
    assert outcome.elapsed >= 1.2
