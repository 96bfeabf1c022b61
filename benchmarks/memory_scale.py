"""Memory at scale: the recycle process's peak RSS must not grow with the number of rows.

Issue #5, item 7. A synthetic JSONL of short random pairs (seeded) is recycled with
``--phases response`` against the loopback server (latency 0, its own process) at several sizes. Each
recycle runs as a child process; its peak RSS is the kernel's ``ru_maxrss`` for that child, read with
``os.wait4``, so nothing samples and nothing is missed. Target: under 400 MB, and flat in the row count.

Run: ``python benchmarks/memory_scale.py [--sizes 50000,200000] [--no-write]``. The figures go into
the ``memory_scale`` block of ``benchmarks/RESULTS.md``. With ``--trace N`` it instead recycles N rows
in-process under ``tracemalloc`` and prints the biggest allocation sites still held at the end: the
place to look if the peak ever grows with the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import info_lines, machine_info, markdown_table, write_block
from reflectune.testing.server import running_server

TARGET_MB = 400
WORDS = ["".join(random.Random(i).choices(string.ascii_lowercase, k=random.Random(-i).randint(2, 9)))
         for i in range(2000)]


def make_dataset(path: Path, rows: int, seed: int = 5) -> None:
    """``rows`` short random (instruction, output) pairs; the same seed gives the same bytes."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            instruction = " ".join(rng.choices(WORDS, k=rng.randint(4, 16))).capitalize() + f"? #{i}"
            output = " ".join(rng.choices(WORDS, k=rng.randint(10, 60))) + "."
            fh.write(json.dumps({"instruction": instruction, "input": "", "output": output}) + "\n")


def recycle_child(src: Path, work: Path, base_url: str) -> dict[str, float]:
    """Recycle ``src`` in a child process; return wall time and the child's peak RSS."""
    cmd = [sys.executable, "-m", "reflectune", "recycle", str(src), "-o", str(work / "out.jsonl"),
           "--oracle", "openai:bench", "--base-url", base_url, "--phases", "response",
           "--run-dir", str(work / "run"), "-q"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"recycle failed (rc {proc.returncode}): {err[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def measure(sizes: list[int]) -> tuple[list[dict[str, float]], dict[str, str]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="memory_scale-") as tmp, running_server(latency=0.0) as server:
        for rows in sizes:
            work = Path(tmp) / f"n{rows}"
            work.mkdir()
            src = work / "data.jsonl"
            make_dataset(src, rows)
            server.reset()
            figures = recycle_child(src, work, server.base_url)
            stats = server.stats()
            out_rows = sum(1 for _ in (work / "out.jsonl").open("rb"))
            if out_rows != rows:
                raise SystemExit(f"{rows} rows in, {out_rows} out")
            figures |= {"rows": rows, "calls": stats["completed"],
                        "calls_per_s": stats["completed"] / figures["wall_s"],
                        "input_mb": src.stat().st_size / 1e6,
                        "store_mb": (work / "run" / "store.sqlite").stat().st_size / 1e6}
            print(f"{rows:>8,} rows: peak RSS {figures['peak_rss_mb']:.0f} MB, {figures['wall_s']:.0f} s, "
                  f"{figures['calls_per_s']:.0f} calls/s", flush=True)
            results.append(figures)
            for leftover in work.rglob("*"):  # free the disk between sizes
                if leftover.is_file():
                    leftover.unlink()
    info = machine_info(["reflectune", "aiohttp"])
    info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() or "n/a"
    return results, info


def report(results: list[dict[str, float]], info: dict[str, str]) -> str:
    table = markdown_table(
        ["rows", "peak RSS (MB)", "wall (s)", "calls/s", "input (MB)", "store (MB)"],
        [[f"{r['rows']:,}", f"{r['peak_rss_mb']:.0f}", f"{r['wall_s']:.0f}", f"{r['calls_per_s']:.0f}",
          f"{r['input_mb']:.1f}", f"{r['store_mb']:.0f}"] for r in results])
    low, high = results[0], results[-1]
    growth = high["peak_rss_mb"] - low["peak_rss_mb"]
    per_row = growth * 1024 * 1024 / max(1, high["rows"] - low["rows"])
    verdict = "PASS" if high["peak_rss_mb"] < TARGET_MB and per_row < 100 else "FAIL"
    return "\n\n".join([
        "## Memory at scale (`benchmarks/memory_scale.py`)",
        "`reflectune recycle --phases response` of synthetic short pairs against the loopback server "
        "(latency 0, own process), default concurrency (64); peak RSS of the recycle process is its "
        "`ru_maxrss` (from `os.wait4`).",
        table,
        f"{verdict}: target peak RSS < {TARGET_MB} MB and flat in the row count; "
        f"{low['rows']:,} -> {high['rows']:,} rows adds {growth:+.0f} MB ({per_row:.0f} bytes/row).",
        "Machine (shared; the load is why calls/s is what it is):\n\n" + info_lines(info),
    ])


def trace(rows: int) -> None:
    """Recycle ``rows`` rows in-process under tracemalloc; print what is still held at the end."""
    import tracemalloc

    from reflectune.config import OracleConfig, RecycleConfig
    from reflectune.recycling.run import recycle

    with tempfile.TemporaryDirectory(prefix="memory_trace-") as tmp, running_server() as server:
        src = Path(tmp) / "data.jsonl"
        make_dataset(src, rows)
        config = RecycleConfig(oracle=OracleConfig(spec="openai:bench", base_url=server.base_url),
                               phases=("response",))
        tracemalloc.start(12)
        recycle(src, Path(tmp) / "out.jsonl", config=config, run_dir=Path(tmp) / "run")
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
    print(f"traced: current {current / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB")
    for stat in snapshot.statistics("traceback")[:8]:
        print(f"{stat.size / 1e6:8.2f} MB {stat.count:>8} blocks")
        for line in stat.traceback.format()[-6:]:
            print("    " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,200000", help="comma-separated row counts")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc an in-process run of N rows")
    args = parser.parse_args()
    if args.trace:
        trace(args.trace)
        return
    results, info = measure([int(s) for s in args.sizes.split(",")])
    body = report(results, info)
    print(body)
    if not args.no_write:
        print(f"wrote {write_block('memory_scale', body)}")


if __name__ == "__main__":
    main()
