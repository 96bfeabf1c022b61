"""The files stages hand each other, typed: their names and the shape of every line.

A run folder is the interface between stages: recycle writes ``variants.jsonl``, score reads it and
writes ``scores.jsonl``, select reads both; judge writes ``judgments.jsonl``; each stage keeps a
section of ``run.json``. Declaring those records once, here, means a reader never guesses a key and a
renamed field breaks a test, not a user's run. Readers validate every line through these models
(``reflectune.io.read_jsonl``), so a damaged or foreign file fails with its path and line number.

The models allow extra keys: files written by a newer version still read, and writers stay the
code that knows each stage's fields. L1: pydantic only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

VARIANTS_FILE = "variants.jsonl"
SCORES_FILE = "scores.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
MANIFEST_FILE = "run.json"
#: every run made in the folder, appended (reflectune.logs)
LOG_FILE = "log.txt"

#: The four versions of a sample (METHOD.md §4): original, instruction-, response-, both reflected.
VARIANT_NAMES: tuple[str, ...] = ("ori", "Q", "A", "QA")
#: Which version a sample keeps when some reflection failed, best first.
PREFERENCE: tuple[str, ...] = ("QA", "Q", "A", "ori")


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


class VariantEntry(_Record):
    """One version of a sample: its texts (``None`` when it was not produced) and how it went."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    #: ok | parse_failed | call_failed | skipped
    status: str = "ok"
    reason: str | None = None
    #: store keys of the oracle calls that produced it
    calls: list[str] = Field(default_factory=list)


class VariantsLine(_Record):
    """A line of ``variants.jsonl``: one sample, its four versions, and the one recycle kept."""

    id: str
    row: int | None = None
    status: str | None = None
    variants: dict[str, VariantEntry] = Field(default_factory=dict)


class ScoreEntry(_Record):
    """One candidate's statistics in ``scores.jsonl`` (METHOD.md §5.1); ``None`` where NaN."""

    status: str = "ok"
    a_direct: float | None = None
    a_condition: float | None = None
    ifd: float | None = None
    ifd_loss_ratio: float | None = None
    q_direct: float | None = None
    q_condition: float | None = None
    rifd: float | None = None
    rifd_loss_ratio: float | None = None


class ScoresLine(_Record):
    """A line of ``scores.jsonl``: one sample, the scores of each of its available versions."""

    id: str
    row: int | None = None
    variants: dict[str, ScoreEntry] = Field(default_factory=dict)


class JudgeOrder(_Record):
    """One review of a pair, in one presentation order."""

    a_first: bool
    review: str | None = None
    scores: tuple[float, float] | None = None
    verdict: str | None = None
    outcome: str | None = None
    error: str | None = None
    retried: bool = False


class JudgmentLine(_Record):
    """A line of ``judgments.jsonl``: one test item, both orders, and the combined outcome."""

    dataset: str
    id: str
    category: str | None = None
    instruction: str = ""
    outcome: str | None = None
    error: str | None = None
    skipped: str | None = None
    orders: list[JudgeOrder] = Field(default_factory=list)


class StageSection(_Record):
    """Any stage's section of ``run.json``: at least its status. ``running`` | ``complete`` |
    ``stopped`` (a clean, resumable stop) | ``interrupted``; score writes ``done`` when finished."""

    status: str | None = None


class Manifest(_Record):
    """``run.json``: one section per stage that ran in the folder, plus when and with what."""

    created_at: str | None = None
    updated_at: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """The stage's section as written (an empty dict when that stage never ran here)."""
        value = (self.model_extra or {}).get(name)
        return value if isinstance(value, dict) else {}
