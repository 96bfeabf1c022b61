"""Training on the real embedded model, on CPU: a full run (loss falls, weights change, the saved
model reloads and generates, resume), a LoRA run through the CLI (adapter trained, merged model
reloads, the adapter names its base portably), response-only masking on TRL's own tokenized rows,
the run folder's record (run.json's train section: complete, stopped, interrupted; its lock), rows
dropped for a prompt that fills --max-length, the dry-run plan for a Llama-2-7B-sized config without
weights and its memory estimate against a measured run, and the ``--sft`` pass-through.

CPU training is slow here (tens of tokens/s on 2 shared cores), so the runs use short real rows,
the ``wiz`` template (the shortest prompt), max length 64 and a handful of steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from reflectune.errors import ConfigError
from reflectune.prompts.student import response_separator, student_prompt
from reflectune.training.plan import format_plan, plan_training
from reflectune.training.run import (
    TrainConfig,
    accelerate_config_path,
    build_trainer,
    parse_sft_overrides,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_cherry5pct_3111.json"
FAST = {"template": "wiz", "max_length": 64, "global_batch": 8, "per_device_batch": 4,
        "warmup_ratio": 0.0, "gradient_checkpointing": False}
# full fine-tuning: 4 rows, 2 micro-batches of 2 per optimizer step, one step per epoch
FULL = {**FAST, "global_batch": 4, "per_device_batch": 2, "max_samples": 4, "epochs": 3}
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def data32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 real Alpaca rows (short ones, to keep CPU training affordable), as an Alpaca JSON file."""
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    short = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 160][:32]
    assert len(short) == 32
    path = tmp_path_factory.mktemp("data") / "alpaca32.json"
    path.write_text(json.dumps(short), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def full_run(data32: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """The run folder of a full fine-tune (its model in ``run/model``)."""
    run = tmp_path_factory.mktemp("full") / "run"
    result = train(data32, "embedded", run_dir=run, learning_rate=1e-4, save_steps=3, save_total_limit=1,
                   sft={"logging_steps": 1}, **FULL)
    return result, run


def _section(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["train"]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _generate(model_dir: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(student_prompt("wiz", "Name a primary colour."), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    return tokenizer.decode(out[0, ids.shape[1]:])


def _base_state() -> dict[str, torch.Tensor]:
    from reflectune.models import load_causal_lm

    model, _ = load_causal_lm("embedded", device="cpu", dtype="float32")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_full_finetune_lowers_loss_changes_weights_and_reloads(full_run: tuple[object, Path]) -> None:
    result, out = full_run
    records = _metrics(out)
    # one optimizer step per epoch over the same 4 rows: the loss must fall step after step
    assert [r["step"] for r in records] == [1, 2, 3] and [r["epoch"] for r in records] == [1, 2, 3]
    losses = [r["loss"] for r in records]
    assert losses[2] < losses[1] < losses[0]
    assert records[0]["lr"] == pytest.approx(1e-4)  # no warmup: the first step trains at the peak
    assert all(r["tokens_per_s"] for r in records) and records[-1]["eta_s"] == 0
    model = out / "model"
    assert result.steps == 3 and result.rows == 4 and result.model_dir == model and result.adapter_dir is None
    assert result.run_dir == out and result.manifest == out / "run.json" and result.resumed_from_step is None
    assert not (out / "reflectune-train.json").exists() and not (model / "reflectune-train.json").exists()

    manifest = _section(out)
    assert manifest["status"] == "complete" and manifest["template"] == "wiz" == result.template
    assert manifest["effective_batch"] == 4 and manifest["gradient_accumulation"] == 2
    assert manifest["config"]["sft"] == {"logging_steps": 1} and manifest["versions"]["trl"]
    assert manifest["config_hash"] and manifest["trained_rows"] == manifest["rows"] == 4
    assert manifest["first_loss"] == records[0]["loss"] and manifest["final_loss"] == records[-1]["loss"]
    assert manifest["losses"] == [[r["step"], r["loss"]] for r in records]
    assert manifest["inputs"]["data"]["sha256"] and manifest["resumed_from"] is None
    assert manifest["base"]["name"] == "embedded" and manifest["base"]["fingerprint"].startswith("embedded:")
    assert Path(manifest["base"]["path"]).is_dir()  # the exact local path stays in the run's record
    assert manifest["outputs"]["model_dir"] == str(model) and manifest["outputs"]["adapter_dir"] is None
    assert set(manifest["versions"]) >= {"reflectune", "torch", "transformers", "trl", "peft", "accelerate"}

    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(model).state_dict()
    base = _base_state()
    changed = [k for k in base if not torch.equal(base[k], trained[k].float())]
    assert len(changed) > 0.9 * len(base)
    _generate(model)
    from reflectune.models import resolve_model

    assert resolve_model(f"hf:{model}").path == model


def test_resume_refuses_silently_restarting_and_continues(full_run: tuple[object, Path],
                                                          data32: Path) -> None:
    _, out = full_run
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
    with pytest.raises(ConfigError, match="--resume"):
        train(data32, "embedded", run_dir=out, **FULL)
    assert _section(out)["status"] == "complete"  # a refused start leaves the run's record alone
    resumed = train(data32, "embedded", run_dir=out, learning_rate=1e-4, resume=True, save_steps=3,
                    sft={"logging_steps": 1}, **FULL)
    assert resumed.steps == 3 and resumed.resumed_from_step == 3  # nothing left to train
    manifest = _section(out)
    assert manifest["resumed_from"]["step"] == 3 and manifest["resumed_from"]["checkpoint"].endswith(
        "checkpoint-3")
    assert len(_metrics(out)) == 3  # metrics are kept, not restarted


def test_lora_through_cli_trains_adapter_and_merges(data32: Path, tmp_path: Path) -> None:
    from reflectune.cli import app

    run, out = tmp_path / "lora-run", tmp_path / "lora"
    result = CliRunner().invoke(app, [
        "train", str(data32), "--base", "embedded", "--run-dir", str(run), "-o", str(out), "--lora",
        "--template", "wiz", "--max-length", "64", "--global-batch", "4", "--per-device-batch", "4",
        "--lr", "1e-3", "--warmup-ratio", "0", "--no-gradient-checkpointing", "--sft", "max_steps=1",
        "--sft", "logging_steps=1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    flat = "".join(result.output.split())  # rich wraps long paths
    assert "trainingsummary" in flat and f"hf:{out}" in flat and f"run:{run}" in flat
    assert f"run.json:{run / 'run.json'}" in flat and f"metrics:{run / 'metrics.jsonl'}" in flat

    from safetensors.torch import load_file

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 30 * 4  # 30 layers x q,k,v,o
    assert all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16
    # the adapter names its base portably, not by this machine's cache path; run.json keeps the path
    from reflectune.models.source import cache_dir

    assert adapter_config["base_model_name_or_path"] == "embedded"
    assert str(cache_dir()) not in (run / "adapter" / "adapter_config.json").read_text()
    assert str(cache_dir()) not in (run / "adapter" / "README.md").read_text()
    assert _section(run)["base"]["path"].startswith(str(cache_dir()))
    assert json.loads((out / "reflectune-model.json").read_text())["base"] == "embedded"

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in merged.state_dict())
    base = _base_state()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[key], merged.state_dict()[key].float())
    assert torch.equal(base["model.layers.0.mlp.up_proj.weight"],
                       merged.state_dict()["model.layers.0.mlp.up_proj.weight"].float())
    _generate(out)


@pytest.mark.parametrize("template", ["vicuna", "chat"])
def test_prompt_tokens_are_masked_response_tokens_are_not(data32: Path, tmp_path: Path,
                                                          template: str) -> None:
    trainer, info = build_trainer(data32, "embedded", tmp_path / "t", template=template, max_length=512,
                                  max_samples=4, sft={"logging_steps": 3, "optim": "adamw_torch"})
    assert trainer.args.logging_steps == 3 and trainer.args.completion_only_loss is True
    assert info["gradient_accumulation"] == 128 // 4
    tokenizer = trainer.processing_class
    sample = json.loads(data32.read_text())[0]
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    prompt = student_prompt(template, sample["instruction"], sample["input"], tokenizer=tokenizer)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert n_prompt > 10
    assert all(label == -100 for label in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:] and len(ids) > n_prompt
    response = tokenizer.decode(ids[n_prompt:])
    assert sample["output"].strip() in response and tokenizer.eos_token in response
    if template == "vicuna":
        assert tokenizer.decode(ids[:n_prompt]).endswith("ASSISTANT:")
        assert response == response_separator("vicuna") + sample["output"] + tokenizer.eos_token
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_dry_run_plans_a_7b_run_without_weights(data32: Path, tmp_path: Path) -> None:
    base = tmp_path / "llama-2-7b-config"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(LLAMA2_7B))
    plan = plan_training(data32, str(base), world_size=8, per_device_batch=4)
    assert plan.effective_batch == 128 and plan.gradient_accumulation == 4
    assert plan.params == 6_738_415_616 == plan.trainable_params
    assert plan.steps_per_epoch == 1 and plan.total_steps == 3 and plan.tokens_estimated_from_chars
    assert 100e9 < plan.memory["weights"] + plan.memory["grads_and_optimizer"] < 110e9  # 16 B/param
    lora = plan_training(data32, str(base), world_size=8, lora=True)
    assert lora.trainable_params == 32 * 4 * 16 * (4096 + 4096)
    assert lora.memory["weights"] < plan.memory["weights"] / 1.9
    labels = dict(format_plan(plan))
    assert labels["effective batch"] == "128" and labels["gradient accumulation"] == "4"

    from reflectune.cli import app

    result = CliRunner().invoke(app, ["train", str(data32), "--base", str(base), "--dry-run",
                                      "--world-size", "8", "--per-device-batch", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = " ".join(result.output.split())
    assert "effective batch │ 128" in text and "gradient accumulation │ 4" in text
    assert "memory per device" in text and "6,738,415,616" in text
    with pytest.raises(ConfigError, match="not divisible"):
        plan_training(data32, str(base), world_size=3)


def test_dry_run_on_the_embedded_model_uses_its_tokenizer(data32: Path) -> None:
    plan = plan_training(data32, "embedded", global_batch=8, max_length=64)
    assert plan.world_size == 1 and plan.gradient_accumulation == 2 and plan.steps_per_epoch == 4
    assert not plan.tokens_estimated_from_chars and 20 < plan.mean_tokens <= 64
    assert plan.params == 134_515_008 and plan.dtype == "float32"
    chat = plan_training(data32, "embedded", template="chat", lora=True)
    assert chat.mean_tokens > 20 and not chat.tokens_estimated_from_chars  # chat template tokens
    assert chat.trainable_params == 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192))  # r x (in + out): q,o,k,v


def test_sft_pass_through_parsing_and_errors(data32: Path, tmp_path: Path) -> None:
    assert parse_sft_overrides(["logging_steps=1", "optim=adamw_torch", "neftune_noise_alpha=5.0",
                                "dataset_kwargs={\"skip_prepare_dataset\": false}", "packing=true"]) == {
        "logging_steps": 1, "optim": "adamw_torch", "neftune_noise_alpha": 5.0,
        "dataset_kwargs": {"skip_prepare_dataset": False}, "packing": True}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sft_overrides(["logging_steps"])
    with pytest.raises(ConfigError, match="did you mean 'logging_steps'"):
        train(data32, "embedded", tmp_path / "x", sft={"loging_steps": 1})
    with pytest.raises(ConfigError, match="set `learning_rate` instead"):
        TrainConfig(sft={"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        train(data32, "embedded", tmp_path / "x", epoch=1)
    with pytest.raises(ConfigError, match="did you mean 'vicuna'"):
        TrainConfig(template="vicuma")
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()  # refused before any folder


def test_cli_errors_are_one_line_and_accelerate_configs_ship(data32: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from reflectune.cli import main

    assert main(["train", str(data32), "-o", "out", "--sft", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sft bogus") and err.count("\n") == 1
    for name in ("ddp", "fsdp", "zero2", "zero3"):
        assert main(["train", "--print-accelerate-config", name]) == 0
        path = Path(capsys.readouterr().out.strip())
        assert path.is_file() and path == accelerate_config_path(name)
        assert ("distributed_type: " + {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")) in \
            path.read_text()
    assert main(["train", "--print-accelerate-config", "fdsp"]) == 2
    assert "did you mean 'fsdp'" in capsys.readouterr().err


def test_run_json_says_how_a_training_ended_and_its_lock_refuses_a_second(data32: Path,
                                                                          tmp_path: Path) -> None:
    from reflectune.errors import Interrupted, RunStopped, StoreError
    from reflectune.store.rundir import RunFolder

    run = tmp_path / "r"
    with RunFolder(run, check_calls=False), pytest.raises(StoreError, match="in use"):
        train(data32, "embedded", run_dir=run, max_samples=4, **FAST)

    def stop(event: dict) -> None:
        if event.get("event") == "begin":
            raise RunStopped("stopped by the test")

    with pytest.raises(RunStopped):
        train(data32, "embedded", run_dir=run, on_log=stop, max_samples=4, **FAST)
    section = _section(run)
    assert section["status"] == "stopped" and section["stop_reason"] == "stopped by the test"
    assert section["rows"] == 4 and section["template"] == "wiz"

    before = signal.getsignal(signal.SIGTERM)

    def terminate(event: dict) -> None:
        if event.get("event") == "begin":
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="SIGTERM") as caught:
        train(data32, "embedded", run_dir=run, on_log=terminate, max_samples=4, **FAST)
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the caller's again
    section = _section(run)
    assert section["status"] == "interrupted" and "SIGTERM" in section["stop_reason"]


def test_rows_whose_prompt_fills_max_length_are_counted_or_refused(data32: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from reflectune.cli import app, main

    rows = json.loads(data32.read_text())[:4]
    rows[0]["instruction"] = "Repeat after me: " + "word " * 80  # the prompt alone is over 64 tokens
    data = tmp_path / "long.json"
    data.write_text(json.dumps(rows))
    recipe = ["--base", "embedded", "--template", "wiz", "--global-batch", "3", "--per-device-batch", "3",
              "--warmup-ratio", "0", "--no-gradient-checkpointing", "--epochs", "1", "--sft", "max_steps=1",
              "--sft", "save_strategy=no"]
    plan = plan_training(data, "embedded", template="wiz", max_length=64, global_batch=3, per_device_batch=3)
    assert plan.skipped["prompt_too_long"] == 1 and plan.rows == 3
    assert "1 prompt too long" in dict(format_plan(plan))["rows"]

    run = tmp_path / "counted"
    result = CliRunner().invoke(app, ["train", str(data), "--run-dir", str(run), "--max-length", "64",
                                      *recipe])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "3, 1 prompt too long skipped" in result.output
    section = _section(run)
    assert section["skipped"]["prompt_too_long"] == 1
    assert section["trained_rows"] == 3 and section["rows"] == 4

    # every prompt fills --max-length: one line naming the file, the count and the way out
    for args in (["--dry-run"], ["--run-dir", str(tmp_path / "refused")]):
        assert main(["train", str(data), "--max-length", "8", *recipe, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {data}: all 4 rows were dropped") and err.count("\n") == 1
        assert "--max-length 8" in err and "larger --max-length" in err and "Traceback" not in err
    assert _section(tmp_path / "refused")["status"] == "stopped"


LONG_ROWS = 16  # the longest rows of the Alpaca file: every one reaches 512 tokens
#: Peak RSS of real runs (2 steps, batch 4 x 512 tokens, full fine-tuning, fp32, AMD EPYC, 2 cores):
#: /usr/bin/time -v of ``reflectune train``, with and without gradient checkpointing.
MEASURED_GIB = {True: 4.92, False: 7.67}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the measurement was made on CPU")
@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_memory_estimate_is_within_30_percent_of_a_measured_run(tmp_path: Path,
                                                                     checkpointing: bool) -> None:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    rows.sort(key=lambda r: -(len(r["instruction"]) + len(r["input"]) + len(r["output"])))
    data = tmp_path / "long.json"
    data.write_text(json.dumps(rows[:LONG_ROWS]), encoding="utf-8")
    plan = plan_training(data, "embedded", max_length=512, global_batch=4, per_device_batch=4,
                         gradient_checkpointing=checkpointing)
    assert plan.max_tokens == 512 and plan.dtype == "float32"
    estimate = plan.memory["total_unsharded"] / 1024**3
    assert abs(estimate / MEASURED_GIB[checkpointing] - 1) < 0.3, estimate


def test_importing_training_stays_light() -> None:
    code = ("import sys, reflectune.training.run, reflectune.training.plan, reflectune.cli.train; "
            "print(sorted(m for m in ('torch', 'trl', 'peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_picks_half_precision(data32: Path, tmp_path: Path) -> None:
    trainer, info = build_trainer(data32, "embedded", tmp_path / "g", max_samples=8, **FAST)
    assert info["device"] == "cuda" and info["dtype"] in ("bfloat16", "float16")
    assert trainer.args.bf16 == (info["dtype"] == "bfloat16")


# -- the real thing: kill -9 in the middle of a checkpoint save, then --resume ------------------------

KILL_RECIPE = ["--template", "wiz", "--max-length", "64", "--global-batch", "4", "--per-device-batch", "2",
        "--warmup-ratio", "0", "--no-gradient-checkpointing", "--epochs", "3", "--lr", "1e-4",
        "--save-steps", "1", "--save-total-limit", "0", "--max-samples", "4", "-q"]  # = FULL, lr 1e-4


def _train(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reflectune", "train", str(data), "--base", "embedded", "--run-dir",
            str(run), *KILL_RECIPE, *extra]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_kill_9_during_a_checkpoint_save_resumes_from_the_one_before(full_run: tuple[object, Path],
                                                                      data32: Path, tmp_path: Path) -> None:
    """The same recipe as ``full_run`` (its weights are the uninterrupted reference), with a checkpoint
    every step; killed while checkpoint-2 is being written, then resumed."""
    _, reference = full_run
    data = data32
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    target = out / "checkpoint-2"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if target.is_dir() and not (target / "trainer_state.json").exists():
            proc.send_signal(signal.SIGKILL)  # the save of checkpoint-2 has begun and not ended
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the kill must land during the save"
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (target / "trainer_state.json").exists()

    again = subprocess.run(_train(data, out), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode != 0 and "--resume" in again.stderr and "Traceback" not in again.stderr
    other = subprocess.run(_train(data, out, "--resume", "--lr", "1e-3"), capture_output=True, text=True,
                           env=env, timeout=600)
    assert other.returncode != 0 and "learning_rate 0.0001 then, 0.001 now" in other.stderr
    resumed = subprocess.run(_train(data, out, "--resume"), capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping checkpoint-2" in resumed.stderr
    manifest = _section(out)
    assert manifest["resumed_from"]["step"] == 1 and manifest["steps"] == 3
    final, expected = _weights(out / "model"), _weights(reference / "model")
    assert final.keys() == expected.keys()
    assert all(final[k].equal(expected[k]) for k in expected), "resumed weights differ from a straight run"
