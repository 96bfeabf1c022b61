"""A pipeline file is validated like a program: every mistake is one line with the file, the line, the
key's path and a did-you-mean; paths are read against the file, never the working folder; no secret
is accepted in it. Nothing here loads a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reflectune.config import RunConfig
from reflectune.errors import ConfigError
from reflectune.pipeline import load_run_config, stage_range

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("data: x.json\njudge:\n  judge: {sepc: embedded}\n",
     r"p\.yaml:3: judge\.judge\.sepc: unknown key \(did you mean 'spec'\?\)"),
    ("data: x.json\nrecylce:\n  limit: 3\n",
     r"p\.yaml:2: recylce: unknown section \(did you mean 'recycle'\?\)"),
    ("select:\n  top_k: 5%\n  studnet: embedded\n", r"p\.yaml:3: select\.studnet: unknown key"),
    ("train:\n  epochs: -1\n", r"p\.yaml:1: train: epochs and learning_rate must be positive"),
    ("recycle:\n  engine:\n    rpm: fast\n",
     r"p\.yaml:3: recycle\.engine\.rpm: Input should be a valid number"),
    ("recycle:\n  oracle: {spec: openai:gpt-4o, api_key_env: sk-abcdefghijklmnopqrstuvwxyz}\n",
     r"p\.yaml:2: recycle\.oracle\.api_key_env: this looks like a secret"),
    ("- a\n- b\n", r"p\.yaml:1: a pipeline file is a mapping of sections"),
    ("recycle: [\n", r"p\.yaml:2: not valid YAML"),
])
def test_mistakes_are_one_line_with_file_line_and_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(write(tmp_path, text))


def test_the_cli_reports_a_mistake_in_one_line_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "data: x.json\ngenerate:\n  testsett: vicuna\n")
    done = subprocess.run([sys.executable, "-m", "reflectune", "run", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {path}:3: generate.testsett: unknown key (did you mean "
                                   "'testset'?)")


def test_relative_paths_and_local_model_specs_are_read_against_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exp" / "models" / "student").mkdir(parents=True)
    path = write(tmp_path / "exp", "data: ../data/a.json\nscore:\n  student: hf:models/student\n"
                 "generate:\n  baseline: ./models/student\n  model: {spec: embedded}\n"
                 "judge:\n  judge: {spec: openai:gpt-4o}\n  baseline: answers.jsonl\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the file's folder
    config = load_run_config(path)
    root = (tmp_path / "exp").resolve()
    assert config.data == str((tmp_path / "data" / "a.json").resolve())
    assert config.score.student == f"hf:{root / 'models' / 'student'}"
    assert config.generate.baseline == str(root / "models" / "student")
    assert config.judge.baseline == str(root / "answers.jsonl")
    assert config.judge.judge.spec == "openai:gpt-4o" and config.generate.model.spec == "embedded"
    assert config.run_dir == str(tmp_path / "runs" / "p")  # default: runs/<file name>, where you stand


def test_overrides_apply_before_validation_and_are_checked_the_same(tmp_path: Path) -> None:
    path = write(tmp_path, "data: a.json\nselect:\n  top_k: 5%\n")
    assert load_run_config(path, ["select.top_k=10%"]).select.top_k == "10%"
    assert load_run_config(path, ["train.epochs=2"]).train.epochs == 2
    with pytest.raises(ConfigError, match=r"select\.topk: unknown key \(did you mean 'top_k'\?\)"):
        load_run_config(path, ["select.topk=3"])
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        load_run_config(path, ["select.top_k"])


def test_each_section_is_its_stage_config_plus_what_it_reads() -> None:
    config = RunConfig()
    assert type(config.train.stage()).__name__ == "TrainConfig"
    assert config.recycle.stage().limit is None  # a stage field named like a pipeline one is kept
    assert "baseline" not in type(config.generate.stage()).model_fields
    changed = RunConfig(select={"top_k": "10%"})
    assert changed.select.step_hash() != config.select.step_hash()
    assert changed.train.step_hash() == config.train.step_hash()
    assert RunConfig(select={"enabled": False}).select.step_hash() == config.select.step_hash()


@pytest.mark.parametrize("name", ["v2-embedded.yaml", "v2-paper.yaml", "cherry.yaml"])
def test_the_shipped_pipelines_load(name: str) -> None:
    config = load_run_config(EXAMPLES / name)
    assert config.data is not None and Path(config.data).is_absolute()


def test_stage_ranges() -> None:
    assert stage_range() == ["recycle", "score", "select", "train", "generate", "judge"]
    assert stage_range(start="select", until="train") == ["select", "train"]
    assert stage_range(only="judge") == ["judge"]
    with pytest.raises(ConfigError, match=r"--from slect: no such stage \(did you mean 'select'\?\)"):
        stage_range(start="slect")
    with pytest.raises(ConfigError, match="comes after"):
        stage_range(start="train", until="score")
    with pytest.raises(ConfigError, match="does not combine"):
        stage_range(start="train", only="score")
