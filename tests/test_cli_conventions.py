"""The field's CLI conventions (issue 19, items 2 and 3): ``--json`` summaries a script can load,
``-q``/``--quiet`` everywhere, ``-V``, flags shown as flags, and dry runs that need no key but make
every check a real run makes. Real subprocesses; the loopback server where a stage calls an oracle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from reflectune.cli import app
from reflectune.testing.server import running_server
from tests.conftest import ALPACA, run_cli
from tests.test_selection_empty_and_portability import ALL_KEPT, scored_run

STAGES = ("recycle", "score", "select", "train", "generate", "judge")


def _rows(path: Path, n: int) -> Path:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _options(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("name", [*STAGES, "run", "demo"])
def test_every_command_has_quiet_both_ways_and_json(name: str) -> None:
    options = _options(name)
    assert {"-q", "--quiet", "--json"} <= options, sorted(options)


def test_report_has_quiet_too() -> None:
    assert {"-q", "--quiet", "-o", "--output"} <= _options("report")


def test_version_and_flags_shown_as_flags() -> None:
    done = run_cli("-V")
    assert done.returncode == 0 and done.stdout.startswith("reflectune ")
    shown = run_cli("select", "--help", env={"COLUMNS": "160"}).stdout
    assert "--allow-empty" in shown and "<bool>" not in shown.replace("--help", "").split("Show this")[0]


def test_select_json_is_one_object_on_stdout(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [ALL_KEPT] * 3)
    done = run_cli("select", str(run), "-o", str(tmp_path / "sel.jsonl"), "--json", "--no-html")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["command"], summary["exit_code"], summary["kept"]) == ("select", 0, 3)
    assert summary["output"] == str(tmp_path / "sel.jsonl") and "kept" in done.stderr


def test_train_dry_run_json_and_the_checks_of_a_real_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from reflectune.cli import main

    data = _rows(tmp_path / "d.jsonl", 8)  # in process: the libraries are imported once for both runs
    assert main(["train", str(data), "--base", "embedded", "--dry-run", "--json", "--max-length", "64",
                 "--global-batch", "1", "--per-device-batch", "1"]) == 0
    out, err = capsys.readouterr()
    body = json.loads(out)
    plan, probe = body["plan"], body["probe"]
    assert plan["rows"] + plan["skipped"]["prompt_too_long"] == 8
    assert plan["total_steps"] == 3 * plan["rows"]  # 3 epochs of batches of 1
    assert len(probe["seconds"]) == 2 and all(s > 0 for s in probe["seconds"]) and probe["mean_tokens"] > 0
    assert "time (measured steps)" in err and not (tmp_path / "runs").exists()
    assert main(["train", str(data), "--base", "embedded", "--dry-run", "--sft", "bogus_key=1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --sft bogus_key: not an SFTConfig field"


def test_a_dry_run_needs_no_key(tmp_path: Path) -> None:
    data = _rows(tmp_path / "d.jsonl", 5)
    done = run_cli("recycle", str(data), "--oracle", "openai:gpt-4o-mini", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "OPENAI_API_KEY is not set: the real run needs it" in done.stderr
    assert "cost (USD)" in done.stderr and not (tmp_path / "runs").exists()


def test_recycle_and_generate_json_load_with_json_load(tmp_path: Path) -> None:
    data = _rows(tmp_path / "d.jsonl", 3)
    with running_server() as server:
        recycled = run_cli("recycle", str(data), "--oracle", "openai:test", "--base-url", server.base_url,
                           "--run-dir", str(tmp_path / "r"), "--phases", "response", "-q", "--no-html",
                           "--json")
        generated = run_cli("generate", "--model", "openai:test", "--base-url", server.base_url,
                            "--testset", "vicuna", "--limit", "2", "--run-dir", str(tmp_path / "g"), "-q",
                            "--json")
    assert recycled.returncode == 0, recycled.stderr
    summary = json.loads(recycled.stdout)
    assert (summary["command"], summary["rows"], summary["exit_code"]) == ("recycle", 3, 0)
    assert generated.returncode == 0, generated.stderr
    answers = json.loads(generated.stdout)
    assert (answers["command"], answers["rows"], answers["failed"]) == ("generate", 2, 0)


def test_judge_and_score_json_load_with_json_load(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi.", "dataset": "t", "id": "1"}) + "\n")
    b.write_text(json.dumps({"instruction": "Say hi.", "output": "Hello there, friend!", "dataset": "t",
                             "id": "1"}) + "\n")
    with running_server() as server:
        judged = run_cli("judge", str(a), str(b), "--judge", "openai:judge", "--base-url", server.base_url,
                         "--run-dir", str(tmp_path / "j"), "--no-chart", "-q", "--no-html", "--json",
                         "-o", str(tmp_path / "verdict.json"))
    assert judged.returncode == 0, judged.stderr
    verdict = json.loads(judged.stdout)  # the W/T/L tables went to stderr
    assert verdict["command"] == "judge" and verdict["output"] == str(tmp_path / "verdict.json")
    assert sum(verdict["overall"][k] for k in ("win", "tie", "lose")) == 1
    assert (tmp_path / "verdict.json").is_file()

    data = _rows(tmp_path / "d.jsonl", 2)
    scored = run_cli("score", str(data), "--student", "embedded", "--max-length", "64", "--run-dir",
                     str(tmp_path / "s"), "-q", "--json")
    assert scored.returncode == 0, scored.stderr
    summary = json.loads(scored.stdout)
    assert (summary["command"], summary["samples"], summary["candidates"]) == ("score", 2, 2)


def test_train_reads_one_split_of_a_dataset_dict(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    DatasetDict({"train": Dataset.from_list(rows[:6]), "test": Dataset.from_list(rows[6:9])}).save_to_disk(
        str(tmp_path / "dd"))
    split = run_cli("train", str(tmp_path / "dd"), "--base", "embedded", "--dry-run", "--no-probe", "--json",
                    "--split", "test")
    assert split.returncode == 0, split.stderr
    assert json.loads(split.stdout)["plan"]["rows"] == 3
    both = run_cli("train", str(tmp_path / "dd"), "--base", "embedded", "--dry-run", "--no-probe")
    assert both.returncode == 2 and "holds splits train, test: pick one with --split" in both.stderr
    assert len(both.stderr.strip().splitlines()) == 1
