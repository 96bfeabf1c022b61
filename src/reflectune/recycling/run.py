"""``recycle()``: one dataset in, a recycled dataset and its variants out, resumably.

This wires the stage together: the run folder (lock, store, manifest), a validating pass over the
input (bad rows fail *before* any paid call), the oracle and engine, the ordered writers, and a
ticker that feeds the progress display and rewrites ``run.json``. Outputs are written to temporary
files and renamed only when the run completes, so a killed run leaves no half file behind and a
rerun, answered from the store, writes byte-identical outputs.

Every input row that is read gets an output row and a ``variants.jsonl`` line with a status, the
multi-turn conversations that pass through untouched too (``passed_through``), so the two files and
the input line up row for row. The output's name and format agree (the extension decides); ``-o -``
writes JSON lines to standard output once the run is complete (a copy stays in the run folder).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import RecycleConfig
from reflectune.contracts import VARIANT_NAMES, VARIANTS_FILE
from reflectune.engine.runner import Engine, EngineStats
from reflectune.engine.stage import RunOutcome, open_stage
from reflectune.errors import ConfigError, DataError
from reflectune.io import DatasetWriter, RejectSink, output_format, read_samples
from reflectune.io.atomic import same_file
from reflectune.io.formats import OUTPUT_SUFFIXES, check_format, is_stdin, named_format
from reflectune.io.readers import InputFile, open_input
from reflectune.io.shapes import CONVERSATION_KEYS
from reflectune.oracles import make_oracle
from reflectune.oracles.pricing import with_overrides
from reflectune.prompts.render import INSTRUCTION, MERGE, RESPONSE, RESPONSE_INPUT, load_template, render
from reflectune.recycling.reflector import RecycleProgress, Reflector, run_samples
from reflectune.recycling.rules import SampleResult, chosen_texts, output_columns, skipped
from reflectune.recycling.verify import Verifier
from reflectune.store.rundir import default_run_dir, read_manifest
from reflectune.types import Sample

TICK_SECONDS = 0.5
MANIFEST_SECONDS = 5.0
#: the status (``reflect_status``, variants.jsonl's ``status``) of a row written back unchanged
PASSED_THROUGH = "passed_through"
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
    #: the one exit rule's verdict: calls still failed (by reason) and the variants it reflected
    outcome: RunOutcome = field(default_factory=RunOutcome)
    #: parsed variants the quality gates rejected, by gate
    gates: dict[str, int] = field(default_factory=dict)
    #: judge-verified acceptance: verdicts, and the judge's calls and cost (None: not asked)
    verify: dict[str, Any] | None = None


def _samples(path: InputFile, config: RecycleConfig, rejects: RejectSink | None):
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


def _verify_live(verifier: Verifier, judge: Engine) -> dict[str, Any]:
    stats = judge.stats
    return {"verdicts": dict(sorted(verifier.verdicts.items())), "judge": judge.stats.as_dict(),
            "cost_usd": round(stats.cost, 6) if judge.prices is not None else None}


def _check_same_input(folder: Path, origin: str) -> None:
    """A run folder belongs to one input: resuming it with another would mix two datasets' rows."""
    recorded = (read_manifest(folder).get("recycle") or {}).get("input") or {}
    before = recorded.get("path")
    if not before or origin == "-" or before == "-":
        return
    if Path(before).resolve() != Path(origin).resolve():
        raise ConfigError(f"{folder} is the run folder of {before}, not of {origin}: pass another --run-dir "
                          "(or move that folder away) to recycle this input")


def _output(output: str | os.PathLike[str] | None, fmt: str | None, source: InputFile,
            folder: Path) -> tuple[Path, str, bool]:
    """Where the recycled dataset goes, its format, and whether it then goes to standard output.

    The name and the format always agree, since whoever reads the file next goes by its name: the
    extension decides, ``--output-format`` may only repeat it (or pick the format of a name without a
    data extension), and the default name is the format's (a datasets folder's has no extension).
    """
    fmt = check_format(fmt) if fmt is not None else None
    if output is not None and is_stdin(output):
        if fmt not in (None, "jsonl"):
            raise ConfigError(f"-o - writes JSON lines to standard output, not {fmt}: drop --output-format "
                              f"or give -o a {fmt} path")
        return folder / "recycled.jsonl", "jsonl", True
    if output is None:
        fmt = fmt or source.fmt
        return folder / f"recycled{OUTPUT_SUFFIXES[fmt]}", fmt, False
    path = Path(output)
    named = named_format(path)
    if fmt is not None and named is not None and named != fmt:
        raise ConfigError(f"-o {path} is a {named} name but --output-format is {fmt}: drop --output-format, "
                          f"or name the output {path.with_suffix(OUTPUT_SUFFIXES[fmt])}")
    return path, fmt or output_format(path), False


def _passed_through(sample: Sample) -> tuple[dict[str, Any], dict[str, Any]]:
    """The variants.jsonl line and the output columns of a row written back unchanged."""
    turns = next((len(v) for k in CONVERSATION_KEYS if isinstance(v := (sample.raw or {}).get(k), list)), 0)
    reason = (f"a conversation of {turns} turns: recycling rewrites a single exchange, so the row is kept "
              "unchanged")
    line = {"id": sample.id, "row": sample.row, "status": PASSED_THROUGH,
            "variants": {name: skipped(reason).as_json() for name in VARIANT_NAMES}}
    return line, {"reflect_status": PASSED_THROUGH, "reflect_reason": reason}


def _to_stdout(path: Path) -> None:
    """Copy the finished output to standard output; a reader that stops early (``| head``) is no error."""
    out = getattr(sys.stdout, "buffer", None)
    try:
        sys.stdout.flush()
        with open(path, "rb") as f:
            if out is None:  # a text-only stream (a test's capture)
                sys.stdout.write(f.read().decode("utf-8"))
            else:
                shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
    except BrokenPipeError:  # the reader hung up: send what is left of the flush nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _validate(path: InputFile, config: RecycleConfig) -> tuple[int, int]:
    """Read the whole input once: bad input fails here, before anything is paid for."""
    counter = _Counter()
    rows = sum(1 for _ in _samples(path, config, counter))  # type: ignore[arg-type,misc]
    if rows == 0:
        raise DataError("no usable rows", path=str(path))
    return rows, counter.count


def recycle(input: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
            config: RecycleConfig | None = None, run_dir: str | os.PathLike[str] | None = None,
            on_tick: Ticker | None = None, session: Any = None,
            input_format: str | None = None, split: str | None = None) -> RecycleSummary:
    """Reflect every pair of ``input`` with the oracle; write the V1 "Recycled" dataset.

    Args:
        input: Alpaca JSON, JSONL, ShareGPT, Parquet, CSV or a ``save_to_disk`` folder (gzip, bz2 or
            xz compressed json/jsonl/csv too); ``-`` is standard input, which needs ``input_format``.
            Standard input and named pipes are copied once to a temporary file (``TMPDIR``), since
            the input is read twice (a validating pass first).
        input_format: json | jsonl | csv | parquet | hf_disk instead of detecting it.
        split: the split to recycle of a ``DatasetDict`` folder; needed when it has several.
        output: where the recycled dataset goes (default ``RUN_DIR/recycled.<input format>``, a folder
            ``RUN_DIR/recycled`` for a datasets folder); its extension decides the format, which
            ``config.output_format`` may not contradict. ``-`` writes JSON lines to standard output.
            A Parquet or datasets-folder output of a Parquet or datasets-folder input keeps the input's
            schema: every column's type and value.
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
                                session=session, input_format=input_format, split=split))


async def arecycle(input: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
                   config: RecycleConfig | None = None, run_dir: str | os.PathLike[str] | None = None,
                   on_tick: Ticker | None = None, session: Any = None,
                   input_format: str | None = None, split: str | None = None) -> RecycleSummary:
    config = config or RecycleConfig()
    with open_input(input, fmt=input_format, split=split) as source:  # standard input and pipes: copied once
        summary = await _arecycle(source, output, config, run_dir, on_tick, session)
    if output is not None and is_stdin(output):
        _to_stdout(summary.output)
    return summary


async def _arecycle(source: InputFile, output: str | os.PathLike[str] | None, config: RecycleConfig,
                    run_dir: str | os.PathLike[str] | None, on_tick: Ticker | None,
                    session: Any) -> RecycleSummary:
    src, in_fmt = source.path, source.fmt
    identity = None if source.origin == "-" else str(Path(source.origin).resolve())
    folder = Path(run_dir) if run_dir else default_run_dir(source.like, config.oracle.spec, identity=identity)
    _check_same_input(folder, source.origin)
    started = time.monotonic()
    out_path, out_fmt, to_stdout = _output(output, config.output_format, source, folder)
    if source.origin != "-" and same_file(out_path, src):
        raise ConfigError(f"-o {out_path} is the input: the recycled dataset would overwrite its source; "
                          "write it elsewhere")
    total, invalid = _validate(source, config)
    async with open_stage("recycle", folder, config.oracle, config.engine, session=session) as stage:
        engine = stage.engine
        stage.manifest = {
            "status": "running", "input": {"path": source.origin, "format": in_fmt,
                                           "fields": dict(config.fields),
                                           **({"split": source.split} if source.split else {})},
            "output": {"path": str(out_path.resolve()), "format": out_fmt,
                       **({"stdout": True} if to_stdout else {})},
            "config": config.model_dump(mode="json"), "config_hash": config.config_hash(),
            "oracle_fingerprint": stage.oracle.fingerprint(), "rows": total}
        stage.write("running")
        progress = RecycleProgress(total=total)
        rejects = RejectSink(stage.file("rejects.jsonl")) if config.on_bad_record == "skip" else None
        if rejects is not None:
            stage.file("rejects.jsonl").unlink(missing_ok=True)  # rewritten in full on every run
        examples: list[dict[str, Any]] = []
        known_price = engine.prices is not None
        judge = verifier = None
        if config.verify is not None:
            judge = Engine(make_oracle(config.verify.judge, session=session), stage.store, config.engine)
            verifier = Verifier(judge, config.verify)

        def live() -> dict[str, Any]:
            return {
                # every row has a variants.jsonl line now, so select's check (done - "passthrough",
                # the rows without one, in older folders) must not subtract these
                "done": progress.done, PASSED_THROUGH: progress.passthrough,
                "rejected": rejects.count if rejects else invalid,
                "chosen": dict(progress.chosen),
                "variant_status": dict(sorted(progress.variant_status.items())),
                "rejected_by_gate": dict(sorted(progress.gates.items())),
                **({"verify": _verify_live(verifier, judge)} if verifier and judge else {}),
                "engine": engine.stats.as_dict(), "calls_in_store": stage.store.call_totals(),
                "cost_usd": round(engine.stats.cost, 6) if known_price else None,
                "elapsed_s": round(time.monotonic() - started, 3)}

        stage.live = live

        async def tick() -> None:
            last_manifest = time.monotonic()
            while True:
                await asyncio.sleep(TICK_SECONDS)
                if on_tick:
                    on_tick(progress, engine.stats)
                if time.monotonic() - last_manifest > MANIFEST_SECONDS:
                    stage.write("running")
                    last_manifest = time.monotonic()

        ticker = asyncio.ensure_future(tick())
        writer = DatasetWriter(out_path, out_fmt, fields=config.fields or None, source=source)
        variants = DatasetWriter(stage.file(VARIANTS_FILE), "jsonl")
        try:
            with writer, variants:
                def on_result(result: SampleResult) -> None:
                    if result.chosen == "passthrough":
                        line, columns = _passed_through(result.sample)
                        writer.write(result.sample, "", "", "", columns)
                        variants.write_record(line)
                        return
                    instruction, inp, out = chosen_texts(result)
                    writer.write(result.sample, instruction, inp, out, output_columns(result))
                    variants.write_record(result.variants_line())
                    if len(examples) < 3 and result.chosen != "ori":
                        examples.append(result.variants_line())

                window = max(16, 2 * engine.concurrency)
                await run_samples(Reflector(engine, config, verifier), _samples(source, config, rejects),
                                  on_result=on_result, window=window, progress=progress)
        finally:
            ticker.cancel()
            if rejects is not None:
                rejects.close()
            if judge is not None:
                await judge.__aexit__(None, None, None)
        if on_tick:
            on_tick(progress, engine.stats)
        reflected = sum(n for key, n in progress.variant_status.items()
                        if key.endswith(":ok") and not key.startswith("ori:"))
        outcome = stage.outcome(reflected, "reflected variants that passed the quality gates"
                                if progress.gates else "reflected variants", also=[judge] if judge else [])
        stage.write("complete", outcome=outcome.as_dict())
        stats = engine.stats.as_dict() | {"cost_usd": engine.stats.cost if known_price else None}
        verified = _verify_live(verifier, judge) if verifier and judge else None
    return RecycleSummary(
        run_dir=folder, output=out_path, variants=folder / VARIANTS_FILE, rows=progress.done,
        passthrough=progress.passthrough, rejected=rejects.count if rejects else 0,
        chosen=dict(progress.chosen), variant_status=dict(sorted(progress.variant_status.items())),
        stats=stats, gates=dict(sorted(progress.gates.items())), verify=verified,
        elapsed_s=time.monotonic() - started,
        rejects=folder / "rejects.jsonl" if rejects and rejects.count else None, examples=examples,
        outcome=outcome)


@dataclass
class Estimate:
    rows: int
    calls: int
    prompt_tokens: int
    completion_tokens_expected: int
    completion_tokens_max: int
    prices: tuple[float, float] | None
    exact_tokens: bool
    #: the first reflection prompt as the oracle would see it, for a dry run's timing probe
    first_prompt: str = ""

    def cost(self, completion_tokens: int) -> float | None:
        if self.prices is None:
            return None
        return (self.prompt_tokens * self.prices[0] + completion_tokens * self.prices[1]) / 1e6


EXPECTED_REFLECTION_TOKENS = 600  # typical length of critique + rewrite from GPT-class oracles
EXPECTED_MERGE_TOKENS = 60


def estimate(input: str | os.PathLike[str], *, config: RecycleConfig | None = None,
             input_format: str | None = None, split: str | None = None) -> Estimate:
    """Count calls and tokens a recycle run would spend, calling nothing.

    QA prompts depend on Q's answer, so they are estimated from the expected Q length.
    """
    config = config or RecycleConfig()
    with open_input(input, fmt=input_format, split=split) as src:
        return _estimate(src, config)


def _estimate(src: InputFile, config: RecycleConfig) -> Estimate:
    oracle = make_oracle(config.oracle)
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

    first: list[str] = []

    def tokens_of(template: str, **values: str) -> int:
        messages = render(templates[template], **values)
        if not first and template.endswith("reflection") and values.get("answer"):
            first.append("\n\n".join(m.content for m in messages))
        return sum(count(m.content) for m in messages)

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
    price = with_overrides(oracle.capabilities.price, config.engine.price_in, config.engine.price_out)
    return Estimate(rows, calls, prompt, expected, upper, price, oracle.capabilities.exact_tokens,
                    first[0] if first else "")
