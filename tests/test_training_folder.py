"""The training run folder and model folder: ``-o`` never overwrites a model unasked, the run folder is
neither a file nor the base's folder, ``--resume`` continues only the run it started, from its newest
complete checkpoint (the real kill -9 during a save is in ``test_training.py``, beside the run it is
compared with); a saved folder names its base portably."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectune.config import TrainConfig
from reflectune.errors import ConfigError
from reflectune.models import ModelSource
from reflectune.training.folder import (
    START,
    check_output,
    check_resume,
    check_run_dir,
    complete_checkpoint,
    start_record,
    write_start,
)
from reflectune.training.save import portable_adapter, portable_base_name


def _checkpoint(out: Path, step: int, *, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"w")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_output_may_not_be_a_file_the_base_model_or_a_trained_model(tmp_path: Path) -> None:
    cfg = TrainConfig()
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output(file, None, cfg, resuming=False)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="base model's own folder"):
        check_output(base, base, cfg.model_copy(update={"overwrite": True}), resuming=False)
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output(base, None, cfg, resuming=False)
    check_output(base, None, cfg.model_copy(update={"overwrite": True}), resuming=False)
    check_output(tmp_path / "new", base, cfg, resuming=False)
    check_output(tmp_path, base, cfg, resuming=False)  # a folder without a model is fine
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "reflectune-model.json").write_text("{}")  # what train leaves in every model it saves
    with pytest.raises(ConfigError, match=r"reflectune-model.json\): pass --overwrite"):
        check_output(trained, None, cfg, resuming=False)
    with pytest.raises(ConfigError, match=r"the adapter folder .* is a file"):
        check_output(file, None, cfg, resuming=False, what="the adapter folder")


def test_the_run_folder_may_not_be_a_file_or_the_base_models_folder(tmp_path: Path) -> None:
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(ConfigError, match=r"--run-dir .* is a file"):
        check_run_dir(file, None)
    with pytest.raises(ConfigError, match="base model's own folder"):
        check_run_dir(tmp_path, tmp_path)
    check_run_dir(tmp_path / "new", tmp_path)


def test_the_newest_complete_checkpoint_is_taken(tmp_path: Path) -> None:
    assert complete_checkpoint(tmp_path / "none") == (None, [])
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 12, complete=False)   # killed while saving: no trainer_state.json
    (tmp_path / "checkpoint-x").mkdir()
    found, skipped = complete_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint-10" and skipped == ["checkpoint-12"]


def test_resume_refuses_other_options_or_data_naming_them(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "a", "input": "", "output": "b"}]')
    cfg = TrainConfig()
    write_start(tmp_path, start_record(cfg, "embedded", "id1", data))
    assert check_resume(tmp_path, start_record(cfg.model_copy(update={"resume": True, "save_steps": 9}),
                                               "embedded", "id1", data))
    with pytest.raises(ConfigError, match=r"learning_rate 2e-05 then, 0.001 now"):
        check_resume(tmp_path, start_record(cfg.model_copy(update={"learning_rate": 1e-3}), "embedded",
                                            "id1", data))
    with pytest.raises(ConfigError, match="the base model"):
        check_resume(tmp_path, start_record(cfg, "embedded", "id2", data))
    data.write_text('[{"instruction": "a", "input": "", "output": "c"}]')
    with pytest.raises(ConfigError, match="the data file's content"):
        check_resume(tmp_path, start_record(cfg, "embedded", "id1", data))
    (tmp_path / START).unlink()
    assert check_resume(tmp_path, start_record(cfg, "embedded", "id1", data)) is False


def test_a_schedule_that_cannot_train_is_an_error() -> None:
    from reflectune.training.trainer import check_schedule

    with pytest.raises(ConfigError, match="learning rate 0"):
        check_schedule(1, 1)
    with pytest.raises(ConfigError, match="0 optimizer steps"):
        check_schedule(0, 0)
    check_schedule(1, 0)
    check_schedule(2, 1)  # the first step warms up, the second trains


def test_metrics_after_the_resumed_checkpoint_are_dropped(tmp_path: Path) -> None:
    from reflectune.training.run import _keep_metrics_until

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 6)) + '{"st')
    _keep_metrics_until(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_a_saved_folder_names_its_base_portably(tmp_path: Path) -> None:
    embedded = ModelSource("embedded", tmp_path / "cache" / "SmolLM2-135M-Instruct-b179c9523d0e")
    assert portable_base_name("embedded", embedded) == "embedded"
    hub = tmp_path / "meta-llama" / "Llama-2-7b-hf"
    hub.mkdir(parents=True)
    (hub / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path / "somewhere")}))
    hub_id = "meta-llama/Llama-2-7b-hf"
    assert portable_base_name(f"hf:{hub_id}", ModelSource("hf:x", hub)) == hub_id  # a hub id stays
    assert portable_base_name(f"hf:{hub}", ModelSource("hf:x", hub)) == "Llama-2-7b-hf"  # the folder's name
    (hub / "config.json").write_text(json.dumps({"_name_or_path": hub_id}))
    assert portable_base_name(f"hf:{hub}", ModelSource("hf:x", hub)) == hub_id
    assert portable_base_name(str(hub / "m.gguf"), ModelSource("x", hub, "m.gguf")) == "m.gguf"

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    local = str(embedded.path)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": local, "r": 16}))
    (adapter / "README.md").write_text(f"---\nbase_model: {local}\n---\n")
    portable_adapter(adapter, embedded, "embedded")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "embedded", "r": 16}
    assert local not in (adapter / "README.md").read_text()
