"""Format forcing against real servers no one here wrote, serving the embedded SmolLM2-135M GGUF.

- llama.cpp's C++ ``llama-server`` continues a trailing assistant message and obeys ``grammar``;
- llama-cpp-python's server obeys ``grammar`` but answers a trailing assistant message with a new
  turn, so prefill there must fail in one line, before any reflection is made.

``scripts/install_servers.sh`` installs both under ``$REFLECTUNE_SERVERS`` (default
``~/.cache/reflectune/servers``). Missing, these tests skip and say why, unless
``REFLECTUNE_REQUIRE_REAL_SERVER=1`` (CI sets it), when they fail. Each server starts once per
module on a free loopback port and is killed at the end. Budgets are small (``max_tokens`` 96,
critique 24) to keep the file fast; a section cut off by them fails to parse, honestly, and the
tests check that this is the only way a forced reflection fails.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from reflectune.config import EngineConfig, OracleConfig, RecycleConfig, SamplingConfig
from reflectune.markers import SECTION_MARKERS
from reflectune.models.source import embedded_gguf_path
from reflectune.oracles.grammar import format_constraint
from reflectune.prompts.parse import ParseResult, parse_reflection
from reflectune.recycling.run import recycle
from reflectune.testing.real_servers import LLAMA_CPP_PYTHON, LLAMA_SERVER, ServerFailed, serving
from tests.conftest import ALPACA, run_cli

REQUIRED = os.environ.get("REFLECTUNE_REQUIRE_REAL_SERVER") == "1"
START_TIMEOUT_S = 90.0
CUT_OFF = "generation cut off (finish_reason=length)"


@dataclass(frozen=True)
class RealServer:
    name: str
    base_url: str
    log: Path


def _missing(what: str, path: Path) -> None:
    reason = f"{what} is not installed at {path}: run scripts/install_servers.sh"
    if REQUIRED:
        pytest.fail(f"{reason} (REFLECTUNE_REQUIRE_REAL_SERVER=1)")
    pytest.skip(reason)


def _serve(name: str, gguf: Path, log: Path) -> Iterator[RealServer]:
    """Run server ``name`` until the module ends."""
    try:
        with serving(name, gguf, log, timeout_s=START_TIMEOUT_S) as base_url:
            yield RealServer(name, base_url, log)
    except ServerFailed as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def gguf() -> Path:
    return embedded_gguf_path()


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    if not os.access(LLAMA_SERVER, os.X_OK):
        _missing("llama.cpp's llama-server", LLAMA_SERVER)
    yield from _serve("llama-server", gguf, tmp_path_factory.mktemp("llama-server") / "server.log")


@pytest.fixture(scope="module")
def llama_cpp_python(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    if not os.access(LLAMA_CPP_PYTHON, os.X_OK):
        _missing("llama-cpp-python[server]", LLAMA_CPP_PYTHON.parents[1])
    yield from _serve("llama-cpp-python", gguf, tmp_path_factory.mktemp("llama-cpp-python") / "server.log")


def _recycle(server: RealServer, forcing: Literal["prefill", "grammar"], run: Path, **options: Any) -> None:
    config = RecycleConfig(
        oracle=OracleConfig(spec="openai:smollm2", base_url=server.base_url, forcing=forcing, timeout=120),
        sampling=SamplingConfig(max_tokens=96, critique_tokens=24),
        engine=EngineConfig(max_failure_rate=1, concurrency=8), **options)  # 8: twice the server's slots
    recycle(ALPACA, config=config, run_dir=run)


def _reflections(run: Path) -> list[dict[str, Any]]:
    """The stored calls that asked for sections, with their request."""
    with sqlite3.connect(f"file:{run / 'store.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT stage, status, content, finish_reason, forced, error, request FROM calls")
        calls = [dict(zip(("stage", "status", "content", "finish_reason", "forced", "error", "request"), row,
                          strict=True)) for row in rows]
    for call in calls:
        call["request"] = json.loads(call["request"])
        call["forced"] = json.loads(call["forced"] or "[]")
    return [call for call in calls if call["request"]["sections"]]


def _variants(run: Path) -> list[tuple[str, str, str | None]]:
    """(variant, status, reason) of every reflected variant (Q, A and QA) in variants.jsonl."""
    out = []
    for line in (run / "variants.jsonl").read_text().splitlines():
        for name, variant in json.loads(line)["variants"].items():
            if name != "ori":
                out.append((name, variant["status"], variant.get("reason")))
    return out


def _parse(call: dict[str, Any]) -> ParseResult:
    sections = call["request"]["sections"]
    return parse_reflection(call["content"], sections, [f"f{i}" for i in range(len(sections))],
                            finish_reason=call["finish_reason"])


def _parses(call: dict[str, Any]) -> bool:
    return _parse(call).ok


def _check_failures(run: Path, allowed: tuple[str, ...] = (CUT_OFF,)) -> None:
    """Every reflected variant parsed, was skipped, or failed for an ``allowed`` reason."""
    variants = _variants(run)
    assert variants
    failed = [(reason or "").removeprefix("input merge failed: ") for _, status, reason in variants
              if status == "parse_failed"]
    assert all(reason in allowed for reason in failed), failed
    assert all(status in ("ok", "rejected", "parse_failed", "skipped") for _, status, _ in variants)


@pytest.mark.slow
def test_prefill_against_llama_server_writes_the_markers_and_parses(llama_server: RealServer,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    _recycle(llama_server, "prefill", run, limit=3)
    calls = _reflections(run)
    assert calls and all(call["status"] == "ok" for call in calls), [c["error"] for c in calls]
    for call in calls:
        sections, content, forced = call["request"]["sections"], call["content"], call["forced"]
        written = [marker for marker in forced if marker in sections]
        assert written == sections[:len(written)] and written, forced  # in order, the first at least
        for marker in written:  # each marker the oracle wrote stands once, on its own line
            assert content.count(marker) == 1
            assert f"\n{marker}\n" in content or content.startswith(f"{marker}\n")  # an empty critique
        if call["finish_reason"] == "length":  # a section ran out of the 96 tokens
            assert not _parses(call)
            continue
        assert written == sections, content
        # Over HTTP nothing stops a model from ending a section at once (the local oracle bans EOS
        # and "[" until a section has text): such a section is empty, and the only other failure.
        reason = _parse(call).reason
        assert reason is None or re.fullmatch(r"empty \[[A-Za-z ]+\] section", reason), (reason, content)
    assert sum(map(_parses, calls)) >= len(calls) // 2, [c["content"][-200:] for c in calls]
    _check_failures(run, allowed=(CUT_OFF, *(f"empty {marker} section" for marker in SECTION_MARKERS)))


@pytest.mark.slow
@pytest.mark.parametrize("server_name", ["llama_server", "llama_cpp_python"])
def test_grammar_constrains_the_answer_and_it_parses(server_name: str, request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    server: RealServer = request.getfixturevalue(server_name)
    run = tmp_path / "run"
    # llama-cpp-python answers one request at a time: the response phase alone keeps it quick
    phases = ("instruction", "response") if server_name == "llama_server" else ("response",)
    _recycle(server, "grammar", run, limit=3, phases=phases)
    calls = _reflections(run)
    assert calls and all(call["status"] == "ok" for call in calls), [c["error"] for c in calls]
    for call in calls:
        req = call["request"]
        if call["finish_reason"] == "length":
            continue
        constraint = format_constraint(req["sections"], critique_tokens=req["critique_tokens"],
                                       max_tokens=req["max_tokens"])
        # the server obeyed the grammar: its answer is in the constraint's language, so it parses
        assert re.fullmatch(constraint.regex, call["content"]), call["content"]
        assert _parses(call)
    assert sum(map(_parses, calls)) >= (len(calls) + 1) // 2
    _check_failures(run)


def test_prefill_against_llama_cpp_python_is_refused_in_one_line(llama_cpp_python: RealServer,
                                                                tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli("recycle", str(ALPACA), "--oracle", "openai:smollm2", "--base-url",
                   llama_cpp_python.base_url, "--forcing", "prefill", "--limit", "3", "--max-tokens", "96",
                   "--critique-tokens", "24", "--run-dir", str(run), "-q", timeout=120)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines()
            if "did not continue a trailing assistant message" in line]
    assert said and all("use --forcing grammar or --forcing off" in line for line in said), proc.stderr
    assert not [call for call in _reflections(run) if call["status"] == "ok"]  # nothing half-forced kept
