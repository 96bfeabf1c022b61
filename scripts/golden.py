"""Golden outputs of the reflectune CLI, to check a refactor byte for byte.

A refactor must not change what the commands write or print. This script runs a fixed set of small,
offline CLI cases (recycle, score, select, generate, judge, train --dry-run, bad input rows, --help)
and writes everything they produce into one folder, normalised so that two runs of the *same* code
give identical trees: run it on the code before the refactor and on the code after, then ``diff -r``.

Usage (from the repository root, with the project's virtualenv)::

    PYTHONPATH=/tmp/before/src .venv/bin/python scripts/golden.py /tmp/golden-before
    PYTHONPATH=/work/main/src  .venv/bin/python scripts/golden.py /tmp/golden-after
    diff -r /tmp/golden-before /tmp/golden-after

``PYTHONPATH`` picks the package under test (check it with
``python -c "import reflectune; print(reflectune.__file__)"``; the script prints it too). The output
folder must not exist or be empty (``--force`` empties it first).

How it works:

- Every command is ``python -m reflectune ...`` in a subprocess, with this interpreter and environment
  plus ``HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1``, a dummy ``OPENAI_API_KEY`` and a fixed terminal
  width, run from inside its case folder with relative paths.
- OpenAI-compatible calls go to two loopback servers (``python -m reflectune.testing.server``), whose
  answers are pure functions of the messages: a clean one, and an imperfect one (unmarked answers,
  injected 500 / 429 / truncated-JSON / cut-off / empty answers, unreadable judge reviews). They
  listen on fixed ports (``--port`` and ``--port + 1``) because the base URL enters ``config_hash``
  in ``run.json``: use the same ``--port`` for the runs you compare. Each case starts them with reset
  counters and saves their ``/stats`` (request counts by message hash, sorted; no in-flight
  counts) as ``server-*.json``.
- Normalisation: ``store.sqlite*``, ``run.lock`` and ``*.tmp`` are deleted; ``run.json`` and
  ``judge.json`` lose their volatile fields (timestamps, elapsed times, throughput, versions,
  in-flight counts) and the output folder's path becomes ``<OUT>``. Datasets, ``variants.jsonl``,
  ``scores.jsonl``, ``judgments.jsonl``, answers and PNG charts are kept byte for byte. Since a
  later command in the same run folder rewrites its manifest (a resume, a second ``select``), each
  new state of a manifest is also kept, normalised, as ``<case>/_manifests/<step>-<path>``.
- ``<case>/cli.txt`` records each command line, exit code, stdout and stderr, with timings and rates
  masked, tqdm progress bars dropped (they appear only when a model is converted for the first
  time), and the padding of Rich tables shortened (runs of spaces become two, rules one character:
  a column's width follows its widest, possibly masked, cell).
- The script exits 1 when a command's exit code is not the expected one (it still writes every
  output); ``--only CASE`` runs a subset while working on one area.

Scoring uses the embedded SmolLM2-135M student on 4 rows (``--max-length 512 --dtype float32
--threads 2``, about 15 s once the model is cached) and 3 rows in Cherry mode. The whole script
takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.testing.server import ServerHandle

SHARED_DATA = Path("/work/shared/data")
ALPACA_3111 = "alpaca_cherry5pct_3111.json"
DEFAULT_PORT = 18571
COLUMNS = "160"
COMMAND_TIMEOUT_S = 600.0

#: The imperfect server's options (see reflectune.testing.server.ServerOptions).
IMPERFECT = {
    "bad_format_ratio": "0.25",
    "judge_malformed_ratio": "0.3",
    "faults": "500:0.05,malformed:0.05,429:0.03,length:0.05,empty:0.03",
}

#: Keys dropped at any depth from run.json / judge.json: they change from run to run.
VOLATILE_KEYS = frozenset({
    "created_at", "updated_at", "versions", "elapsed_s", "seconds", "compute_seconds",
    "load_seconds", "tokens_per_s", "latency_s", "in_flight", "max_in_flight",
})  # fmt: skip
NORMALISED_JSON = ("run.json", "judge.json")
#: Per case, every new state of a manifest after each command: ``_manifests/<step>-<path>``.
MANIFESTS = "_manifests"
DELETED_GLOBS = ("store.sqlite*", "run.lock", "*.tmp")

#: Rows with defects for the bad-record case: a missing field, an empty instruction, a line that is
#: not JSON and a non-string output, between good rows.
BAD_ROWS = (
    '{"instruction": "Say hello.", "input": "", "output": "Hello!"}\n'
    '{"instruction": "Name a primary colour.", "input": ""}\n'
    '{"instruction": "", "input": "", "output": "An answer without a question."}\n'
    '{"instruction": "Count to three.", "input": "", "output": "1, 2, 3."}\n'
    "this line is not JSON\n"
    '{"instruction": "Add 2 and 3.", "input": "", "output": 5}\n'
    '{"instruction": "Spell cat backwards.", "input": "", "output": "tac"}\n'
)

_SECONDS = re.compile(r"\b\d[\d,]*(?:\.\d+)? ?s\b")
_SCORE_RATE = re.compile(r"(tokens / tokens per s\W+[\d,]+ / )[\d,.]+")
_TQDM = re.compile(r"\d+%\|")
_FONT_CACHE = re.compile(r"^Matplotlib is building the font cache.*$", re.MULTILINE)
_BOX_RUNS = re.compile(r"([━─═])\1+")
_SPACE_RUNS = re.compile(r" {2,}")


@dataclass
class Context:
    """Where outputs go and how commands reach the package under test and the servers."""

    out: Path
    env: dict[str, str]
    clean_url: str
    imperfect_url: str
    servers: dict[str, ServerHandle] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


class Case:
    """One case folder: runs CLI commands in it and appends their transcript to ``cli.txt``."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.dir = ctx.out / name
        self.dir.mkdir(parents=True)
        self.log: list[str] = []
        self.started = time.monotonic()
        self.step = 0
        self.manifests: dict[Path, str] = {}
        for server in ctx.servers.values():
            server.reset()

    def cli(self, *args: str, raw: bool = False, expect: Sequence[int] = (0,)) -> int:
        """Run ``python -m reflectune ARGS`` here; ``raw`` keeps the output unmasked (help texts)."""
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "reflectune", *args],
            cwd=self.dir,
            env=self.ctx.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        elapsed = time.monotonic() - started
        shown = shlex.join(["reflectune", *args])
        self.ctx.timings.append((f"{self.name}: {shown}", elapsed))
        print(f"  [{elapsed:6.1f} s] rc={proc.returncode} {shown}", flush=True)
        if proc.returncode not in expect:
            self.ctx.unexpected.append(f"{self.name}: {shown} -> {proc.returncode}")
            print(f"    unexpected exit code; stderr tail:\n{proc.stderr[-2000:]}", file=sys.stderr)
        self._snapshot_manifests()
        clean = (lambda text: text) if raw else self._mask
        self.log += [
            f"$ {shown}",
            f"[exit {proc.returncode}]",
            "--- stdout",
            clean(proc.stdout).rstrip("\n"),
            "--- stderr",
            clean(proc.stderr).rstrip("\n"),
            "",
        ]
        return proc.returncode

    def _snapshot_manifests(self) -> None:
        """Keep each new state of a manifest, since a later command in the same folder rewrites it."""
        self.step += 1
        for name in NORMALISED_JSON:
            for path in sorted(self.dir.rglob(name)):
                rel = path.relative_to(self.dir)
                if rel.parts[0] == MANIFESTS:
                    continue
                text = _dumps(_scrub(json.loads(path.read_text(encoding="utf-8")), self.ctx.out))
                if self.manifests.get(rel) != text:
                    self.manifests[rel] = text
                    target = self.dir / MANIFESTS / f"{self.step:02d}-{'__'.join(rel.parts)}"
                    target.parent.mkdir(exist_ok=True)
                    target.write_text(text, encoding="utf-8")

    def _mask(self, text: str) -> str:
        text = _drop_progress(text)
        text = _FONT_CACHE.sub("", text)
        text = _SCORE_RATE.sub(r"\1<RATE>", text)
        text = _SECONDS.sub("<T> s", text)
        text = mask_paths(text, self.ctx.out)
        # Rich pads cells and centres titles to the widest cell: shorten the padding (runs of 2+
        # spaces become 2, so indented cells stay visible) and the horizontal rules.
        lines = [_BOX_RUNS.sub(r"\1", _SPACE_RUNS.sub("  ", line)).rstrip() for line in text.split("\n")]
        return "\n".join(lines)

    def finish(self) -> None:
        """Save the servers' counters and the transcript, then normalise the folder."""
        for label, server in self.ctx.servers.items():
            stats = {k: v for k, v in server.stats().items() if k not in VOLATILE_KEYS}
            if stats.get("requests"):  # by_key is in arrival order: sort it
                text = json.dumps(stats, indent=2, sort_keys=True) + "\n"
                (self.dir / f"server-{label}.json").write_text(text, encoding="utf-8")
        (self.dir / "cli.txt").write_text("\n".join(self.log), encoding="utf-8")
        normalise(self.dir, self.ctx.out)
        print(f"  {self.name} done in {time.monotonic() - self.started:.1f} s", flush=True)


def _drop_progress(text: str) -> str:
    """Remove tqdm bars (``\\r``-separated updates); a line made only of bars disappears."""
    lines = []
    for line in text.split("\n"):
        if "\r" not in line and not _TQDM.search(line):
            lines.append(line)
            continue
        kept = [seg for seg in line.split("\r") if seg.strip() and not _TQDM.search(seg)]
        if kept:
            lines.append(kept[-1])
    return "\n".join(lines)


def mask_paths(text: str, out: Path) -> str:
    """Replace the output folder's path (resolved or not) with ``<OUT>``."""
    for path in sorted({str(out), str(out.resolve())}, key=len, reverse=True):
        text = text.replace(path, "<OUT>")
    return text


def _scrub(value: Any, out: Path) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, out) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_scrub(v, out) for v in value]
    if isinstance(value, str):
        return mask_paths(value, out)
    return value


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(_dumps(data), encoding="utf-8")


def normalise(folder: Path, out: Path) -> None:
    """Delete stores, locks and temporaries; strip volatile fields from the JSON manifests."""
    for pattern in DELETED_GLOBS:
        for path in folder.rglob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    for name in NORMALISED_JSON:
        for path in folder.rglob(name):
            _write_json(path, _scrub(json.loads(path.read_text(encoding="utf-8")), out))


# ----------------------------------------------------------------------------------------- servers


def _start_server(port: int, env: dict[str, str], options: dict[str, str]) -> ServerHandle:
    cmd = [sys.executable, "-m", "reflectune.testing.server", "--host", "127.0.0.1", "--port", str(port)]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", value]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30.0)
    line = process.stdout.readline().strip() if ready else ""
    if not line.startswith("PORT "):
        process.kill()
        process.wait()
        raise SystemExit(f"test server on port {port} did not start (got {line!r}); is the port free?")
    return ServerHandle(process, "127.0.0.1", int(line.split()[1]))


@contextmanager
def servers(ctx: Context, port: int) -> Iterator[None]:
    """The clean server on ``port`` and the imperfect one on ``port + 1``, for the ``with`` block."""
    try:
        ctx.servers["clean"] = _start_server(port, ctx.env, {})
        ctx.servers["imperfect"] = _start_server(port + 1, ctx.env, IMPERFECT)
        yield
    finally:
        for server in ctx.servers.values():
            server.stop()
        ctx.servers.clear()


# ------------------------------------------------------------------------------------------- cases


def case_help(ctx: Context) -> None:
    """Every command's --help: the CLI's surface (at a fixed width of COLUMNS)."""
    case = Case(ctx, "00_help")
    case.cli("--help", raw=True)
    case.cli("--version")
    for command in ("recycle", "score", "select", "train", "generate", "judge", "models", "demo"):
        case.cli(command, "--help", raw=True)
    case.finish()


def case_recycle_fake(ctx: Context) -> None:
    """The 20 demo rows with the fake oracle: default, resumed, response-only, rule merge, dry run."""
    case = Case(ctx, "01_recycle_fake")
    demo = "../inputs/demo_alpaca20.json"
    case.cli("recycle", demo, "--oracle", "fake", "--run-dir", "run")
    case.cli("recycle", demo, "--oracle", "fake", "--run-dir", "run")  # resume: all from the store
    case.cli("recycle", demo, "--oracle", "fake", "--run-dir", "run-response", "--phases", "response")
    case.cli("recycle", demo, "--oracle", "fake", "--run-dir", "run-rule", "--input-merge", "rule",
             "--output-format", "jsonl")  # fmt: skip
    case.cli("recycle", demo, "--oracle", "fake", "--run-dir", "run-dry", "--dry-run")
    case.finish()


def case_recycle_openai(ctx: Context) -> None:
    """200 rows of the 3,111-row Alpaca file through the clean loopback server, in three formats."""
    case = Case(ctx, "02_recycle_openai")
    source = str(SHARED_DATA / ALPACA_3111)
    common = ("--limit", "200", "--oracle", "openai:golden-oracle", "--base-url", ctx.clean_url)
    case.cli("recycle", source, *common, "--run-dir", "run-json")
    case.cli("recycle", source, *common, "--run-dir", "run-jsonl", "--output-format", "jsonl")
    case.cli("recycle", source, *common, "--run-dir", "run-parquet", "--output-format", "parquet")
    case.finish()


def case_recycle_imperfect(ctx: Context) -> None:
    """The same 200 rows through the imperfect server (retries, parse failures), then resumed."""
    case = Case(ctx, "03_recycle_imperfect")
    source = str(SHARED_DATA / ALPACA_3111)
    args = ("recycle", source, "--limit", "200", "--oracle", "openai:golden-oracle",
            "--base-url", ctx.imperfect_url, "--run-dir", "run")  # fmt: skip
    case.cli(*args)
    case.cli(*args)  # resume: nothing asked again
    case.cli(*args, "--retry-failed")
    case.finish()


def case_score_select(ctx: Context) -> None:
    """The embedded student scores 4 loopback-recycled rows; select in several ways; Cherry mode.

    The rows are recycled by the clean server rather than the fake oracle: the selection rule rejects
    every fake rewrite, which would leave all the selected files empty.
    """
    case = Case(ctx, "04_score_select")
    small = ("--dtype", "float32", "--threads", "2")
    case.cli("recycle", "../inputs/demo_alpaca20.json", "--limit", "4", "--oracle", "openai:golden-oracle",
             "--base-url", ctx.clean_url, "--run-dir", "run")  # fmt: skip
    case.cli("score", "run", "--student", "embedded", "--max-length", "512", *small)
    case.cli("score", "run", "--student", "embedded", "--max-length", "512", *small)  # resume: from store
    case.cli("select", "run")
    case.cli("select", "run", "--no-below-one-filter", "--top-k", "2", "-o", "run/top2.jsonl")
    case.cli("select", "run", "--no-below-one-filter", "--metric", "loss_ratio", "--top-k", "50%",
             "-o", "run/loss_ratio.json")  # fmt: skip
    case.cli("select", "../inputs/demo3.json", "--ifd-top-k", "2", "--student", "embedded",
             "--max-length", "128", *small, "--run-dir", "cherry", "-o", "cherry/cherry.json")  # fmt: skip
    case.finish()


def case_generate_judge(ctx: Context) -> None:
    """Two generators on all five test sets (2 prompts each), then three judge runs."""
    case = Case(ctx, "05_generate_judge")
    common = ("--testset", "all", "--limit", "2", "--base-url", ctx.clean_url)
    case.cli("generate", "--model", "openai:model-a", *common, "--run-dir", "gen-a")
    # same answers cut at 20 tokens, so the judge sees two different models
    case.cli("generate", "--model", "openai:model-b", *common, "--max-tokens", "20", "--run-dir", "gen-b")
    case.cli("generate", "--model", "openai:model-a", "--testset", "vicuna", "--limit", "3",
             "--base-url", ctx.clean_url, "--run-dir", "gen-alpaca", "--alpaca-eval")  # fmt: skip
    pair = ("gen-a/answers.jsonl", "gen-b/answers.jsonl")
    case.cli("judge", *pair, "--judge", "openai:judge-x", "--base-url", ctx.clean_url, "--run-dir", "judge")
    case.cli("judge", *pair, "--judge", "openai:judge-x", "--base-url", ctx.clean_url, "--mode", "pair-v2",
             "--run-dir", "judge-pair")  # fmt: skip
    case.cli("judge", *pair, "--judge", "openai:judge-x", "--base-url", ctx.imperfect_url,
             "--run-dir", "judge-imperfect", "--no-chart", "--no-by-category")  # fmt: skip
    case.cli("judge", *pair, "--judge", "openai:judge-x", "--base-url", ctx.imperfect_url,
             "--run-dir", "judge-imperfect", "--no-chart", "--retry-unparsed")  # fmt: skip
    case.finish()


def case_bad_records(ctx: Context) -> None:
    """Defective input rows: stop with exit 2, or skip them into rejects.jsonl."""
    case = Case(ctx, "06_bad_records")
    bad = "../inputs/bad_rows.jsonl"
    case.cli("recycle", bad, "--oracle", "fake", "--run-dir", "run-error", expect=(2,))
    case.cli("recycle", bad, "--oracle", "fake", "--run-dir", "run-skip", "--on-bad-record", "skip")
    case.cli("recycle", "../inputs/missing.json", "--oracle", "fake", "--run-dir", "run-missing",
             expect=(1, 2))  # fmt: skip
    case.cli("recycle", "../inputs/demo_alpaca20.json", "--oracle", "nosuch", "--run-dir", "run-oracle",
             expect=(1, 2))  # fmt: skip
    case.finish()


def case_train_plan(ctx: Context) -> None:
    """The training plan of the demo rows (no weights loaded)."""
    case = Case(ctx, "07_train_dry_run")
    case.cli("train", "../inputs/demo_alpaca20.json", "--base", "embedded", "-o", "out", "--dry-run",
             "--max-length", "256", "--global-batch", "8")  # fmt: skip
    case.finish()


# -------------------------------------------------------------------------------------------- main


def _prepare_inputs(out: Path) -> None:
    """Copy the packaged demo rows (so paths are under <OUT>) and write the small synthetic inputs."""
    import importlib.util

    spec = importlib.util.find_spec("reflectune")
    assert spec is not None and spec.origin is not None
    demo = Path(spec.origin).parent / "data" / "demo_alpaca20.json"
    inputs = out / "inputs"
    inputs.mkdir(parents=True)
    shutil.copyfile(demo, inputs / "demo_alpaca20.json")
    rows = json.loads(demo.read_text(encoding="utf-8"))[:3]
    _write_json(inputs / "demo3.json", rows)
    (inputs / "bad_rows.jsonl").write_text(BAD_ROWS, encoding="utf-8")


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OPENAI_API_KEY="sk-golden-dummy",
        COLUMNS=COLUMNS,
        LINES="50",
        PYTHONUNBUFFERED="1",
    )
    for name in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    env["NO_COLOR"] = "1"
    return env


CASES = {
    "help": case_help,
    "recycle_fake": case_recycle_fake,
    "recycle_openai": case_recycle_openai,
    "recycle_imperfect": case_recycle_imperfect,
    "score_select": case_score_select,
    "generate_judge": case_generate_judge,
    "bad_records": case_bad_records,
    "train_dry_run": case_train_plan,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="output folder (must not exist, or be empty)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="clean server port; imperfect: +1")
    parser.add_argument("--force", action="store_true", help="empty the output folder first")
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args(argv)

    out: Path = args.out.absolute()
    if out.exists() and any(out.iterdir()):
        if not args.force:
            parser.error(f"{out} is not empty (use --force to empty it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    env = _environment()
    probe = subprocess.run(
        [sys.executable, "-c", "import reflectune; print(reflectune.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(f"reflectune under test: {probe.stdout.strip()}", flush=True)
    if not SHARED_DATA.joinpath(ALPACA_3111).is_file():
        parser.error(f"missing {SHARED_DATA / ALPACA_3111}")

    started = time.monotonic()
    _prepare_inputs(out)
    base = "http://127.0.0.1:{}/v1"
    ctx = Context(out, env, base.format(args.port), base.format(args.port + 1))
    with servers(ctx, args.port):
        for name, run_case in CASES.items():
            if args.only is None or name in args.only:
                print(f"{name}:", flush=True)
                run_case(ctx)
    total = time.monotonic() - started
    slowest = sorted(ctx.timings, key=lambda item: -item[1])[:5]
    print("slowest commands:\n" + "\n".join(f"  {s:6.1f} s  {what}" for what, s in slowest))
    print(f"golden outputs in {out} ({total:.1f} s)")
    if ctx.unexpected:
        print("unexpected exit codes:\n  " + "\n  ".join(ctx.unexpected), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
