"""``reflectune run``: the whole method on real parts (the embedded model recycles, scores, trains and
answers; the judge is the loopback OpenAI-compatible server), then the promises of the lineage:

- a rerun of a finished pipeline skips every stage and calls nothing;
- changing only ``select.top_k`` reruns select, train, generate and judge, and makes no recycle call
  and no score computation;
- ``kill -9`` during ``score`` and during ``train``, then the same command: it finishes, the outputs
  equal an uninterrupted run's, and no completed call or training step is done again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reflectune.testing.server import running_server

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "src" / "reflectune" / "data" / "demo_alpaca20.json"

PIPELINE = """\
data: d4.json
recycle:
  oracle: {{spec: embedded, batch_size: 1}}  # alone in its batch: two fresh runs rewrite alike
  sampling: {{max_tokens: 48, critique_tokens: 16}}
  gates: {{enabled: []}}     # the 135M oracle's rewrites rarely pass them; the machinery is tested here
score: {{student: embedded, max_length: 256, batch_tokens: 256}}
select: {{below_one_filter: false}}
train:
  epochs: 1
  global_batch: 1
  per_device_batch: 1
  max_length: 256
  warmup_ratio: 0
  learning_rate: 1.0e-4
  lora: true
  save_steps: 1
  save_total_limit: 1
generate:
  testset: vicuna
  limit: 2
  max_tokens: 16
  model: {{batch_size: 2}}
judge:
  judge: {{spec: "openai:judge", base_url: "{url}"}}
  max_tokens: 64
"""


@pytest.fixture(scope="module")
def judge_server() -> Iterator[Any]:
    with running_server() as srv:
        yield srv


def pipeline_file(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = json.loads(DEMO.read_text(encoding="utf-8"))[:4]
    (folder / "d4.json").write_text(json.dumps(rows), encoding="utf-8")
    path = folder / "p.yaml"
    path.write_text(PIPELINE.format(url=url), encoding="utf-8")
    return path


def command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reflectune", "run", str(path), "--json", *extra]


def run(path: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(command(path, *extra), capture_output=True, text=True, timeout=900,
                          cwd=path.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return dict(json.loads(done.stdout))


def stages(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in result["stages"]}


def outputs(folder: Path) -> dict[str, Any]:
    """What the method produced, without timings: the files a user reads."""
    run_dir = folder / "runs" / "p"
    lines = {name: (run_dir / name).read_text(encoding="utf-8") for name in (
        "recycle/variants.jsonl", "recycle/scores.jsonl", "recycle/selected.json",
        "generate/answers.jsonl", "baseline/answers.jsonl", "judge/judgments.jsonl")}
    report = json.loads((run_dir / "judge" / "judge.json").read_text(encoding="utf-8"))
    return lines | {"overall": report["overall"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, judge_server: Any) -> tuple[Path, dict[str, Any]]:
    path = pipeline_file(tmp_path_factory.mktemp("whole"), judge_server.base_url)
    result = run(path)
    return path, result | {"outputs": outputs(path.parent)}  # before any test changes a setting


def test_the_whole_method_runs_and_records_its_lineage(finished: tuple[Path, dict[str, Any]]) -> None:
    path, result = finished
    table = stages(result)
    assert [s["status"] for s in result["stages"]] == ["ran"] * 6
    assert table["recycle"]["made"] > 0 and table["score"]["made"] > 0 and table["train"]["made"] > 0
    verdict = result["verdict"]
    assert verdict["win"] + verdict["tie"] + verdict["lose"] == 2
    lineage = json.loads((path.parent / "runs" / "p" / "pipeline.json").read_text())
    for name, entry in lineage["stages"].items():
        assert entry["status"] == "complete", name
        assert len(entry["fingerprint"]) == 16 and entry["settings"] and entry["inputs"], name
        assert entry["outputs"] and all("sha256" in o or "files" in o for o in entry["outputs"].values())
    assert {"reflectune", "torch", "transformers", "trl"} <= set(lineage["versions"])
    assert "base_url" in json.dumps(lineage["config"]["judge"])
    assert result["report"] == str(path.parent / "runs" / "p" / "report.html")  # the run's page
    assert "reflectune report: p" in Path(result["report"]).read_text(encoding="utf-8")


def test_a_rerun_skips_every_stage_and_calls_nothing(finished: tuple[Path, dict[str, Any]]) -> None:
    path, _ = finished
    again = run(path)
    assert [s["status"] for s in again["stages"]] == ["skipped"] * 6
    assert all(s["made"] == 0 for s in again["stages"])


def test_changing_top_k_reruns_only_what_reads_it(finished: tuple[Path, dict[str, Any]]) -> None:
    path, _ = finished
    answers = path.parent / "runs" / "p" / "generate" / "answers.jsonl"
    before = answers.read_bytes()
    changed = stages(run(path, "--set", "select.top_k=1"))
    # the judge reads answers by content: when the retrained model answers byte for byte as before
    # (16 greedy tokens often do), its inputs did not change and it is rightly up to date
    judged = "skipped" if answers.read_bytes() == before else "ran"
    assert {n: s["status"] for n, s in changed.items()} == {
        "recycle": "skipped", "score": "skipped", "select": "ran", "train": "ran", "generate": "ran",
        "judge": judged}
    assert changed["recycle"]["made"] == 0 and changed["score"]["made"] == 0
    assert changed["select"]["rows"] == 1 and changed["train"]["rows"] == 1


def _wait_for(path: Path, stage: str, ready: Any, process: subprocess.Popen[bytes],
              timeout: float = 600) -> None:
    lineage = path.parent / "runs" / "p" / "pipeline.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entry = json.loads(lineage.read_text())["stages"].get(stage) or {}
        except (OSError, ValueError):
            entry = {}
        if entry.get("status") == "running" and ready(path.parent / "runs" / "p"):
            return
        assert process.poll() is None, f"the pipeline ended before {stage} reached the kill point"
        time.sleep(0.05)
    raise AssertionError(f"{stage} never got going")


def _scores_committed(run_dir: Path) -> bool:
    """Some of score's computations are in the store: a kill now leaves work done and work to do."""
    store = run_dir / "recycle" / "store.sqlite"
    if not store.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=0.1)) as db:
            return bool(db.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.Error:
        return False


def test_killed_during_score_and_train_it_resumes_to_the_same_outputs(
        tmp_path: Path, finished: tuple[Path, dict[str, Any]], judge_server: Any) -> None:
    path = pipeline_file(tmp_path, judge_server.base_url)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def killed(stage: str, ready: Any) -> None:
        process = subprocess.Popen(command(path), cwd=path.parent, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            _wait_for(path, stage, ready, process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)

    killed("score", _scores_committed)
    killed("train", lambda run_dir: any((run_dir / "train").glob("checkpoint-*/trainer_state.json")))
    lineage = json.loads((path.parent / "runs" / "p" / "pipeline.json").read_text())
    assert lineage["stages"]["train"]["status"] == "running"  # the kill left it mid-way
    checkpoints = sorted((path.parent / "runs" / "p" / "train").glob("checkpoint-*"))
    resumed = run(path)
    table = stages(resumed)
    assert table["recycle"]["status"] == "skipped" and table["recycle"]["made"] == 0
    assert table["score"]["status"] in ("skipped", "ran") and table["score"]["made"] == 0
    assert table["train"]["status"] == "ran" and table["train"]["reused"] >= 1, checkpoints
    assert table["train"]["made"] + table["train"]["reused"] == stages(finished[1])["train"]["made"]
    assert outputs(path.parent) == finished[1]["outputs"]
