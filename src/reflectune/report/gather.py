"""What a run folder holds, read into plain data for the page: no HTML here.

A report reads whatever stages left in the folder (a recycle run, scores and a selection in it, a
judge run, or a pipeline folder holding several), so each part is optional and the page shows the
parts that exist. The selection decision is recomputed with select's own rule and settings (from the
folder's ``select`` section) rather than re-read from the selected file, which keeps no dropped rows.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.contracts import (
    JUDGMENTS_FILE,
    SCORES_FILE,
    VARIANTS_FILE,
    JudgmentLine,
    ScoresLine,
    VariantsLine,
)
from reflectune.errors import DataError
from reflectune.io.jsonl import read_jsonl
from reflectune.selection.rules import METRICS, cherry_choice, choose_variant, kept_rows, parse_top_k
from reflectune.store.rundir import read_manifest

#: pipeline stage folders, in the order the page shows them
PIPELINE_FOLDERS = ("recycle", "score", "train", "generate", "baseline", "judge")
REFLECTED = ("Q", "A", "QA")
#: (variant, part) of the papers' table: the instruction comes from ori or Q, the response from any
TABLE_ROWS = ("ori", "Q", "A", "QA")

#: texts -> their lengths (a tokenizer's, or words)
Lengths = Callable[[list[str]], list[int]]


@dataclass
class Folder:
    """One run folder and its run.json."""

    name: str
    path: Path
    manifest: dict[str, Any]

    def section(self, stage: str) -> dict[str, Any]:
        value = self.manifest.get(stage)
        return value if isinstance(value, dict) else {}


@dataclass
class ReportData:
    """Everything the page draws. ``samples`` and ``judgments`` are the browser's records."""

    title: str
    folders: list[Folder]
    pipeline: dict[str, Any] | None = None
    length_unit: str = "words"
    samples: list[dict[str, Any]] = field(default_factory=list)
    lengths: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # variant -> part -> values
    ifd: dict[str, list[float]] = field(default_factory=dict)  # variant -> IFDs
    rifd: dict[str, list[float]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None
    judgments: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def section(self, stage: str) -> dict[str, Any]:
        """The first folder's section for ``stage`` (a pipeline has one folder per stage)."""
        for folder in self.folders:
            if folder.section(stage):
                return folder.section(stage)
        return {}


def folders_of(root: Path) -> tuple[list[Folder], dict[str, Any] | None]:
    """The run folders under ``root``: a pipeline's stage folders, or ``root`` itself."""
    if not root.is_dir():
        raise DataError("no such run folder", path=str(root))
    pipeline_file = root / "pipeline.json"
    pipeline = None
    paths: list[tuple[str, Path]] = []
    if pipeline_file.is_file():
        try:
            pipeline = json.loads(pipeline_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"not JSON ({exc})", path=str(pipeline_file)) from None
        paths = [(name, root / name) for name in PIPELINE_FOLDERS if (root / name / "run.json").is_file()]
    elif (root / "run.json").is_file():
        paths = [(root.name, root)]
    if not paths:
        raise DataError("not a run folder: no run.json or pipeline.json here (give the folder a stage "
                        "or `reflectune run` wrote)", path=str(root))
    return [Folder(name, path, read_manifest(path)) for name, path in paths], pipeline


def word_counter(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def gather(root: Path, *, count_tokens: Lengths | None = None, unit: str = "words") -> ReportData:
    """Read ``root`` into ``ReportData``; lengths are counted by ``count_tokens`` (words by default)."""
    folders, pipeline = folders_of(root)
    data = ReportData(title=root.name, folders=folders, pipeline=pipeline,
                      length_unit=unit if count_tokens else "words")
    counter = count_tokens or word_counter
    for folder in folders:
        if (folder.path / VARIANTS_FILE).is_file():
            _samples(data, folder, counter)
        elif (folder.path / SCORES_FILE).is_file() and folder.section("score"):
            _cherry(data, folder, counter)
        if (folder.path / JUDGMENTS_FILE).is_file():
            _judge(data, folder)
    return data


def _texts(entry: dict[str, Any]) -> tuple[str, str]:
    instruction = entry.get("instruction") or ""
    if entry.get("input"):
        instruction = f"{instruction}\n{entry['input']}"
    return instruction, entry.get("output") or ""


def _samples(data: ReportData, folder: Folder, counter: Lengths) -> None:
    """variants.jsonl (+ scores.jsonl and the selection rule when the folder was scored)."""
    scores: dict[str, dict[str, Any]] = {}
    if (folder.path / SCORES_FILE).is_file() and folder.section("score").get("status") == "done":
        for _, scored in read_jsonl(folder.path / SCORES_FILE, ScoresLine.model_validate):
            scores[scored.id] = {k: v.model_dump(exclude_unset=True) for k, v in scored.variants.items()}
    lines = [line for _, line in read_jsonl(folder.path / VARIANTS_FILE, VariantsLine.model_validate)]
    select_cfg = folder.section("select")
    metric = select_cfg.get("metric", "ppl_ratio")
    below_one = bool(select_cfg.get("below_one_filter", True))
    choices = [choose_variant(scores[line.id], below_one_filter=below_one, metric=metric)
               if line.id in scores else None for line in lines]
    final: set[int] = set()
    if scores:
        decided = [c for c in choices if c is not None]
        spec = parse_top_k(select_cfg["top_k"]) if select_cfg.get("top_k") else None
        kept = kept_rows(decided, spec, below_one=below_one)
        index = [i for i, c in enumerate(choices) if c is not None]
        final = {index[k] for k in kept}
        data.selection = _selection_summary(decided, len(kept), select_cfg, folder)

    # lengths in one tokenizer pass over every text the table needs
    texts: list[str] = []
    slots: list[tuple[int, str, str]] = []
    for i, line in enumerate(lines):
        for name in TABLE_ROWS:
            entry = line.variants.get(name)
            if entry is None or entry.status != "ok":
                continue
            instruction, output = _texts(entry.model_dump())
            texts += [instruction, output]
            slots += [(i, name, "instruction"), (i, name, "response")]
    counts = counter(texts) if texts else []
    per_sample: dict[int, dict[str, dict[str, int]]] = {}
    for (i, name, part), n in zip(slots, counts, strict=True):
        data.lengths.setdefault(name, {}).setdefault(part, []).append(n)
        per_sample.setdefault(i, {}).setdefault(name, {})[part] = n
    ifd_key, rifd_key = METRICS.get(metric, METRICS["ppl_ratio"])
    for i, line in enumerate(lines):
        table = scores.get(line.id, {})
        for name, entry in table.items():
            if entry.get("status", "ok") == "ok":
                if isinstance(entry.get(ifd_key), float | int):
                    data.ifd.setdefault(name, []).append(float(entry[ifd_key]))
                if isinstance(entry.get(rifd_key), float | int):
                    data.rifd.setdefault(name, []).append(float(entry[rifd_key]))
        data.samples.append(_sample_record(line, table, choices[i], i in final, per_sample.get(i, {}),
                                           ifd_key, rifd_key))


def _sample_record(line: VariantsLine, table: dict[str, Any], choice: Any, selected: bool,
                   lengths: dict[str, dict[str, int]], ifd_key: str, rifd_key: str) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for name, entry in line.variants.items():
        raw = entry.model_dump()
        scores = table.get(name) or {}
        variants[name] = {"status": entry.status, "gate": raw.get("gate"), "reason": entry.reason,
                          "instruction": entry.instruction, "input": entry.input, "output": entry.output,
                          "ifd": scores.get(ifd_key), "rifd": scores.get(rifd_key),
                          "len": lengths.get(name)}
    record: dict[str, Any] = {"id": line.id, "row": line.row, "status": line.status or "",
                              "variants": variants}
    if choice is not None:
        record["choice"] = {"variant": choice.variant, "outcome": choice.outcome or "undecided",
                            "kept": choice.kept, "selected": selected,
                            "reason": choice.reason or ("below_top_k" if not selected else None)}
    return record


def _selection_summary(choices: list[Any], selected: int, cfg: dict[str, Any],
                       folder: Folder) -> dict[str, Any]:
    outcomes = Counter(c.outcome or "undecided" for c in choices)
    dropped = Counter(c.reason for c in choices if not c.kept)
    passed = sum(1 for c in choices if c.kept)
    if passed > selected:
        dropped["below_top_k"] = passed - selected
    return {"samples": len(choices), "outcomes": dict(outcomes), "passed_rule": passed,
            "selected": selected, "dropped": dict(sorted(dropped.items())), "top_k": cfg.get("top_k"),
            "below_one_filter": cfg.get("below_one_filter", True), "metric": cfg.get("metric", "ppl_ratio"),
            "ran": bool(cfg), "folder": folder.name}


def _cherry(data: ReportData, folder: Folder, counter: Lengths) -> None:
    """A Cherry (IFD-only) score folder: one candidate per row, no texts kept beside the scores."""
    cfg = folder.section("select")
    metric = cfg.get("metric", "ppl_ratio")
    below_one = bool(cfg.get("below_one_filter", True))
    ifd_key, rifd_key = METRICS.get(metric, METRICS["ppl_ratio"])
    choices = []
    for _, line in read_jsonl(folder.path / SCORES_FILE, ScoresLine.model_validate):
        entry = line.variants.get("ori")
        raw = entry.model_dump(exclude_unset=True) if entry is not None else None
        choices.append(cherry_choice(raw, below_one, metric))
        if raw and isinstance(raw.get(ifd_key), float | int):
            data.ifd.setdefault("ori", []).append(float(raw[ifd_key]))
        if raw and isinstance(raw.get(rifd_key), float | int):
            data.rifd.setdefault("ori", []).append(float(raw[rifd_key]))
    spec = parse_top_k(cfg["top_k"]) if cfg.get("top_k") else None
    kept = kept_rows(choices, spec, cherry=True, below_one=below_one)
    data.selection = _selection_summary(choices, len(kept), cfg, folder)


def _judge(data: ReportData, folder: Folder) -> None:
    section = folder.section("judge")
    report_path = folder.path / "judge.json"
    tallies: dict[str, Any] = {}
    if report_path.is_file():
        try:
            tallies = json.loads(report_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"not JSON ({exc})", path=str(report_path)) from None
    data.judge = {"tallies": tallies, "section": section, "folder": folder.name}
    answers = [_answers(tallies.get(side) or {}) for side in ("a", "b")]
    for _, line in read_jsonl(folder.path / JUDGMENTS_FILE, JudgmentLine.model_validate):
        key = (line.dataset, line.id)
        data.judgments.append({
            "dataset": line.dataset, "id": line.id, "category": line.category or "",
            "instruction": line.instruction,
            "outcome": line.outcome or ("skipped" if line.skipped else "error"),
            "error": line.error or line.skipped,
            "answer_a": answers[0].get(key), "answer_b": answers[1].get(key),
            "orders": [{"a_first": o.a_first, "scores": o.scores, "review": o.review, "error": o.error}
                       for o in line.orders]})


def _answers(side: dict[str, Any]) -> dict[tuple[str, str], str]:
    """An answers file's outputs by (test set, id); empty when it is gone (the page says so)."""
    path = Path(side["path"]) if side.get("path") else None
    if path is None or not path.is_file():
        return {}
    out: dict[tuple[str, str], str] = {}
    try:
        for _, row in read_jsonl(path):
            if isinstance(row, dict):
                out[(str(row.get("dataset", "")), str(row.get("id", "")))] = str(row.get("output") or "")
    except DataError:
        return {}
    return out


def median(values: Iterable[float]) -> float | None:
    items = list(values)
    return statistics.median(items) if items else None
