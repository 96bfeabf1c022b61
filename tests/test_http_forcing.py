"""Format forcing for HTTP oracles: the constraint, the prefill driver, identity and refusals.

The real servers (llama.cpp's ``llama-server`` and llama-cpp-python) are in
``test_real_servers.py``. Here: the pure parts as tables, the driver against scripted servers for
what the real ones here cannot show (vLLM returns only the continuation, llama-server echoes the
prefix), and the refusals against the loopback server, which neither continues a message nor obeys
a grammar.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reflectune.config import OracleConfig, validated
from reflectune.errors import ConfigError, OracleFatal
from reflectune.markers import BETTER_ANSWER, END, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.oracles import make_oracle
from reflectune.oracles.forcing import loop_cut
from reflectune.oracles.grammar import format_constraint, word_constraint
from reflectune.oracles.openai_http import OpenAIOracle
from reflectune.oracles.prefill import CONTINUE_FIELDS, complete_by_prefill, continuation
from reflectune.prompts.parse import parse_reflection
from reflectune.testing.server import running_server
from reflectune.types import ChatRequest, Completion, Message
from tests.conftest import run_cli

Q_SECTIONS = (NEW_INSTRUCTION, NEW_ANSWER)
A_SECTIONS = (BETTER_ANSWER,)

# -- the grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "admitted"), [
    ("Short.\n\n[New Instruction]\nList three colours.\n[End]\n[New Answer]\nRed, green.\n[End]", True),
    ("\n\n[New Instruction]\nUse a[i] here.\n[End]\n[New Answer]\nx[0] = 1\n[End]", True),  # no critique
    ("C.\n\n[New Instruction]\n\n[End]\n[New Answer]\nok\n[End]", False),  # an empty section
    ("C.\n\n[New Instruction]\nq\n[End]\n[New Answer]\nok [End] more\n[End]", False),  # [End] inside
    ("C.\n\n[New Instruction]\nq [New Answer] x\n[End]\n[New Answer]\nok\n[End]", False),  # a marker inside
    ("C [New Instruction]\n\n[New Instruction]\nq\n[End]\n[New Answer]\nok\n[End]", False),  # in the critique
    ("C.\n\n[New Instruction]\nq\n[The End of Answer]\n[End]\n[New Answer]\nok\n[End]", False),  # a header
    ("C.\n\n[New Answer]\nok\n[End]\n[New Instruction]\nq\n[End]", False),  # out of order
    ("C.\n\n[New Instruction]\nq\n[End]", False),  # a section missing
])
def test_the_constraint_admits_the_format_and_nothing_else(text: str, admitted: bool) -> None:
    regex = format_constraint(Q_SECTIONS, critique_tokens=16, max_tokens=256).regex
    assert bool(re.fullmatch(regex, text)) is admitted
    if admitted:  # whatever the constraint admits, the strict parser takes
        assert parse_reflection(text, Q_SECTIONS, ["instruction", "output"]).ok


def test_the_constraint_bounds_the_critique_and_the_sections_by_the_budget() -> None:
    regex = format_constraint(A_SECTIONS, critique_tokens=8, max_tokens=64).regex
    body = "x" * 132  # (64 - 8 - 12 for the marker and [End]) tokens x 3 characters
    assert re.fullmatch(regex, f"{'c' * 24}\n\n[Better Answer]\n{body}\n[End]")
    assert not re.fullmatch(regex, f"{'c' * 25}\n\n[Better Answer]\n{body}\n[End]")  # 8 tokens x 3
    assert not re.fullmatch(regex, f"c\n\n[Better Answer]\n{body}x\n[End]")
    gbnf = format_constraint(A_SECTIONS, critique_tokens=8, max_tokens=64).gbnf
    assert "critique ::= [^[]{0,24}" in gbnf and "section0 ::= first body{0,131}" in gbnf
    assert word_constraint("yes").fields() == {"grammar": 'root ::= "yes"\n',
                                               "structured_outputs": {"regex": "yes"}}


# -- the prefill driver ------------------------------------------------------------------------


class ScriptedServer:
    """Answers each segment request from a script, as a server that continues messages would: a
    vLLM-like one returns the new text, a llama-server-like one the prefix and the new text."""

    def __init__(self, answers: list[tuple[str, str]], *, echo: bool) -> None:
        self.answers, self.echo = list(answers), echo
        self.sent: list[tuple[ChatRequest, dict[str, Any]]] = []

    async def __call__(self, request: ChatRequest, extra: Mapping[str, Any]) -> Completion:
        self.sent.append((request, dict(extra)))
        text, reason = self.answers.pop(0)
        prefix = request.messages[-1].content if request.messages[-1].role == "assistant" else ""
        return Completion(prefix + text if self.echo else text, reason, prompt_tokens=10,
                          completion_tokens=len(text.split()), latency_s=0.5, model="m")


PROMPT = (Message("user", "Rewrite the instruction and answer."),)


@pytest.mark.parametrize("echo", [False, True], ids=["vllm_like", "llama_server_like"])
def test_prefill_writes_the_markers_and_the_transcript_parses(echo: bool) -> None:
    server = ScriptedServer([("A fair critique.", "stop"), ("\nList three colours.", "stop"),
                             ("\nRed, green and blue.", "stop")], echo=echo)
    request = ChatRequest(PROMPT, max_tokens=100, sections=Q_SECTIONS, critique_tokens=20)
    done = asyncio.run(complete_by_prefill(request, server))
    assert done.content == ("A fair critique.\n\n[New Instruction]\n\nList three colours.\n[End]\n\n"
                            "[New Answer]\n\nRed, green and blue.\n[End]")
    assert done.forced == (NEW_INSTRUCTION, END, NEW_ANSWER, END)
    assert parse_reflection(done.content, Q_SECTIONS, ["instruction", "output"]).values == {
        "instruction": "List three colours.", "output": "Red, green and blue."}
    usage = (done.prompt_tokens, done.completion_tokens, done.latency_s, done.finish_reason)
    assert usage == (30, 10, 1.5, "stop")
    critique, first, second = server.sent
    assert critique[1] == {} and critique[0].messages == PROMPT and critique[0].max_tokens == 20
    assert first[1] == dict(CONTINUE_FIELDS) and first[0].messages[-1] == Message(
        "assistant", "A fair critique.\n\n[New Instruction]\n")
    assert END in first[0].stop and NEW_ANSWER in first[0].stop
    assert second[0].messages[-1].content.endswith("[End]\n\n[New Answer]\n")
    assert first[0].max_tokens == 64 and second[0].max_tokens == 64  # chunks of what is left


def test_a_section_that_runs_out_of_tokens_is_cut_off_and_nothing_follows() -> None:
    server = ScriptedServer([("Critique.", "stop"), ("\none two three four five six", "length")], echo=False)
    request = ChatRequest(PROMPT, max_tokens=7, sections=Q_SECTIONS, critique_tokens=20)
    done = asyncio.run(complete_by_prefill(request, server))
    assert done.finish_reason == "length" and done.forced == (NEW_INSTRUCTION,)
    assert not parse_reflection(done.content, Q_SECTIONS, ["i", "o"], finish_reason=done.finish_reason).ok
    assert len(server.sent) == 2  # the answer section is never asked for


def test_a_looping_section_keeps_one_copy_and_leaves_the_budget_to_the_next() -> None:
    loop = " The original instruction is to name three colors. The answer is three colors." * 4
    server = ScriptedServer([("Critique.", "stop"), (loop, "length"), ("\nRed.", "stop")], echo=True)
    request = ChatRequest(PROMPT, max_tokens=500, sections=Q_SECTIONS, critique_tokens=20)
    done = asyncio.run(complete_by_prefill(request, server))
    parsed = parse_reflection(done.content, Q_SECTIONS, ["instruction", "output"])
    assert parsed.values == {"instruction": "The original instruction is to name three colors. The answer is "
                                            "three colors.", "output": "Red."}
    assert done.forced == (NEW_INSTRUCTION, f"{END}:loop", NEW_ANSWER, END)


def test_a_stop_string_split_across_two_chunks_still_ends_the_section() -> None:
    server = ScriptedServer([("Critique.", "stop"), ("\nRed, green. [En", "length"), ("d]", "stop")],
                            echo=False)
    request = ChatRequest(PROMPT, max_tokens=500, sections=A_SECTIONS, critique_tokens=20)
    done = asyncio.run(complete_by_prefill(request, server))
    assert done.content == "Critique.\n\n[Better Answer]\n\nRed, green.\n[End]"
    assert done.forced == (BETTER_ANSWER,)  # the model wrote its own [End]
    assert server.sent[2][0].messages[-1].content.endswith("Red, green. [En")


@pytest.mark.parametrize(("content", "prefix", "new"), [
    ("Answer >> Mississippi", "Answer >> Mississ", "ippi"),  # llama-server echoes the prefix
    ("ippi", "Answer >> Mississ", "ippi"),  # vLLM does not
    ("Mississippi", "", "Mississippi"),
])
def test_continuation_takes_either_reply(content: str, prefix: str, new: str) -> None:
    assert continuation(content, prefix) == new


def test_loop_cut_finds_verbatim_loops_only() -> None:
    assert loop_cut("A normal answer, with words that do not repeat themselves at all here.") is None
    text = "Intro. " + "Step 1 is to mix the flour with water. " * 3
    assert text[:loop_cut(text)] == "Intro. Step 1 is to mix the flour with water"


# -- identity, configuration and refusals ----------------------------------------------------


def test_forcing_is_part_of_the_oracle_identity_and_off_changes_nothing() -> None:
    url = "http://127.0.0.1:9/v1"
    modes = ("off", "prefill", "grammar")
    off, prefill, grammar = (OpenAIOracle("m", base_url=url, forcing=mode) for mode in modes)
    assert off.fingerprint() == "openai:m@http://127.0.0.1:9/v1"  # the cache keys of unforced runs stay
    assert len({off.fingerprint(), prefill.fingerprint(), grammar.fingerprint()}) == 3
    assert (off.capabilities.prefill, prefill.capabilities.prefill, grammar.capabilities.prefill) == (
        False, True, True)
    assert "forcing" not in OracleConfig(spec="openai:m", base_url=url).canonical()
    assert OracleConfig().config_hash() == "2c6714c0cc7d7f87"  # as before the field
    assert '"forcing":"grammar"' in OracleConfig(spec="openai:m", forcing="grammar").canonical()
    built = make_oracle(OracleConfig(spec="openai:m", base_url=url, forcing="prefill"))
    assert built.fingerprint() == prefill.fingerprint()
    assert make_oracle("fake", forcing="grammar").capabilities is not None  # other backends: ignored


def test_forcing_is_refused_against_openai_and_bad_modes_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with pytest.raises(ConfigError, match=r"api\.openai\.com neither continues") as refused:
        OpenAIOracle("gpt-4o-mini", forcing="prefill")
    assert "\n" not in str(refused.value) and "sk-test" not in str(refused.value)
    with pytest.raises(ConfigError, match="invalid option forcing"):
        validated(OracleConfig, spec="openai:m", forcing="Prefil")
    with pytest.raises(ConfigError, match="invalid --forcing 'Prefil'"):
        OpenAIOracle("m", base_url="http://127.0.0.1:9/v1", forcing="Prefil")


@pytest.mark.parametrize(("mode", "said"), [
    ("grammar", "ignored the grammar constraint (sent as 'grammar' and 'structured_outputs'): this server "
                "cannot force the format that way; use --forcing prefill or --forcing off"),
    ("prefill", "did not continue a trailing assistant message (sent with 'continue_final_message' and "
                "'add_generation_prompt'): this server cannot force the format by prefill; use --forcing "
                "grammar or --forcing off"),
])
def test_a_server_that_does_not_force_is_refused_before_any_real_call(mode: str, said: str) -> None:
    request = ChatRequest(PROMPT, max_tokens=64, sections=A_SECTIONS, critique_tokens=16)
    plain = ChatRequest(PROMPT, max_tokens=16)

    async def go(url: str) -> tuple[OracleFatal, list[Completion]]:
        oracle = OpenAIOracle("m", base_url=url, forcing=mode)
        try:
            with pytest.raises(OracleFatal) as failed:
                await oracle.complete([request])
            return failed.value, await oracle.complete([plain])  # requests without sections still go
        finally:
            await oracle.aclose()

    with running_server() as server:
        error, answered = asyncio.run(go(server.base_url))
        chats = server.stats()
    assert str(error) == f"{server.base_url} {said}" and error.kind == "forcing_unsupported"
    assert answered[0].content and "\n" not in str(error)
    assert chats["requests"] == 2  # the probe and the plain request: the forced one was never sent


def test_a_server_that_rejects_the_fields_names_the_flag() -> None:
    request = ChatRequest(PROMPT, max_tokens=64, sections=A_SECTIONS, critique_tokens=16)

    async def go(url: str) -> OracleFatal:
        oracle = OpenAIOracle("m", base_url=url, forcing="grammar")
        try:
            with pytest.raises(OracleFatal) as failed:
                await oracle.complete([request])
            return failed.value
        finally:
            await oracle.aclose()

    with running_server(faults="400") as server:
        error = asyncio.run(go(server.base_url))
    assert str(error).startswith(f"{server.base_url} refused the grammar fields ('grammar' and "
                                 "'structured_outputs'): HTTP 400")
    assert str(error).endswith("; use --forcing prefill or --forcing off") and "\n" not in str(error)


def test_the_recycle_flag_reaches_the_oracle(alpaca_path: Path, tmp_path: Path) -> None:
    with running_server() as server:
        proc = run_cli("recycle", str(alpaca_path), "--oracle", "openai:m", "--base-url", server.base_url,
                       "--forcing", "grammar", "--limit", "1", "--phases", "response", "--run-dir",
                       str(tmp_path / "run"), "-q")
    assert proc.returncode != 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "ignored the grammar constraint" in line]
    assert len(lines) == 1 and "use --forcing prefill or --forcing off" in lines[0]
