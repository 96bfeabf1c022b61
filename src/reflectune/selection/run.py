"""``select()``: scores in, the student-selected dataset out (Selective Reflection-Tuning, V2).

The rule itself is pure and lives in ``selection``; this module does the I/O around it. It never
scores: scores missing or stale are an error that names the ``reflectune score`` command to run
(chaining stages is the pipeline's job, ``reflectune run``). It makes two streaming passes: one to
apply the rule and learn the top-k cut-off, one to write the kept rows with ``DatasetWriter`` in the
input's own shape, plus the ``ifd``, ``rifd``, ``variant`` and ``outcome`` columns. Rows keep their
input order.

Two sources:

* a recycle run folder: the four candidates per sample, the §5.2 rule, optional top-k;
* a plain dataset (Cherry LLM mode): ori only, keep IFD < 1, optionally the top-k by IFD.

Scores are checked against what they were computed for, twice. Run.json's ``score.inputs`` holds the
hash of the variants (or dataset) bytes scored; when it differs from the file now, the scores are
stale and ``select`` refuses them (``score`` again recomputes only the changed candidates). Then
every written row's variant entry must carry the ``text_key`` of the very texts written, else a
``DataError`` names the row.
Before any of it, ``variants.jsonl`` must hold as many lines as recycle says it wrote, and
``scores.jsonl`` must cover the same samples in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import SelectConfig, merged
from reflectune.contracts import SCORES_FILE, VARIANTS_FILE, ScoresLine, VariantsLine
from reflectune.errors import ConfigError, DataError
from reflectune.io.jsonl import read_jsonl
from reflectune.keys import text_key
from reflectune.selection.rules import (
    METRICS,
    Choice,
    EmptySelection,
    TopK,
    cherry_choice,
    choose_variant,
    count_outcomes,
    kept_rows,
    parse_top_k,
    why_empty,
)
from reflectune.store.inputs import file_sha256, input_hashes, is_run_folder
from reflectune.store.rundir import RunFolder, default_run_dir, read_manifest
from reflectune.types import Sample

_SUFFIX = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "hf_disk": ""}


@dataclass
class SelectSummary:
    """What ``select()`` did; ``manifest`` is the ``select`` section written to run.json."""

    run_dir: Path
    output: Path
    mode: str
    samples: int
    kept: int
    outcomes: dict[str, int]
    dropped: dict[str, int]
    top_k: str | None
    manifest: dict[str, Any] = field(default_factory=dict)
    #: why nothing was kept, when ``allow_empty`` let an empty selection through (else None)
    empty_reason: str | None = None


def _stale(folder: Path, source: Path) -> str | None:
    """Why the folder's scores cannot be used (None: run.json says they are done and were computed
    for the inputs as they are now)."""
    section = read_manifest(folder).get("score") or {}
    if section.get("status") != "done" or not (folder / SCORES_FILE).is_file():
        return "not scored"
    if Path(section.get("source", "")).resolve() != source.resolve():
        return "scored from another source"
    recorded = section.get("inputs")
    if recorded is not None and recorded != input_hashes(source):  # none recorded: an older score
        return "inputs changed since scoring"
    return None


def _ids(path: Path, model: Callable[[Any], Any]) -> list[str]:
    return [line.id for _, line in read_jsonl(path, model)]


def _check_variants(folder: Path) -> list[str]:
    """The ids of variants.jsonl, after checking it holds every row a finished recycle wrote."""
    ids = _ids(folder / VARIANTS_FILE, VariantsLine.model_validate)
    recycle = read_manifest(folder).get("recycle") or {}
    if recycle.get("status") == "complete" and isinstance(recycle.get("done"), int):
        expected = recycle["done"] - int(recycle.get("passthrough") or 0)
        if len(ids) != expected:
            raise DataError(f"variants.jsonl has {len(ids)} samples but recycle wrote {expected} "
                            "(truncated or edited?): rerun recycle", path=str(folder / VARIANTS_FILE))
    return ids


def select(source: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
           config: SelectConfig | None = None, *, top_k: str | int | TopK | None = None,
           below_one_filter: bool | None = None, metric: str | None = None,
           run_dir: str | os.PathLike[str] | None = None, fields: Mapping[str, str] | None = None,
           fmt: str | None = None, output_format: str | None = None,
           allow_empty: bool | None = None) -> SelectSummary:
    """Keep the candidates that suit the student (METHOD.md §5.2), optionally only the top-k.

    Args:
        source: a recycle run folder, or a dataset file (Cherry mode: ori only, top-k by IFD).
        output: the selected dataset; its extension picks the format (default
            ``<run>/selected.<input format>``).
        config: a ``SelectConfig``; the keyword arguments below that are given override its fields.
        top_k: ``"5%"``, ``"1000"`` or a ``TopK``: rank kept rows by IFD, higher first; a percentage
            of the rows that passed the rule (Cherry mode: of all scored rows) rounds down.
        below_one_filter: require IFD < 1 and r-IFD < 1 for kept pairs (reference behaviour).
        metric: ``ppl_ratio`` (default, exp(L_cond - L_direct)) or ``loss_ratio`` (L_cond / L_direct).
        run_dir: Cherry mode's run folder, where ``score`` wrote (default ``runs/<stem>-embedded-score``).
        fields, fmt: how to read a dataset source.
        output_format: force the output format (json, jsonl, parquet, csv, hf_disk).
        allow_empty: write an empty selection (``summary.empty_reason`` says why) instead of raising.

    Raises:
        DataError: the run has no finished scores, or they were computed for other inputs; the
            message names the ``reflectune score`` command that makes them.
        EmptySelection: no row was kept (and not ``allow_empty``): the message says which step removed
            the last rows, from the counts, and what would keep some. Nothing is written then: neither
            an output nor run.json's ``select`` section (a previous selection's stay as they were).

    Returns:
        A ``SelectSummary``; run.json gets a ``select`` section with the same counts.

    Example::

        summary = select("runs/alpaca-embedded", "srecycled.json", top_k="10%")
        summary.outcomes  # {'both': ..., 'instruction': ..., 'response': ..., 'none': ...}
    """
    config = merged(SelectConfig, config, {
        "top_k": str(top_k) if isinstance(top_k, TopK) else top_k, "below_one_filter": below_one_filter,
        "metric": metric, "fields": fields, "fmt": fmt, "output_format": output_format,
        "allow_empty": allow_empty})
    below_one_filter, metric = config.below_one_filter, config.metric
    fields, fmt, output_format = config.fields, config.fmt, config.output_format
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")
    spec = parse_top_k(config.top_k) if config.top_k is not None else None
    src = Path(source)
    mode = "variants" if is_run_folder(src) else "cherry"
    if mode == "variants":
        if run_dir is not None and Path(run_dir).resolve() != src.resolve():
            raise ConfigError(f"{src} is a run folder: drop --run-dir")
        folder = src
    else:
        if not src.exists():
            raise DataError("no such file or run folder", path=str(src))
        folder = Path(run_dir) if run_dir is not None else default_run_dir(src, "embedded", "score")
    variant_ids = _check_variants(folder) if mode == "variants" else None
    reason = _stale(folder, src)
    if reason is not None:
        again = f" --run-dir {folder}" if mode == "cherry" else ""
        raise DataError(f"{reason}: score it first (reflectune score {src}{again}), then select",
                        path=str(folder))
    score_section = read_manifest(folder)["score"]

    if mode == "variants":
        recycle_input = (read_manifest(folder).get("recycle") or {}).get("input") or {}
        if not recycle_input.get("path"):
            raise DataError("run.json has no recycle input; select needs the original dataset to write "
                            "rows in its shape", path=str(folder / "run.json"))
        in_path = Path(recycle_input["path"])
        in_fmt, in_fields = recycle_input.get("format"), recycle_input.get("fields") or None
    else:
        in_path, in_fmt, in_fields = src, (score_section.get("input") or {}).get("format", fmt), fields

    with RunFolder(folder, check_calls=False) as run:  # no oracle call: its store may be new
        # 1. Apply the rule to every sample (no texts held).
        choices: list[Choice] = []
        ids: list[str] = []
        keys: list[str | None] = []  # the text_key of each sample's landed variant
        for _, line in read_jsonl(run.file(SCORES_FILE), ScoresLine.model_validate):
            ids.append(line.id)
            variants = {name: entry.model_dump(exclude_unset=True) for name, entry in line.variants.items()}
            if mode == "variants":
                choices.append(choose_variant(variants, below_one_filter=below_one_filter, metric=metric))
            else:
                choices.append(cherry_choice(variants.get("ori"), below_one_filter, metric))
            landed = variants.get(choices[-1].variant or "") or {}
            keys.append(landed.get("text_key"))
        if variant_ids is not None and variant_ids != ids:
            raise DataError(_mismatch("variants.jsonl", variant_ids, ids), path=str(run.file(SCORES_FILE)))
        summary_counts = count_outcomes(choices)
        # 2. The top-k cut: rank kept rows by IFD.
        keep = kept_rows(choices, spec, cherry=mode == "cherry", below_one=below_one_filter)
        keep_set = set(keep)
        empty_reason = None
        if not keep:  # say which step removed the last rows rather than write an empty file as a success
            empty_reason, remedy = why_empty(summary_counts, spec, cherry=mode == "cherry",
                                             below_one=below_one_filter)
            if not config.allow_empty:
                raise EmptySelection(empty_reason, remedy, where=str(src))
        # 3. Write the kept rows in input order, in the input's shape.
        out_fmt = output_format or (None if output is not None else in_fmt)
        default_name = "selected" + _SUFFIX.get(output_format or in_fmt or "", ".jsonl")
        out_path = Path(output) if output is not None else run.file(default_name)
        written = _write(out_path, out_fmt, mode, folder, in_path, in_fmt, in_fields, choices, ids,
                         keep_set, keys)
        manifest = {"mode": mode, "metric": metric, "metric_keys": list(METRICS[metric]),
                    "below_one_filter": below_one_filter, "top_k": str(spec) if spec else None,
                    "samples": summary_counts["samples"], "outcomes": summary_counts["outcomes"],
                    "passed_rule": summary_counts["kept"], "dropped": summary_counts["dropped"],
                    "kept": written, "output": str(out_path), "scores": score_section.get("namespace"),
                    "student": score_section.get("student"), "template": score_section.get("template"),
                    "inputs": {"scores": file_sha256(run.file(SCORES_FILE)), **input_hashes(src)}}
        if spec is not None:
            manifest["dropped"] = {**manifest["dropped"],
                                   "below_top_k": summary_counts["kept"] - len(keep_set)}
        if empty_reason is not None:
            manifest["empty_reason"] = empty_reason
        run.update_manifest("select", manifest)
    return SelectSummary(run_dir=folder, output=out_path, mode=mode, samples=summary_counts["samples"],
                         kept=written, outcomes=summary_counts["outcomes"], dropped=manifest["dropped"],
                         top_k=manifest["top_k"], manifest=manifest, empty_reason=empty_reason)


def _mismatch(name: str, expected: list[str], got: list[str]) -> str:
    """One line saying how scores.jsonl's samples differ from the file it should cover."""
    first = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
                 min(len(expected), len(got)))
    where = (f"line {first + 1}: '{got[first]}' where {name} has '{expected[first]}'"
             if first < min(len(expected), len(got)) else f"from line {first + 1}")
    return (f"scores.jsonl covers {len(got)} samples, {name} {len(expected)}; they differ {where}: "
            "rerun score")


def _write(out_path: Path, out_fmt: str | None, mode: str, folder: Path, in_path: Path, in_fmt: str | None,
           in_fields: Mapping[str, str] | None, choices: list[Choice], ids: list[str],
           keep: set[int], keys: list[str | None]) -> int:
    from reflectune.io import DatasetWriter, read_samples

    if not in_path.exists():
        raise DataError("the original dataset is gone; select writes rows in its shape and needs it",
                        path=str(in_path))
    if mode == "variants":  # rows recycle rejected are in its rejects.jsonl already: pass over them
        samples = read_samples(in_path, fields=in_fields, fmt=in_fmt, on_bad_record="skip",
                               rejects=_Discard())  # type: ignore[arg-type]
    else:
        samples = read_samples(in_path, fields=in_fields, fmt=in_fmt)
    with DatasetWriter(out_path, out_fmt, fields=in_fields) as writer:
        if mode == "cherry":
            seen = 0
            for index, sample in enumerate(samples):
                if index >= len(ids) or ids[index] != sample.id:
                    raise DataError("scores.jsonl does not match the dataset (changed since scoring?): "
                                    "rerun score", path=str(folder / SCORES_FILE))
                seen = index + 1
                if index in keep:
                    _check_key(folder, ids[index], choices[index], keys[index], sample.instruction,
                               sample.input, sample.output)
                    _emit(writer, sample, sample.instruction, sample.input, sample.output, choices[index])
            if seen != len(ids):
                raise DataError(f"scores.jsonl covers {len(ids)} samples, the dataset {seen} (changed "
                                "since scoring?): rerun score", path=str(folder / SCORES_FILE))
            return writer.count
        lines = (line for _, line in read_jsonl(folder / VARIANTS_FILE, VariantsLine.model_validate))
        for index, (sample, record) in enumerate(_align(samples, lines)):
            if index >= len(ids) or ids[index] != sample.id:
                raise DataError("scores.jsonl does not match variants.jsonl (recycled again since "
                                "scoring?): rerun score", path=str(folder / SCORES_FILE))
            if index in keep:
                choice = choices[index]
                assert choice.variant is not None  # a kept row names its variant
                v = record.variants[choice.variant]
                _check_key(folder, record.id, choice, keys[index], v.instruction or "", v.input or "",
                           v.output or "")
                _emit(writer, sample, v.instruction or "", v.input or "", v.output or "", choice)
        return writer.count


def _check_key(folder: Path, sample_id: str, choice: Choice, key: str | None, instruction: str, input: str,
               output: str) -> None:
    """Refuse to write a row whose score was computed for other text (scores without text keys,
    written before they existed, are taken as they are)."""
    if key is not None and key != text_key(instruction, input, output):
        raise DataError(f"sample '{sample_id}': the score of its {choice.variant} variant was computed "
                        "for other text (edited since scoring?): rerun score", path=str(folder / SCORES_FILE))


class _Discard:
    """A rejects sink that keeps nothing (``read_samples`` wants one with ``skip``)."""

    count = 0

    def add(self, *args: Any) -> None:
        pass


def _emit(writer: Any, sample: Sample, instruction: str, input: str, output: str, choice: Choice) -> None:
    writer.write(sample, instruction, input, output,
                 {"ifd": choice.ifd, "rifd": choice.rifd, "variant": choice.variant,
                  "outcome": choice.outcome})


def _align(samples: Iterator[Sample], variants: Iterator[VariantsLine]
           ) -> Iterator[tuple[Sample, VariantsLine]]:
    """Pair variants lines with the input rows they came from (rows recycle skipped are passed over)."""
    for record in variants:
        for sample in samples:
            if sample.id == record.id:
                yield sample, record
                break
        else:
            raise DataError(f"sample '{record.id}' of variants.jsonl is not in the original "
                            "dataset (changed since recycle?)")
