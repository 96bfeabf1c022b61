"""``generate()``: answer test-set prompts with a model, resumably, in AlpacaEval's schema.

The papers compare models by their answers to fixed test sets, so this stage only has to be
faithful and boring: each prompt goes to the model as one user message (the backend applies the
model's own chat template), greedy, up to 1,024 new tokens. Every call goes through the engine, so a
local HF folder or GGUF is batched by its backend, an HTTP server gets concurrency and rate limits,
and a killed run resumes from the store without repeating a call.

Rows are written in test-set order, to a temporary file renamed at the end, in the shape AlpacaEval
reads (``instruction``, ``output``, ``generator``, ``dataset``) plus ``id`` and ``category`` so that
:mod:`reflectune.judging.run` can pair two answer files by test-set identity. A failed generation is
never dropped: its row has an empty ``output`` and an ``error`` field, and it is counted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import GenerateConfig, merged
from reflectune.engine.runner import EngineStats
from reflectune.engine.stage import RunOutcome, open_stage, settle
from reflectune.errors import ConfigError
from reflectune.generation.rules import GENERATE_STAGE, GENERATE_VERSION, answer_row, generation_request
from reflectune.io.atomic import AtomicFile
from reflectune.io.testsets import EvalItem, load_prompts_file, load_testsets
from reflectune.keys import content_key
from reflectune.oracles import model_name, resolve_spec
from reflectune.store.calls import CallRecord
from reflectune.store.rundir import default_run_dir

__all__ = [
    "GENERATE_STAGE",
    "GENERATE_VERSION",
    "GenerateConfig",
    "GenerateSummary",
    "agenerate",
    "answer_row",
    "generate",
    "generation_request",
]

Progress = Callable[[int, int, EngineStats], None]


@dataclass
class GenerateSummary:
    """What a generation run produced; ``failed`` rows are in the output with an ``error`` field."""

    run_dir: Path
    output: Path
    generator: str
    rows: int
    failed: int
    truncated: int
    by_dataset: dict[str, int]
    stats: dict[str, Any]
    elapsed_s: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    alpaca_eval_command: str | None = None
    #: the one exit rule's verdict: calls still failed (by reason) and the answers it produced
    outcome: RunOutcome = field(default_factory=RunOutcome)


# -- pure pieces ------------------------------------------------------------------------------------

def _alpaca_eval_command(output: Path) -> str | None:
    if importlib.util.find_spec("alpaca_eval") is None:
        return None
    return f"alpaca_eval evaluate --model_outputs {output}"


class _RowWriter:
    """Rows as JSONL or an indented JSON array, all or nothing (``commit`` renames into place)."""

    def __init__(self, path: Path, json_array: bool) -> None:
        self.json_array = json_array
        self._out = AtomicFile(path)
        self.count = 0
        if json_array:
            self._out.file.write("[")

    def write(self, row: dict[str, Any]) -> None:
        text = json.dumps(row, ensure_ascii=False)
        if self.json_array:
            self._out.file.write(("," if self.count else "") + "\n  " + text)
        else:
            self._out.file.write(text + "\n")
        self.count += 1

    def commit(self) -> None:
        if self.json_array:
            self._out.file.write("\n]\n")
        self._out.commit()

    def abort(self) -> None:
        self._out.abort()


# -- the run ----------------------------------------------------------------------------------------

def _items(testset: str | Sequence[str] | None, prompts_file: str | os.PathLike[str] | None,
           fields: str | dict[str, str] | None, limit: int | None) -> list[EvalItem]:
    if prompts_file is not None:
        return load_prompts_file(prompts_file, fields, limit=limit)
    return load_testsets(testset or "all", limit=limit)


async def agenerate(items: Sequence[EvalItem], output: str | os.PathLike[str] | None, *,
                    config: GenerateConfig, run_dir: str | os.PathLike[str] | None = None,
                    generator: str | None = None, json_array: bool | None = None,
                    progress: Progress | None = None, source: str = "prompts") -> GenerateSummary:
    """Answer ``items`` with the model in ``config`` (async core of :func:`generate`)."""
    if not items:
        raise ConfigError("nothing to generate: the test set or prompts file has no rows")
    spec = config.model.spec
    folder = Path(run_dir) if run_dir else default_run_dir(source, spec, GENERATE_STAGE)
    array = json_array if json_array is not None else str(output or "").lower().endswith(".json")
    out = Path(output) if output else folder / ("model_outputs.json" if array else "answers.jsonl")
    started = time.monotonic()
    async with open_stage(GENERATE_STAGE, folder, config.model, config.engine) as stage:
        engine = stage.engine
        name = generator or model_name(spec)
        dumped = config.model_dump(mode="json")
        # the prompt format a local model renders with (its recorded template, or --template);
        # None where a server applies its own chat template
        stage.manifest = {"config": dumped, "config_hash": content_key(dumped)[:16],
                          "source": source, "rows": len(items), "output": str(out), "generator": name,
                          "template": stage.oracle.capabilities.template}
        stage.write("running")
        stage.live = lambda: {"stats": engine.stats.as_dict()}
        done = 0

        async def one(item: EvalItem) -> CallRecord:
            nonlocal done
            record = await engine.call(GENERATE_STAGE, generation_request(item, config),
                                       version=GENERATE_VERSION, sample_id=f"{item.dataset}/{item.id}")
            done += 1
            if progress is not None:
                progress(done, len(items), engine.stats)
            return record

        writer = _RowWriter(out, array)
        tasks = [asyncio.ensure_future(one(item)) for item in items]
        errors: list[dict[str, Any]] = []
        truncated = 0
        try:
            for item, task in zip(items, tasks, strict=True):
                record = await task
                row = answer_row(item, record, name)
                writer.write(row)
                if "error" in row:
                    errors.append({"dataset": item.dataset, "id": item.id, "error": row["error"]})
                truncated += record.ok and record.finish_reason == "length"
        except BaseException:
            await settle(tasks, cancel=True)
            writer.abort()
            raise
        writer.commit()
        stats = engine.stats.as_dict()
        elapsed = time.monotonic() - started
        summary = GenerateSummary(
            run_dir=folder, output=out, generator=name, rows=writer.count, failed=len(errors),
            truncated=truncated, by_dataset=dict(Counter(item.dataset for item in items)), stats=stats,
            elapsed_s=round(elapsed, 3), errors=errors,
            alpaca_eval_command=_alpaca_eval_command(out) if array else None,
            outcome=stage.outcome(writer.count - len(errors), "answers"))
        stage.live = None
        stage.write("complete", failed=summary.failed, truncated=truncated,
                    by_dataset=summary.by_dataset, stats=stats, elapsed_s=summary.elapsed_s,
                    outcome=summary.outcome.as_dict())
    return summary


def generate(
    output: str | os.PathLike[str] | None = None,
    *,
    config: GenerateConfig | None = None,
    model: str | None = None,
    testset: str | Sequence[str] | None = "all",
    prompts_file: str | os.PathLike[str] | None = None,
    fields: str | dict[str, str] | None = None,
    limit: int | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    generator: str | None = None,
    alpaca_eval: bool = False,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    allow_insecure_http: bool | None = None,
    timeout: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    template: str | None = None,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    max_cost: float | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    retry_failed: bool | None = None,
    progress: Progress | None = None,
) -> GenerateSummary:
    """Answer the papers' test sets (or any prompts file) with a model.

    Args:
        config: a ``GenerateConfig`` (model, engine, sampling); keyword arguments below that are
            given override its fields. Defaults: the embedded model, greedy, 1,024 new tokens.
        output: the answers file; ``.json`` (or ``alpaca_eval=True``) writes a JSON array, anything
            else JSON lines. Default: ``answers.jsonl`` / ``model_outputs.json`` in the run folder.
        model: ``embedded``, ``hf:PATH`` (a HF folder or a ``.gguf``; a bare path works too) or
            ``openai:MODEL`` with ``base_url`` for any OpenAI-compatible server.
        testset: ``all``, one of ``vicuna koala wizardlm sinstruct lima``, or several
            (``"vicuna,lima"``). Ignored when ``prompts_file`` is given.
        prompts_file: any JSONL/JSON array of prompts; ``fields`` maps its columns
            (``"instruction=question,id=qid,category=cat"``).
        limit: answer only the first ``limit`` prompts of each set.
        run_dir: the run folder (store, ``run.json``); default ``runs/<testset>-<model>-generate``.
            Rerunning the same command resumes: finished answers are not asked again.
        generator: the ``generator`` value in each row (default: the model's name).
        alpaca_eval: write AlpacaEval's ``model_outputs.json`` JSON array.
        max_tokens, temperature, top_p, seed: sampling; the papers' greedy, 1,024 new tokens by default.
        base_url, api_key_env, timeout: HTTP backends. device, dtype, batch_size: local backends.
        template: local backends: the prompt format, ``vicuna``, ``alpaca``, ``wiz`` or ``chat``;
            default: the model's own (the template ``reflectune train`` recorded in the folder, else
            its chat template). An HTTP model refuses it: the server applies its own.
        concurrency, rpm, tpm, max_cost, price_in, price_out, retry_failed: engine limits and costs.
        progress: called as ``progress(done, total, engine_stats)`` after each answer.

    Returns:
        A :class:`GenerateSummary`; failed generations are written with an empty ``output`` and an
        ``error`` field and listed in ``summary.errors``.

    Example:
        >>> generate("answers.jsonl", model="embedded", testset="vicuna", limit=3,
        ...          max_tokens=16)  # doctest: +SKIP
    """
    config = merged(GenerateConfig, config, {
        "model": {"spec": resolve_spec(model) if model is not None else None, "base_url": base_url,
                  "api_key_env": api_key_env, "timeout": timeout, "device": device, "dtype": dtype,
                  "batch_size": batch_size, "allow_insecure_http": allow_insecure_http,
                  "template": template},
        "engine": {"concurrency": concurrency, "rpm": rpm, "tpm": tpm, "max_cost": max_cost,
                   "price_in": price_in, "price_out": price_out, "retry_failed": retry_failed},
        "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed})
    items = _items(testset, prompts_file, fields, limit)
    if prompts_file is not None:
        source = str(prompts_file)
    else:
        source = testset if isinstance(testset, str) else "-".join(testset or ["all"])
        source = source.replace(",", "-")
    json_array = True if alpaca_eval else None
    return asyncio.run(agenerate(items, output, config=config, run_dir=run_dir, generator=generator,
                                 json_array=json_array, progress=progress, source=source))
