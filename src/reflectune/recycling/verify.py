"""Judge-verified acceptance: a reflected answer is kept only if a judge prefers it.

The gates reject what is plainly not a rewrite; only a judge can say a rewrite is *better*. After
the gates, each reflected answer still accepted meets the answer it rewrote before the judge, in
both orders, with the judge's own prompts, parsing and both-order rule (``reflectune judge``,
METHOD.md §7.1): A against the original answer on the original instruction; QA's answer against
Q's answer on Q's new instruction (Q has nothing to be compared with: its instruction is new).
A variant the judge does not prefer is rejected with gate ``verify`` and the verdict; QA rejected
leaves Q, which the judge has just preferred to nothing worse.

Judge calls go through their own engine on the same store, so they are cached, resumable and priced
like the oracle's, and a rerun asks nothing twice. A review that cannot be had (a failed call, an
unreadable review) is not a verdict: the variant is rejected as "not verified", and a failed call
makes the run exit non-zero with the command that retries it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from reflectune.config import VerifyConfig
from reflectune.engine.runner import Engine
from reflectune.judging.run import judge_pair
from reflectune.recycling.rules import Variant
from reflectune.types import Sample

GATE = "verify"


def _question(sample: Sample) -> str:
    return f"{sample.instruction}\n\n{sample.input}" if sample.input.strip() else sample.instruction


class Verifier:
    """Asks ``engine``'s judge about each accepted reflected answer; counts the verdicts."""

    def __init__(self, engine: Engine, config: VerifyConfig) -> None:
        self.engine = engine
        self.config = config
        #: win | tie | lose | error -> count
        self.verdicts: Counter[str] = Counter()

    async def _one(self, sample: Sample, name: str, variant: Variant, question: str, baseline: str) -> None:
        item = await judge_pair(self.engine, question, variant.output or "", baseline,
                                item_id=f"{sample.id}/{name}", mode=self.config.mode,
                                retry_unparsed=self.config.retry_unparsed, max_tokens=self.config.max_tokens)
        outcome = item.outcome
        scores = item.scores_ab()
        variant.verdict = {"outcome": outcome, "scores": [list(s) for s in scores],
                           "error": item.error}
        self.verdicts[outcome or "error"] += 1
        accepted = ("win", "tie") if self.config.accept == "win_or_tie" else ("win",)
        if outcome in accepted:
            return
        shown = ", ".join(f"{a:g} vs {b:g}" for a, b in scores)
        reason = (f"not verified: {item.error}" if outcome is None else
                  f"the judge prefers the answer it rewrote ({outcome}; scores {shown})" if outcome == "lose"
                  else f"the judge finds it no better ({outcome}; scores {shown})")
        variant.reject(GATE, reason)

    async def verify(self, sample: Sample, variants: dict[str, Variant]) -> None:
        """Judge A and QA, where the gates kept them, in place."""
        jobs: list[Any] = []
        a, q, qa = variants["A"], variants["Q"], variants["QA"]
        if a.ok and a.output:
            jobs.append(self._one(sample, "A", a, _question(sample), sample.output))
        if qa.ok and qa.output and q.output and q.instruction:
            jobs.append(self._one(sample, "QA", qa, q.instruction, q.output))
        if jobs:
            await asyncio.gather(*jobs)
