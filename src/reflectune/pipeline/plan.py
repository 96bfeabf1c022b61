"""``reflectune run FILE --dry-run``: what each stage would do, and what it would cost, calling nothing
that is paid for.

For each stage: whether it would run or is up to date (the same fingerprints as a real run), its rows,
and its work: calls, tokens and cost for the oracle stages (from ``recycling.estimate`` and the test
sets), the batch arithmetic and steps for training. For a local model, a short measured probe (a few
greedy tokens on the real first prompt, once per model) turns tokens into a time estimate; those
times are rough (decode speed varies with length and batch), and say so. The score stage, when its
source exists, is planned by ``scoring.plan.plan_score``: the real computations, counted with the
student's tokenizer and the store, timed by a probe on a few of them.

Stages after a stage that has not run read outputs that do not exist yet; their figures are then
bounds from the pipeline's data (select keeps at most every row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import STAGES, OracleConfig, RunConfig
from reflectune.errors import ConfigError, ReflectuneError
from reflectune.oracles.dry_run import DecodeProbe, is_local, without_key
from reflectune.pipeline.lineage import Lineage, fingerprint
from reflectune.pipeline.run import _Pipeline, stage_range

__all__ = ["PlanRow", "plan"]

#: Tokens a judge review takes (the papers' GPT-4 reviews average well under this).
JUDGE_REVIEW_TOKENS = 300


@dataclass
class PlanRow:
    stage: str
    #: run | up to date | off | outside
    action: str
    why: str = ""
    rows: str = ""
    details: list[str] = field(default_factory=list)
    #: USD, when the oracle's prices are known
    cost: float | None = None
    #: seconds, from a measured probe (local models only)
    seconds: float | None = None


@contextlib.contextmanager
def _key_named(oracle: OracleConfig, row: PlanRow) -> Iterator[None]:
    """Build an HTTP oracle for counting without its key; an unset key is only noted."""
    with without_key(oracle) as note:
        if note:
            row.details.append(note)
        yield


def plan(config: RunConfig, *, start: str | None = None, until: str | None = None,
         only: str | None = None, probe: bool = True) -> list[PlanRow]:
    """The dry run's table: one row per stage."""
    selected = stage_range(start, until, only)
    folder = Path(config.run_dir or "runs/pipeline")
    lineage = Lineage(folder, config.model_dump(mode="json"), config.config_hash(), None)
    pipe = _Pipeline(config, folder, lineage)
    probes = DecodeProbe() if probe else None
    rows: list[PlanRow] = []
    data_rows: int | None = None
    judge_pairs: int | None = None
    for name in STAGES:
        step = getattr(config, name)
        if not step.enabled:
            rows.append(PlanRow(name, "off", "enabled: false"))
            continue
        if name not in selected:
            rows.append(PlanRow(name, "outside", "not selected"))
            continue
        try:
            why = lineage.up_to_date(name, fingerprint(name, step.step_hash(), pipe.inputs(name)))
        except ConfigError:
            why = "after the stages before it"
        row = PlanRow(name, "run" if why else "up to date", why or "")
        if name == "recycle":
            from reflectune.recycling import estimate

            data = Path(step.input) if step.input else pipe.data()
            with _key_named(step.oracle, row):
                est = estimate(data, config=step.stage())
            data_rows = est.rows
            row.rows = f"{est.rows:,}"
            row.details.append(f"{est.calls:,} calls, {est.prompt_tokens:,} prompt tokens, "
                               f"~{est.completion_tokens_expected:,} completion tokens expected "
                               f"(at most {est.completion_tokens_max:,})")
            row.cost = est.cost(est.completion_tokens_expected)
            if row.cost is not None:
                row.details.append(f"cost ~${row.cost:,.2f} expected, at most "
                                   f"${est.cost(est.completion_tokens_max) or 0:,.2f}")
            rate = probes.rate(step.oracle, est.first_prompt) if probes and est.first_prompt else None
            if rate:
                row.seconds = rate.seconds_for(est.completion_tokens_expected)
                row.details.append(rate.describe())
        elif name == "score" and _score_source_ready(pipe, rows):
            _plan_score_row(row, pipe, probe=probe and row.action == "run")
        elif name == "score":  # its source is written by a recycle that has not run: bounds
            n = data_rows if data_rows is not None else _count(pipe.score_source()[0])
            candidates = 4 if config.recycle.enabled else 1
            rifd = step.rifd if step.rifd is not None else config.recycle.enabled
            losses = 4 if rifd else 2
            row.rows = f"{n:,}" if n is not None else "?"
            if n is not None:
                row.details.append(f"{n * candidates:,} candidates x {losses} losses "
                                   f"({'IFD and r-IFD' if rifd else 'IFD'}), student {step.student}, "
                                   f"{step.template} template")
        elif name == "select":
            row.rows = f"at most {data_rows:,}" if data_rows is not None else ""
            row.details.append(f"metric {step.metric}, top-k {step.top_k or 'none'}, "
                               f"below-one filter {'on' if step.below_one_filter else 'off'}")
        elif name == "train":
            cfg = step.stage()
            world = cfg.world_size or 1
            accumulation = cfg.grad_accumulation(world)
            effective = cfg.per_device_batch * world * accumulation
            row.details.append(f"effective batch {effective} = per-device {cfg.per_device_batch} x "
                               f"{world} device(s) x accumulation {accumulation}")
            row.details.append(f"{'LoRA' if cfg.lora else 'full'} fine-tune of {pipe.base()}, lr "
                               f"{cfg.learning_rate:g}, {cfg.epochs:g} epochs, {cfg.lr_scheduler}, warmup "
                               f"{cfg.warmup_ratio:g}, max length {cfg.max_length}, {cfg.template} template")
            if data_rows is not None:
                steps = -(-data_rows // effective) * cfg.epochs
                row.rows = f"at most {data_rows:,}"
                row.details.append(f"at most {steps:g} optimizer steps")
        elif name == "generate":
            from reflectune.io.testsets import load_prompts_file, load_testsets

            items = (load_prompts_file(step.prompts_file, None, limit=step.limit) if step.prompts_file
                     else load_testsets(step.testset, limit=step.limit))
            models = 1 + (pipe.baseline_model() is not None)
            calls = len(items) * models
            row.rows = f"{len(items):,} prompts"
            row.details.append(f"{calls:,} calls ({models} model(s): trained"
                               f"{', baseline ' + str(pipe.baseline_model()) if models > 1 else ''}), "
                               f"at most {calls * step.max_tokens:,} new tokens")
            if probes and is_local(pipe.base()) and items:
                rate = probes.rate(OracleConfig(spec=pipe.base(), batch_size=step.model.batch_size),
                                   items[0].instruction)
                if rate:
                    row.seconds = rate.seconds_for(calls * step.max_tokens)
                    row.details.append(f"{rate.describe()}; an upper bound: answers stop early")
            judge_pairs = len(items)
        elif name == "judge":
            pairs = judge_pairs
            if pairs is None:
                from reflectune.io.testsets import load_testsets

                pairs = len(load_testsets(config.generate.testset, limit=config.generate.limit))
            calls = 2 * pairs
            row.rows = f"{pairs:,} pairs"
            row.details.append(f"{calls:,} calls (both orders), judge {step.judge.spec}, mode {step.mode}, "
                               f"~{calls * JUDGE_REVIEW_TOKENS:,} review tokens")
            with _key_named(step.judge, row):
                cost = _judge_cost(step.judge, calls, step.max_tokens or JUDGE_REVIEW_TOKENS)
            if cost is not None:
                row.cost = cost
                row.details.append(f"cost at most ${cost:,.2f} (prompts ~700 tokens, "
                                   f"{step.max_tokens or JUDGE_REVIEW_TOKENS} review tokens each)")
        rows.append(row)
    return rows


def _score_source_ready(pipe: _Pipeline, rows: list[PlanRow]) -> bool:
    """Whether score's source exists now and no stage of this plan rewrites it first (a recycle to run)."""
    from reflectune.store.inputs import is_run_folder

    src, _ = pipe.score_source()
    rewritten = pipe.c.score.input is None and pipe.c.recycle.enabled and any(
        r.stage == "recycle" and r.action == "run" for r in rows)
    return not rewritten and (is_run_folder(src) or (src != pipe.recycle_folder() and src.exists()))


def _plan_score_row(row: PlanRow, pipe: _Pipeline, *, probe: bool) -> None:
    """The score row from ``plan_score``: the run's real computations, counted with the student's
    tokenizer and looked up in the store, and (``probe``) a measured time estimate."""
    from reflectune.scoring.plan import plan_score

    src, folder = pipe.score_source()
    step = pipe.c.score
    p = plan_score(src, step.stage(), run_dir=folder, probe=probe)
    row.rows = f"{p.samples:,}"
    row.details.append(f"{p.candidates:,} candidates ({'IFD and r-IFD' if p.rifd else 'IFD'}), student "
                       f"{p.student}, {p.template} template, {p.dtype} on {p.device}")
    row.details.append(f"{p.new:,} computations to run ({p.tokens:,} tokens), "
                       f"{p.from_store:,} from the store")
    if p.new and p.seconds is not None:
        row.seconds = p.seconds
        row.details.append(f"time {p.estimate()}")
    if p.probe is not None:
        row.details.append(f"probe: {p.probe.describe()}; model load {p.probe.load_seconds:.1f} s")


def _judge_cost(judge: OracleConfig, calls: int, review_tokens: int) -> float | None:
    from reflectune.oracles import make_oracle

    try:
        price = make_oracle(judge).capabilities.price
    except ReflectuneError:
        return None
    if price is None:
        return None
    return calls * (700 * price[0] + review_tokens * price[1]) / 1e6


def _count(path: Path) -> int | None:
    from reflectune.io import read_samples

    try:
        return sum(1 for s in read_samples(str(path)) if not s.passthrough)
    except (ReflectuneError, OSError):
        return None


def format_plan(rows: list[PlanRow]) -> list[dict[str, Any]]:
    """The plan as plain dicts (for ``--json`` and tests)."""
    return [row.__dict__ for row in rows]
