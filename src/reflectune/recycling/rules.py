"""Recycling's rules: a sample's four variants, which one it keeps, and the columns that say why.

Pure data and decisions (METHOD.md §4): ``Variant`` and ``SampleResult`` are what a reflection
produces, ``choose`` keeps the best variant that succeeded (QA > Q > A > ori), and the output
columns name every failure. The calls that produce the variants are in :mod:`.reflector`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflectune.contracts import PREFERENCE, VARIANT_NAMES
from reflectune.types import Sample

VARIANTS = VARIANT_NAMES
MAX_TOKENS_CAP = 2048
MIN_COMPLETION_TOKENS = 64


@dataclass
class Variant:
    instruction: str | None
    input: str | None
    output: str | None
    status: str                       # ok | rejected | parse_failed | call_failed | skipped
    reason: str | None = None
    calls: list[str] = field(default_factory=list)
    #: the oracle's critique before the sections ("" when it wrote none)
    critique: str = ""
    #: the quality gate that rejected it (status ``rejected``)
    gate: str | None = None
    #: the prompt's own wording, for the echo gate; not written out
    task: str = field(default="", repr=False, compare=False)
    #: the judge's verdict (``--verify``): outcome, scores per order, error
    verdict: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output,
                "status": self.status, "reason": self.reason, "gate": self.gate,
                "critique": self.critique or None, "calls": self.calls,
                **({"verdict": self.verdict} if self.verdict is not None else {})}

    def reject(self, gate: str, reason: str) -> None:
        self.status, self.gate, self.reason = "rejected", gate, reason


@dataclass
class SampleResult:
    sample: Sample
    variants: dict[str, Variant]
    chosen: str

    def variants_line(self) -> dict[str, Any]:
        return {"id": self.sample.id, "row": self.sample.row, "status": self.chosen,
                "variants": {name: v.as_json() for name, v in self.variants.items()}}


def skipped(reason: str) -> Variant:
    return Variant(None, None, None, "skipped", reason)


def choose(variants: dict[str, Variant]) -> str:
    return next(name for name in PREFERENCE if variants[name].ok)


def output_columns(result: SampleResult) -> dict[str, Any]:
    if result.chosen == "passthrough":
        return {}
    failures = {name: f"{v.status}: {v.reason}" for name, v in result.variants.items()
                if name != "ori" and not v.ok and v.status != "skipped"}
    return {"reflect_status": result.chosen,
            "reflect_reason": "; ".join(f"{k} {v}" for k, v in failures.items()) or None}


def chosen_texts(result: SampleResult) -> tuple[str, str, str]:
    v = result.variants[result.chosen]
    return v.instruction or "", v.input or "", v.output or ""


def default_output_name(input_path: Path, output_format: str | None) -> str:
    suffix = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv"}
    return "recycled" + suffix.get(output_format or "", input_path.suffix or ".jsonl")
