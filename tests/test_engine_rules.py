"""The call executor's rules, with in-process oracles and real SQLite stores in ``tmp_path``.

Every oracle call goes through ``Engine.call``: a finished call is answered from the store and never
resent, failures come back as records with their kind, retryable errors are retried with backoff
(``Retry-After`` first), non-retryable ones never, and a cost cap or a failure rate over the window
stops new calls with ``RunStopped`` while calls in flight finish and are stored. The rate limits are
token buckets, checked here with short real sleeps (lower bounds are exact, upper bounds loose).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from reflectune.config import EngineConfig
from reflectune.engine import Engine, EngineStats, RateLimiter, TokenBucket
from reflectune.errors import (
    OracleError,
    OracleRejected,
    OracleTimeout,
    OracleUnavailable,
    RateLimited,
    RunStopped,
    StoreError,
)
from reflectune.oracles.base import Capabilities, Oracle
from reflectune.oracles.fake import FakeOracle
from reflectune.store import CallRecord, Store
from reflectune.types import ChatRequest, Completion, Message

Outcome = Completion | OracleError | Callable[[ChatRequest], Any]


def req(text: str = "Say hi.", **kwargs: Any) -> ChatRequest:
    return ChatRequest((Message("user", text),), max_tokens=kwargs.pop("max_tokens", 16), **kwargs)


class ScriptedOracle:
    """Answers from a script: each entry is a Completion, an OracleError to raise, or an async callable.

    Past the script's end it answers ``Completion("ok <text>")``. It counts calls and concurrency.
    """

    name = "scripted"
    context = 4096

    def __init__(self, *script: Outcome, label: str = "s", concurrency: int | None = None,
                 price: tuple[float, float] | None = (0.0, 0.0)) -> None:
        self.capabilities = Capabilities(concurrency=concurrency, price=price)
        self.script = list(script)
        self.label = label
        self.calls = 0
        self.seen: list[str] = []
        self.active = self.max_active = 0
        self.closed = False

    def fingerprint(self) -> str:
        return f"scripted:{self.label}"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        [request] = requests
        self.calls += 1
        self.seen.append(request.messages[-1].content)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            step = self.script.pop(0) if self.script else None
            if step is None:
                await asyncio.sleep(0)
                return [Completion(f"ok {request.messages[-1].content}", "stop", 2, 3)]
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, Completion):
                return [step]
            return [await step(request)]
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        self.closed = True


class Sleeps:
    """A stand-in for ``asyncio.sleep`` that records each backoff and does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.sqlite") as s:
        yield s


def test_scripted_oracle_satisfies_the_protocol():
    assert isinstance(ScriptedOracle(), Oracle) and isinstance(FakeOracle(), Oracle)


# -- cache and keys ----------------------------------------------------------------------------------
async def test_finished_call_is_answered_from_the_store_not_resent(store):
    oracle = FakeOracle()
    async with Engine(oracle, store) as engine:
        first = await engine.call("response", req(), version="response@1", sample_id="s1")
        second = await engine.call("response", req(), version="response@1", sample_id="s1")
    assert oracle.calls == 1
    assert first == second and first.ok and first.content.startswith("Answer ")
    assert (engine.stats.sent, engine.stats.cached, engine.stats.failed) == (1, 1, 0)
    assert store.get_call(first.key) == first and first.sample_id == "s1"


async def test_a_new_engine_on_the_same_store_file_resumes(tmp_path):
    path = tmp_path / "store.sqlite"
    requests = [req(f"question {i}") for i in range(5)]
    with Store(path) as store:
        async with Engine(FakeOracle(), store) as engine:
            done = [await engine.call("response", r) for r in requests[:3]]
    oracle = FakeOracle()
    with Store(path) as store:
        async with Engine(oracle, store) as engine:
            again = [await engine.call("response", r) for r in requests]
    assert again[:3] == done
    assert oracle.calls == 2 and (engine.stats.cached, engine.stats.sent) == (3, 2)


@pytest.mark.parametrize(("change", "kwargs"), [
    ("stage", {"stage": "instruction"}),
    ("version", {"version": "response@2"}),
    ("temperature", {"request": req(temperature=0.7)}),
    ("max_tokens", {"request": req(max_tokens=17)}),
    ("sections", {"request": req(sections=("[Better Answer]",))}),
    ("text", {"request": req("Say hi!")}),
])
async def test_anything_that_changes_the_answer_changes_the_key(store, change, kwargs):
    oracle = ScriptedOracle()
    async with Engine(oracle, store) as engine:
        base = await engine.call("response", req(), version="response@1")
        other = await engine.call(kwargs.get("stage", "response"), kwargs.get("request", req()),
                                  version=kwargs.get("version", "response@1"))
    assert base.key != other.key, change
    assert oracle.calls == 2


async def test_sample_id_is_not_part_of_the_key(store):
    oracle = ScriptedOracle()
    async with Engine(oracle, store) as engine:
        a = await engine.call("response", req(), sample_id="row1")
        b = await engine.call("response", req(), sample_id="row2")
    assert a.key == b.key and oracle.calls == 1 and b.sample_id == "row1"


async def test_another_oracle_fingerprint_does_not_reuse_answers(store):
    async with Engine(FakeOracle("model-a"), store) as engine:
        a = await engine.call("response", req())
    other = FakeOracle("model-b")
    async with Engine(other, store) as engine:
        b = await engine.call("response", req())
    assert a.key != b.key and other.calls == 1
    assert Engine(FakeOracle("model-a"), store).key_for("response", req(), "") == a.key


async def test_key_for_is_stable_across_engines_and_matches_the_stored_key(store):
    one, two = Engine(FakeOracle(), store), Engine(FakeOracle(), store)
    assert one.key_for("response", req(), "v1") == two.key_for("response", req(), "v1")
    assert len(one.key_for("response", req(), "v1")) == 64
    async with one:
        rec = await one.call("response", req(), version="v1")
    assert rec.key == two.key_for("response", req(), "v1")


async def test_engine_closes_its_oracle(store):
    oracle = ScriptedOracle()
    async with Engine(oracle, store):
        assert not oracle.closed
    assert oracle.closed


# -- failures and retries ----------------------------------------------------------------------------
async def test_rejected_call_is_stored_with_its_kind_and_never_retried(store):
    oracle = ScriptedOracle(OracleRejected("HTTP 400: bad request", kind="http_400"))
    sleeps = Sleeps()
    async with Engine(oracle, store, EngineConfig(max_attempts=6), sleep=sleeps) as engine:
        rec = await engine.call("response", req(), sample_id="row7")
    assert (rec.status, rec.error_kind, rec.attempts, rec.content) == ("failed", "http_400", 1, None)
    assert rec.error == "HTTP 400: bad request"  # no "gave up" suffix: it was never worth a retry
    assert oracle.calls == 1 and sleeps.waits == [] and engine.stats.retries == 0
    assert store.get_call(rec.key) == rec and rec.sample_id == "row7"
    assert engine.stats.failed == 1 and engine.stats.failures_by_kind == {"http_400": 1}


async def test_plain_oracle_error_is_not_retried_and_gets_the_default_kind(store):
    oracle = ScriptedOracle(OracleError("weird"))
    async with Engine(oracle, store, sleep=Sleeps()) as engine:
        rec = await engine.call("response", req())
    assert (rec.status, rec.error_kind, oracle.calls) == ("failed", "error", 1)


async def test_stored_failure_is_not_resent_unless_retry_failed(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        async with Engine(ScriptedOracle(OracleRejected("no", kind="http_400")), store) as engine:
            failed = await engine.call("response", req())
        oracle = ScriptedOracle()
        async with Engine(oracle, store) as engine:
            again = await engine.call("response", req())
        assert again == failed and oracle.calls == 0 and engine.stats.cached == 1
        async with Engine(oracle, store, EngineConfig(retry_failed=True)) as engine:
            fixed = await engine.call("response", req())
        assert fixed.ok and fixed.key == failed.key and oracle.calls == 1
        assert store.get_call(failed.key) == fixed  # the failure is replaced, not duplicated
        assert store.call_totals() == {"response:ok": {"calls": 1, "prompt_tokens": 2,
                                                       "completion_tokens": 3}}


async def test_rate_limited_call_waits_retry_after_then_succeeds(store):
    oracle = ScriptedOracle(RateLimited("HTTP 429", retry_after=2.5))
    sleeps = Sleeps()
    config = EngineConfig(backoff_base=0.01, backoff_max=60.0)
    async with Engine(oracle, store, config, sleep=sleeps) as engine:
        rec = await engine.call("response", req())
    assert rec.ok and rec.attempts == 2 and oracle.calls == 2
    assert len(sleeps.waits) == 1 and 2.5 <= sleeps.waits[0] <= 2.6
    assert engine.stats.retries == 1 and engine.stats.failed == 0 and engine.stats.sent == 1


async def test_retry_after_is_capped_by_backoff_max(store):
    oracle = ScriptedOracle(RateLimited("HTTP 429", retry_after=3600))
    sleeps = Sleeps()
    async with Engine(oracle, store, EngineConfig(backoff_max=5.0), sleep=sleeps) as engine:
        assert (await engine.call("response", req())).ok
    assert 5.0 <= sleeps.waits[0] <= 5.1


async def test_backoff_without_retry_after_grows_exponentially_with_jitter(store):
    faults = [OracleUnavailable("HTTP 503", kind="http_503"), OracleTimeout(),
              RateLimited("HTTP 429"), OracleUnavailable("reset", kind="connection")]
    oracle = ScriptedOracle(*faults)
    sleeps = Sleeps()
    config = EngineConfig(backoff_base=1.0, backoff_max=5.0, max_attempts=6)
    async with Engine(oracle, store, config, sleep=sleeps) as engine:
        rec = await engine.call("response", req())
    assert rec.ok and rec.attempts == 5 and engine.stats.retries == 4
    for wait, ceiling in zip(sleeps.waits, [1.0, 2.0, 4.0, 5.0], strict=True):
        assert ceiling / 2 <= wait <= ceiling, sleeps.waits


async def test_exhausted_retries_become_a_failed_record(store):
    oracle = ScriptedOracle(*[OracleTimeout("no answer within 1 s")] * 10)
    sleeps = Sleeps()
    async with Engine(oracle, store, EngineConfig(max_attempts=3), sleep=sleeps) as engine:
        rec = await engine.call("response", req())
    assert (rec.status, rec.attempts, rec.error_kind) == ("failed", 3, "timeout")
    assert rec.error == "no answer within 1 s (gave up after 3 attempts)"
    assert oracle.calls == 3 and len(sleeps.waits) == 2 and engine.stats.retries == 2
    assert engine.stats.failures_by_kind == {"timeout": 1}


async def test_max_attempts_one_means_no_retry(store):
    oracle = ScriptedOracle(RateLimited("HTTP 429", retry_after=1))
    async with Engine(oracle, store, EngineConfig(max_attempts=1), sleep=Sleeps()) as engine:
        rec = await engine.call("response", req())
    assert (rec.status, rec.attempts, rec.error_kind, oracle.calls) == ("failed", 1, "rate_limited", 1)


async def test_programming_error_in_an_oracle_propagates_and_stores_nothing(store):
    oracle = ScriptedOracle(ValueError("bug in the backend"))
    async with Engine(oracle, store) as engine:
        with pytest.raises(ValueError, match="bug in the backend"):
            await engine.call("response", req())
        assert engine.stats.in_flight == 0
    assert store.call_totals() == {}


async def test_answer_with_a_lone_surrogate_is_kept_or_recorded(store):
    oracle = ScriptedOracle(Completion("broken \ud800 text", "stop", 1, 1))
    async with Engine(oracle, store) as engine:
        rec = await engine.call("response", req())
    assert store.get_call(rec.key) is not None


# -- stops -------------------------------------------------------------------------------------------
async def test_cost_cap_stops_new_calls_but_keeps_answering_from_the_store(store):
    oracle = ScriptedOracle(*[Completion("paid", "stop", 3, 0)] * 5)
    prices = (1_000_000.0, 0.0)  # USD per 1M prompt tokens: one dollar per prompt token
    async with Engine(oracle, store, EngineConfig(max_cost=5.0), prices=prices) as engine:
        first = await engine.call("response", req("q1"))
        await engine.call("response", req("q2"))
        assert engine.stats.cost == 6.0
        with pytest.raises(RunStopped, match=r"cost cap reached \(\$6\.0000 >= \$5\.0000\).*--max-cost"):
            await engine.call("response", req("q3"))
        with pytest.raises(RunStopped):
            await engine.call("response", req("q4"))
        assert await engine.call("response", req("q1")) == first  # cached work still resumes
    assert oracle.calls == 2 and "cost cap" in engine.stop_reason


async def test_unknown_prices_never_trip_the_cost_cap(store):
    oracle = ScriptedOracle(*[Completion("x", "stop", 10**6, 10**6)] * 3)
    async with Engine(oracle, store, EngineConfig(max_cost=0.01), prices=None) as engine:
        for i in range(3):
            assert (await engine.call("response", req(f"q{i}"))).ok
    assert engine.stats.cost == 0.0 and not engine.stats.cost_known and engine.stop_reason is None


async def test_cost_is_computed_from_both_prices(store):
    oracle = ScriptedOracle(Completion("x", "stop", 1000, 500))
    async with Engine(oracle, store, prices=(2.0, 8.0)) as engine:
        await engine.call("response", req())
    assert engine.stats.cost == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert engine.stats.cost_known


async def test_price_comes_from_the_backend_unless_the_config_overrides_it(store):
    usage = Completion("x", "stop", 1_000_000, 1_000_000)
    async with Engine(ScriptedOracle(usage, price=(1.0, 3.0)), store) as engine:
        await engine.call("response", req("a"))
    assert engine.stats.cost == pytest.approx(4.0) and engine.stats.cost_known
    overridden = ScriptedOracle(usage, price=(1.0, 3.0))
    async with Engine(overridden, store, EngineConfig(price_in=0.5)) as engine:
        await engine.call("response", req("b"))
    assert engine.stats.cost == pytest.approx(0.5)  # price_out left out counts as 0
    async with Engine(ScriptedOracle(usage, usage, price=None), store, EngineConfig(max_cost=0.5)) as engine:
        assert (await engine.call("response", req("c"))).ok  # unknown price: never counted as spent
        assert (await engine.call("response", req("d"))).ok
    assert not engine.stats.cost_known and engine.stats.cost == 0.0


async def test_failure_rate_stops_only_once_the_window_is_full(store):
    rejected = [OracleRejected(f"HTTP 401: bad key {i}", kind="http_401") for i in range(4)]
    oracle = ScriptedOracle(*rejected)
    config = EngineConfig(failure_window=4, max_failure_rate=0.5)
    async with Engine(oracle, store, config) as engine:
        for i in range(3):  # three failures, but the window of four is not full yet
            assert not (await engine.call("response", req(f"q{i}"))).ok
        assert engine.stop_reason is None
        await engine.call("response", req("q3"))
        with pytest.raises(RunStopped) as info:
            await engine.call("response", req("q4"))
    message = str(info.value)
    assert "4 of the last 4 calls failed" in message and "more than 50%" in message
    assert "last: HTTP 401: bad key 3" in message and "rerun to resume" in message
    assert oracle.calls == 4


async def test_failure_rate_window_slides_and_the_limit_is_strict(store):
    no = OracleRejected("no", kind="http_400")
    ok = Completion("fine", "stop", 1, 1)
    oracle = ScriptedOracle(no, ok, no, ok, no, no)
    config = EngineConfig(failure_window=4, max_failure_rate=0.5)
    async with Engine(oracle, store, config) as engine:
        for i in range(5):  # f o f o f: every window of four holds exactly two failures (= 50 %)
            await engine.call("response", req(f"q{i}"))
            assert engine.stop_reason is None, i
        await engine.call("response", req("q5"))  # o f o f f -> last four f o f f: 75 %
        assert engine.stop_reason is not None and "3 of the last 4" in engine.stop_reason
    assert (engine.stats.sent, engine.stats.failed) == (2, 4)


async def test_cached_failures_do_not_count_towards_the_failure_rate(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        oracle = ScriptedOracle(*[OracleRejected("no", kind="http_400")] * 3)
        async with Engine(oracle, store, EngineConfig(failure_window=10, max_failure_rate=1.0)) as engine:
            for i in range(3):
                await engine.call("response", req(f"q{i}"))
        async with Engine(ScriptedOracle(), store, EngineConfig(failure_window=2, max_failure_rate=0.0)) \
                as engine:
            for i in range(3):
                assert not (await engine.call("response", req(f"q{i}"))).ok
            assert engine.stop_reason is None and engine.stats.failed == 0 and engine.stats.cached == 3
            assert (await engine.call("response", req("new"))).ok


async def test_calls_in_flight_when_a_stop_triggers_finish_and_are_stored(store):
    release = asyncio.Event()

    async def slow(request: ChatRequest) -> Completion:
        await release.wait()
        return Completion(f"slow {request.messages[-1].content}", "stop", 1, 1)

    oracle = ScriptedOracle(slow, slow, OracleRejected("boom", kind="http_400"))
    config = EngineConfig(failure_window=1, max_failure_rate=0.0, concurrency=4)
    async with Engine(oracle, store, config) as engine:
        slow_calls = [asyncio.create_task(engine.call("response", req(f"slow{i}"))) for i in range(2)]
        while oracle.active < 2:
            await asyncio.sleep(0)
        failed = await engine.call("response", req("fails"))
        assert not failed.ok and engine.stop_reason is not None
        with pytest.raises(RunStopped):
            await engine.call("response", req("new"))
        release.set()
        finished = await asyncio.gather(*slow_calls)
    assert all(r.ok for r in finished)
    assert [store.get_call(r.key) for r in finished] == finished
    assert oracle.calls == 3


async def test_call_waiting_for_a_slot_is_stopped_when_it_gets_one(store):
    release = asyncio.Event()

    async def fail_later(request: ChatRequest) -> Completion:
        await release.wait()
        raise OracleRejected("HTTP 403: forbidden", kind="http_403")

    oracle = ScriptedOracle(fail_later)
    config = EngineConfig(failure_window=1, max_failure_rate=0.0, concurrency=1)
    async with Engine(oracle, store, config) as engine:
        first = asyncio.create_task(engine.call("response", req("a")))
        while oracle.active < 1:
            await asyncio.sleep(0)
        waiting = asyncio.create_task(engine.call("response", req("b")))
        await asyncio.sleep(0.01)
        release.set()
        assert not (await first).ok
        with pytest.raises(RunStopped, match="HTTP 403"):
            await waiting
    assert oracle.calls == 1


async def test_store_failure_is_sticky_no_new_call_is_paid_for(tmp_path):
    class FullStore(Store):
        def put_call(self, record: CallRecord, request_json: str) -> None:
            raise StoreError(f"{self.path}: cannot write the store (the disk is full)")

    with FullStore(tmp_path / "store.sqlite") as store:
        oracle = ScriptedOracle()
        async with Engine(oracle, store) as engine:
            with pytest.raises(StoreError, match="disk is full"):
                await engine.call("response", req("a"))
            with pytest.raises(StoreError, match="disk is full"):
                await engine.call("response", req("b"))
    assert oracle.calls == 1 and oracle.seen == ["a"]


# -- concurrency and stats ---------------------------------------------------------------------------
async def test_concurrency_limit_is_honoured(store):
    async def slowish(request: ChatRequest) -> Completion:
        await asyncio.sleep(0.01)
        return Completion("x", "stop", 1, 1)

    oracle = ScriptedOracle(*[slowish] * 12)
    async with Engine(oracle, store, EngineConfig(concurrency=3)) as engine:
        records = await asyncio.gather(*(engine.call("response", req(f"q{i}")) for i in range(12)))
    assert all(r.ok for r in records) and oracle.calls == 12
    assert oracle.max_active == 3 and engine.stats.in_flight == 0


def test_concurrency_defaults_to_the_oracles_preference_then_64(store):
    assert Engine(ScriptedOracle(concurrency=7), store).concurrency == 7
    assert Engine(ScriptedOracle(), store).concurrency == 64
    assert Engine(ScriptedOracle(concurrency=7), store, EngineConfig(concurrency=2)).concurrency == 2


async def test_stats_count_sent_cached_failed_retries_and_tokens(store):
    oracle = ScriptedOracle(Completion("a", "stop", 10, 20), RateLimited("slow", retry_after=0),
                            Completion("b", "length", 5, 7), OracleRejected("no", kind="context_length"))
    async with Engine(oracle, store, sleep=Sleeps(), prices=(0.0, 0.0)) as engine:
        r1 = await engine.call("response", req("one"))
        r2 = await engine.call("response", req("two"))
        r3 = await engine.call("response", req("three"))
        await engine.call("response", req("one"))  # cached: no tokens, no cost
    assert (r1.ok, r2.ok, r3.ok) == (True, True, False)
    assert r2.finish_reason == "length" and r2.attempts == 2
    stats = engine.stats
    assert (stats.sent, stats.cached, stats.failed, stats.retries) == (2, 1, 1, 1)
    assert (stats.prompt_tokens, stats.completion_tokens) == (15, 27)
    assert stats.failures_by_kind == {"context_length": 1} and stats.in_flight == 0
    snapshot = stats.as_dict()
    assert "started" not in snapshot and snapshot["elapsed_s"] >= 0
    assert {k: snapshot[k] for k in ("sent", "cached", "failed", "retries")} == {
        "sent": 2, "cached": 1, "failed": 1, "retries": 1}


async def test_forced_markers_and_latency_are_stored(store):
    oracle = ScriptedOracle(Completion("critique [Better Answer] x [End]", "stop", 4, 5, 0.75,
                                       ("[Better Answer]", "[End]")))
    async with Engine(oracle, store) as engine:
        rec = await engine.call("response", req())
    back = store.get_call(rec.key)
    assert back.forced == ("[Better Answer]", "[End]") and back.latency_s == 0.75


def test_engine_stats_start_at_zero():
    stats = EngineStats()
    assert (stats.sent, stats.cached, stats.failed, stats.retries, stats.cost) == (0, 0, 0, 0, 0.0)
    assert stats.failures_by_kind == {} and EngineStats().failures_by_kind is not stats.failures_by_kind


async def test_engine_rpm_limit_spaces_real_calls(store):
    """600 rpm is 10 calls/s with a one-second burst of 10: the 13th call waits about 0.3 s."""
    oracle = ScriptedOracle()
    started = time.monotonic()
    async with Engine(oracle, store, EngineConfig(rpm=600, concurrency=16)) as engine:
        await asyncio.gather(*(engine.call("response", req(f"q{i}")) for i in range(13)))
    elapsed = time.monotonic() - started
    assert oracle.calls == 13
    assert 0.27 <= elapsed < 1.5, elapsed


# -- token buckets -----------------------------------------------------------------------------------
async def test_bucket_allows_a_one_second_burst_then_the_rate():
    bucket = TokenBucket(1200)  # 20 per second, capacity 20
    started = time.monotonic()
    for _ in range(20):
        await bucket.take()
    burst = time.monotonic() - started
    for _ in range(6):
        await bucket.take()
    total = time.monotonic() - started
    assert burst < 0.5, burst  # without the burst, 20 takes at 20/s would need 0.95 s
    assert 0.28 <= total < 1.5, total  # six more at 20/s: at least 0.3 s less a timer's slack


async def test_bucket_burst_seconds_sets_the_capacity():
    bucket = TokenBucket(600, burst_seconds=0.1)  # 10/s, capacity max(1, 1.0) = 1
    assert bucket.capacity == 1.0 and bucket.rate == 10.0
    started = time.monotonic()
    for _ in range(3):
        await bucket.take()
    assert 0.18 <= time.monotonic() - started < 1.5


async def test_idle_bucket_refills_only_up_to_its_capacity():
    bucket = TokenBucket(600, burst_seconds=0.1)  # capacity 1
    await bucket.take()
    await asyncio.sleep(0.3)  # three tokens' worth of time, but the bucket holds one
    started = time.monotonic()
    await bucket.take()
    assert time.monotonic() - started < 0.08  # refilled while idle (an empty bucket would wait 0.1 s)
    await bucket.take()
    assert time.monotonic() - started >= 0.09


async def test_oversized_request_is_not_blocked_forever_but_later_ones_pay_the_debt():
    bucket = TokenBucket(6000)  # 100 per second, capacity 100
    started = time.monotonic()
    await bucket.take(150)  # more than the bucket holds: goes through, leaves a debt of 50
    assert time.monotonic() - started < 0.3
    await bucket.take(1)  # needs the debt paid plus one token: 0.51 s
    assert 0.45 <= time.monotonic() - started < 1.2


async def test_waiters_are_served_in_arrival_order():
    bucket = TokenBucket(1200, burst_seconds=0.05)  # 20/s, capacity 1
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.take()
        order.append(i)

    started, tasks = time.monotonic(), []
    for i in range(5):
        tasks.append(asyncio.create_task(take(i)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert time.monotonic() - started >= 0.18  # and concurrent waiters still share one rate: 4 x 0.05 s


async def test_rate_limiter_without_limits_never_waits():
    limiter = RateLimiter()
    started = time.monotonic()
    for _ in range(2000):
        await limiter.acquire(10**6)
    assert time.monotonic() - started < 1.0


async def test_rate_limiter_tpm_counts_tokens_not_requests():
    limiter = RateLimiter(tpm=60_000)  # 1000 tokens/s, capacity 1000
    started = time.monotonic()
    await limiter.acquire(600)
    await limiter.acquire(300)
    assert time.monotonic() - started < 0.15
    await limiter.acquire(300)  # 100 left: waits for 200 more tokens, 0.2 s
    assert 0.18 <= time.monotonic() - started < 1.5


async def test_rate_limiter_applies_both_limits():
    limiter = RateLimiter(rpm=6000, tpm=6000)  # 100 req/s but only 100 tokens/s
    started = time.monotonic()
    await limiter.acquire(100)
    await limiter.acquire(20)  # the request bucket has room; the token bucket is empty
    assert 0.18 <= time.monotonic() - started < 1.5
