"""The GPU code paths in one short run: scoring precision and its decisions, generation, training,
the shipped multi-GPU config, vLLM where installed (issue 17, item 5).

Run it whenever a GPU machine is lent (``benchmarks/gpu_check.sh`` prepares the machine and calls
this); ``--device cpu --quick`` runs the same code on a CPU in about two minutes, which is how it is
kept working between GPU sessions. Each check is timed and recorded; a check that fails is written
down with its error and the others go on. Output: ``gpu_check.json`` and ``gpu_check.md`` in
``--out``, and the ``gpu_check`` block of ``benchmarks/RESULTS.md`` unless ``--no-write``.

Checks:

- ``score``: the first ``--rows`` rows of ``alpaca_cherry5pct_3111.json`` (ori, IFD) with the embedded
  student in fp32, bf16 and fp16 on the device: tokens/s, and bf16's and fp16's *decisions* against
  fp32 (IFD < 1 agreement, the top-10 % set, relative IFD differences). This is what would let
  ``score`` default to half precision on GPUs by measurement (``scoring.rules.scoring_dtype``).
- ``generate``: ``reflectune.generate`` on ``--prompts`` Vicuna prompts, greedy, 128 new tokens.
- ``train``: ``reflectune.train`` of the embedded model on 64 rows (full fine-tuning in the device's
  default dtype), then LoRA: loss first -> last, seconds.
- ``ddp``: the shipped ``ddp`` accelerate config through ``accelerate launch`` with the GPUs there are.
- ``vllm``: if vLLM imports, ``score --backend vllm`` on the same rows against transformers fp32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import info_lines, machine_info, markdown_table, write_block

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_cherry5pct_3111.json"


def _timed(name: str, results: dict[str, Any], check: Callable[[], dict[str, Any]]) -> None:
    began = time.monotonic()
    try:
        results[name] = {"ok": True, **check()}
    except Exception as exc:  # a failed check is a finding: record it and go on
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc(limit=4)}
    results[name]["seconds"] = round(time.monotonic() - began, 2)
    print(f"{name}: {'ok' if results[name]['ok'] else results[name]['error']} "
          f"({results[name]['seconds']} s)", flush=True)


def _rows(path: Path, n: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))[:n]
    return rows


def decisions(reference: list[float | None], other: list[float | None]) -> dict[str, Any]:
    """How far ``other``'s IFDs are from ``reference``'s, and whether they decide alike."""
    pairs = [(r, o) for r, o in zip(reference, other, strict=True) if r is not None and o is not None]
    rel = sorted(abs(o - r) / abs(r) for r, o in pairs)
    k = max(1, len(reference) // 10)

    def top(values: list[float | None]) -> set[int]:
        ranked = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: -(values[i] or 0))
        return set(ranked[:k])

    return {"n": len(pairs), "median_rel": rel[len(rel) // 2] if rel else None,
            "p95_rel": rel[int(len(rel) * 0.95)] if rel else None, "max_rel": rel[-1] if rel else None,
            "below_one_agree": sum((o < 1) == (r < 1) for r, o in pairs), "top10_size": k,
            "top10_shared": len(top(reference) & top(other))}


def check_score(data: Path, device: str, rows: int) -> dict[str, Any]:
    from reflectune.models import load_causal_lm
    from reflectune.scoring.scorer import IFDScorer

    triples = [(r["instruction"], r["input"], r["output"]) for r in _rows(data, rows)]
    dtypes = ["float32", "bfloat16"] + (["float16"] if device.startswith("cuda") else [])
    ifds: dict[str, list[float | None]] = {}
    out: dict[str, Any] = {"rows": rows, "runs": {}}
    for dtype in dtypes:
        model, tokenizer = load_causal_lm("embedded", device=device, dtype=dtype)
        scorer = IFDScorer(tokenizer, model, max_length=512)
        began = time.monotonic()
        scores = scorer.score(triples, rifd=False)
        wall = time.monotonic() - began
        ifds[dtype] = [s.ifd for s in scores]
        out["runs"][dtype] = {"seconds": round(wall, 2), "tokens": scorer.stats.tokens,
                              "tokens_per_s": round(scorer.stats.tokens / wall, 1) if wall else None}
        del model
    for dtype in dtypes[1:]:
        out["runs"][dtype]["vs_fp32"] = decisions(ifds["float32"], ifds[dtype])
    return out


def check_generate(device: str, prompts: int, tokens: int) -> dict[str, Any]:
    from reflectune import generate

    with tempfile.TemporaryDirectory() as folder:
        began = time.monotonic()
        summary = generate(Path(folder) / "answers.jsonl", model="embedded", testset="vicuna", limit=prompts,
                           run_dir=Path(folder) / "run", max_tokens=tokens, device=device,
                           batch_size=prompts)
        wall = time.monotonic() - began
    produced = summary.stats.get("completion_tokens", 0)
    return {"prompts": summary.rows, "failed": summary.failed, "completion_tokens": produced,
            "seconds_with_load": round(wall, 2), "tokens_per_s_with_load": round(produced / wall, 1)}


def check_train(source: Path, rows: int, lora: bool) -> dict[str, Any]:
    from reflectune import train

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps(_rows(source, rows)), encoding="utf-8")
        result = train(data, "embedded", run_dir=Path(folder) / "run", max_length=256, epochs=1,
                       global_batch=4, per_device_batch=4, warmup_ratio=0.0, lora=lora, save_steps=10_000,
                       sft={"logging_steps": 1})
    return {"rows": result.rows, "steps": result.steps, "first_loss": result.first_loss,
            "final_loss": result.final_loss, "train_seconds": round(result.train_seconds, 2)}


def check_ddp(source: Path, rows: int) -> dict[str, Any]:
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return {"skipped": "no GPU"}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps(_rows(source, rows)), encoding="utf-8")
        config = subprocess.run([sys.executable, "-m", "reflectune", "train", "--print-accelerate-config",
                                 "ddp"], capture_output=True, text=True, check=True).stdout.strip()
        done = subprocess.run(["accelerate", "launch", "--config_file", config, "--num_processes", str(gpus),
                               "-m", "reflectune", "train", str(data), "--base", "embedded", "--run-dir",
                               str(Path(folder) / "run"), "--max-length", "128", "--epochs", "1",
                               "--global-batch", str(4 * gpus), "--per-device-batch", "4", "-q"],
                              capture_output=True, text=True, timeout=420)
    return {"gpus": gpus, "returncode": done.returncode, "stderr_tail": done.stderr[-800:]}


def check_vllm(source: Path, rows: int) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not installed"}
    from reflectune import score

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps(_rows(source, rows)), encoding="utf-8")
        ref = score(data, run_dir=Path(folder) / "hf", dtype="float32", max_length=512, rifd=False)
        got = score(data, run_dir=Path(folder) / "vllm", backend="vllm", max_length=512, rifd=False)
        a = [json.loads(line) for line in ref.scores.read_text().splitlines()]
        b = [json.loads(line) for line in got.scores.read_text().splitlines()]
    ifd_a = [r["variants"]["ori"].get("ifd") for r in a]
    ifd_b = [r["variants"]["ori"].get("ifd") for r in b]
    return {"vs_transformers_fp32": decisions(ifd_a, ifd_b), "vllm_seconds": got.seconds,
            "hf_seconds": ref.seconds}


def render(results: dict[str, Any]) -> str:
    where = (f"device {results.get('device')}" + (", quick sizes: a smoke run of the script, not a "
                                                    "measurement" if results.get("quick") else ""))
    parts = ["## GPU check (`benchmarks/gpu_check.sh`)", "",
             f"Every GPU code path in one run ({where}); each check's seconds include its model loads.", ""]
    score = results.get("score", {})
    if score.get("ok"):
        rows = []
        for dtype, run in score["runs"].items():
            d = run.get("vs_fp32")
            spread = "-" if d is None else f"{d['median_rel']:.1e} / {d['p95_rel']:.1e} / {d['max_rel']:.1e}"
            rows.append([dtype, f"{run['tokens']:,}", f"{run['seconds']:.1f}", f"{run['tokens_per_s']:,.0f}",
                         spread,
                         "-" if d is None else f"{d['below_one_agree']}/{d['n']}",
                         "-" if d is None else f"{d['top10_shared']}/{d['top10_size']}"])
        parts += [f"### Scoring precision and decisions ({score['rows']} rows, ori IFD)", "",
                  markdown_table(["dtype", "tokens", "s", "tokens/s", "IFD rel. diff median / p95 / max",
                                  "IFD < 1 agrees", "top-10 % shared"], rows), ""]
    for name in ("generate", "train_full", "train_lora", "ddp", "vllm"):
        if name in results:
            shown = {k: v for k, v in results[name].items() if k != "traceback"}
            parts += [f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in shown.items())]
    parts += ["", "Machine:", "", info_lines(results["machine"]), ""]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of this script)")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument("--data", type=Path, default=DATA, help="alpaca_cherry5pct_3111.json (on the GPU "
                        "machine ../shared does not travel: gpu_check.sh carries a copy)")
    parser.add_argument("--record", type=Path, metavar="JSON", help="write the RESULTS.md block from a "
                        "gpu_check.json a GPU machine sent back, and exit")
    args = parser.parse_args()
    if args.record is not None:
        write_block("gpu_check", render(json.loads(args.record.read_text(encoding="utf-8"))))
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: --device cpu --quick checks the script itself", file=sys.stderr)
        return 2
    rows, prompts, tokens, train_rows = (12, 4, 16, 8) if args.quick else (200, 48, 128, 64)
    results: dict[str, Any] = {"machine": machine_info(["torch", "transformers", "trl", "peft", "vllm"]),
                               "device": args.device, "quick": args.quick}
    _timed("score", results, lambda: check_score(args.data, args.device, rows))
    _timed("generate", results, lambda: check_generate(args.device, prompts, tokens))
    _timed("train_full", results, lambda: check_train(args.data, train_rows, lora=False))
    _timed("train_lora", results, lambda: check_train(args.data, train_rows, lora=True))
    _timed("ddp", results, lambda: check_ddp(args.data, train_rows))
    _timed("vllm", results, lambda: check_vllm(args.data, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    body = render(results)
    (args.out / "gpu_check.md").write_text(body, encoding="utf-8")
    print(body)
    if not (args.no_write or args.quick):
        write_block("gpu_check", body)
    return 0 if all(r.get("ok") for k, r in results.items() if isinstance(r, dict) and "ok" in r) else 1


if __name__ == "__main__":
    sys.exit(main())
