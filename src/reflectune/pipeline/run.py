"""``reflectune.run(config)``: recycle -> score -> select -> train -> generate -> judge, resumable.

Each stage is the same verb a user would run by hand, with the pipeline deciding its paths: one
folder per stage under the pipeline folder, each stage's output the next one's input unless a
section names its own ``input``. Before a stage runs, its fingerprint (settings + content hashes of
its inputs) is compared with ``pipeline.json``: an up-to-date stage is skipped, anything else runs and
resumes from its own store or checkpoint. Kill the pipeline anywhere and rerun it: completed calls
come from the stores, training from its newest complete checkpoint.

Layout of the pipeline folder::

    pipeline.json      lineage: per stage its fingerprint, inputs, outputs, counts, cost, time
    recycle/           recycle's run folder; score and select write there too (scores, selected)
    score/             Cherry mode only (recycle off): score's and select's run folder
    train/             train's run folder: run.json, metrics, checkpoints, model/
    generate/          the trained model's answers      baseline/   the baseline model's answers
    judge/             judgments.jsonl, judge.json, the chart
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import STAGES, RunConfig
from reflectune.errors import ConfigError, ReflectuneError
from reflectune.pipeline.lineage import Lineage, fingerprint, identity
from reflectune.store.lock import RunLock

__all__ = ["PipelineResult", "StageResult", "run", "stage_range"]

Event = Callable[[dict[str, Any]], None]


@dataclass
class StageResult:
    """One row of the stage table."""

    name: str
    #: ran | skipped (up to date) | off (disabled) | outside (not in --from/--until/--only) | failed
    status: str
    reason: str = ""
    rows: int | None = None
    #: work done now and work reused (calls, computations or steps), and what they count
    made: int = 0
    reused: int = 0
    unit: str = ""
    cost: float | None = None
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    message: str = ""


@dataclass
class PipelineResult:
    run_dir: Path
    manifest: Path
    stages: list[StageResult]
    #: the judge's overall W/T/L and winning score, when it ran or was up to date
    verdict: dict[str, Any] | None = None
    exit_code: int = 0
    seconds: float = 0.0


def stage_range(start: str | None = None, until: str | None = None, only: str | None = None) -> list[str]:
    """The stages ``--from``/``--until``/``--only`` select, in order."""
    from reflectune.config import did_you_mean

    for flag, name in (("--from", start), ("--until", until), ("--only", only)):
        if name is not None and name not in STAGES:
            raise ConfigError(f"{flag} {name}: no such stage{did_you_mean(name, STAGES)}; stages: "
                              f"{', '.join(STAGES)}")
    if only is not None:
        if start is not None or until is not None:
            raise ConfigError("--only runs one stage: it does not combine with --from or --until")
        return [only]
    first = STAGES.index(start) if start else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}")
    return list(STAGES[first:last + 1])


class _Pipeline:
    """Paths and inputs of every stage, from the config and what earlier stages recorded."""

    def __init__(self, config: RunConfig, folder: Path, lineage: Lineage) -> None:
        self.c = config
        self.folder = folder
        self.lineage = lineage

    # -- where each stage reads and writes ----------------------------------------------------

    def data(self) -> Path:
        if self.c.data is None:
            raise ConfigError("the pipeline names no data: add `data: PATH` (or an `input:` for its first "
                              "stage)")
        return Path(self.c.data)

    def recycle_folder(self) -> Path:
        return self.folder / "recycle"

    def score_source(self) -> tuple[Path, Path | None]:
        """What score reads, and its run folder when that is not the source itself (Cherry mode)."""
        if self.c.score.input is not None:
            src = Path(self.c.score.input)
        elif self.c.recycle.enabled:
            src = self.recycle_folder()
        else:
            src = self.data()
        from reflectune.store.inputs import is_run_folder

        if is_run_folder(src) or (src == self.recycle_folder()):
            return src, None
        return src, self.folder / "score"

    def select_source(self) -> tuple[Path, Path | None]:
        if self.c.select.input is not None:
            src = Path(self.c.select.input)
            from reflectune.store.inputs import is_run_folder

            return src, None if is_run_folder(src) else self.folder / "score"
        return self.score_source()

    def output_of(self, stage: str, name: str) -> Path:
        recorded = (self.lineage.entry(stage).get("outputs") or {}).get(name)
        if recorded is None:
            raise ConfigError(f"{stage} has not run in {self.folder}, and a later stage needs its {name}: "
                              f"run the pipeline from {stage} (or give that stage an `input:`)")
        return Path(recorded["path"])

    def train_data(self) -> Path:
        if self.c.train.input is not None:
            return Path(self.c.train.input)
        if self.c.select.enabled:
            return self.output_of("select", "selected")
        if self.c.recycle.enabled:
            return self.output_of("recycle", "recycled")
        return self.data()

    def base(self) -> str:
        return self.c.train.base or self.c.score.student

    def model(self) -> str:
        if self.c.generate.input is not None:
            return self.c.generate.input
        return "hf:" + str(self.output_of("train", "model"))

    def baseline_model(self) -> str | None:
        baseline = self.c.generate.baseline
        return self.base() if baseline == "base" else baseline

    def answers(self) -> tuple[Path, Path]:
        a = Path(self.c.judge.input) if self.c.judge.input else self.output_of("generate", "answers")
        if self.c.judge.baseline:
            return a, Path(self.c.judge.baseline)
        if self.baseline_model() is None:
            raise ConfigError("judge has nothing to compare with: set generate.baseline (a model, or base) "
                              "or judge.baseline (an answers file)")
        return a, self.output_of("generate", "baseline")

    # -- what each stage reads, by content ----------------------------------------------------

    def inputs(self, stage: str) -> dict[str, Any]:
        if stage == "recycle":
            return {"data": identity(Path(self.c.recycle.input) if self.c.recycle.input else self.data())}
        if stage == "score":
            src, _ = self.score_source()
            return {"source": identity(src / "variants.jsonl" if (src / "variants.jsonl").is_file() else src)}
        if stage == "select":
            src, folder = self.select_source()
            scores = (folder or src) / "scores.jsonl"
            variants = src / "variants.jsonl"
            return {"scores": identity(scores),
                    "source": identity(variants if variants.is_file() else src)}
        if stage == "train":
            return {"data": identity(self.train_data()), "base": _model_identity(self.base())}
        if stage == "generate":
            found: dict[str, Any] = {"model": self._model_input(self.model(), "train")}
            baseline = self.baseline_model()
            if baseline is not None:
                found["baseline"] = _model_identity(baseline)
            return found
        a, b = self.answers()
        return {"answers": identity(a), "baseline": identity(b)}

    def _model_input(self, spec: str, stage: str) -> Any:
        """The trained model by its training's fingerprint (its weights' names and sizes would not
        tell two trainings apart); any other model by its own identity."""
        entry = self.lineage.entry(stage)
        model = (entry.get("outputs") or {}).get("model")
        if model is not None and spec == "hf:" + model["path"] and self.c.generate.input is None:
            return {"trained": entry.get("fingerprint")}
        return _model_identity(spec)


def _model_identity(spec: str) -> Any:
    """A model spec's identity: its weights' fingerprint when it is on this machine, else the spec."""
    from reflectune.models import model_fingerprint, resolve_model

    if spec.startswith(("openai:", "anthropic:")) or spec == "embedded":
        return spec
    try:
        return model_fingerprint(resolve_model(spec))
    except ReflectuneError:
        return spec  # not on this machine (a hub id): the stage itself says so when it runs


def run(config: RunConfig | str | Path, *, start: str | None = None, until: str | None = None,
        only: str | None = None, on_event: Event | None = None) -> PipelineResult:
    """Run a pipeline (a ``RunConfig`` or a pipeline file), skipping what is up to date.

    Args:
        config: a ``RunConfig``, or the path of a pipeline YAML file.
        start, until, only: run only these stages (``--from``, ``--until``, ``--only``); the stages
            outside read nothing and write nothing, and later ones read what they last recorded.
        on_event: called with ``{"event": "stage", "stage": NAME, "status": ..., ...}`` dicts (and the
            stages' own progress events) for a display.

    Returns:
        A :class:`PipelineResult`: the stage table, the judge's verdict and the exit code (0 only when
        every selected stage finished and did what was asked).
    """
    if not isinstance(config, RunConfig):
        from reflectune.pipeline.load import load_run_config

        source: str | None = str(config)
        config = load_run_config(config)
    else:
        source = None
    emit = on_event or (lambda event: None)
    selected = stage_range(start, until, only)
    folder = Path(config.run_dir or "runs/pipeline")
    started = time.monotonic()
    lock = RunLock(folder)
    lock.acquire()
    try:
        dumped = config.model_dump(mode="json")
        lineage = Lineage(folder, dumped, config.config_hash(), source)
        pipe = _Pipeline(config, folder, lineage)
        results: list[StageResult] = []
        exit_code = 0
        for name in STAGES:
            step = getattr(config, name)
            if not step.enabled:
                results.append(StageResult(name, "off", "enabled: false"))
                continue
            if name not in selected:
                results.append(StageResult(name, "outside", "not selected"))
                continue
            inputs = pipe.inputs(name)
            print_ = fingerprint(name, step.step_hash(), inputs)
            why = lineage.up_to_date(name, print_)
            if why is None:
                entry = lineage.entry(name)
                result = StageResult(name, "skipped", "up to date", rows=entry.get("rows"),
                                     reused=entry.get("made", 0) + entry.get("reused", 0),
                                     unit=entry.get("unit", ""), cost=0.0,
                                     outputs={k: v["path"] for k, v in entry["outputs"].items()})
                emit({"event": "stage", "stage": name, "status": "skipped"})
                results.append(result)
                continue
            emit({"event": "stage", "stage": name, "status": "running", "reason": why})
            previous = lineage.entry(name)
            entry = {"status": "running", "fingerprint": print_, "settings": step.step_hash(),
                     "inputs": inputs, "reason": why, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            lineage.write(name, entry)
            began = time.monotonic()
            try:
                result = _RUNNERS[name](pipe, previous.get("fingerprint") == print_, emit)
            except BaseException as exc:
                from reflectune.engine.stage import stop_status

                with contextlib.suppress(OSError, ReflectuneError):
                    lineage.write(name, entry | {"status": stop_status(exc), "stop_reason": str(exc)[:500],
                                                 "seconds": round(time.monotonic() - began, 2)})
                raise
            result.seconds = round(time.monotonic() - began, 2)
            outputs = {k: identity(Path(v)) for k, v in result.outputs.items()}
            lineage.write(name, entry | {
                "status": "complete" if result.status == "ran" else "failed", "outputs": outputs,
                "rows": result.rows, "made": result.made, "reused": result.reused, "unit": result.unit,
                "cost": result.cost, "seconds": result.seconds, "message": result.message})
            emit({"event": "stage", "stage": name, "status": result.status})
            results.append(result)
            if result.status != "ran":
                exit_code = 1
                break
        verdict = _verdict(pipe) if exit_code == 0 else None
        return PipelineResult(folder, lineage.path, results, verdict, exit_code,
                              round(time.monotonic() - started, 2))
    finally:
        lock.release()


def _verdict(pipe: _Pipeline) -> dict[str, Any] | None:
    entry = pipe.lineage.entry("judge")
    report = (entry.get("outputs") or {}).get("report")
    if entry.get("status") != "complete" or report is None:
        return None
    import json

    try:
        return dict(json.loads(Path(report["path"]).read_text(encoding="utf-8"))["overall"])
    except (OSError, ValueError, KeyError):
        return None


# -- the stages -----------------------------------------------------------------------------------

def _calls(stats: dict[str, Any]) -> tuple[int, int]:
    return int(stats.get("sent", 0)), int(stats.get("cached", 0))


def _outcome(result: StageResult, outcome: Any) -> StageResult:
    if not outcome.ok:
        result.status = "failed"
        kinds = ", ".join(f"{n} {k}" for k, (n, _) in outcome.failures.items())
        result.message = (f"{outcome.failed_calls} calls failed ({kinds})" if outcome.failed_calls
                          else f"produced no {outcome.unit}")
        if outcome.needs_retry_failed:
            result.message += "; some failures are final: set engine.retry_failed: true in this stage's " \
                              "section to ask them again"
    return result


def _recycle(pipe: _Pipeline, same: bool, emit: Event) -> StageResult:
    from reflectune.recycling import recycle

    step = pipe.c.recycle
    data = Path(step.input) if step.input else pipe.data()
    summary = recycle(data, None, config=step.stage(), run_dir=pipe.recycle_folder())
    made, reused = _calls(summary.stats)
    result = StageResult("recycle", "ran", rows=summary.rows, made=made, reused=reused, unit="calls",
                         cost=float(summary.stats.get("cost") or 0.0),
                         outputs={"recycled": str(summary.output), "variants": str(summary.variants)})
    return _outcome(result, summary.outcome)


def _score(pipe: _Pipeline, same: bool, emit: Event) -> StageResult:
    from reflectune.scoring import score

    src, folder = pipe.score_source()
    summary = score(src, pipe.c.score.stage(), run_dir=folder,
                    progress=lambda p: emit({"event": "progress", "stage": "score", "done": p.samples_done,
                                             "total": p.samples_total}))
    return StageResult("score", "ran", rows=summary.samples, made=summary.computed, reused=summary.cached,
                       unit="computations", outputs={"scores": str(summary.scores)})


def _select(pipe: _Pipeline, same: bool, emit: Event) -> StageResult:
    from reflectune.selection import EmptySelection, select

    src, folder = pipe.select_source()
    try:
        summary = select(src, None, pipe.c.select.stage(), run_dir=folder)
    except EmptySelection as exc:  # a failed stage with its reason, not a stop to resume from
        return StageResult("select", "failed", rows=0, message=f"kept no row: {exc.reason}")
    # select raises EmptySelection unless allow_empty asked for the empty file: the stage that reads
    # it then says what it lacks
    return StageResult("select", "ran", rows=summary.kept, outputs={"selected": str(summary.output)},
                       message=f"kept no row: {summary.empty_reason} (allow_empty)" if summary.empty_reason
                       else "")


def _train(pipe: _Pipeline, same: bool, emit: Event) -> StageResult:
    """Resume the training this fingerprint started; a training for other settings or data is
    removed first (the pipeline owns its folder) rather than resumed into a different run."""
    import shutil

    from reflectune.training import train

    folder = pipe.folder / "train"
    if not same and folder.exists():
        shutil.rmtree(folder)
    config = pipe.c.train.stage().model_copy(update={"resume": same and folder.exists(), "overwrite": True})
    result = train(pipe.train_data(), pipe.base(), None, run_dir=folder, config=config,
                   on_log=lambda event: emit(event | {"stage": "train"}))
    resumed = result.resumed_from_step or 0
    outputs = {"metrics": str(result.metrics)}
    if result.model_dir is not None:
        outputs["model"] = str(result.model_dir)
    if result.adapter_dir is not None:
        outputs["adapter"] = str(result.adapter_dir)
    return StageResult("train", "ran", rows=result.rows, made=result.steps - resumed, reused=resumed,
                       unit="steps", outputs=outputs)


def _generate(pipe: _Pipeline, same: bool, emit: Event) -> StageResult:
    from reflectune.generation import generate

    step = pipe.c.generate
    outputs: dict[str, str] = {}
    made = reused = rows = 0
    cost = 0.0
    failed: Any = None
    models: Sequence[tuple[str, str | None]] = (("answers", pipe.model()),
                                                ("baseline", pipe.baseline_model()))
    for name, spec in models:
        if spec is None:
            continue
        stage = step.stage()
        config = stage.model_copy(update={"model": stage.model.model_copy(update={"spec": spec})})
        folder = pipe.folder / ("generate" if name == "answers" else "baseline")
        def progress(done: int, total: int, stats: Any, label: str = f"generate ({name})") -> None:
            emit({"event": "progress", "stage": label, "done": done, "total": total})

        summary = generate(folder / "answers.jsonl", config=config, testset=step.testset,
                           prompts_file=step.prompts_file, limit=step.limit, run_dir=folder,
                           generator=name if name == "baseline" else "trained", progress=progress)
        sent, cached = _calls(summary.stats)
        made, reused, rows = made + sent, reused + cached, rows + summary.rows
        cost += float(summary.stats.get("cost") or 0.0)
        outputs[name] = str(summary.output)
        if not summary.outcome.ok and failed is None:
            failed = summary.outcome
    result = StageResult("generate", "ran", rows=rows, made=made, reused=reused, unit="calls", cost=cost,
                         outputs=outputs)
    return _outcome(result, failed) if failed is not None else result


def _judge(pipe: _Pipeline, same: bool, emit: Event) -> StageResult:
    from reflectune.judging import judge

    a, b = pipe.answers()
    report = judge(a, b, config=pipe.c.judge.stage(), run_dir=pipe.folder / "judge", name_a="trained",
                   name_b="baseline",
                   progress=lambda done, total, stats: emit({"event": "progress", "stage": "judge",
                                                             "done": done, "total": total}))
    made, reused = _calls(report.data.get("calls") or {})
    outputs = {"report": str(report.report_path), "judgments": str(report.judgments_path)}
    if report.chart_path is not None:
        outputs["chart"] = str(report.chart_path)
    result = StageResult("judge", "ran", rows=int(report.overall.get("n", 0) or 0), made=made, reused=reused,
                         unit="calls", cost=report.data.get("cost_usd"), outputs=outputs)
    return _outcome(result, report.outcome)


_RUNNERS: dict[str, Callable[[_Pipeline, bool, Event], StageResult]] = {
    "recycle": _recycle, "score": _score, "select": _select, "train": _train, "generate": _generate,
    "judge": _judge}
