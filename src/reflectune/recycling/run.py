"""``recycle()``: one dataset in, a recycled dataset and its variants out, resumably.

This wires the stage together: the run folder (lock, store, manifest), a validating pass over the
input (bad rows fail *before* any paid call), the oracle and engine, the ordered writers, and a
ticker that feeds the progress display and rewrites ``run.json``. Outputs are written to temporary
files and renamed only when the run completes, so a killed run leaves no half file behind and a
rerun, answered from the store, writes byte-identical outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import RecycleConfig
from reflectune.engine.runner import Engine, EngineStats
from reflectune.errors import ConfigError, DataError, ReflectuneError
from reflectune.io import DatasetWriter, RejectSink, detect_format, output_format, read_samples
from reflectune.oracles import make_oracle
from reflectune.oracles.pricing import price_for
from reflectune.prompts.render import INSTRUCTION, MERGE, RESPONSE, RESPONSE_INPUT, load_template, render
from reflectune.recycling.rules import (
    RecycleProgress,
    Reflector,
    SampleResult,
    chosen_texts,
    default_output_name,
    output_columns,
    run_samples,
)
from reflectune.store.rundir import RunFolder, default_run_dir

TICK_SECONDS = 0.5
MANIFEST_SECONDS = 5.0
Ticker = Callable[[RecycleProgress, EngineStats], None]


@dataclass
class RecycleSummary:
    run_dir: Path
    output: Path
    variants: Path
    rows: int
    passthrough: int
    rejected: int
    chosen: dict[str, int]
    variant_status: dict[str, int]
    stats: dict[str, Any]
    elapsed_s: float
    rejects: Path | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)


def _oracle_options(config: RecycleConfig, session: Any = None) -> dict[str, Any]:
    o = config.oracle
    return {"base_url": o.base_url, "api_key_env": o.api_key_env, "timeout": o.timeout,
            "context": o.context, "device": o.device, "dtype": o.dtype, "batch_size": o.batch_size,
            "session": session}


def _samples(path: Path, config: RecycleConfig, rejects: RejectSink | None):
    stream = read_samples(path, fields=config.fields or None, on_bad_record=config.on_bad_record,
                          rejects=rejects)
    for count, sample in enumerate(stream, start=1):
        yield sample
        if config.limit is not None and count >= config.limit:
            return


class _Counter:
    """A rejects sink for the validating pass: counts, writes nothing."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, *_: Any) -> None:
        self.count += 1


def _validate(path: Path, config: RecycleConfig) -> tuple[int, int]:
    """Read the whole input once: bad input fails here, before anything is paid for."""
    counter = _Counter()
    rows = sum(1 for _ in _samples(path, config, counter))  # type: ignore[arg-type]
    if rows == 0:
        raise DataError("no usable rows", path=str(path))
    return rows, counter.count


def recycle(input: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
            config: RecycleConfig | None = None, run_dir: str | os.PathLike[str] | None = None,
            on_tick: Ticker | None = None, session: Any = None) -> RecycleSummary:
    """Reflect every pair of ``input`` with the oracle; write the V1 "Recycled" dataset.

    Args:
        input: Alpaca JSON, JSONL, ShareGPT, Parquet, CSV or a ``save_to_disk`` folder.
        output: where the recycled dataset goes (default ``RUN_DIR/recycled.<input format>``).
        config: oracle, sampling, engine limits, phases (defaults: embedded oracle, both phases).
        run_dir: the run folder; rerunning with the same folder resumes.
        on_tick: called about twice a second with live progress (for a display).

    Returns:
        A ``RecycleSummary`` with the output paths, counts by status, tokens and cost.

    Example::

        from reflectune import RecycleConfig, OracleConfig, recycle
        summary = recycle("alpaca.json", "recycled.json",
                          config=RecycleConfig(oracle=OracleConfig(spec="openai:gpt-4o-mini")))
    """
    return asyncio.run(arecycle(input, output, config=config, run_dir=run_dir, on_tick=on_tick,
                                session=session))


async def arecycle(input: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
                   config: RecycleConfig | None = None, run_dir: str | os.PathLike[str] | None = None,
                   on_tick: Ticker | None = None, session: Any = None) -> RecycleSummary:
    config = config or RecycleConfig()
    src = Path(input)
    if not src.exists():
        raise DataError("no such file or folder", path=str(src))
    in_fmt = detect_format(src)
    folder = Path(run_dir) if run_dir else default_run_dir(src, config.oracle.spec)
    started = time.monotonic()
    with RunFolder(folder) as run:
        out_path = Path(output) if output else run.file(default_output_name(src, config.output_format))
        out_fmt = config.output_format or (output_format(out_path) if output else in_fmt)
        total, invalid = _validate(src, config)
        oracle = make_oracle(config.oracle.spec, **_oracle_options(config, session))
        prices = price_for(config.oracle.spec, config.engine.price_in, config.engine.price_out)
        base_manifest = {
            "status": "running", "input": {"path": str(src.resolve()), "format": in_fmt,
                                           "fields": dict(config.fields)},
            "output": {"path": str(out_path.resolve()), "format": out_fmt},
            "config": config.model_dump(mode="json"), "config_hash": config.config_hash(),
            "oracle_fingerprint": oracle.fingerprint(), "rows": total}
        run.update_manifest("recycle", base_manifest)
        progress = RecycleProgress(total=total)
        rejects = RejectSink(run.file("rejects.jsonl")) if config.on_bad_record == "skip" else None
        if rejects is not None:
            run.file("rejects.jsonl").unlink(missing_ok=True)  # rewritten in full on every run
        examples: list[dict[str, Any]] = []

        async with Engine(oracle, run.store, config.engine, prices=prices) as engine:
            def manifest(status: str) -> dict[str, Any]:
                return base_manifest | {
                    "status": status, "done": progress.done, "passthrough": progress.passthrough,
                    "rejected": rejects.count if rejects else invalid,
                    "chosen": dict(progress.chosen),
                    "variant_status": dict(sorted(progress.variant_status.items())),
                    "engine": engine.stats.as_dict(), "calls_in_store": run.store.call_totals(),
                    "cost_usd": round(engine.stats.cost, 6) if prices is not None else None,
                    "elapsed_s": round(time.monotonic() - started, 3)}

            async def tick() -> None:
                last_manifest = time.monotonic()
                while True:
                    await asyncio.sleep(TICK_SECONDS)
                    if on_tick:
                        on_tick(progress, engine.stats)
                    if time.monotonic() - last_manifest > MANIFEST_SECONDS:
                        run.update_manifest("recycle", manifest("running"))
                        last_manifest = time.monotonic()

            ticker = asyncio.ensure_future(tick())
            writer = DatasetWriter(out_path, out_fmt, fields=config.fields or None)
            variants = DatasetWriter(run.file("variants.jsonl"), "jsonl")
            try:
                with writer, variants:
                    def on_result(result: SampleResult) -> None:
                        if result.chosen == "passthrough":
                            writer.write_record(result.sample.raw or {})
                            return
                        instruction, inp, out = chosen_texts(result)
                        writer.write(result.sample, instruction, inp, out, output_columns(result))
                        variants.write_record(result.variants_line())
                        if len(examples) < 3 and result.chosen != "ori":
                            examples.append(result.variants_line())

                    window = max(16, 2 * engine.concurrency)
                    await run_samples(Reflector(engine, config), _samples(src, config, rejects),
                                      on_result=on_result, window=window, progress=progress)
            except BaseException as exc:
                ticker.cancel()
                status = "stopped" if isinstance(exc, ReflectuneError) else "interrupted"
                # the original error says more than a failed manifest write would
                with contextlib.suppress(ReflectuneError):
                    run.update_manifest("recycle", manifest(status) | {"stop_reason": str(exc)})
                raise
            finally:
                if rejects is not None:
                    rejects.close()
            ticker.cancel()
            if on_tick:
                on_tick(progress, engine.stats)
            run.update_manifest("recycle", manifest("complete"))
            stats = engine.stats.as_dict() | {"cost_usd": engine.stats.cost if prices is not None else None}
        return RecycleSummary(
            run_dir=folder, output=out_path, variants=run.file("variants.jsonl"), rows=progress.done,
            passthrough=progress.passthrough, rejected=rejects.count if rejects else 0,
            chosen=dict(progress.chosen), variant_status=dict(sorted(progress.variant_status.items())),
            stats=stats, elapsed_s=time.monotonic() - started,
            rejects=run.file("rejects.jsonl") if rejects and rejects.count else None, examples=examples)


@dataclass
class Estimate:
    rows: int
    calls: int
    prompt_tokens: int
    completion_tokens_expected: int
    completion_tokens_max: int
    prices: tuple[float, float] | None
    exact_tokens: bool

    def cost(self, completion_tokens: int) -> float | None:
        if self.prices is None:
            return None
        return (self.prompt_tokens * self.prices[0] + completion_tokens * self.prices[1]) / 1e6


EXPECTED_REFLECTION_TOKENS = 600  # typical length of critique + rewrite from GPT-class oracles
EXPECTED_MERGE_TOKENS = 60


def estimate(input: str | os.PathLike[str], *, config: RecycleConfig | None = None) -> Estimate:
    """Count calls and tokens a recycle run would spend, calling nothing.

    QA prompts depend on Q's answer, so they are estimated from the expected Q length.
    """
    config = config or RecycleConfig()
    src = Path(input)
    if not src.exists():
        raise DataError("no such file or folder", path=str(src))
    oracle = make_oracle(config.oracle.spec, **_oracle_options(config))
    count = oracle.count_tokens
    max_tokens = config.sampling.max_tokens or 2048
    calls = prompt = expected = upper = rows = 0

    def add(kind_template: str, n_prompt: int, n_expected: int) -> None:
        nonlocal calls, prompt, expected, upper
        calls += 1
        prompt += n_prompt
        expected += min(n_expected, max_tokens)
        upper += max_tokens

    templates = {k.template: load_template(k.template, config.prompts_dir)
                 for k in (INSTRUCTION, RESPONSE, RESPONSE_INPUT, MERGE)}

    def tokens_of(template: str, **values: str) -> int:
        return sum(count(m.content) for m in render(templates[template], **values))

    for sample in _samples(src, config, _Counter()):  # type: ignore[arg-type]
        if sample.passthrough:
            continue
        rows += 1
        has_input = bool(sample.input.strip())
        if "instruction" in config.phases:
            if has_input and config.input_merge == "oracle":
                add("input_merge", tokens_of("input_merge", instruction=sample.instruction,
                                             input=sample.input), EXPECTED_MERGE_TOKENS)
            add("instruction_reflection", tokens_of("instruction_reflection", instruction=sample.instruction,
                                                    answer=sample.output), EXPECTED_REFLECTION_TOKENS)
            if "response" in config.phases:
                base = tokens_of("response_reflection", instruction="", answer="")
                add("response_reflection", base + EXPECTED_REFLECTION_TOKENS, EXPECTED_REFLECTION_TOKENS)
        if "response" in config.phases:
            name = "response_reflection_input" if has_input else "response_reflection"
            extra = {"input": sample.input} if has_input else {}
            add(name, tokens_of(name, instruction=sample.instruction, answer=sample.output, **extra),
                EXPECTED_REFLECTION_TOKENS)
    if rows == 0:
        raise ConfigError(f"{src}: nothing to recycle")
    from reflectune.oracles.tokens import exact_tokens_available

    exact = config.oracle.spec.split(":")[0] in ("hf", "embedded") or \
        exact_tokens_available(config.oracle.spec.partition(":")[2])
    return Estimate(rows, calls, prompt, expected, upper,
                    price_for(config.oracle.spec, config.engine.price_in, config.engine.price_out), exact)
