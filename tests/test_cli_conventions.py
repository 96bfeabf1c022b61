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


def test_train_dry_run_json_and_the_checks_of_a_real_run(tmp_path: Path) -> None:
    data = _rows(tmp_path / "d.jsonl", 8)
    done = run_cli("train", str(data), "--base", "embedded", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)["plan"]
    assert plan["rows"] == 8 and plan["total_steps"] >= 1
    bad = run_cli("train", str(data), "--base", "embedded", "--dry-run", "--sft", "bogus_key=1")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --sft bogus_key: not an SFTConfig field"


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
