"""Issue 21, the gaps an audit of its findings left: each test here failed before its fix, or pins a
fixed behaviour no other test asserted. The audit's table (finding -> test -> commit) is in the
report of the session that wrote this file; the other findings' tests live beside their code's tests.

- 6: ``--resume`` with another data file (not only other content at the same path), or another
  ``--lora``, is refused, naming it.
- 9: without the below-one filter a landed pair with a NaN (or infinite) r-IFD is never kept either.
- 12: ``train -o FILE`` and ``--resume --lora`` on a full fine-tuning checkpoint are one-line errors,
  the latter also for a run folder without a start record (the Trainer used to fail with a traceback).
- 13: ``train -q`` prints notes only and leaves the Trainer without its bars and raw log printer; a
  1-step all-warmup run is refused by ``train()`` itself; the dry run's memory estimate stays within
  15 % of a measured peak (it said 3.0 GiB against 4.6-4.9).

All fast: no training step runs (the two trainers built here stop before their first step).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from reflectune.config import TrainConfig
from reflectune.errors import ConfigError

ROWS = [{"instruction": "Name a primary colour.", "input": "", "output": "Red."},
        {"instruction": "Add 2 and 3.", "input": "", "output": "5."}]


def _data(path: Path, rows: list[dict] = ROWS) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _full_checkpoint(run: Path, step: int = 2) -> Path:
    """What a full fine-tuning save leaves: the weights and, written last, the Trainer's state."""
    checkpoint = run / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"w")
    (checkpoint / "trainer_state.json").write_text("{}")
    return checkpoint


# -- 6. a resume continues only the run it started -------------------------------------------------------

def test_resume_refuses_another_data_file_and_another_lora_setting(tmp_path: Path) -> None:
    from reflectune.training.folder import check_resume, start_record, write_start

    data, other = _data(tmp_path / "a.json"), _data(tmp_path / "b.json", ROWS + ROWS)
    cfg = TrainConfig()
    write_start(tmp_path, start_record(cfg, "embedded", "id1", data))
    with pytest.raises(ConfigError, match=rf"the data \({data} then, {other} now\)"):
        check_resume(tmp_path, start_record(cfg, "embedded", "id1", other))
    with pytest.raises(ConfigError, match="lora False then, True now"):
        check_resume(tmp_path, start_record(cfg.model_copy(update={"lora": True}), "embedded", "id1", data))


# -- 9. NaN never selected, filter or no filter ----------------------------------------------------------

@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")])
def test_a_landed_pair_without_a_finite_rifd_is_never_kept_without_the_filter(bad: float | None) -> None:
    from reflectune.selection.rules import choose_variant

    def entry(ifd: float | None, rifd: float | None) -> dict:
        return {"status": "ok", "ifd": ifd, "rifd": rifd, "ifd_loss_ratio": ifd, "rifd_loss_ratio": rifd}

    # Q's instruction is easier (IFD(Q) < IFD(ori)): the sample lands on A, whose r-IFD is not a number
    choice = choose_variant({"ori": entry(0.6, 0.8), "Q": entry(0.5, 0.7), "A": entry(0.5, bad),
                             "QA": entry(0.65, 0.5)}, below_one_filter=False)
    assert not choice.kept and choice.reason == "nan_rifd"
    choice = choose_variant({"ori": entry(0.6, 0.8), "Q": entry(0.5, 0.7), "A": entry(bad, 0.5),
                             "QA": entry(0.65, 0.5)}, below_one_filter=False)
    assert not choice.kept and choice.reason == "nan_ifd"


# -- 12. one-line errors ---------------------------------------------------------------------------------

def test_a_checkpoint_of_the_other_kind_is_refused(tmp_path: Path) -> None:
    from reflectune.training.folder import check_checkpoint_kind

    full = _full_checkpoint(tmp_path / "full")
    adapter = tmp_path / "lora" / "checkpoint-1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    sharded = tmp_path / "sharded" / "checkpoint-1"
    sharded.mkdir(parents=True)
    check_checkpoint_kind(full, lora=False)
    check_checkpoint_kind(adapter, lora=True)
    check_checkpoint_kind(sharded, lora=True)  # neither kind (a sharded save): left to the Trainer
    check_checkpoint_kind(sharded, lora=False)
    with pytest.raises(ConfigError, match=r"^--resume --lora: .* is a full fine-tuning checkpoint"):
        check_checkpoint_kind(full, lora=True)
    with pytest.raises(ConfigError, match=r"^--resume: .* is a LoRA checkpoint"):
        check_checkpoint_kind(adapter, lora=False)


def test_resume_lora_on_a_full_checkpoint_without_a_start_record_is_one_line(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture
                                                                              ) -> None:
    """A run folder from before start records (nothing to compare): the checkpoint itself refuses."""
    from reflectune.cli import main
    from reflectune.training.run import train

    data, run = _data(tmp_path / "d.json"), tmp_path / "run"
    _full_checkpoint(run)
    with pytest.raises(ConfigError, match="is a full fine-tuning checkpoint"):
        train(data, "embedded", run_dir=run, lora=True, resume=True, template="wiz", max_length=64)
    manifest = run / "run.json"
    assert not manifest.exists() or "train" not in json.loads(manifest.read_text())  # refused before
    assert main(["train", str(data), "--base", "embedded", "--run-dir", str(run), "--lora", "--resume",
                 "-q"]) == 2
    err = capsys.readouterr().err
    flat = " ".join(err.split())  # rich wraps the note
    assert "Traceback" not in err and "records no start settings" in flat  # the note, then the error
    assert err.strip().splitlines()[-1].startswith("error: --resume --lora: ")


def test_train_output_pointing_at_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reflectune.cli import main

    data, file = _data(tmp_path / "d.json"), tmp_path / "model.bin"
    file.write_bytes(b"x")
    assert main(["train", str(data), "--base", "embedded", "--run-dir", str(tmp_path / "run"), "-o",
                 str(file), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -o {file} is a file") and err.count("\n") == 1
    assert file.read_bytes() == b"x"


# -- 13. train -q, the memory estimate -------------------------------------------------------------------

def test_quiet_training_prints_notes_only_and_the_trainer_draws_nothing(tmp_path: Path) -> None:
    """Found: ``train -q`` still showed TRL's bars and raw log dicts. Quiet hands train() a callback
    (notes only), and a trainer built with one has neither the tqdm bars nor the log printer."""
    import datasets
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from reflectune.cli.train import train_progress
    from reflectune.training.trainer import build_trainer

    out = io.StringIO()
    with train_progress(Console(file=out, width=200), quiet=True) as update:
        assert update is not None
        update({"event": "begin", "step": 0, "max_steps": 2})
        update({"event": "log", "step": 1, "max_steps": 2, "epoch": 0.5, "loss": 2.0, "lr": 1e-4})
        update({"event": "note", "message": "skipping checkpoint-2"})
        verbosity = hf_logging.get_verbosity()
        try:
            trainer, _ = build_trainer(_data(tmp_path / "d.json"), "embedded", tmp_path / "t", on_log=update,
                                       template="wiz", max_length=64, global_batch=2, per_device_batch=2,
                                       gradient_checkpointing=False)
        finally:  # build_trainer quietened the libraries for the whole process: give the tests theirs
            datasets.enable_progress_bars()
            hf_logging.enable_progress_bar()
            hf_logging.set_verbosity(verbosity)
    assert out.getvalue() == "note: skipping checkpoint-2\n"
    assert trainer.args.disable_tqdm is True
    drawn = {type(cb).__name__ for cb in trainer.callback_handler.callbacks}
    assert not drawn & {"PrinterCallback", "ProgressCallback"}, drawn


def test_a_one_step_run_that_is_all_warmup_is_refused_when_training_begins(tmp_path: Path) -> None:
    """Found: a 1-step run trained at learning rate 0 (weights unchanged) and reported success. The
    rule has its own test (test_training_folder.py); this one holds train() to it, before a step runs."""
    from reflectune.training.run import train

    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="trains at learning rate 0"):
        train(_data(tmp_path / "d.json"), "embedded", run_dir=run, template="wiz", max_length=64,
              global_batch=2, per_device_batch=2, epochs=1, warmup_ratio=0.5, gradient_checkpointing=False)
    section = json.loads((run / "run.json").read_text())["train"]
    assert section["status"] == "stopped" and "learning rate 0" in section["stop_reason"]
    assert not (run / "model").exists() and not list(run.glob("checkpoint-*"))


#: Peak RSS of ``/usr/bin/time -v reflectune train`` on the 16 longest Alpaca rows (every one 512
#: tokens), embedded model, full fine-tuning, CPU fp32, batch 4 x 512, 2 steps, gradient
#: checkpointing on (the default): 5,141,320 KiB = 4.90 GiB (re-measured by this audit; e79b93d
#: recorded 4.92), and 7.67 GiB without checkpointing (e79b93d). The estimate before said 3.0 / 5.0.
MEASURED_GIB = {True: 4.90, False: 7.67}
EMBEDDED = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, vocab_size=49152)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_memory_formula_is_within_15_percent_of_the_measured_peak(checkpointing: bool) -> None:
    from reflectune.training.plan import _memory

    cfg = TrainConfig(max_length=512, global_batch=4, per_device_batch=4,
                      gradient_checkpointing=checkpointing)
    memory = _memory(cfg, EMBEDDED, 134_515_008, 134_515_008, "float32", 512, 1, fused_attention=False)
    estimate = memory["total_unsharded"] / 1024**3
    assert abs(estimate / MEASURED_GIB[checkpointing] - 1) < 0.15, estimate
    assert memory["grads_and_optimizer"] == 3 * memory["weights"]  # fp32 master weights + grads + AdamW
