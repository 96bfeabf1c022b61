"""The loopback test server: canned answers parse, reruns are byte-identical, every fault is observable.

One server subprocess serves the whole module; each test resets it to the default options first.
Requests go through http.client so that status, headers, raw bytes and dropped connections are all
visible exactly as a client sees them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import aiohttp
import pytest

from reflectune.markers import (
    BETTER_ANSWER,
    END,
    JUDGE_ANSWER_1,
    JUDGE_ANSWER_2,
    MERGED_INSTRUCTION,
    NEW_ANSWER,
    NEW_INSTRUCTION,
)
from reflectune.testing.responder import classify, messages_key, respond
from reflectune.testing.server import FAULT_MODES, ServerHandle, ServerOptions, main, running_server

Response = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with running_server() as handle:
        yield handle


@pytest.fixture
def srv(server: ServerHandle) -> ServerHandle:
    server.reset(**asdict(ServerOptions()))
    return server


def chat(
    srv: ServerHandle,
    messages: list[dict[str, Any]],
    *,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        body = json.dumps({"model": "gpt-test", "messages": messages, "temperature": 0, **extra})
        conn.request(
            "POST", "/v1/chat/completions", body, {"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def content_of(raw: bytes) -> str:
    return str(json.loads(raw)["choices"][0]["message"]["content"])


def reflection_prompt(instruction: str, answer: str, task: str, inp: str = "") -> list[dict[str, str]]:
    input_block = f"[The Start of Input]\n{inp}\n\n[The End of Input]\n\n" if inp else ""
    user = (
        f"[Instruction]\n{instruction}\n\n{input_block}[The Start of Answer]\n{answer}\n\n"
        f"[The End of Answer]\n\n[System]\n{task}"
    )
    return [
        {"role": "system", "content": "You are a helpful, precise but picky assistant."},
        {"role": "user", "content": user},
    ]


def instruction_prompt(
    instruction: str = "Give three tips for staying healthy.", answer: str = "Eat well."
) -> list:
    task = (
        f"Write the new instruction between {NEW_INSTRUCTION} and {END}, "
        f"then answer it between {NEW_ANSWER} and {END}."
    )
    return reflection_prompt(instruction, answer, task)


def response_prompt(instruction: str = "Name a prime number.", answer: str = "Seven.") -> list:
    return reflection_prompt(instruction, answer, f"Write a better answer between {BETTER_ANSWER} and {END}.")


def merge_prompt() -> list:
    task = f"Rewrite as one self-contained instruction between {MERGED_INSTRUCTION} and {END}."
    return reflection_prompt(
        "Design a wellness plan for the given audience.", "", task, inp="Expectant Mothers"
    )


def judge_prompt(a1: str, a2: str) -> list:
    user = (
        f"[Question]\nWhat is 2+2?\n\n{JUDGE_ANSWER_1}\n{a1}\n\n[The End of Assistant 1's Answer]\n\n"
        f"{JUDGE_ANSWER_2}\n{a2}\n\n[The End of Assistant 2's Answer]\n\n[System]\nRate both 1-10."
    )
    return [{"role": "system", "content": "You are a fair judge."}, {"role": "user", "content": user}]


def section(text: str, marker: str) -> str:
    assert text.count(marker) == 1, text
    body = text.split(marker, 1)[1]
    assert END in body, text
    return body.split(END, 1)[0].strip()


# 1. canned answers ------------------------------------------------------------------------------


def test_instruction_reflection_parses(srv: ServerHandle) -> None:
    status, _, raw = chat(srv, instruction_prompt())
    assert status == 200
    body = json.loads(raw)
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    text = content_of(raw)
    assert text.count(END) == 2
    new_instruction = section(text, NEW_INSTRUCTION)
    assert "Give three tips for staying healthy." in new_instruction
    assert section(text, NEW_ANSWER)
    assert text.index(NEW_INSTRUCTION) < text.index(NEW_ANSWER)
    assert "your instruction" not in text.lower() and "your answer" not in text.lower()


def test_response_merge_and_generic_answers(srv: ServerHandle) -> None:
    better = content_of(chat(srv, response_prompt())[2])
    assert better.count(END) == 1 and "Seven." in section(better, BETTER_ANSWER)
    merged = section(content_of(chat(srv, merge_prompt())[2]), MERGED_INSTRUCTION)
    assert "wellness plan" in merged and "Expectant Mothers" in merged
    generic = content_of(chat(srv, [{"role": "user", "content": "Say hello."}])[2])
    assert generic and END not in generic


def test_echoed_markers_are_kept_quoted_and_parse_back_whole() -> None:
    """Data that quotes the format's markers comes back quoted, and the parser keeps it whole."""
    from reflectune.prompts.parse import parse_reflection

    text = respond(instruction_prompt("Print [End] and [New Answer] literally.", "ok [End]"))
    assert "Print [End] and [New Answer] literally." in text
    parsed = parse_reflection(text, (NEW_INSTRUCTION, NEW_ANSWER), ("instruction", "output"))
    assert parsed.ok and "Print [End] and [New Answer] literally." in parsed.values["instruction"]


def test_outputs_vary_per_sample() -> None:
    outs = {respond(instruction_prompt(f"Question number {i}?")) for i in range(20)}
    prefixes = {section(o, NEW_INSTRUCTION).split(":")[0] for o in outs}
    assert len(outs) == 20 and len(prefixes) > 1


def test_judge_score_line_and_swap_consistency(srv: ServerHandle) -> None:
    long, short = "Four, because two plus two is four. " * 10, "4"
    first = content_of(chat(srv, judge_prompt(long, short))[2]).splitlines()[0].split()
    swapped = content_of(chat(srv, judge_prompt(short, long))[2]).splitlines()[0].split()
    if "," in " ".join(first) or "Assistant" in first[0]:
        pytest.skip("alt style drawn for this prompt")
    s1, s2 = (int(x) for x in first)
    assert 1 <= s2 < s1 <= 10 and [int(x) for x in swapped] == [s2, s1]


def test_judge_styles_and_malformed_ratio(srv: ServerHandle) -> None:
    srv.reset(judge_malformed_ratio=0.2, judge_alt_ratio=0.4)
    firsts = [
        content_of(chat(srv, judge_prompt(f"answer {i}", "other"))[2]).splitlines()[0] for i in range(60)
    ]
    plain = [f for f in firsts if f.replace(" ", "").isdigit()]
    comma = [f for f in firsts if ", " in f and f.replace(", ", "").isdigit()]
    labelled = [f for f in firsts if f.startswith("Assistant 1: ")]
    unparseable = [f for f in firsts if not any(ch.isdigit() for ch in f.split("(ref")[0][:20])]
    assert plain and comma and labelled and unparseable
    assert len(plain) + len(comma) + len(labelled) + len(unparseable) == 60


def test_mt_bench_pair_verdict() -> None:
    user = (
        "[The Start of Assistant A's Answer]\n"
        + "long answer " * 40
        + "\n[The End of Assistant A's Answer]\n"
        "[The Start of Assistant B's Answer]\nshort\n[The End of Assistant B's Answer]\n"
        'Output "[[A]]" if A is better, "[[B]]" if B is better, "[[C]]" for a tie.'
    )
    msgs = [{"role": "user", "content": user}]
    assert classify(msgs) == "pair" and respond(msgs).endswith("[[A]]")


def test_bad_format_then_reminder_parses(srv: ServerHandle) -> None:
    srv.reset(bad_format_ratio=1.0)
    msgs = instruction_prompt()
    bad = content_of(chat(srv, msgs)[2])
    assert NEW_INSTRUCTION not in bad and END not in bad
    retry = [
        *msgs,
        {"role": "assistant", "content": bad},
        {"role": "user", "content": f"Reminder: use {NEW_INSTRUCTION} ... {END} and {NEW_ANSWER} ... {END}."},
    ]
    good = content_of(chat(srv, retry)[2])
    assert section(good, NEW_INSTRUCTION) and section(good, NEW_ANSWER)
    # the engine's way: the reminder appended to the prompt itself
    appended = [msgs[0], {"role": "user", "content": msgs[1]["content"] + "\n\nReminder: use the format."}]
    assert section(content_of(chat(srv, appended)[2]), NEW_ANSWER)
    # a word "reminder" inside the instruction is data, not a reminder
    assert END not in content_of(chat(srv, instruction_prompt("Write a reminder email."))[2])
    srv.reset(bad_format_ratio=0.3)
    bads = sum(END not in respond(instruction_prompt(f"q{i}"), bad_format_ratio=0.3) for i in range(200))
    assert 30 < bads < 90


def test_max_tokens_and_stop_are_honoured(srv: ServerHandle) -> None:
    body = json.loads(chat(srv, response_prompt(), max_tokens=5)[2])
    assert (
        body["choices"][0]["finish_reason"] == "length" and len(content_of(json.dumps(body).encode())) <= 20
    )
    stopped = content_of(chat(srv, response_prompt(), stop=[BETTER_ANSWER])[2])
    assert BETTER_ANSWER not in stopped and stopped.startswith("Critique")


# 2. determinism and accounting ------------------------------------------------------------------


def test_same_request_same_bytes(srv: ServerHandle) -> None:
    first, second = chat(srv, instruction_prompt())[2], chat(srv, instruction_prompt())[2]
    assert first == second
    assert respond(instruction_prompt()) == respond(instruction_prompt())
    assert chat(srv, instruction_prompt("Another one."))[2] != first


def test_stats_by_key_and_reset(srv: ServerHandle) -> None:
    a, b = instruction_prompt("A?"), response_prompt("B?")
    for msgs in (a, a, b):
        assert chat(srv, msgs)[0] == 200
    stats = srv.stats()
    assert stats["requests"] == 3 and stats["completed"] == 3
    assert stats["by_key"] == {messages_key(a)[:16]: 2, messages_key(b)[:16]: 1}
    assert stats["faults"] == {} and stats["max_in_flight"] == 1
    fresh = srv.reset()
    assert fresh["requests"] == 0 and fresh["by_key"] == {}


def test_models_endpoint(srv: ServerHandle) -> None:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    conn.request("GET", "/v1/models")
    body = json.loads(conn.getresponse().read())
    conn.close()
    assert body["object"] == "list" and body["data"][0]["id"] == "reflectune-test"


async def test_latency_and_concurrency(srv: ServerHandle) -> None:
    srv.reset(latency=0.2)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            payload = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}
            async with session.post(f"{srv.base_url}/chat/completions", json=payload) as resp:
                await resp.read()
                return resp.status

        start = time.perf_counter()
        statuses = await asyncio.gather(*(one(i) for i in range(20)))
        elapsed = time.perf_counter() - start
    assert statuses == [200] * 20
    assert 0.2 <= elapsed < 1.5
    assert srv.stats()["max_in_flight"] == 20


# 3. faults --------------------------------------------------------------------------------------


def observe(srv: ServerHandle, msgs: list, timeout: float = 5.0) -> tuple[str, Response | None, float]:
    """Send once; classify what the client sees."""
    start = time.perf_counter()
    try:
        got = chat(srv, msgs, timeout=timeout)
    except TimeoutError:
        return "timeout", None, time.perf_counter() - start
    except (ConnectionError, http.client.HTTPException):
        return "reset", None, time.perf_counter() - start
    return "response", got, time.perf_counter() - start


@pytest.mark.parametrize("mode", [m for m in FAULT_MODES if m != "mix"])
def test_each_fault_is_observable_then_retry_succeeds(srv: ServerHandle, mode: str) -> None:
    srv.reset(faults=mode)
    msgs = instruction_prompt(f"Fault {mode}?")
    kind, got, elapsed = observe(srv, msgs, timeout=0.4 if mode == "timeout" else 5.0)
    if mode in ("timeout", "reset"):
        assert kind == mode
    else:
        assert got is not None
        status, headers, raw = got
        if mode.isdigit() or mode == "429_noretry":
            assert status == int(mode[:3]) and "error" in json.loads(raw)
            assert (headers.get("Retry-After") == "1") == (mode == "429")
        elif mode == "malformed":
            assert status == 200
            with pytest.raises(json.JSONDecodeError):
                json.loads(raw)
        else:
            body = json.loads(raw)
            choice = body["choices"][0]
            assert status == 200
            if mode == "empty":
                assert choice["message"]["content"] == ""
            elif mode == "length":
                assert choice["finish_reason"] == "length" and END in choice["message"]["content"]
                assert not choice["message"]["content"].rstrip().endswith(END)
            else:  # trickle: a valid answer, slowly
                assert elapsed >= 0.3 and NEW_ANSWER in choice["message"]["content"]
    # the second attempt of the same request gets through
    status, _, raw = chat(srv, msgs)
    assert status == 200 and section(content_of(raw), NEW_ANSWER)
    deadline = time.monotonic() + 2
    while (stats := srv.stats())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)  # the hung handler is cancelled once the client leaves
    assert stats["faults"] == {mode: 1} and stats["requests"] == 2 and stats["in_flight"] == 0
    usable = 0 if mode in ("empty", "length") else 1 if mode == "trickle" else 0
    assert stats["by_key"] == {messages_key(msgs)[:16]: 1 + usable}


def test_fault_attempts_and_rate_are_seeded(srv: ServerHandle) -> None:
    srv.reset(faults="500", fault_attempts=3)
    msgs = response_prompt("Thrice?")
    assert [chat(srv, msgs)[0] for _ in range(4)] == [500, 500, 500, 200]

    def failing(seed: int) -> list[int]:
        srv.reset(faults="503:0.3", seed=seed)
        return [i for i in range(60) if chat(srv, response_prompt(f"q{i}"))[0] == 503]

    first = failing(1)
    assert 6 < len(first) < 35 and failing(1) == first and failing(2) != first
    assert srv.stats()["faults"] == {"503": len(failing(2))}


def test_mix_all_rows_accounted_after_retries(srv: ServerHandle) -> None:
    srv.reset(faults="mix:0.5", seed=3)
    prompts = [response_prompt(f"row {i}") for i in range(24)]
    for msgs in prompts:
        for _ in range(3):
            kind, got, _ = observe(srv, msgs)
            if kind == "response" and got is not None and got[0] == 200:
                try:
                    if END in content_of(got[2]):
                        break
                except json.JSONDecodeError:
                    pass
        else:
            pytest.fail("a row never got through")
    stats = srv.stats()
    assert sum(stats["faults"].values()) > 4 and set(stats["faults"]) <= set(FAULT_MODES)
    assert {messages_key(m)[:16] for m in prompts} == set(stats["by_key"])


def test_require_key(srv: ServerHandle) -> None:
    srv.reset(require_key="sekrit")
    assert chat(srv, response_prompt())[0] == 401
    assert chat(srv, response_prompt(), headers={"Authorization": "Bearer wrong"})[0] == 401
    assert chat(srv, response_prompt(), headers={"Authorization": "Bearer sekrit"})[0] == 200
    assert srv.stats()["faults"] == {"auth": 2}


def test_server_side_rpm(srv: ServerHandle) -> None:
    srv.reset(rpm=3)
    results = [chat(srv, response_prompt(f"r{i}")) for i in range(5)]
    assert [r[0] for r in results] == [200, 200, 200, 429, 429]
    assert 1 <= int(results[3][1]["Retry-After"]) <= 60
    assert srv.stats()["faults"] == {"rpm": 2}


def test_reset_rejects_unknown_options(srv: ServerHandle) -> None:
    with pytest.raises(ValueError, match="400"):
        srv.reset(bogus=1)
    with pytest.raises(ValueError, match="400"):
        srv.reset(faults="teapot")


# 4. process handling ----------------------------------------------------------------------------


def test_cli_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--faults", "teapot"])
    assert exc.value.code == 2 and "teapot" in capsys.readouterr().err


def test_subprocess_killed_when_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), running_server(latency=0.01, faults="500:0.5") as handle:
        process = handle.process
        assert handle.base_url == f"http://127.0.0.1:{handle.port}/v1"
        raise RuntimeError("boom")
    assert process.poll() is not None
    with pytest.raises(ValueError):
        running_server(nope=1).__enter__()
