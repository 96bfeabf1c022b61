"""A reasoning model's reasoning is kept apart from its answer: stored, counted, never parsed.

Each shape a server sends reasoning in (``reasoning_content``, ``reasoning``, a leading ``<think>``
block, hidden with only its tokens billed) is answered by the loopback server with a reasoning that
drafts every reflection marker with wrong text; a real ``reflectune recycle`` must parse exactly what
it parses without reasoning, store the reasoning beside the answer, and count the tokens the server
reported.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from reflectune.oracles.openai_http import OpenAIOracle
from reflectune.oracles.reasoning import join_reasoning, split_think
from reflectune.oracles.tokens import approx_tokens
from reflectune.prompts.parse import parse_reflection
from reflectune.store.calls import MIGRATIONS, CallRecord, Store
from reflectune.testing.server import HIDDEN_REASONING_TOKENS, REASONING_DRAFT, running_server
from reflectune.types import ChatRequest, Completion, Message
from tests.conftest import ALPACA, run_cli

ROWS = 3
SHAPES = ("field", "reasoning_field", "think_tag", "hidden_tokens")


def _recycle(src: Path, folder: Path, reasoning: str, *extra: str) -> dict:
    """One response-phase recycle against a server answering in ``reasoning``'s shape."""
    with running_server(reasoning=reasoning) as server:
        proc = run_cli("recycle", str(src), "-o", str(folder / "out.json"), "--oracle", "openai:test",
                       "--base-url", server.base_url, "-q", "--phases", "response", "--no-html",
                       "--run-dir", str(folder / "run"), *extra)
    db = sqlite3.connect(folder / "run" / "store.sqlite")
    calls = db.execute("SELECT content, reasoning, completion_tokens, reasoning_tokens FROM calls"
                       " ORDER BY sample_id").fetchall()
    db.close()
    rows = json.loads((folder / "out.json").read_text()) if proc.returncode == 0 else []
    return {"proc": proc, "rows": rows,
            "variants": [_sections(json.loads(line))
                         for line in (folder / "run" / "variants.jsonl").read_text().splitlines()],
            "engine": json.loads((folder / "run" / "run.json").read_text())["recycle"]["engine"],
            "calls": calls}


def _sections(line: dict) -> dict:
    """A variants.jsonl line without its call keys (they name the server's port)."""
    return {name: {k: v for k, v in variant.items() if k != "calls"}
            for name, variant in line["variants"].items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ALPACA.is_file():
        pytest.fail(f"{ALPACA} is missing: the tests need ../shared/data beside the repository")
    src = tmp_path_factory.mktemp("src") / "in.json"
    src.write_text(json.dumps(json.loads(ALPACA.read_text())[:ROWS]))
    return src


@pytest.fixture(scope="module")
def plain(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    got = _recycle(source, tmp_path_factory.mktemp("none"), "none")
    assert got["proc"].returncode == 0, got["proc"].stderr
    return got


@pytest.mark.parametrize("shape", SHAPES)
def test_each_reasoning_shape_parses_as_without_reasoning(shape: str, source: Path, plain: dict,
                                                          tmp_path: Path) -> None:
    got = _recycle(source, tmp_path, shape)
    assert got["proc"].returncode == 0, got["proc"].stderr
    # the parsed sections: the same as without reasoning; the draft's markers were never parsed
    assert got["rows"] == plain["rows"] and len(got["rows"]) == ROWS
    assert got["variants"] == plain["variants"]
    assert not any("DRAFT" in json.dumps(row) for row in got["rows"])
    # the stored answer is the plain answer; the reasoning is stored beside it
    plain_tokens = [c[2] for c in plain["calls"]]
    assert [c[0] for c in got["calls"]] == [c[0] for c in plain["calls"]]
    reasoning = [c[1] for c in got["calls"]]
    if shape == "hidden_tokens":
        assert reasoning == [None] * ROWS
    else:
        assert reasoning == [REASONING_DRAFT.strip()] * ROWS
    # the counted tokens: as the server reported (answer + reasoning), reasoning's counted once
    thinking = {"field": len(REASONING_DRAFT) // 4, "hidden_tokens": HIDDEN_REASONING_TOKENS,
                # not reported by these shapes (vLLM): estimated from the reasoning's text
                "reasoning_field": approx_tokens(REASONING_DRAFT.strip(), "test"),
                "think_tag": approx_tokens(REASONING_DRAFT.strip(), "test")}[shape]
    served = HIDDEN_REASONING_TOKENS if shape == "hidden_tokens" else len(REASONING_DRAFT) // 4
    assert [c[2] for c in got["calls"]] == [t + served for t in plain_tokens]
    assert [c[3] for c in got["calls"]] == [thinking] * ROWS
    engine = got["engine"]
    assert engine["completion_tokens"] == sum(plain_tokens) + ROWS * served
    assert engine["reasoning_tokens"] == ROWS * thinking and plain["engine"]["reasoning_tokens"] == 0
    assert engine["prompt_tokens"] == plain["engine"]["prompt_tokens"] and engine["usage_estimated"] == 0


def test_reasoning_tokens_are_priced_once(source: Path, plain: dict, tmp_path: Path) -> None:
    """Cost (and so --max-cost) sees the reasoning's tokens, inside completion_tokens, not twice."""
    prices = ("--price-in", "1", "--price-out", "1")
    got = _recycle(source, tmp_path / "hidden", "hidden_tokens", *prices)
    base = _recycle(source, tmp_path / "none", "none", *prices)
    extra = ROWS * HIDDEN_REASONING_TOKENS
    assert got["engine"]["cost"] == pytest.approx(base["engine"]["cost"] + extra / 1e6)
    tokens = got["engine"]["prompt_tokens"] + got["engine"]["completion_tokens"]
    assert got["engine"]["cost"] == pytest.approx(tokens / 1e6)


def test_a_budget_the_reasoning_fills_says_so(source: Path, tmp_path: Path) -> None:
    """--max-tokens covers reasoning and answer: cut while thinking, the reason names the reasoning."""
    got = _recycle(source, tmp_path, "think_tag", "--max-tokens", "40")
    assert got["calls"] and all(c[0] == "" and c[1] and c[3] == 40 for c in got["calls"])
    reasons = [variants["A"]["reason"] for variants in got["variants"]]
    assert all("reasoning used the whole token budget" in (r or "") for r in reasons), reasons


# -- the splitter ------------------------------------------------------------------------------


def test_a_leading_think_block_is_split_off() -> None:
    text = "<think>\nplan [Better Answer] x [End]\n</think>\n\nCritique. [Better Answer] y [End]"
    assert split_think(text) == ("plan [Better Answer] x [End]", "Critique. [Better Answer] y [End]")
    assert split_think("  \n<think>a</think>b") == ("a", "b")


def test_an_unclosed_think_tag_is_all_reasoning_and_no_answer() -> None:
    assert split_think("<think>\nstill thinking [Better Answer] draft") == \
        ("still thinking [Better Answer] draft", "")


def test_a_think_tag_not_at_the_start_is_answer_text() -> None:
    text = "In this format, <think>...</think> wraps reasoning. [Better Answer] ok [End]"
    assert split_think(text) == (None, text)
    assert split_think("no tags at all") == (None, "no tags at all")


def test_empty_reasoning_is_none_and_its_block_is_removed() -> None:
    assert split_think("<think>\n\n</think>\n\nThe answer.") == (None, "The answer.")
    assert split_think("<think></think>") == (None, "")
    assert join_reasoning(None, "", "  ") is None
    assert join_reasoning("from a field", None, "from the tag") == "from a field\n\nfrom the tag"


def test_the_parser_only_blames_reasoning_when_there_is_no_answer() -> None:
    cut = parse_reflection("", ["[Better Answer]"], ["output"], finish_reason="length", reasoning="r")
    assert not cut.ok and "reasoning used the whole token budget" in (cut.reason or "")
    partial = parse_reflection("Critique. [Better Answer] half", ["[Better Answer]"], ["output"],
                               finish_reason="length", reasoning="r")
    assert partial.reason == "generation cut off (finish_reason=length)"


# -- the store -----------------------------------------------------------------------------------


def test_a_store_of_the_schema_before_reasoning_opens_and_reads_as_no_reasoning(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO calls (key, stage, status, content, finish_reason, prompt_tokens,"
               " completion_tokens, forced, request, created_at) VALUES"
               " ('old', 'response', 'ok', 'answer', 'stop', 3, 4, '[]', '{}', 0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Store(path) as store:
        old = store.get_call("old")
        assert old is not None and old.content == "answer" and old.completion_tokens == 4
        assert old.reasoning is None and old.reasoning_tokens == 0
        new = CallRecord("new", "response", "ok", "a", "stop", 1, 9, 0.0, 1, None, None, (), "s",
                         reasoning="thought \ud800", reasoning_tokens=5)
        store.put_call(new, "{}")
        assert store.get_call("new") == new
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


# -- the oracle's reading of a body ----------------------------------------------------------------


def _read(message: dict, usage: dict | None = None, finish: str = "stop") -> Completion:
    oracle = OpenAIOracle("test", base_url="http://127.0.0.1:9/v1")
    body = {"choices": [{"message": message, "finish_reason": finish}], "usage": usage or {}}
    request = ChatRequest((Message("user", "hi"),))
    return oracle._completion(request, json.dumps(body).encode(), "application/json", 0.0)


def test_reasoning_fields_and_a_think_block_are_joined_and_kept_out_of_the_answer() -> None:
    got = _read({"content": "<think>tag</think>answer", "reasoning_content": "field", "reasoning": 7},
                {"prompt_tokens": 1, "completion_tokens": 50})
    assert got.content == "answer" and got.reasoning == "field\n\ntag"  # a non-text reasoning is none
    assert got.completion_tokens == 50 and got.reasoning_tokens == approx_tokens("field\n\ntag", "test")


def test_reasoning_tokens_counted_apart_by_the_server_are_added_once() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 10,
             "completion_tokens_details": {"reasoning_tokens": 90}}
    got = _read({"content": "answer"}, usage)
    assert (got.completion_tokens, got.reasoning_tokens, got.reasoning) == (100, 90, None)
    bad = _read({"content": "answer"}, {"prompt_tokens": 1, "completion_tokens": 10,
                                        "completion_tokens_details": {"reasoning_tokens": "many"}})
    assert (bad.completion_tokens, bad.reasoning_tokens) == (10, 0)


def test_an_estimated_usage_counts_the_reasoning_too() -> None:
    got = _read({"content": "answer", "reasoning": "thinking hard about it"})
    assert got.usage_estimated and got.reasoning_tokens == approx_tokens("thinking hard about it", "test")
    assert got.completion_tokens == approx_tokens("answer", "test") + got.reasoning_tokens
