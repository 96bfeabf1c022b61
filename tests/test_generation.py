"""``generate``: the real embedded model, a real OpenAI-compatible server, resume, the output schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from reflectune.cli import main
from reflectune.config import GenerateConfig
from reflectune.errors import ConfigError
from reflectune.generation.rules import generation_request
from reflectune.generation.run import generate
from reflectune.io.testsets import EvalItem, load_testset
from reflectune.oracles import model_name, resolve_spec
from reflectune.testing.server import running_server

ALPACA_EVAL_KEYS = {"instruction", "output", "generator", "dataset"}


@pytest.fixture(scope="module")
def server() -> Iterator[object]:
    with running_server() as srv:
        yield srv


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_requests_follow_the_papers_settings() -> None:
    item = EvalItem("vicuna", "1", "How can I improve my time management skills?", "generic")
    request = generation_request(item, GenerateConfig())
    assert [(m.role, m.content) for m in request.messages] == [("user", item.instruction)]
    assert (request.max_tokens, request.temperature, request.top_p) == (1024, 0.0, 1.0)


def test_model_specs_and_generator_names(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_spec("embedded") == "embedded"
    assert resolve_spec("openai:gpt-4o-mini") == "openai:gpt-4o-mini"
    assert resolve_spec(str(folder)) == f"hf:{folder}"
    assert resolve_spec("weights/model.Q4_K_M.gguf") == "hf:weights/model.Q4_K_M.gguf"
    assert model_name(f"hf:{folder}/") == "my-model"
    assert model_name("hf:weights/model.gguf") == "model"
    assert model_name("openai:gpt-4o-mini") == "gpt-4o-mini"
    assert model_name("embedded") == "SmolLM2-135M-Instruct"
    with pytest.raises(ConfigError, match="invalid option max_tokens"):
        generate(model="fake", testset="vicuna", max_tokens=0)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, oversubscribed 2-core machine two torch threads spin-wait on
    each other and run about 10x slower than one (measured: 164 s against 13 s for 3 x 16 tokens)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_embedded_model_answers_three_prompts_in_alpaca_eval_schema(tmp_path: Path, one_torch_thread) -> None:
    out = tmp_path / "model_outputs.json"
    # float32: CPUs without native bf16 (no AVX512-BF16/AMX) run bf16 matmuls ~50x slower
    summary = generate(out, model="embedded", testset="vicuna", limit=3, max_tokens=16, alpaca_eval=True,
                       run_dir=tmp_path / "run", dtype="float32")
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 3 and summary.failed == 0
    vicuna = load_testset("vicuna", limit=3)
    for row, item in zip(rows, vicuna, strict=True):
        assert set(row) >= ALPACA_EVAL_KEYS | {"id", "category"} and "error" not in row
        assert (row["instruction"], row["dataset"], row["id"]) == (item.instruction, "vicuna", item.id)
        assert row["generator"] == "SmolLM2-135M-Instruct"
        assert isinstance(row["output"], str) and row["output"].strip()
    assert summary.stats["completion_tokens"] <= 3 * 16
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["generate"]
    assert manifest["status"] == "complete" and manifest["config"]["max_tokens"] == 16


def test_whole_vicuna_set_against_a_server_then_resume_makes_no_call(server, tmp_path: Path) -> None:
    server.reset()
    out = tmp_path / "answers.jsonl"
    args = ["generate", "--testset", "vicuna", "--model", "openai:test", "--base-url", server.base_url,
            "-o", str(out), "--run-dir", str(tmp_path / "run"), "-q"]
    assert main(args) == 0
    rows = _lines(out)
    items = load_testset("vicuna")
    assert len(rows) == 80
    assert [(r["dataset"], r["id"], r["instruction"], r["category"]) for r in rows] == \
        [(i.dataset, i.id, i.instruction, i.category) for i in items]
    assert all(set(r) == ALPACA_EVAL_KEYS | {"id", "category"} and r["generator"] == "test" for r in rows)
    assert all(r["output"].startswith("This is a deterministic answer") for r in rows)
    stats = server.stats()
    assert stats["completed"] == 80 and max(stats["by_key"].values()) == 1
    first = out.read_bytes()

    out.unlink()
    stale = tmp_path / ".answers.jsonl.tmp999999999"  # left by a killed run (no such pid)
    stale.write_text("partial")
    assert main(args) == 0
    assert not stale.exists()
    assert server.stats()["completed"] == 80  # the rerun was answered from the store: zero new calls
    assert out.read_bytes() == first
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["generate"]
    assert manifest["stats"]["cached"] == 80 and manifest["stats"]["sent"] == 0


def test_limit_per_set_prompts_file_and_generator_override(server, tmp_path: Path) -> None:
    server.reset()
    summary = generate(tmp_path / "a.jsonl", model="openai:m", base_url=server.base_url,
                       testset="koala,lima", limit=2, generator="my-model")
    rows = _lines(summary.output)
    assert [(r["dataset"], r["id"]) for r in rows] == [("koala", "koala_0"), ("koala", "koala_1"),
                                                      ("lima", "lima_0"), ("lima", "lima_1")]
    assert all(r["generator"] == "my-model" and "category" not in r for r in rows)
    assert summary.by_dataset == {"koala": 2, "lima": 2}
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"q": "Name a colour.", "k": "c1"}\n{"q": "Name a fruit.", "k": "f1"}\n')
    summary = generate(tmp_path / "b.json", model="openai:m", base_url=server.base_url, prompts_file=prompts,
                       fields="instruction=q,id=k")
    rows = json.loads(summary.output.read_text())
    assert [(r["dataset"], r["id"], r["instruction"]) for r in rows] == [
        ("mine", "c1", "Name a colour."), ("mine", "f1", "Name a fruit.")]


def test_failed_generations_are_written_with_an_error_and_exit_nonzero(server, tmp_path: Path,
                                                                       capsys) -> None:
    server.reset(faults="400:0.1")
    out = tmp_path / "answers.jsonl"
    rc = main(["generate", "--testset", "vicuna", "--model", "openai:test", "--base-url", server.base_url,
               "-o", str(out), "-q"])
    rows = _lines(out)
    failed = [r for r in rows if "error" in r]
    assert rc == 1 and len(rows) == 80 and failed
    assert all(r["output"] == "" and r["error"].startswith("http_400: HTTP 400") for r in failed)
    assert f"{len(failed)} generation(s) failed" in capsys.readouterr().err
    server.reset(faults="")
