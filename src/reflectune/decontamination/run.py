"""``decontaminate()``: a dataset in, the rows that are not test prompts out, the rest in a rejects file.

The rule is ``rules.NgramIndex``; this module reads the test prompts (the packaged test sets by name,
any prompt file by path), streams the dataset through ``read_samples``, writes kept rows with
``DatasetWriter`` in the input's own shape and dropped ones as JSON lines naming the test item they
match, and keeps a ``decontaminate`` section in the run folder's run.json (counts per test set).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.config import DecontaminateConfig, merged
from reflectune.decontamination.rules import NgramIndex, TestPrompt
from reflectune.errors import ConfigError
from reflectune.io import DatasetWriter, detect_format, read_samples, write_jsonl_atomic
from reflectune.io.testsets import TESTSETS, load_prompts_file, load_testset
from reflectune.store.inputs import input_hashes
from reflectune.store.rundir import RunFolder, default_run_dir

_SUFFIX = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "hf_disk": ""}
REJECTS_FILE = "contaminated.jsonl"


@dataclass
class DecontaminateSummary:
    """What ``decontaminate()`` did; ``manifest`` is the ``decontaminate`` section of run.json."""

    run_dir: Path
    output: Path
    rejects: Path
    samples: int
    kept: int
    dropped: int
    #: dropped rows per test set (the set of the prompt each matched best)
    by_testset: dict[str, int]
    manifest: dict[str, Any] = field(default_factory=dict)


def against_prompts(against: str | Sequence[str]) -> tuple[list[str], list[TestPrompt]]:
    """The sources named (``all``, test-set names, prompt files) and their prompts.

    Raises:
        ConfigError: a name that is neither a test set nor an existing file.
    """
    names = against.split(",") if isinstance(against, str) else list(against)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError("--against names nothing; use 'all', test-set names or prompt files")
    sources: list[str] = []
    for name in names:
        if name.lower() == "all":
            sources += [s for s in TESTSETS if s not in sources]
        elif name.lower() in TESTSETS:
            sources.append(name.lower())
        elif Path(name).is_file():
            sources.append(str(Path(name)))
        else:
            raise ConfigError(f"--against {name}: not a test set ({', '.join(TESTSETS)}, all) nor a file")
    prompts: list[TestPrompt] = []
    for source in dict.fromkeys(sources):
        items = load_testset(source) if source in TESTSETS else load_prompts_file(source)
        prompts += [TestPrompt(item.dataset, item.id, item.instruction) for item in items]
    return list(dict.fromkeys(sources)), prompts


def decontaminate(data: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                  config: DecontaminateConfig | None = None, *, against: str | Sequence[str] | None = None,
                  rejects: str | os.PathLike[str] | None = None, ngram: int | None = None,
                  min_shared: int | None = None, short_coverage: float | None = None,
                  run_dir: str | os.PathLike[str] | None = None, fields: Mapping[str, str] | None = None,
                  fmt: str | None = None, output_format: str | None = None) -> DecontaminateSummary:
    """Drop the rows of ``data`` that are test prompts (word n-gram overlap, lm-evaluation-harness's).

    Args:
        data: any dataset ``read_samples`` reads.
        output: the kept rows; its extension picks the format (default
            ``<run>/decontaminated.<input format>``).
        config: a ``DecontaminateConfig``; the keyword arguments given override its fields.
        against: ``all`` (the five packaged test sets), their names, prompt files (an
            ``instruction`` field per row, e.g. AlpacaEval's 805), comma-separated or a list.
        rejects: the dropped rows, one JSON line each with the matching test item (default
            ``<run>/contaminated.jsonl``).
        ngram, min_shared, short_coverage: the rule (see ``rules``).
        run_dir: where run.json goes (default ``runs/<stem>-decontaminate``).
        fields, fmt, output_format: how to read ``data`` and force the output format.

    Raises:
        ConfigError: an unknown test set, a missing prompt file, a bad setting.
        DataError: the dataset or a prompt file cannot be read (file and row named).
    """
    config = merged(DecontaminateConfig, config, {
        "against": against, "ngram": ngram, "min_shared": min_shared, "short_coverage": short_coverage,
        "fields": fields, "fmt": fmt, "output_format": output_format})
    src = Path(data)
    sources, prompts = against_prompts(config.against)
    index = NgramIndex.build(prompts, config.ngram, min_shared=config.min_shared,
                             short_coverage=config.short_coverage)
    in_fmt = config.fmt or detect_format(src)
    folder = Path(run_dir) if run_dir is not None else default_run_dir(src, "", "decontaminate")
    with RunFolder(folder, check_calls=False) as run:
        out_fmt = config.output_format or (None if output is not None else in_fmt)
        out_path = (Path(output) if output is not None
                    else run.file("decontaminated" + _SUFFIX.get(config.output_format or in_fmt, ".jsonl")))
        rejects_path = Path(rejects) if rejects is not None else run.file(REJECTS_FILE)
        dropped: list[dict[str, Any]] = []
        by_testset: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        samples = 0
        with DatasetWriter(out_path, out_fmt, fields=config.fields, source=src) as writer:
            for sample in read_samples(src, fields=config.fields, fmt=config.fmt):
                samples += 1
                found = index.match(sample.instruction, sample.input, sample.output)
                if found is None:
                    writer.write(sample, sample.instruction, sample.input, sample.output)
                    continue
                by_testset[found.prompt.dataset] += 1
                by_reason[found.reason] += 1
                dropped.append({"row": sample.row, "id": sample.id,
                                "sample": {"instruction": sample.instruction, "input": sample.input,
                                           "output": sample.output}, **found.to_json()})
            kept = writer.count
        write_jsonl_atomic(rejects_path, dropped)
        manifest: dict[str, Any] = {
            "source": str(src), "against": sources, "test_prompts": len(index.prompts),
            "short_prompts": sum(len(v) for v in index.short.values()), "settings": config.model_dump(
                mode="json", exclude={"against", "fields", "fmt", "output_format"}),
            "samples": samples, "kept": kept, "dropped": len(dropped),
            "by_testset": dict(sorted(by_testset.items())), "by_reason": dict(sorted(by_reason.items())),
            "output": str(out_path), "rejects": str(rejects_path),
            "inputs": input_hashes(src) if src.is_file() else {}}
        run.update_manifest("decontaminate", manifest)
    return DecontaminateSummary(run_dir=folder, output=out_path, rejects=rejects_path, samples=samples,
                                kept=kept, dropped=len(dropped), by_testset=manifest["by_testset"],
                                manifest=manifest)
