"""How well the quality gates separate real rewrites from failed ones, on a labelled set.

A labelled record is one variant of one sample with a reader's verdict: ``label`` ``good`` (a real
rewrite, which must be kept) or ``bad`` (which must be rejected), and for a bad one ``why``, the
failure it shows (``echo``, ``unchanged``, ... or ``other: ...`` for failures no gate is meant to
see). The gates run exactly as in a recycle run (:func:`apply_gates`), so a threshold tuned here is
the threshold a run uses. The shipped set is ``tests/data/gates_labelled.jsonl``; the figures are in
docs/quality.md (``python scripts/gates_calibration.py`` prints them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reflectune.config import GATE_NAMES, GatesConfig
from reflectune.prompts.render import INSTRUCTION, RESPONSE, RESPONSE_INPUT, load_template, render
from reflectune.recycling.gates import apply_gates
from reflectune.recycling.rules import Variant, skipped
from reflectune.types import Sample


def _task(template: str) -> str:
    return "\n".join(m.content for m in render(load_template(template), instruction="", input="", answer=""))


@dataclass
class Calibration:
    """Counts over a labelled set: overall, and per gate (rejections of items labelled with it)."""

    good: int = 0
    good_kept: int = 0
    bad: int = 0
    bad_rejected: int = 0
    #: gate -> rejections it made; of items labelled with its failure; of those it rejected
    fired: Counter[str] = field(default_factory=Counter)
    labelled: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    #: ids of the items each way wrong, for reading
    lost: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def kept_share(self) -> float:
        return self.good_kept / self.good if self.good else 1.0

    @property
    def rejected_share(self) -> float:
        return self.bad_rejected / self.bad if self.bad else 1.0

    def precision(self, gate: str) -> float | None:
        return self.hits[gate] / self.fired[gate] if self.fired[gate] else None

    def recall(self, gate: str) -> float | None:
        return self.hits[gate] / self.labelled[gate] if self.labelled[gate] else None


def _variants(record: Mapping[str, Any], sample: Sample) -> dict[str, Variant]:
    ori = Variant(sample.instruction, sample.input, sample.output, "ok")
    out = {"ori": ori, "A": skipped("-"), "Q": skipped("-"), "QA": skipped("-")}
    if "A" in record:
        a = record["A"]
        template = RESPONSE_INPUT if sample.input.strip() else RESPONSE
        out["A"] = Variant(sample.instruction, sample.input, a["output"], "ok",
                           critique=a.get("critique", ""), task=_task(template.template))
    if "Q" in record:
        q = record["Q"]
        out["Q"] = Variant(q["instruction"], "", q["output"], "ok", critique=q.get("critique", ""),
                           task=_task(INSTRUCTION.template))
    return out


def calibrate(records: Iterable[Mapping[str, Any]], cfg: GatesConfig | None = None) -> Calibration:
    """Run the gates over labelled ``records`` and count what they kept and rejected."""
    cfg = cfg or GatesConfig()
    result = Calibration()
    for record in records:
        s = record["sample"]
        sample = Sample(id=record["id"], row=0, instruction=s["instruction"], input=s.get("input") or "",
                        output=s["output"])
        variants = _variants(record, sample)
        apply_gates(sample, variants, cfg)
        variant = variants[record["variant"]]
        why = str(record.get("why", "")).split(":")[0]
        if variant.gate:
            result.fired[variant.gate] += 1
        if record["label"] == "good":
            result.good += 1
            result.good_kept += variant.ok
            if not variant.ok:
                result.lost.append(f"{record['id']} ({variant.reason})")
            continue
        result.bad += 1
        result.bad_rejected += not variant.ok
        if why in GATE_NAMES:
            result.labelled[why] += 1
            result.hits[why] += variant.gate == why
        if variant.ok:
            result.missed.append(f"{record['id']} ({record.get('why')})")
    return result
