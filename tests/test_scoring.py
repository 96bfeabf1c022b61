"""IFD scoring on the real embedded student: exactness against a plain reference, truncation, NaN,
dedupe, resume after kill -9, and the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reflectune.prompts.student import student_prompt
from reflectune.scoring.batching import Tokenized, guess_instruction_prompt, question_text
from reflectune.scoring.scorer import IFDScorer

ALPACA = Path(__file__).resolve().parents[1].parent / "shared/data/alpaca_cherry5pct_3111.json"
MAX_LENGTH = 128  # short, so 64 rows stay fast on 2 cores; still truncates 11 and empties 19 targets
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return json.loads(ALPACA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fp32():
    from reflectune.models import load_causal_lm

    return load_causal_lm("embedded", device="cpu", dtype="float32")


# -- the reference: one sequence at a time, full logits, plain mean NLL over target tokens ------------
def reference_loss(model, tokenizer, prefix: str, target: str, keep: int) -> float | None:
    import torch

    p = tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
    t = tokenizer(target, add_special_tokens=False).input_ids[:keep]
    ids = p + t
    first = max(len(p), 1)  # SmolLM2 adds no BOS: a direct target's first token has no context
    if len(ids) - first <= 0:
        return None
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    nll = [-logp[j - 1, ids[j]].item() for j in range(first, len(ids))]
    return sum(nll) / len(nll)


def reference_scores(model, tokenizer, row: dict[str, str], max_length: int) -> tuple:
    x, i, y = row["instruction"], row["input"], row["output"]
    ids = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    a_prompt = student_prompt("vicuna", x, i)
    q_prompt = student_prompt("vicuna", guess_instruction_prompt(y))
    q = question_text(x, i)
    keep_a = max(0, min(len(ids(y)), max_length - len(ids(a_prompt))))
    keep_q = max(0, min(len(ids(q)), max_length - len(ids(q_prompt))))
    return (reference_loss(model, tokenizer, "", y, keep_a),
            reference_loss(model, tokenizer, a_prompt, y, keep_a),
            reference_loss(model, tokenizer, "", q, keep_q),
            reference_loss(model, tokenizer, q_prompt, q, keep_q))


def _max_rel(refs, ours) -> float:
    worst = 0.0
    for ref, got in zip(refs, ours, strict=True):
        values = (got.a_direct, got.a_condition, got.q_direct, got.q_condition)
        for r, g in zip(ref, values, strict=True):
            assert (r is None) == (g is None), (ref, values)
            if r is not None:
                worst = max(worst, abs(r - g) / abs(r))
    return worst


def test_batched_fp32_equals_reference_on_64_real_rows(rows, fp32) -> None:
    model, tokenizer = fp32
    sample = [r for r in rows if len(r["output"]) <= 200][:64]  # real rows, the shorter ones (speed)
    assert sum(1 for r in sample if r["input"]) > 10
    scorer = IFDScorer(tokenizer, model, max_length=MAX_LENGTH, batch_tokens=4096)
    ours = scorer.score([(r["instruction"], r["input"], r["output"]) for r in sample])
    refs = [reference_scores(model, tokenizer, r, MAX_LENGTH) for r in sample]
    worst = _max_rel(refs, ours)
    print(f"fp32 batched vs reference: max relative difference {worst:.2e}")
    assert worst < 1e-3
    # the ratios are the documented functions of the losses (on a row whose targets all survived)
    assert any(s.q_condition is None for s in ours), "MAX_LENGTH should empty some targets"
    s = next(s for s in ours if None not in (s.a_direct, s.a_condition, s.q_direct, s.q_condition))
    assert s.ifd == pytest.approx(math.exp(s.a_condition - s.a_direct))
    assert s.rifd_loss_ratio == pytest.approx(s.q_condition / s.q_direct)
    assert scorer.stats.batches > 1 and scorer.stats.computed > 64 * 3


def test_vllm_prompt_logprobs_give_the_transformers_losses(rows, fp32) -> None:
    """The vLLM path's arithmetic, on CPU: per-position logprobs shaped as vLLM returns them (None at
    position 0, a dict holding the actual token elsewhere) must give ``batch_losses``' numbers."""
    import torch

    from reflectune.scoring.losses import batch_losses
    from reflectune.scoring.vllm_losses import losses_from_prompt_logprobs

    model, tokenizer = fp32
    tok = Tokenized(tokenizer, template="vicuna", max_length=MAX_LENGTH)
    items = [item for r in rows[:3] for item in tok.candidate(r["instruction"], r["input"], r["output"])
             .items.values() if item.n_counted > 0]
    assert any(item.start == 0 for item in items) and any(item.start > 0 for item in items)
    for item in items:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([item.ids])).logits[0].float(), dim=-1)
        prompt_logprobs = [None] + [{item.ids[j]: logp[j - 1, item.ids[j]].item(), 0: -9.0}
                                    for j in range(1, len(item.ids))]
        loss, n = losses_from_prompt_logprobs(item, prompt_logprobs)
        [(expected, expected_n)] = batch_losses(model, [item])
        assert n == expected_n and loss == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="prompt logprobs"):
        losses_from_prompt_logprobs(items[0], [None])


@pytest.mark.skipif(not __import__("importlib.util").util.find_spec("vllm"), reason="needs vLLM and a GPU")
def test_vllm_matches_transformers(rows, tmp_path: Path) -> None:
    import torch

    from reflectune.scoring.run import score

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows[:32]), encoding="utf-8")
    ours = {}
    for backend in ("hf", "vllm"):
        summary = score(data, backend=backend, dtype="float32", run_dir=tmp_path / backend)
        ours[backend] = [json.loads(line)["variants"]["ori"] for line in summary.scores.open()]
    for a, b in zip(ours["hf"], ours["vllm"], strict=True):
        assert (a["ifd"] is None) == (b["ifd"] is None)
        if a["ifd"] is not None:
            assert b["ifd"] == pytest.approx(a["ifd"], rel=1e-2)


def test_bf16_drift_is_small(rows, fp32) -> None:
    """bf16 is not exact; record how far it drifts (on a few rows: emulated bf16 is slow on AVX2)."""
    from reflectune.models import load_causal_lm

    model32, tokenizer = fp32
    model16, _ = load_causal_lm("embedded", device="cpu", dtype="bfloat16")
    sample = [(r["instruction"], r["input"], r["output"]) for r in rows if len(r["output"]) <= 200][:3]
    exact = IFDScorer(tokenizer, model32, max_length=128).score(sample)
    approx = IFDScorer(tokenizer, model16, max_length=128).score(sample)
    refs = [(e.a_direct, e.a_condition, e.q_direct, e.q_condition) for e in exact]
    worst = _max_rel(refs, approx)
    print(f"bf16 batched vs fp32: max relative difference {worst:.2e}")
    assert worst < 0.1


def test_truncation_cuts_the_target_and_keeps_the_prompt(fp32) -> None:
    _, tokenizer = fp32
    tok = Tokenized(tokenizer, template="vicuna", max_length=64)
    output = " ".join(["word"] * 200)
    items = tok.candidate("Repeat a word.", "", output).items
    prompt = student_prompt("vicuna", "Repeat a word.")
    prompt_ids = tuple(tokenizer(prompt, add_special_tokens=False).input_ids)
    cond, direct = items["a_condition"], items["a_direct"]
    assert cond.ids[:cond.start] == prompt_ids and len(cond.ids) == 64
    kept = cond.ids[cond.start:]
    assert direct.ids == kept and direct.start == 0  # same target tokens, no BOS for SmolLM2
    assert kept == tuple(tokenizer(output, add_special_tokens=False).input_ids[:64 - len(prompt_ids)])
    # the r-IFD prompt holds the 200-word response: longer than 64 tokens, so no target is left
    assert items["q_condition"].n_counted == 0 and items["q_direct"].n_counted == 0


def test_empty_and_overlong_targets_are_nan_and_counted(fp32) -> None:
    model, tokenizer = fp32
    scorer = IFDScorer(tokenizer, model, max_length=96)  # the r-IFD prompt alone is ~70 tokens
    empty, overlong, fine = scorer.score([
        ("Say nothing.", "", ""),
        ("Repeat a word.", "", " ".join(["word"] * 200)),
        ("Name a colour.", "", "Blue is a colour."),
    ])
    assert empty.a_direct is None and empty.a_condition is None and empty.ifd is None
    assert empty.q_condition is not None  # the instruction is still a target for r-IFD
    assert overlong.ifd is not None and overlong.rifd is None and overlong.has_nan
    assert fine.ifd is not None and fine.rifd is not None and not fine.has_nan
    assert scorer.stats.empty >= 3
    assert json.loads(json.dumps(empty.to_json()))["ifd"] is None


def test_identical_computations_run_once(fp32) -> None:
    model, tokenizer = fp32
    scorer = IFDScorer(tokenizer, model, max_length=128)
    ori = ("Name a colour.", "", "Blue.")
    better = ("Name a colour.", "", "Blue is the colour of a clear sky.")
    a, b, c = scorer.score([ori, better, ori])
    assert scorer.stats.computed == 7  # ori and A share Q_direct; the repeated ori costs nothing
    assert a == c and a.q_direct == b.q_direct

    alone = IFDScorer(tokenizer, model, max_length=128)
    only = alone.score([ori, better], rifd=False)
    assert alone.stats.computed == 4  # A_direct and A_condition of each, nothing for r-IFD
    assert [s.ifd for s in only] == [a.ifd, b.ifd] and not only[0].has_nan
    assert only[0].rifd is None and "rifd" not in only[0].to_json() and "q_direct" not in only[0].to_json()


# -- run folders, resume, CLI -------------------------------------------------------------------------
def make_run_folder(path: Path, rows: list[dict[str, str]], data_file: Path) -> Path:
    """A recycle run folder written by hand from real rows (Q/A texts made up, one failure)."""
    path.mkdir(parents=True)
    data_file.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    with (path / "variants.jsonl").open("w", encoding="utf-8") as fh:
        for index, r in enumerate(rows):
            x, i, y = r["instruction"], r["input"], r["output"]
            q = f"{x} Explain your reasoning step by step." + (f"\n{i}" if i else "")
            variants = {
                "ori": {"instruction": x, "input": i, "output": y, "status": "ok"},
                "Q": {"instruction": q, "input": "", "output": y + " That is the answer.", "status": "ok",
                      "reason": None},
                "A": {"instruction": x, "input": i, "output": "Sure. " + y, "status": "ok", "reason": None},
                "QA": {"instruction": q, "input": "", "output": "Here is a careful answer. " + y,
                       "status": "ok", "reason": None},
            }
            if index == 1:
                variants["QA"] = {"instruction": None, "input": None, "output": None,
                                  "status": "parse_failed", "reason": "no [Better Answer]"}
            fh.write(json.dumps({"id": f"row-{index}", "row": index + 1, "status": "ok",
                                 "variants": variants}) + "\n")
    (path / "run.json").write_text(json.dumps({"recycle": {"input": {
        "path": str(data_file.resolve()), "format": "json", "fields": {}}}}), encoding="utf-8")
    return path


def _stored(run: Path) -> int:
    db = sqlite3.connect(run / "store.sqlite", timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM results WHERE namespace LIKE 'ifd:%'").fetchone()[0]
    except sqlite3.OperationalError:  # the table does not exist yet
        return 0
    finally:
        db.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())


def test_score_resumes_after_kill_without_rescoring(tmp_path: Path, rows) -> None:
    short = [r for r in rows if len(r["output"]) <= 150]
    data = [dict(r, id=f"row-{n}") for n, r in enumerate(short[10:14])]
    run = make_run_folder(tmp_path / "run", data, tmp_path / "data.json")
    args = ["score", str(run), "--max-length", "128", "--batch-tokens", "256", "--dtype", "float32", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "reflectune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while _stored(run) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "scoring finished before the kill: give it more work"
    before = _stored(run)
    assert before > 0 and not (run / "scores.jsonl").exists()

    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    section = json.loads((run / "run.json").read_text())["score"]
    assert section["cached"] == before
    assert section["computed"] == _stored(run) - before > 0
    assert section["status"] == "done" and section["unavailable"] == 1
    lines = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"row-{n}" for n in range(4)]
    assert lines[1]["variants"]["QA"] == {"status": "parse_failed"}
    assert set(lines[0]["variants"]["Q"]) >= {"a_direct", "a_condition", "q_direct", "q_condition", "ifd",
                                              "rifd", "ifd_loss_ratio", "rifd_loss_ratio"}

    # a third run computes nothing and never loads the model
    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    section = json.loads((run / "run.json").read_text())["score"]
    assert section["computed"] == 0 and section["load_seconds"] == 0
    assert (run / "scores.jsonl").read_text().splitlines() == [json.dumps(line) for line in lines]

    # select on the run folder: reuses the scores, writes the input's shape plus the score columns
    out = tmp_path / "selected.jsonl"
    picked = _cli("select", str(run), "-o", str(out), "--no-below-one-filter", "-q")
    assert picked.returncode == 0, picked.stderr
    assert "both reflected" in picked.stderr
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["score"]["computed"] == 0  # select did not rescore
    chosen = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(chosen) == manifest["select"]["kept"]
    for row in chosen:
        assert {"instruction", "input", "output", "id", "ifd", "rifd", "variant", "outcome"} <= set(row)
        assert row["variant"] in ("A", "QA") and row["outcome"] in ("both", "response")


def test_cherry_mode_cli(tmp_path: Path, rows) -> None:
    from typer.testing import CliRunner

    from reflectune.cli import app

    data = tmp_path / "small.json"
    data.write_text(json.dumps([*rows[200:206], {"instruction": "Say nothing.", "input": "", "output": ""}]),
                    encoding="utf-8")
    runner = CliRunner()
    scored = runner.invoke(app, ["score", str(data), "--run-dir", str(tmp_path / "r"), "--max-length", "128",
                                 "--dtype", "float32", "-q"])
    assert scored.exit_code == 0, scored.output
    section = json.loads((tmp_path / "r" / "run.json").read_text())["score"]
    assert section["mode"] == "cherry" and section["samples"] == 7 and section["nan"]["ifd"] == 1
    assert section["rifd"] is False and section["computed"] == 2 * 6  # the empty output: nothing to run
    lines = [json.loads(x) for x in (tmp_path / "r" / "scores.jsonl").read_text().splitlines()]
    assert all(set(line["variants"]) == {"ori"} for line in lines)
    assert "rifd" not in lines[0]["variants"]["ori"] and lines[0]["variants"]["ori"]["ifd"] > 0

    # asking for r-IFD later computes only the r-IFD items; the IFD ones come from the store
    both = runner.invoke(app, ["score", str(data), "--run-dir", str(tmp_path / "r"), "--max-length", "128",
                               "--dtype", "float32", "--rifd", "-q"])
    assert both.exit_code == 0, both.output
    again = json.loads((tmp_path / "r" / "run.json").read_text())["score"]
    assert again["rifd"] is True and again["cached"] == section["computed"] and 0 < again["computed"] <= 2 * 7
    full = [json.loads(x) for x in (tmp_path / "r" / "scores.jsonl").read_text().splitlines()]
    assert [f["variants"]["ori"]["ifd"] for f in full] == [line["variants"]["ori"]["ifd"] for line in lines]
    assert any((f["variants"]["ori"]["rifd"] or 0) > 0 for f in full)

    out = tmp_path / "top.json"
    picked = runner.invoke(app, ["select", str(data), "--run-dir", str(tmp_path / "r"), "--ifd-top-k", "2",
                                 "-o", str(out), "-q"])
    assert picked.exit_code == 0, picked.output
    kept = json.loads(out.read_text())
    ifds = sorted((line["variants"]["ori"]["ifd"] for line in lines
                   if line["variants"]["ori"]["ifd"] is not None and line["variants"]["ori"]["ifd"] < 1),
                  reverse=True)
    assert sorted((row["ifd"] for row in kept), reverse=True) == pytest.approx(ifds[:2])
    select = json.loads((tmp_path / "r" / "run.json").read_text())["select"]
    assert select["dropped"]["nan_ifd"] == 1 and select["kept"] == 2


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    from reflectune.cli import main

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]), encoding="utf-8")
    assert main(["score", str(data), "--template", "nope"]) == 2
    assert main(["score", str(data), "--backend", "vllm"]) == 2
    run = make_run_folder(tmp_path / "run", [{"instruction": "a", "input": "", "output": "b"}],
                          tmp_path / "d2.json")
    assert main(["score", str(run), "--no-rifd"]) == 2
    assert main(["select", str(data), "--top-k", "0.5"]) == 2


def test_reduced_precision_results_are_keyed_by_their_batch_budget() -> None:
    """bf16 losses move with the batch's composition; fp32 ones do not (issue 21, item 11)."""
    from reflectune.scoring.rules import precision_key, score_namespace

    assert precision_key("float32", 8192) == precision_key("float32", 256) == "float32"
    assert precision_key("bfloat16", 8192) != precision_key("bfloat16", 256)
    assert precision_key("bfloat16", 8192, "vllm") == "bfloat16@8192+vllm"
    spaces = {score_namespace("fp", "vicuna", 2048, precision_key(d, b)) for d in ("bfloat16", "float16")
              for b in (256, 8192)}
    assert len(spaces) == 4
