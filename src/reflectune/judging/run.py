"""``judge()``: compare two answer files with an LLM judge, both orders, resumably.

The rules live in :mod:`reflectune.judging.rules` (pure); this module does the I/O around them: read and
pair the two answer files, send every judge call through the engine (concurrency, rate limits,
retries, cost, and resume from the run folder's store), re-ask unparsed reviews when asked to, and
write the results: ``judgments.jsonl`` (every review), ``judge.json`` (the report) and a PNG chart
like the papers' figure. Nothing is ever counted as a tie by accident: an unreadable review or a
failed call makes the item an *error*, listed in the report.

Items pair on ``(dataset, id)``, the identity ``reflectune generate`` writes, and fall back to the
instruction text, so AlpacaEval ``model_outputs.json`` files from elsewhere pair too. A pair must agree
on the question (whitespace-normalised) unless ``pair_by="id"``; duplicate rows, empty answers and
answers holding the judge template's headers (neutralised, :func:`rules.neutralise_delimiters`) are
counted in the report, never dropped or judged silently.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from reflectune.config import JudgeConfig, merged
from reflectune.contracts import JUDGMENTS_FILE
from reflectune.engine.runner import Engine, EngineStats
from reflectune.engine.stage import RunOutcome, open_stage, settle
from reflectune.errors import ConfigError, DataError
from reflectune.io.atomic import write_json_atomic
from reflectune.io.testsets import read_records
from reflectune.io.writers import write_jsonl_atomic
from reflectune.judging.rules import (
    MODES,
    Mode,
    Outcome,
    Tally,
    combine_orders,
    find_delimiters,
    forced_scores,
    judge_request,
    neutralise_delimiters,
    parse_scores,
    parse_verdict,
    review_outcome,
    template_version,
    verdict_outcome,
)
from reflectune.store.rundir import default_run_dir

__all__ = [
    "JUDGE_STAGE",
    "PAIR_BY",
    "Answer",
    "ItemJudgment",
    "JudgeReport",
    "OrderResult",
    "PairBy",
    "Pairing",
    "ajudge",
    "judge",
    "judge_pair",
    "pair_answers",
    "read_answers",
    "summarize",
    "write_chart",
]

JUDGE_STAGE = "judge"
PairBy = Literal["question", "id"]
PAIR_BY: tuple[str, ...] = ("question", "id")
Progress = Callable[[int, int, EngineStats], None]


@dataclass(frozen=True, slots=True)
class Answer:
    """One row of an answer file. ``error`` is set when its generation failed."""

    row: int
    instruction: str
    output: str
    dataset: str | None = None
    id: str | None = None
    category: str | None = None
    generator: str | None = None
    error: str | None = None


@dataclass
class Pairing:
    pairs: list[tuple[Answer, Answer]]
    unmatched_a: list[Answer]
    unmatched_b: list[Answer]
    duplicates_a: int = 0
    duplicates_b: int = 0
    #: pairs matched on ``(dataset, id)`` whose instructions differ (after whitespace normalisation)
    mismatched: list[tuple[Answer, Answer]] = field(default_factory=list)


@dataclass
class OrderResult:
    """One judge call: ``a_first`` tells whether model A was shown as Assistant 1 / A."""

    a_first: bool
    review: str | None = None
    scores: tuple[float, float] | None = None   # (Assistant 1, Assistant 2) as written
    verdict: str | None = None
    outcome: Outcome | None = None
    retried: bool = False
    error: str | None = None                    # "unparsed" or "call failed: ..."


@dataclass
class ItemJudgment:
    dataset: str
    id: str
    category: str | None
    instruction: str
    orders: list[OrderResult] = field(default_factory=list)
    skipped: str | None = None
    #: why the item was not sent to the judge although both generations succeeded (an empty answer)
    invalid: str | None = None

    @property
    def outcome(self) -> Outcome | None:
        if self.skipped or self.invalid or len(self.orders) != 2 \
                or any(o.outcome is None for o in self.orders):
            return None
        first, second = (o.outcome for o in self.orders)
        assert first is not None and second is not None
        return combine_orders(first, second)

    @property
    def error(self) -> str | None:
        problems = [f"{'A first' if o.a_first else 'B first'}: {o.error}" for o in self.orders if o.error]
        return "; ".join(([self.invalid] if self.invalid else []) + problems) or None

    def scores_ab(self) -> list[tuple[float, float]]:
        """Per order, (score of A, score of B), for mean scores."""
        out = []
        for o in self.orders:
            if o.scores is not None:
                out.append(o.scores if o.a_first else (o.scores[1], o.scores[0]))
        return out

    def as_row(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "id": self.id, "category": self.category,
                "instruction": self.instruction, "outcome": self.outcome, "error": self.error,
                "skipped": self.skipped, "orders": [asdict(o) for o in self.orders]}


@dataclass
class JudgeReport:
    """The comparison: ``overall``/``by_dataset``/``by_category`` are ``Tally.as_dict()`` values."""

    run_dir: Path
    report_path: Path
    chart_path: Path | None
    judgments_path: Path
    data: dict[str, Any]
    #: the one exit rule's verdict: calls still failed (by reason) and the pairs it judged
    outcome: RunOutcome = field(default_factory=RunOutcome)

    @property
    def overall(self) -> dict[str, Any]:
        return self.data["overall"]

    @property
    def by_dataset(self) -> dict[str, dict[str, Any]]:
        return self.data["by_dataset"]


# -- reading and pairing ----------------------------------------------------------------------------

def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def read_answers(path: str | os.PathLike[str]) -> list[Answer]:
    """Rows of an answer file (JSONL or a JSON array, e.g. AlpacaEval's ``model_outputs.json``).

    Raises:
        DataError: a row without a string ``instruction`` or ``output``, naming file, row and field.
    """
    source = Path(path)
    answers = []
    for row, record in read_records(source):
        for name in ("instruction", "output"):
            if not isinstance(record.get(name), str):
                raise DataError("missing or non-string field", path=str(source), row=row, field=name)
        answers.append(Answer(row=row, instruction=record["instruction"], output=record["output"],
                              dataset=_opt_str(record.get("dataset")), id=_opt_str(record.get("id")),
                              category=_opt_str(record.get("category")),
                              generator=_opt_str(record.get("generator")),
                              error=_opt_str(record.get("error"))))
    if not answers:
        raise DataError("no answers in the file", path=str(source))
    return answers


def _text_key(text: str) -> str:
    return " ".join(text.split())


def pair_answers(a: list[Answer], b: list[Answer]) -> Pairing:
    """Pair A's rows with B's on ``(dataset, id)``, else on the instruction text; first match wins.

    Pairs matched on the id whose instructions differ are listed in ``Pairing.mismatched``; the caller
    decides (``judge()`` refuses them unless ``pair_by="id"``).
    """
    by_id: dict[tuple[str, str], int] = {}
    by_text: dict[str, int] = {}
    duplicates_b = 0
    for index, answer in enumerate(b):
        if answer.dataset is not None and answer.id is not None:
            duplicates_b += (answer.dataset, answer.id) in by_id
            by_id.setdefault((answer.dataset, answer.id), index)
        by_text.setdefault(_text_key(answer.instruction), index)
    used: set[int] = set()
    seen_a: set[tuple[str | None, str | None, str]] = set()
    pairs, unmatched_a, duplicates_a = [], [], 0
    for answer in a:
        identity = (answer.dataset, answer.id, _text_key(answer.instruction))
        if identity in seen_a:
            duplicates_a += 1
            continue
        seen_a.add(identity)
        match = None
        if answer.dataset is not None and answer.id is not None:
            match = by_id.get((answer.dataset, answer.id))
        if match is None or match in used:
            match = by_text.get(_text_key(answer.instruction))
        if match is None or match in used:
            unmatched_a.append(answer)
            continue
        used.add(match)
        pairs.append((answer, b[match]))
    unmatched_b = [answer for index, answer in enumerate(b) if index not in used]
    mismatched = [(x, y) for x, y in pairs if _text_key(x.instruction) != _text_key(y.instruction)]
    return Pairing(pairs, unmatched_a, unmatched_b, duplicates_a, duplicates_b, mismatched)


# -- judging ------------------------------------------------------------------------------------------

async def _judge_order(engine: Engine, question: str, a: str, b: str, *, a_first: bool, mode: Mode,
                       retry_unparsed: bool, max_tokens: int | None, sample_id: str,
                       prompts_dir: str | None = None) -> OrderResult:
    first, second = (a, b) if a_first else (b, a)
    result = OrderResult(a_first=a_first)
    forced = engine.oracle.capabilities.prefill
    for reminder in (False, True):
        if reminder and not retry_unparsed:
            break
        request = judge_request(question, first, second, mode=mode, reminder=reminder,
                                max_tokens=max_tokens, prompts_dir=prompts_dir, forced=forced)
        record = await engine.call(JUDGE_STAGE, request, version=template_version(mode, prompts_dir),
                                   sample_id=sample_id)
        result.retried = reminder
        if not record.ok:
            result.error = f"call failed: {record.error_kind or 'error'}: {record.error}"
            return result
        result.review = record.content
        if mode == "pair-v2":
            verdict = parse_verdict(record.content)
            if verdict is not None:
                result.verdict, result.error = verdict, None
                result.outcome = verdict_outcome(verdict, a_first=a_first)
                return result
        else:
            scores = forced_scores(record.content) if forced else parse_scores(record.content)
            if scores is not None:
                result.scores, result.error = scores, None
                result.outcome = review_outcome(scores, a_first=a_first)
                return result
        result.error = "unparsed"
    return result


async def _judge_item(engine: Engine, a: Answer, b: Answer, *, mode: Mode, retry_unparsed: bool,
                      max_tokens: int | None, prompts_dir: str | None = None) -> ItemJudgment:
    dataset = a.dataset or b.dataset or "answers"
    item_id = a.id or b.id or str(a.row - 1)
    item = ItemJudgment(dataset, item_id, a.category or b.category, a.instruction)
    if a.error or b.error:
        item.skipped = "; ".join(f"{side} generation failed: {x.error}"
                                 for side, x in (("A", a), ("B", b)) if x.error)
        return item
    empty = [side for side, x in (("A", a), ("B", b)) if not x.output.strip()]
    if empty:
        item.invalid = f"empty answer: {' and '.join(empty)} (not judged)"
        return item
    # Template headers inside the texts could forge the prompt: neutralised (identity without one).
    question, out_a, out_b = (neutralise_delimiters(t) for t in (a.instruction, a.output, b.output))
    item.orders = list(await asyncio.gather(*(
        _judge_order(engine, question, out_a, out_b, a_first=a_first, mode=mode,
                     retry_unparsed=retry_unparsed, max_tokens=max_tokens,
                     sample_id=f"{dataset}/{item_id}", prompts_dir=prompts_dir)
        for a_first in (True, False))))
    return item


async def judge_pair(engine: Engine, question: str, answer: str, baseline: str, *, item_id: str,
                     mode: Mode = "score", retry_unparsed: bool = True, max_tokens: int | None = 1024,
                     prompts_dir: str | None = None, dataset: str = "verify") -> ItemJudgment:
    """``answer`` (A) against ``baseline`` (B) on ``question``, in both orders, by the judge's rules:
    the same prompts, parsing and both-order rule as ``reflectune judge``, so a verdict here means
    what it means there. ``outcome`` is A's: win, tie or lose (None when a review failed)."""
    return await _judge_item(engine, Answer(0, question, answer, dataset, item_id),
                             Answer(0, question, baseline, dataset, item_id), mode=mode,
                             retry_unparsed=retry_unparsed, max_tokens=max_tokens, prompts_dir=prompts_dir)


def summarize(items: list[ItemJudgment]) -> dict[str, Any]:
    """Tallies overall, per test set and per (test set, category); pure."""
    overall = Tally()
    by_dataset: dict[str, Tally] = {}
    by_category: dict[str, dict[str, Tally]] = {}
    for item in items:
        tallies = [overall, by_dataset.setdefault(item.dataset, Tally())]
        if item.category is not None:
            tallies.append(by_category.setdefault(item.dataset, {}).setdefault(item.category, Tally()))
        for tally in tallies:
            tally.add(item.outcome, error=item.error is not None, skipped=item.skipped is not None,
                      scores=item.scores_ab())
    return {"overall": overall.as_dict(),
            "by_dataset": {name: t.as_dict() for name, t in by_dataset.items()},
            "by_category": {name: {cat: t.as_dict() for cat, t in sorted(cats.items())}
                            for name, cats in by_category.items()}}


def write_chart(by_dataset: dict[str, dict[str, Any]], path: str | os.PathLike[str], *,
                name_a: str = "A", name_b: str = "B", title: str | None = None) -> Path:
    """Stacked horizontal bars of win / tie / lose per test set, like the papers' figure (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(by_dataset)
    labels = [f"{n}\n{by_dataset[n]['winning_score']:.2f}" if by_dataset[n].get("winning_score") is not None
              else n for n in names]
    data = np.array([[by_dataset[n]["win"], by_dataset[n]["tie"], by_dataset[n]["lose"]] for n in names],
                    dtype=float).reshape(len(labels), 3)
    colors = plt.colormaps["RdYlBu"](np.linspace(0.2, 0.8, 3))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * max(1, len(labels))), dpi=150)
    try:
        ax.invert_yaxis()
        ax.xaxis.set_visible(False)
        ax.set_xlim(0, max(1.0, float(data.sum(axis=1).max()) if len(labels) else 1.0))
        starts = np.zeros(len(labels))
        for column, (name, color) in enumerate(zip((f"{name_a} wins", "Tie", f"{name_b} wins"), colors,
                                                   strict=True)):
            widths = data[:, column]
            rects = ax.barh(labels, widths, left=starts, height=0.6, label=name, color=color)
            r, g, b, _ = color
            ax.bar_label(rects, labels=[f"{int(w)}" if w else "" for w in widths], label_type="center",
                         color="white" if r * g * b < 0.5 else "black")
            starts = starts + widths
        ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize="small", frameon=False)
        if title:
            fig.suptitle(title, fontsize="medium", y=0.995)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def _name(answers: list[Answer], path: Path) -> str:
    names = {a.generator for a in answers if a.generator}
    return names.pop() if len(names) == 1 else path.name.split(".")[0]


def _stem(path: Path) -> str:
    return path.name.split(".")[0] or "answers"


async def ajudge(answers_a: str | os.PathLike[str], answers_b: str | os.PathLike[str], *,
                 config: JudgeConfig, run_dir: str | os.PathLike[str] | None = None,
                 report: str | os.PathLike[str] | None = None,
                 chart: str | os.PathLike[str] | bool | None = None, name_a: str | None = None,
                 name_b: str | None = None, progress: Progress | None = None,
                 pair_by: PairBy = "question") -> JudgeReport:
    """Async core of :func:`judge`."""
    oracle, retry_unparsed, max_tokens = config.judge, config.retry_unparsed, config.max_tokens
    if config.mode not in MODES:
        raise ConfigError(f"unknown judge mode '{config.mode}'; expected one of {', '.join(MODES)}")
    mode = cast(Mode, config.mode)
    path_a, path_b = Path(answers_a), Path(answers_b)
    rows_a, rows_b = read_answers(path_a), read_answers(path_b)
    if pair_by not in PAIR_BY:
        raise ConfigError(f"unknown pair_by '{pair_by}'; expected one of {', '.join(PAIR_BY)}")
    pairing = pair_answers(rows_a, rows_b)
    if not pairing.pairs:
        raise DataError(f"no item of {path_a} matches one of {path_b} by (dataset, id) or instruction")
    if pairing.mismatched and pair_by == "question":
        x, y = pairing.mismatched[0]
        raise DataError(
            f"paired on (dataset, id) = ({x.dataset}, {x.id}) with {path_b} row {y.row}, but the "
            f"questions differ: {x.instruction[:80]!r} vs {y.instruction[:80]!r} "
            f"({len(pairing.mismatched)} such pair(s)); pass pair_by='id' (--pair-by-id) to pair on "
            "the id alone", path=str(path_a), row=x.row)
    label_a, label_b = name_a or _name(rows_a, path_a), name_b or _name(rows_b, path_b)
    folder = Path(run_dir) if run_dir else default_run_dir(
        f"{_stem(path_a)}-vs-{_stem(path_b)}", oracle.spec, JUDGE_STAGE)
    started = time.monotonic()
    async with open_stage(JUDGE_STAGE, folder, oracle, config.engine) as stage:
        engine = stage.engine
        stage.manifest = {"a": str(path_a), "b": str(path_b), "judge": oracle.model_dump(mode="json"),
                          "engine": config.engine.model_dump(mode="json"), "mode": mode,
                          "template": template_version(mode, config.prompts_dir),
                          "retry_unparsed": retry_unparsed,
                          "max_tokens": max_tokens, "pairs": len(pairing.pairs)}
        stage.write("running")
        stage.live = lambda: {"stats": engine.stats.as_dict()}
        done = 0

        async def one(a: Answer, b: Answer) -> ItemJudgment:
            nonlocal done
            item = await _judge_item(engine, a, b, mode=mode, retry_unparsed=retry_unparsed,
                                     max_tokens=max_tokens, prompts_dir=config.prompts_dir)
            done += 1
            if progress is not None:
                progress(done, len(pairing.pairs), engine.stats)
            return item

        tasks = [asyncio.ensure_future(one(a, b)) for a, b in pairing.pairs]
        try:
            items = list(await asyncio.gather(*tasks))
        except BaseException:
            await settle(tasks, cancel=True)
            raise
        stats = engine.stats.as_dict()
        stage.live = None

        judgments = stage.file(JUDGMENTS_FILE)
        write_jsonl_atomic(judgments, (item.as_row() for item in items))

        tallies = summarize(items)
        report_path = Path(report) if report else stage.file("judge.json")
        chart_path: Path | None = None
        if chart is not False:
            chart_path = Path(chart) if isinstance(chart, str | os.PathLike) else \
                report_path.with_suffix(".png")
            write_chart(tallies["by_dataset"], chart_path, name_a=label_a, name_b=label_b,
                        title=f"{label_a} vs {label_b} (judge: {oracle.spec})")
        data = {
            "a": {"path": str(path_a), "name": label_a, "rows": len(rows_a)},
            "b": {"path": str(path_b), "name": label_b, "rows": len(rows_b)},
            "judge": oracle.spec, "mode": mode, "template": template_version(mode, config.prompts_dir),
            "retry_unparsed": retry_unparsed, "pairs": len(pairing.pairs),
            **tallies,
            "unmatched": {"a": len(pairing.unmatched_a), "b": len(pairing.unmatched_b),
                          "duplicates_a": pairing.duplicates_a, "duplicates_b": pairing.duplicates_b,
                          "examples_a": [_describe(x) for x in pairing.unmatched_a[:20]],
                          "examples_b": [_describe(x) for x in pairing.unmatched_b[:20]]},
            "errors": [{"dataset": i.dataset, "id": i.id, "error": i.error,
                        "reviews": [(o.review or "")[:300] for o in i.orders if o.error]}
                       for i in items if i.error],
            "skipped": [{"dataset": i.dataset, "id": i.id, "reason": i.skipped} for i in items if i.skipped],
            "retried": sum(o.retried for i in items for o in i.orders),
            "pair_by": pair_by,
            "question_mismatches": [{"a_row": x.row, "b_row": y.row, "dataset": x.dataset, "id": x.id}
                                    for x, y in pairing.mismatched[:20]] if pairing.mismatched else [],
            "duplicates": {"a": pairing.duplicates_a, "b": pairing.duplicates_b},
            "empty_answers": {side: sum(1 for x, y in pairing.pairs
                                        if not (x, y)[k].error and not (x, y)[k].output.strip())
                              for k, side in ((0, "a"), (1, "b"))},
            "neutralised": {side: sum(1 for pair in pairing.pairs if find_delimiters(pair[k].output))
                            for k, side in ((0, "a"), (1, "b"))}
            | {"question": sum(1 for x, _ in pairing.pairs if find_delimiters(x.instruction))},
            "calls": stats, "cost_usd": round(cast(float, stats["cost"]), 6) if stats["cost_known"] else None,
            "elapsed_s": round(time.monotonic() - started, 3),
            "run_dir": str(folder), "judgments": str(judgments),
            "chart": str(chart_path) if chart_path else None,
        }
        outcome = stage.outcome(sum(1 for i in items if not i.error and not i.skipped), "judged pairs")
        data["outcome"] = outcome.as_dict()
        write_json_atomic(report_path, data)
        stage.write("complete", report=str(report_path), overall=tallies["overall"], stats=stats,
                    outcome=outcome.as_dict())
    return JudgeReport(folder, report_path, chart_path, judgments, data, outcome)


def _describe(answer: Answer) -> dict[str, Any]:
    return {"row": answer.row, "dataset": answer.dataset, "id": answer.id,
            "instruction": answer.instruction[:120]}


def judge(
    answers_a: str | os.PathLike[str],
    answers_b: str | os.PathLike[str],
    *,
    config: JudgeConfig | None = None,
    judge: str | None = None,
    mode: Mode | None = None,
    retry_unparsed: bool | None = None,
    max_tokens: int | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    chart: str | os.PathLike[str] | bool | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
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
    prompts_dir: str | None = None,
    progress: Progress | None = None,
    pair_by: PairBy = "question",
) -> JudgeReport:
    """Compare two answer files with a pairwise LLM judge, both orders (METHOD.md §7.1).

    Args:
        config: a ``JudgeConfig`` (judge oracle, engine, mode); keyword arguments below that are
            given override its fields.
        answers_a, answers_b: answer files (``reflectune generate`` output, or AlpacaEval
            ``model_outputs.json``); items pair on ``(dataset, id)``, else on the instruction.
        pair_by: ``"question"`` (default): a pair matched on the id must also agree on the
            instruction text (whitespace-normalised), else ``DataError`` naming both files and rows;
            ``"id"``: trust the id alone (mismatches are still listed in the report).
        judge: the judge's oracle spec, e.g. ``openai:gpt-4o`` (with ``base_url`` for any
            OpenAI-compatible server), ``hf:PATH`` or ``embedded``.
        mode: ``"score"`` (two 1-10 scores, the papers' protocol) or ``"pair-v2"`` (MT-Bench verdict).
        retry_unparsed: re-ask reviews without a readable score line (or verdict), once, with a
            reminder of the format; still unreadable ones are errors.
        max_tokens: the judge's token budget per review.
        run_dir: run folder (store, ``judgments.jsonl``); default ``runs/<A>-vs-<B>-<judge>-judge``.
            Rerunning resumes: finished reviews are not asked again.
        report: the JSON report (default ``judge.json`` in the run folder); ``chart``: the PNG
            (default next to the report; ``False`` for none).
        name_a, name_b: labels (default: the files' ``generator``).
        template: a local judge's prompt format (default: the model's own), as for ``generate``.
        Other arguments: the oracle and engine settings, as for :func:`reflectune.generation.run.generate`.

    Returns:
        A :class:`JudgeReport`: W/T/L, winning score, errors per test set, overall and per category.

    Example:
        >>> r = judge("ours.jsonl", "base.jsonl", judge="openai:gpt-4o")  # doctest: +SKIP
        >>> r.overall["winning_score"]  # doctest: +SKIP
        1.42
    """
    if judge is None and config is None:
        raise ConfigError("no judge given: pass judge='openai:MODEL' (or hf:PATH, embedded) or a JudgeConfig")
    config = merged(JudgeConfig, config, {
        "judge": {"spec": judge, "base_url": base_url, "api_key_env": api_key_env, "timeout": timeout,
                  "device": device, "dtype": dtype, "batch_size": batch_size,
                  "allow_insecure_http": allow_insecure_http, "template": template},
        "engine": {"concurrency": concurrency, "rpm": rpm, "tpm": tpm, "max_cost": max_cost,
                   "price_in": price_in, "price_out": price_out, "retry_failed": retry_failed},
        "mode": mode, "retry_unparsed": retry_unparsed, "max_tokens": max_tokens,
        "prompts_dir": prompts_dir})
    return asyncio.run(ajudge(answers_a, answers_b, config=config, run_dir=run_dir, report=report,
                              chart=chart, name_a=name_a, name_b=name_b, progress=progress,
                              pair_by=pair_by))
