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
import glob
import importlib.util
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reflectune.config import EngineConfig, OracleConfig
from reflectune.engine.runner import Engine, EngineStats
from reflectune.errors import ConfigError, StoreError
from reflectune.io.testsets import EvalItem, load_prompts_file, load_testsets
from reflectune.keys import content_key
from reflectune.oracles import ORACLES, make_oracle
from reflectune.oracles.pricing import price_for
from reflectune.store.calls import CallRecord
from reflectune.store.rundir import RunFolder, default_run_dir
from reflectune.types import ChatRequest, Message

__all__ = [
    "GENERATE_STAGE",
    "GENERATE_VERSION",
    "GenerateConfig",
    "GenerateSummary",
    "agenerate",
    "answer_row",
    "config_error",
    "default_generator",
    "generate",
    "generation_request",
    "resolve_model_spec",
]

GENERATE_STAGE = "generate"
#: Enters every generation call's cache key; bump it if the request shape changes.
GENERATE_VERSION = "generate@1"
Progress = Callable[[int, int, EngineStats], None]


class GenerateConfig(BaseModel):
    """Everything that decides the answers (saved in ``run.json``). The papers' settings by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: OracleConfig = OracleConfig()
    engine: EngineConfig = EngineConfig()
    max_tokens: int = Field(1024, gt=0, description="max new tokens per answer")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None


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


# -- pure pieces ------------------------------------------------------------------------------------

def config_error(exc: ValidationError) -> ConfigError:
    """pydantic's first complaint as a one-line ``ConfigError`` naming the option."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return ConfigError(f"invalid option {where}: {first['msg']}")


def resolve_model_spec(model: str) -> str:
    """A model argument as an oracle spec: a bare path (folder or ``.gguf``) means ``hf:PATH``.

    Example:
        >>> resolve_model_spec("embedded"), resolve_model_spec("openai:gpt-4o")
        ('embedded', 'openai:gpt-4o')
    """
    model = model.strip()
    if not model:
        raise ConfigError("no model given: pass embedded, hf:PATH, a model folder, or openai:MODEL")
    backend = model.partition(":")[0].lower()
    if backend in ORACLES and not (len(backend) == 1 and Path(model).exists()):  # "C:\..." is a path
        return model
    if Path(model).exists() or model.lower().endswith(".gguf") or "/" in model:
        return f"hf:{model}"
    return model  # make_oracle gives the "unknown backend, did you mean" error


def default_generator(spec: str) -> str:
    """The ``generator`` name written to each row: the model's name, not the backend's."""
    backend, _, arg = spec.partition(":")
    if backend == "embedded":
        from reflectune.models.local import EMBEDDED_NAME

        return EMBEDDED_NAME
    if not arg:
        return backend
    path = Path(arg.rstrip("/"))
    name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return name or arg


def generation_request(item: EvalItem, config: GenerateConfig) -> ChatRequest:
    """The prompt as a single user message; sampling from ``config`` (greedy by default)."""
    return ChatRequest(messages=(Message("user", item.instruction),), max_tokens=config.max_tokens,
                       temperature=config.temperature, top_p=config.top_p, seed=config.seed)


def answer_row(item: EvalItem, record: CallRecord, generator: str) -> dict[str, Any]:
    """One output row in AlpacaEval's ``model_outputs.json`` schema, test-set identity kept."""
    row: dict[str, Any] = {"instruction": item.instruction,
                           "output": (record.content or "") if record.ok else "",
                           "generator": generator, "dataset": item.dataset, "id": item.id}
    if item.category is not None:
        row["category"] = item.category
    if not record.ok:
        row["error"] = f"{record.error_kind or 'error'}: {record.error or 'generation failed'}"
    return row


def _alpaca_eval_command(output: Path) -> str | None:
    if importlib.util.find_spec("alpaca_eval") is None:
        return None
    return f"alpaca_eval evaluate --model_outputs {output}"


def _remove_stale(path: Path) -> None:
    """Delete temporary files a killed run left for ``path`` (their writer's pid is gone)."""
    prefix = f".{path.name}.tmp"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            continue


class _RowWriter:
    """Rows to a temporary file as JSONL or a JSON array; ``commit`` renames it into place."""

    def __init__(self, path: Path, json_array: bool) -> None:
        self.path, self.json_array = path, json_array
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(path)
            self._fh = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise StoreError(f"{path}: cannot write ({exc.strerror})") from None
        self.count = 0
        if json_array:
            self._fh.write("[")

    def write(self, row: dict[str, Any]) -> None:
        text = json.dumps(row, ensure_ascii=False)
        if self.json_array:
            self._fh.write(("," if self.count else "") + "\n  " + text)
        else:
            self._fh.write(text + "\n")
        self.count += 1

    def commit(self) -> None:
        if self.json_array:
            self._fh.write("\n]\n")
        self._fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


# -- the run ----------------------------------------------------------------------------------------

def _items(testset: str | Sequence[str] | None, prompts_file: str | os.PathLike[str] | None,
           fields: str | dict[str, str] | None, limit: int | None) -> list[EvalItem]:
    if prompts_file is not None:
        return load_prompts_file(prompts_file, fields, limit=limit)
    return load_testsets(testset or "all", limit=limit)


def _oracle_options(config: OracleConfig) -> dict[str, Any]:
    return {"base_url": config.base_url, "api_key_env": config.api_key_env, "timeout": config.timeout,
            "context": config.context, "device": config.device, "dtype": config.dtype,
            "batch_size": config.batch_size}


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
    with RunFolder(folder) as run:
        assert run.store is not None
        oracle = make_oracle(spec, **_oracle_options(config.model))
        name = generator or default_generator(spec)
        dumped = config.model_dump(mode="json")
        base = {"config": dumped, "config_hash": content_key(dumped)[:16],
                "source": source, "rows": len(items), "output": str(out), "generator": name}
        run.update_manifest(GENERATE_STAGE, base | {"status": "running"})
        prices = price_for(spec, config.engine.price_in, config.engine.price_out)
        async with Engine(oracle, run.store, config.engine, prices=prices) as engine:
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
            except BaseException as exc:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                writer.abort()
                run.update_manifest(GENERATE_STAGE, base | {"status": "stopped", "stop_reason": str(exc),
                                                            "stats": engine.stats.as_dict()})
                raise
            writer.commit()
            stats = engine.stats.as_dict()
        elapsed = time.monotonic() - started
        summary = GenerateSummary(
            run_dir=folder, output=out, generator=name, rows=writer.count, failed=len(errors),
            truncated=truncated, by_dataset=dict(Counter(item.dataset for item in items)), stats=stats,
            elapsed_s=round(elapsed, 3), errors=errors,
            alpaca_eval_command=_alpaca_eval_command(out) if array else None)
        run.update_manifest(GENERATE_STAGE, base | {
            "status": "complete", "failed": summary.failed, "truncated": truncated,
            "by_dataset": summary.by_dataset, "stats": stats, "elapsed_s": summary.elapsed_s})
    return summary


def generate(
    output: str | os.PathLike[str] | None = None,
    *,
    model: str = "embedded",
    testset: str | Sequence[str] | None = "all",
    prompts_file: str | os.PathLike[str] | None = None,
    fields: str | dict[str, str] | None = None,
    limit: int | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    generator: str | None = None,
    alpaca_eval: bool = False,
    max_tokens: int = 1024,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 120.0,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    max_cost: float | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> GenerateSummary:
    """Answer the papers' test sets (or any prompts file) with a model.

    Args:
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
        concurrency, rpm, tpm, max_cost, price_in, price_out, retry_failed: engine limits and costs.
        progress: called as ``progress(done, total, engine_stats)`` after each answer.

    Returns:
        A :class:`GenerateSummary`; failed generations are written with an empty ``output`` and an
        ``error`` field and listed in ``summary.errors``.

    Example:
        >>> generate("answers.jsonl", model="embedded", testset="vicuna", limit=3,
        ...          max_tokens=16)  # doctest: +SKIP
    """
    spec = resolve_model_spec(model)
    try:
        config = GenerateConfig(
            model=OracleConfig(spec=spec, base_url=base_url, api_key_env=api_key_env, timeout=timeout,
                               device=device, dtype=dtype, batch_size=batch_size),
            engine=EngineConfig(concurrency=concurrency, rpm=rpm, tpm=tpm, max_cost=max_cost,
                                price_in=price_in, price_out=price_out, retry_failed=retry_failed),
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    except ValidationError as exc:
        raise config_error(exc) from None
    items = _items(testset, prompts_file, fields, limit)
    if prompts_file is not None:
        source = str(prompts_file)
    else:
        source = testset if isinstance(testset, str) else "-".join(testset or ["all"])
        source = source.replace(",", "-")
    json_array = True if alpaca_eval else None
    return asyncio.run(agenerate(items, output, config=config, run_dir=run_dir, generator=generator,
                                 json_array=json_array, progress=progress, source=source))
