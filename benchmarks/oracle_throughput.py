"""Oracle throughput: completed calls/s and client CPU-ms per call against a 100 ms loopback server.

Issue #2, item 10. The OpenAI-compatible test server (:mod:`reflectune.testing.server`) runs in its
own process with a fixed latency, so its CPU is not billed to the client. Rows:

- **reference lockstep**: the reference code's batches of 10 (send 10, wait for all 10, next 10),
  through the same aiohttp oracle, with no engine and no store (the reference had neither);
- **reflectune engine @ C**: ``Engine.call`` for N distinct requests gathered at once, concurrency C,
  every result committed to a real SQLite ``Store``;
- **recycle pipeline**: ``recycle()`` end to end, response phase only (one call per row), timed
  around the whole call: input validation, rendering, parsing, output writing, manifest;
- the **ideal** of each row is concurrency / latency (10 / 0.1 s = 100 calls/s for the lockstep).

Client CPU is ``time.process_time()`` of this process (all its threads, user + system) over the timed
window, divided by the calls the server completed in that window. The server's own CPU per call is
read from ``/proc`` for context. Each configuration runs ``--repeat`` times (default 2) on a fresh
store; the run with the higher calls/s is reported. When the engine misses the acceptance target at
concurrency 256 (or with ``--profile``), that configuration is run once more under cProfile and the
top functions go into the results.

Usage::

    python benchmarks/oracle_throughput.py             # full run; waits for load <= 2.5; writes RESULTS.md
    python benchmarks/oracle_throughput.py --quick     # small N, one repeat, no waiting, no RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import info_lines, load1, machine_info, markdown_table, wait_for_quiet, write_block
from reflectune.config import EngineConfig, OracleConfig, RecycleConfig
from reflectune.engine import Engine
from reflectune.keys import canonical_json
from reflectune.oracles import make_oracle
from reflectune.recycling.run import recycle
from reflectune.store.calls import CallRecord, Store
from reflectune.testing.server import ServerHandle, running_server
from reflectune.types import ChatRequest, Message

BLOCK = "oracle_throughput"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_cherry5pct_3111.json"
TARGET_FRACTION = 0.80  # of the ideal bound, at concurrency 256
TARGET_CPU_MS = 1.0  # client CPU-ms per call
TARGET_CONCURRENCY = 256
LOCKSTEP_BATCH = 10
DESIGN_BARE_CPU_MS = 0.14  # DESIGN.md: aiohttp alone, 256 in flight, on this machine when quiet

_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides further "
             "context where there is one. You are a careful, helpful assistant. Write a response that "
             "appropriately completes the request: be accurate, be specific, keep to the point and use "
             "plain language.\n\n### Instruction:\n")
_SUFFIX = ("\n\n### Notes:\nIf the instruction is ambiguous, state the assumption you make. Prefer short "
           "paragraphs or a list where it helps the reader. Request {tag}.\n\n### Response:\n")


# -- workload -------------------------------------------------------------------------------------
def load_rows() -> list[dict]:
    if not DATA.exists():
        sys.exit(f"{DATA}: no such file (the benchmark needs the Alpaca sample in ../shared/data)")
    return json.loads(DATA.read_text(encoding="utf-8"))


def make_requests(rows: Sequence[dict], n: int, tag: str) -> list[ChatRequest]:
    """``n`` distinct, realistic chat requests (a few hundred characters around each instruction)."""
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        text = _PREAMBLE + row["instruction"]
        if row.get("input"):
            text += "\n\n### Input:\n" + row["input"]
        text += _SUFFIX.format(tag=f"{tag}-{i}")
        out.append(ChatRequest(messages=(Message("user", text),), max_tokens=256))
    return out


# -- measurement ----------------------------------------------------------------------------------
def _server_cpu_s(srv: ServerHandle) -> float | None:
    """User + system CPU seconds of the server process so far (Linux only)."""
    try:
        fields = Path(f"/proc/{srv.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _runqueue_wait_s(pid: int | str) -> float | None:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU (Linux schedstat).

    On a shared machine this is the evidence of contention: time the event loop had work to do and
    no core to do it on.
    """
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _delta(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Result:
    name: str
    concurrency: int
    ideal: float  # calls/s
    calls: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    server_cpu_s: float | None = None
    client_wait_s: float | None = None  # run-queue wait of our event-loop thread
    server_wait_s: float | None = None
    latencies: list[float] = field(default_factory=list)  # client-observed, seconds
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.calls if self.calls else float("nan")

    @property
    def server_cpu_ms(self) -> float | None:
        return None if self.server_cpu_s is None or not self.calls else 1000 * self.server_cpu_s / self.calls


class Window:
    """Wall clock, client CPU and server CPU over a ``with`` block; the server counts completed calls."""

    def __init__(self, srv: ServerHandle, result: Result) -> None:
        self.srv, self.result = srv, result

    def __enter__(self) -> Window:
        self.srv.reset()  # zero the counters and empty the server's answer cache
        gc.collect()
        self.w0, self.v0 = _runqueue_wait_s("self"), _runqueue_wait_s(self.srv.process.pid)
        self.s0 = _server_cpu_s(self.srv)
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        t1, c1, s1 = time.perf_counter(), time.process_time(), _server_cpu_s(self.srv)
        w1, v1 = _runqueue_wait_s("self"), _runqueue_wait_s(self.srv.process.pid)
        if exc[0] is not None:
            return
        r = self.result
        r.wall_s, r.cpu_s = t1 - self.t0, c1 - self.c0
        r.server_cpu_s = _delta(s1, self.s0)
        r.client_wait_s, r.server_wait_s = _delta(w1, self.w0), _delta(v1, self.v0)
        r.calls = self.srv.stats()["completed"]


async def _engine_run(srv: ServerHandle, rows: Sequence[dict], concurrency: int, n: int, tag: str,
                      tmp: Path, latency: float, profiler: cProfile.Profile | None = None) -> Result:
    result = Result(f"reflectune engine @ {concurrency}", concurrency, concurrency / latency)
    oracle = make_oracle("openai:test", base_url=srv.base_url)
    store = Store(tmp / f"{tag}.sqlite")
    try:
        async with Engine(oracle, store, EngineConfig(concurrency=concurrency), prices=None) as engine:
            # warm-up: one full wave, so the connection pool is at size before the clock starts
            await asyncio.gather(*(engine.call("bench", r)
                                   for r in make_requests(rows, concurrency, f"{tag}w")))
            requests = make_requests(rows, n, tag)
            with Window(srv, result):
                if profiler is not None:
                    profiler.enable()
                records = await asyncio.gather(*(engine.call("bench", r) for r in requests))
                if profiler is not None:
                    profiler.disable()
            result.failed = sum(not rec.ok for rec in records)
            result.latencies = [rec.latency_s for rec in records]
            stored = store.call_totals().get("bench:ok", {}).get("calls", 0)
            if stored != n + concurrency:
                result.notes.append(f"store holds {stored} ok calls, expected {n + concurrency}")
    finally:
        store.close()
    return result


async def _bare_run(srv: ServerHandle, rows: Sequence[dict], concurrency: int, n: int, tag: str,
                    latency: float) -> Result:
    """The same aiohttp oracle under a plain semaphore: no engine, no key, no store."""
    result = Result(f"bare aiohttp oracle @ {concurrency} (no engine/store)", concurrency,
                    concurrency / latency)
    oracle = make_oracle("openai:test", base_url=srv.base_url)
    slots = asyncio.Semaphore(concurrency)

    async def one(request: ChatRequest) -> float:
        async with slots:
            [completion] = await oracle.complete([request])
        return completion.latency_s

    try:
        await asyncio.gather(*(one(r) for r in make_requests(rows, concurrency, f"{tag}w")))
        requests = make_requests(rows, n, tag)
        with Window(srv, result):
            result.latencies = await asyncio.gather(*(one(r) for r in requests))
    finally:
        await oracle.aclose()
    return result


async def _lockstep_run(srv: ServerHandle, rows: Sequence[dict], n: int, tag: str, latency: float) -> Result:
    result = Result(f"reference lockstep, batches of {LOCKSTEP_BATCH}", LOCKSTEP_BATCH,
                    LOCKSTEP_BATCH / latency)
    oracle = make_oracle("openai:test", base_url=srv.base_url)
    try:
        await asyncio.gather(*(oracle.complete([r]) for r in make_requests(rows, LOCKSTEP_BATCH, f"{tag}w")))
        requests = make_requests(rows, n, tag)
        with Window(srv, result):
            for start in range(0, n, LOCKSTEP_BATCH):
                batch = requests[start:start + LOCKSTEP_BATCH]
                done = await asyncio.gather(*(oracle.complete([r]) for r in batch))
                result.latencies += [c.latency_s for [c] in done]
    finally:
        await oracle.aclose()
    return result


def _recycle_run(srv: ServerHandle, rows: Sequence[dict], n_rows: int, tag: str, tmp: Path,
                 latency: float) -> Result:
    concurrency = TARGET_CONCURRENCY
    result = Result(f"recycle pipeline @ {concurrency} (response phase)", concurrency, concurrency / latency)
    src = tmp / f"{tag}.json"
    src.write_text(json.dumps(list(rows[:n_rows])), encoding="utf-8")
    config = RecycleConfig(oracle=OracleConfig(spec="openai:test", base_url=srv.base_url),
                           engine=EngineConfig(concurrency=concurrency), phases=("response",))
    with Window(srv, result):
        summary = recycle(src, tmp / f"{tag}.out.json", config=config, run_dir=tmp / f"{tag}.run")
    result.failed = sum(v for k, v in summary.variant_status.items() if k.startswith("A:") and k != "A:ok")
    db = sqlite3.connect(tmp / f"{tag}.run" / "store.sqlite")
    try:
        result.latencies = [x for (x,) in db.execute(
            "SELECT latency_s FROM calls WHERE stage = 'response' AND status = 'ok'")]
    finally:
        db.close()
    if summary.rows != n_rows:
        result.notes.append(f"{summary.rows} rows written, expected {n_rows}")
    return result


def best_of(repeat: int, run: Callable[[int], Result]) -> Result:
    results = [run(i) for i in range(repeat)]
    best = max(results, key=lambda r: r.rate)
    if len(results) > 1:
        best.notes.append("runs: " + ", ".join(f"{r.rate:,.0f}" for r in results) + " calls/s")
    return best


# -- the engine's synchronous bookkeeping, measured alone ------------------------------------------
def bookkeeping_cost(rows: Sequence[dict], n: int, tmp: Path) -> list[tuple[str, float, float]]:
    """CPU and wall µs per call of each step the engine adds around the HTTP call, outside any loop.

    Same requests, a fresh store, answers of realistic length (the dataset's outputs).
    """
    oracle = make_oracle("openai:test", base_url="http://127.0.0.1:9/v1")  # never contacted
    store = Store(tmp / "bookkeeping.sqlite")
    engine = Engine(oracle, store, EngineConfig(concurrency=TARGET_CONCURRENCY), prices=None)
    requests = make_requests(rows, n, "bk")
    out: list[tuple[str, float, float]] = []  # (step, CPU µs per call, wall µs per call)

    def step(name: str, fn: Callable[[], object]) -> object:
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        value = fn()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        out.append((name, 1e6 * cpu / n, 1e6 * wall / n))
        return value

    try:
        keys = step("`Engine.key_for` (canonical JSON + sha256)",
                    lambda: [engine.key_for("bench", r, "") for r in requests])
        step("`Store.get_call` (a miss)", lambda: [store.get_call(k) for k in keys])
        payloads = step("`OpenAIOracle._payload` + `json.dumps` (request body)",
                        lambda: [json.dumps(oracle._payload(r)) for r in requests])
        assert payloads
        texts = step("`canonical_json(request.to_json())` (for the store)",
                     lambda: [canonical_json(r.to_json()) for r in requests])
        records = [CallRecord(k, "bench", "ok", rows[i % len(rows)]["output"], "stop", 120, 240, 0.1, 1,
                              None, None, ()) for i, k in enumerate(keys)]
        step("`Store.put_call` (INSERT + commit, WAL)",
             lambda: [store.put_call(rec, t) for rec, t in zip(records, texts, strict=True)])
    finally:
        store.close()
    return out


# -- profile --------------------------------------------------------------------------------------
_CATEGORIES = (  # (substring of the file or built-in name, category); first match wins
    ("/reflectune/", "reflectune (engine, oracle, store, types)"),
    ("sqlite3", "sqlite3 (store reads and commits)"),
    ("json", "json (request bodies, keys, response parsing)"),
    ("hashlib", "hashlib (cache keys)"),
    ("sha256", "hashlib (cache keys)"),
    ("/aiohttp/", "aiohttp, yarl, multidict (HTTP client)"),
    ("/yarl/", "aiohttp, yarl, multidict (HTTP client)"),
    ("/multidict/", "aiohttp, yarl, multidict (HTTP client)"),
    ("_socket", "socket system calls"),
    ("epoll", "socket system calls"),
    ("/asyncio/", "asyncio event loop, tasks, futures"),
    ("_asyncio", "asyncio event loop, tasks, futures"),
    ("_contextvars", "asyncio event loop, tasks, futures"),
)


def _category(file: str, func: str) -> str:
    where = file if file != "~" else func
    return next((cat for key, cat in _CATEGORIES if key in where), "other (builtins, gc, ...)")


@dataclass
class Profile:
    result: Result
    by_category: str
    top: str
    ours: str
    raw: str


def profile_engine(srv: ServerHandle, rows: Sequence[dict], n: int, tmp: Path, latency: float,
                   cpu_us_per_call: float, top: int = 15) -> Profile:
    """Run the engine at the target concurrency under cProfile (CPU-time clock); three tables.

    Own times are also rescaled to the unprofiled CPU per call (``cpu_us_per_call``), since the
    profiler's overhead inflates the absolute figures.
    """
    prof = cProfile.Profile(time.process_time)  # CPU time: the machine is shared, wall time is not ours
    result = asyncio.run(_engine_run(srv, rows, TARGET_CONCURRENCY, n, "prof", tmp, latency, prof))
    entries = pstats.Stats(prof).stats.items()  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in entries) or 1.0
    scale = cpu_us_per_call / total * n  # own seconds -> estimated unprofiled µs per call

    cats: dict[str, float] = {}
    for (file, _line, func), v in entries:
        cats[_category(file, func)] = cats.get(_category(file, func), 0.0) + v[2]
    by_category = markdown_table(
        ["where the client CPU goes", "share of own time", "≈ µs per call (unprofiled)"],
        [[c, f"{100 * t / total:.1f} %", f"{t * scale / n:.0f}"]
         for c, t in sorted(cats.items(), key=lambda kv: -kv[1])])

    def rows_of(items) -> list[list[str]]:
        out = []
        for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in items:
            where = f"{Path(file).name}:{line}" if line else "built-in"
            out.append([f"`{func}` ({where})", f"{ncalls / n:.1f}", f"{100 * tottime / total:.1f} %",
                        f"{tottime * scale / n:.1f}", f"{1e6 * tottime / n:.1f}", f"{1e6 * cumtime / n:.1f}"])
        return out

    heads = ["function", "entries per call", "share of own time", "≈ own µs per call (unprofiled)",
             "own µs per call (profiled)", "cumulative µs per call (profiled)"]
    by_own = sorted(entries, key=lambda kv: kv[1][2], reverse=True)[:top]
    ours = sorted((kv for kv in entries if "/reflectune/" in kv[0][0]), key=lambda kv: kv[1][3],
                  reverse=True)[:top]
    raw = io.StringIO()
    pstats.Stats(prof, stream=raw).sort_stats("tottime").print_stats(25)
    return Profile(result, by_category, markdown_table(heads, rows_of(by_own)),
                   markdown_table(heads, rows_of(ours)), raw.getvalue())


# -- report ---------------------------------------------------------------------------------------
def _share(part: float | None, whole: float) -> str:
    return "n/a" if part is None or not whole else f"{100 * part / whole:.0f} %"


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    out = []
    for r in results:
        server = f"{r.server_cpu_ms:.2f}" if r.server_cpu_ms is not None else "n/a"
        lat = (f"{1000 * _pct(r.latencies, 0.5):.0f} / {1000 * _pct(r.latencies, 0.99):.0f}"
               if r.latencies else "n/a")
        out.append([r.name, f"{r.calls:,}", f"{r.wall_s:.2f}", f"{r.rate:,.0f}", f"{r.ideal:,.0f}",
                    f"{100 * r.rate / r.ideal:.0f} %", f"{r.cpu_ms:.3f}", server, lat,
                    f"{_share(r.client_wait_s, r.wall_s)} / {_share(r.server_wait_s, r.wall_s)}",
                    "; ".join(([f"{r.failed} failed"] if r.failed else []) + r.notes)])
    return out


HEADERS = ["configuration", "calls", "wall s", "calls/s", "ideal calls/s", "% of ideal",
           "client CPU-ms/call", "server CPU-ms/call", "latency p50 / p99 ms",
           "waiting for a CPU, client / server", "notes"]


def _starved(r: Result) -> float:
    """Share of the wall time our event loop was runnable but had no CPU (0 where unknown)."""
    return (r.client_wait_s or 0.0) / r.wall_s if r.wall_s else 0.0


def reading(results: Sequence[Result], latency: float) -> str:
    """One paragraph reading the figures; every claim is computed from them."""
    by = {r.name: r for r in results}
    target = by[f"reflectune engine @ {TARGET_CONCURRENCY}"]
    lock = next(r for r in results if r.name.startswith("reference lockstep"))
    bare = next((r for r in results if r.name.startswith("bare aiohttp")), None)
    ok_rate = target.rate >= TARGET_FRACTION * target.ideal
    ok_cpu = target.cpu_ms <= TARGET_CPU_MS
    parts = [
        f"At concurrency {TARGET_CONCURRENCY} the engine completed {target.rate:,.0f} calls/s, "
        f"{100 * target.rate / target.ideal:.0f} % of the {target.ideal:,.0f} calls/s bound, at "
        f"{target.cpu_ms:.2f} client CPU-ms per call, store commits included. Target (≥ "
        f"{TARGET_FRACTION:.0%} of the bound, ≤ {TARGET_CPU_MS:g} CPU-ms per call): CPU "
        f"{'met' if ok_cpu else 'NOT met'}, rate {'met' if ok_rate else 'NOT met'}."]
    if bare is not None:
        parts.append(
            f"The bare aiohttp oracle at the same concurrency, with no engine and no store, made "
            f"{bare.rate:,.0f} calls/s at {bare.cpu_ms:.2f} CPU-ms per call, so the engine, its cache keys "
            f"and the SQLite commit add {target.cpu_ms - bare.cpu_ms:+.2f} CPU-ms per call.")
    capacity = 1000 / target.cpu_ms if target.cpu_ms else float("inf")
    parts.append(
        f"At that CPU cost one core could drive at most {capacity:,.0f} calls/s "
        f"({100 * capacity / target.ideal:.0f} % of the bound"
        f"{', below the target' if capacity < TARGET_FRACTION * target.ideal else ''}).")
    if bare is not None and bare.cpu_ms > 1.5 * DESIGN_BARE_CPU_MS:
        parts.append(
            "That cost is likely lower on a quiet machine: contention inflates CPU per call too (the "
            f"bare aiohttp client took {bare.cpu_ms:.2f} CPU-ms per call here, against "
            f"{DESIGN_BARE_CPU_MS} in the quiet measurement of DESIGN.md on this machine).")
    if not ok_rate:
        busy = (target.cpu_s + (target.server_cpu_s or 0.0)) / target.wall_s
        if _starved(target) > 0.25:
            parts.append(
                f"The measured rate is held well below that by the shared machine: our event loop "
                f"was runnable but waiting for a core {100 * _starved(target):.0f} % of the run, and client "
                f"plus server got only {busy:.1f} of the {os.cpu_count()} cores, the rest going to other "
                "jobs (see the load).")
        else:
            parts.append(f"Client plus server kept {busy:.1f} of the {os.cpu_count()} cores busy.")
    parts.append(
        f"It is {target.rate / lock.rate:.0f}× the reference's lockstep batches of {LOCKSTEP_BATCH} "
        f"({lock.rate:,.0f} calls/s, capped at {lock.ideal:,.0f} by the {1000 * latency:.0f} ms barrier "
        "per batch).")
    top = by.get("reflectune engine @ 1024")
    if top is not None:
        client_busy = top.cpu_s / top.wall_s
        server_busy = (top.server_cpu_s or 0.0) / top.wall_s
        why = (f"our event loop waited for a core {100 * _starved(top):.0f} % of the run"
               if _starved(top) > 0.25 else "each side is one single-threaded process")
        parts.append(
            f"At 1024 in flight ({top.rate:,.0f} calls/s, {100 * top.rate / top.ideal:.0f} % of "
            f"{top.ideal:,.0f}) CPU, not latency, sets the rate ({why}; client busy "
            f"{100 * client_busy:.0f} %, server {100 * server_busy:.0f} % of the wall time); the median call "
            f"took {1000 * _pct(top.latencies, 0.5):.0f} ms instead of {1000 * latency:.0f}.")
    rec = next((r for r in results if r.name.startswith("recycle pipeline")), None)
    if rec is not None:
        parts.append(
            f"The full recycle pipeline made {rec.rate:,.0f} calls/s at {rec.cpu_ms:.2f} CPU-ms per call, "
            "counting everything in the `recycle()` call: the validating pass over the input, rendering, "
            "strict parsing, ordered output writing, the manifest and a cold connection pool.")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=4000, help="timed calls per engine run (default 4000)")
    p.add_argument("--lockstep-calls", type=int, default=500, help="timed calls of the lockstep baseline")
    p.add_argument("--recycle-rows", type=int, default=2000, help="rows through recycle() (max 3111)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--latency", type=float, default=0.1, help="server latency in seconds (default 0.1)")
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best is kept")
    p.add_argument("--max-load", type=float, default=2.5, help="wait until the 1-minute load is at most this")
    p.add_argument("--max-wait", type=float, default=1500.0, help="seconds to wait for the load to drop")
    p.add_argument("--profile", action="store_true", help="always profile the engine at concurrency 256")
    p.add_argument("--quick", action="store_true", help="small N, one repeat, no load wait, no RESULTS.md")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.lockstep_calls, args.recycle_rows, args.repeat = 800, 100, 300, 1
    if TARGET_CONCURRENCY not in args.concurrency:
        args.concurrency.append(TARGET_CONCURRENCY)
    write = not (args.quick or args.no_write)
    rows = load_rows()
    args.recycle_rows = min(args.recycle_rows, len(rows))

    if not args.quick:
        wait_for_quiet(args.max_load, max_wait_s=args.max_wait)
    load_start = load1()
    info = machine_info(["aiohttp"])
    print(f"load at start {load_start:.2f}; {args.calls} calls per engine run, latency {args.latency:g} s")

    results: list[Result] = []
    loads: list[float] = [load_start]
    profile: Profile | None = None
    with tempfile.TemporaryDirectory(prefix="rt-bench-") as tmpdir, \
            running_server(latency=args.latency) as srv:
        tmp = Path(tmpdir)
        # warm the imports, templates and the server once, untimed
        _recycle_run(srv, rows, 20, "warm", tmp, args.latency)

        def measure(run: Callable[[int], Result]) -> None:
            loads.append(load1())
            r = best_of(args.repeat, run)
            row = table_rows([r])[0]
            print(f"  {r.name:<50} {r.rate:>7,.0f} calls/s {100 * r.rate / r.ideal:>4.0f} %  "
                  f"{r.cpu_ms:.3f} CPU-ms/call  latency {row[8]} ms  cpu-wait {row[9]}  {row[10]}",
                  flush=True)
            results.append(r)

        measure(lambda i: asyncio.run(
            _lockstep_run(srv, rows, args.lockstep_calls, f"lock{i}", args.latency)))
        measure(lambda i: asyncio.run(_bare_run(srv, rows, TARGET_CONCURRENCY, args.calls, f"bare{i}",
                                                args.latency)))
        for c in sorted(args.concurrency):
            measure(lambda i, c=c: asyncio.run(
                _engine_run(srv, rows, c, args.calls, f"c{c}r{i}", tmp, args.latency)))
        measure(lambda i: _recycle_run(srv, rows, args.recycle_rows, f"rec{i}", tmp, args.latency))
        loads.append(load1())
        bookkeeping = bookkeeping_cost(rows, args.calls, tmp)
        target = next(r for r in results if r.name == f"reflectune engine @ {TARGET_CONCURRENCY}")
        missed = target.rate < TARGET_FRACTION * target.ideal or target.cpu_ms > TARGET_CPU_MS
        if missed or args.profile:
            print(f"profiling the engine at concurrency {TARGET_CONCURRENCY} (cProfile)...", flush=True)
            profile = profile_engine(srv, rows, args.calls, tmp, args.latency, 1000 * target.cpu_ms)

    table = markdown_table(HEADERS, table_rows(results), "lrrrrrrrrrl")
    book = markdown_table(["step around the HTTP call", "CPU µs per call", "wall µs per call"],
                          [[name, f"{cpu:.1f}", f"{wall:.1f}"] for name, cpu, wall in bookkeeping])
    engine_steps = [b for b in bookkeeping if "_payload" not in b[0]]  # the bare client builds it too
    worst = max(engine_steps, key=lambda b: b[1])
    book_text = (
        f"The steps the engine adds come to {sum(b[1] for b in engine_steps):.0f} CPU µs per call; the "
        f"largest is {worst[0]}: {worst[1]:.0f} µs CPU and {worst[2]:.0f} µs wall, spent on the event "
        "loop, which serves no connection meanwhile.")
    load_text = (f"{load_start:.2f} at start; {min(loads):.2f}–{max(loads):.2f} sampled before each "
                 "configuration (our own client and server add up to 2)")
    print("\n" + table + "\n\n" + book + "\n\n" + book_text + f"\n\n1-minute load: {load_text}")
    if profile is not None:
        print("\n" + profile.raw + "\n" + profile.by_category + "\n\n" + profile.ours)
    text = reading(results, args.latency)
    print("\n" + text)
    if not write:
        return 0

    body = [
        "## Oracle throughput (issue #2, item 10)",
        "",
        f"`python benchmarks/oracle_throughput.py` against the loopback OpenAI-compatible server "
        f"(`reflectune.testing.server`, own process) with a fixed {1000 * args.latency:.0f} ms latency. "
        f"Engine and bare rows: {args.calls:,} distinct requests gathered at once, after one untimed wave "
        f"of warm-up calls; the engine commits every result to SQLite. Lockstep: {args.lockstep_calls} "
        f"calls. Recycle: {args.recycle_rows:,} rows, timed around the whole `recycle()` call. Best of "
        f"{args.repeat} runs. Client CPU: `time.process_time()` of the benchmark process; server CPU: "
        "`/proc/PID/stat`; latency: as the client saw it; *waiting for a CPU*: run-queue wait of the "
        "event-loop thread (`/proc/PID/schedstat`) as a share of the wall time, i.e. how much the "
        "shared machine held us back.",
        "",
        info_lines(info | {"1-minute load": load_text}),
        "",
        table,
        "",
        text,
        "",
        f"The engine's synchronous bookkeeping, measured alone on {args.calls:,} requests (no event loop):",
        "",
        book,
        "",
        book_text,
    ]
    if profile is not None:
        pr = profile.result
        body += [
            "",
            f"### Where the client CPU goes (cProfile, CPU clock, engine @ {TARGET_CONCURRENCY}, "
            f"{args.calls:,} calls)",
            "",
            f"Under the profiler: {pr.rate:,.0f} calls/s, {pr.cpu_ms:.3f} CPU-ms per call. The profiler "
            "inflates Python-heavy code, so the ≈ µs columns rescale each share to the unprofiled "
            f"{target.cpu_ms:.3f} CPU-ms per call. 'Entries' count coroutine resumptions too.",
            "",
            profile.by_category,
            "",
            "Top functions by own time:",
            "",
            profile.top,
            "",
            "reflectune's own functions, by cumulative time:",
            "",
            profile.ours,
        ]
    write_block(BLOCK, "\n".join(body))
    print(f"\nwrote the {BLOCK} block of {Path(__file__).resolve().parent / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
