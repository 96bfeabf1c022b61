"""The V1 pipeline: reflect every sample into ori, Q, A and QA (METHOD.md §4).

Each sample is one coroutine: the instruction chain (merge input -> Q -> QA) and the response
reflection A run side by side, and QA starts the moment its Q has parsed. Thousands of samples are
in flight at once, bounded by a window over the input, so memory does not grow with the dataset;
results are delivered in input order through a small reorder buffer. Every call goes through the
engine, so the store makes the whole run resumable and outputs byte-identical on rerun.

Format forcing is asked for only from an oracle whose capabilities say it can prefill.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from reflectune.config import RecycleConfig
from reflectune.engine.runner import Engine
from reflectune.prompts.parse import parse_reflection
from reflectune.prompts.render import (
    INSTRUCTION,
    MERGE,
    RESPONSE,
    RESPONSE_INPUT,
    ReflectionKind,
    Template,
    load_template,
    render,
    with_reminder,
)
from reflectune.recycling.gates import apply_gates
from reflectune.recycling.rules import (
    MAX_TOKENS_CAP,
    MIN_COMPLETION_TOKENS,
    SampleResult,
    Variant,
    choose,
    skipped,
)
from reflectune.recycling.verify import Verifier
from reflectune.types import ChatRequest, Sample


class Reflector:
    """Turns one sample into its four variants through ``engine``."""

    def __init__(self, engine: Engine, config: RecycleConfig, verifier: Verifier | None = None) -> None:
        self.engine = engine
        self.verifier = verifier
        self.config = config
        self.sampling = config.sampling
        self.prompts_dir = config.prompts_dir
        self.prefill = engine.oracle.capabilities.prefill

    @staticmethod
    @functools.cache
    def _task(template: Template) -> str:
        """The prompt's own wording: the template rendered without the sample's texts."""
        return "\n".join(m.content for m in render(template, instruction="", input="", answer=""))

    def _request(self, messages: tuple, kind: ReflectionKind) -> ChatRequest:
        oracle = self.engine.oracle
        max_tokens = self.sampling.max_tokens
        if max_tokens is None:
            prompt_tokens = sum(oracle.count_tokens(m.content) for m in messages) + 8 * len(messages)
            max_tokens = max(MIN_COMPLETION_TOKENS, min(MAX_TOKENS_CAP, oracle.context - prompt_tokens))
        return ChatRequest(messages, max_tokens=max_tokens, temperature=self.sampling.temperature,
                           top_p=self.sampling.top_p, seed=self.sampling.seed, stop=(),
                           sections=kind.sections if self.prefill else (),
                           critique_tokens=self.sampling.critique_tokens if self.prefill else 0)

    async def _reflect(self, kind: ReflectionKind, stage: str, sample_id: str,
                       **values: str) -> tuple[dict[str, str] | None, Variant]:
        """One oracle call, parsed strictly; one retry with a format reminder on a parse failure."""
        template = load_template(kind.template, self.prompts_dir)
        messages = render(template, **values)
        version = template.id
        calls: list[str] = []
        for attempt in range(2 if self.config.parse_retry else 1):
            request = self._request(messages, kind)
            record = await self.engine.call(stage, request, version=version, sample_id=sample_id)
            calls.append(record.key)
            if not record.ok:
                return None, Variant(None, None, None, "call_failed", record.error, calls)
            parsed = parse_reflection(record.content, kind.sections, kind.fields,
                                      finish_reason=record.finish_reason, placeholders=kind.placeholders,
                                      reasoning=record.reasoning)
            if parsed.ok:
                return parsed.values, Variant(None, None, None, "ok", None, calls,
                                              critique=parsed.critique, task=self._task(template))
            if attempt == 0:
                messages, reminder_id = with_reminder(messages, kind, parsed.reason or "", self.prompts_dir)
                version = f"{version}+{reminder_id}"
        return None, Variant(None, None, None, "parse_failed", parsed.reason, calls)

    async def _merged_instruction(self, sample: Sample) -> tuple[str | None, Variant | None]:
        if not sample.input.strip():
            return sample.instruction, None
        if self.config.input_merge == "rule":
            return f"{sample.instruction}\n\n{sample.input}", None
        values, status = await self._reflect(MERGE, "merge", sample.id,
                                             instruction=sample.instruction, input=sample.input)
        if values is None:
            status.reason = f"input merge failed: {status.reason}"
            return None, status
        return values["instruction"], None

    async def _instruction_chain(self, sample: Sample) -> tuple[Variant, Variant]:
        phases = self.config.phases
        instruction, failure = await self._merged_instruction(sample)
        if instruction is None:
            assert failure is not None
            return failure, skipped("Q failed")
        values, status = await self._reflect(INSTRUCTION, "instruction", sample.id,
                                             instruction=instruction, answer=sample.output)
        if values is None:
            return status, skipped("Q failed")
        q = Variant(values["instruction"], "", values["output"], "ok", None, status.calls,
                    critique=status.critique, task=status.task)
        if "response" not in phases:
            return q, skipped("response phase not requested")
        values, status = await self._reflect(RESPONSE, "response", sample.id,
                                             instruction=values["instruction"], answer=values["output"])
        if values is None:
            return q, status
        return q, Variant(q.instruction, "", values["output"], "ok", None, status.calls,
                          critique=status.critique, task=status.task)

    async def _response(self, sample: Sample) -> Variant:
        kind = RESPONSE_INPUT if sample.input.strip() else RESPONSE
        extra = {"input": sample.input} if sample.input.strip() else {}
        values, status = await self._reflect(kind, "response", sample.id, instruction=sample.instruction,
                                             answer=sample.output, **extra)
        if values is None:
            return status
        return Variant(sample.instruction, sample.input, values["output"], "ok", None, status.calls,
                       critique=status.critique, task=status.task)

    async def reflect(self, sample: Sample) -> SampleResult:
        phases = self.config.phases
        ori = Variant(sample.instruction, sample.input, sample.output, "ok")
        jobs: list[Any] = []
        if "instruction" in phases:
            jobs.append(self._instruction_chain(sample))
        if "response" in phases:
            jobs.append(self._response(sample))
        # Both chains run to the end even if one raises: their calls are paid for and get stored.
        results = await asyncio.gather(*jobs, return_exceptions=True)
        done: list[Any] = []
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise outcome
            done.append(outcome)
        if "instruction" in phases:
            q, qa = done[0]
        else:
            q, qa = skipped("instruction phase not requested"), skipped("instruction phase not requested")
        a = done[-1] if "response" in phases else skipped("response phase not requested")
        variants = {"ori": ori, "Q": q, "A": a, "QA": qa}
        apply_gates(sample, variants, self.config.gates)
        if self.verifier is not None:
            await self.verifier.verify(sample, variants)
        return SampleResult(sample, variants, choose(variants))


@dataclass
class RecycleProgress:
    """What the progress display needs; updated in place as rows finish."""

    total: int | None = None
    done: int = 0
    passthrough: int = 0
    chosen: Counter[str] = field(default_factory=Counter)
    variant_status: Counter[str] = field(default_factory=Counter)
    #: rejected variants by quality gate
    gates: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)


async def run_samples(reflector: Reflector, samples: Iterator[Sample], *,
                      on_result: Callable[[SampleResult], None], window: int,
                      progress: RecycleProgress) -> None:
    """Reflect ``samples`` with at most ``window`` in flight; deliver results in input order."""
    pending: deque[tuple[Sample, asyncio.Task[SampleResult] | None]] = deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                sample = next(samples, None)
                if sample is None:
                    exhausted = True
                    break
                task = None if sample.passthrough else asyncio.ensure_future(reflector.reflect(sample))
                pending.append((sample, task))
            if not pending:
                return
            sample, task = pending.popleft()
            if task is None:
                progress.passthrough += 1
                progress.done += 1
                on_result(SampleResult(sample, {}, "passthrough"))
                continue
            result = await task
            progress.done += 1
            progress.chosen[result.chosen] += 1
            for name, variant in result.variants.items():
                progress.variant_status[f"{name}:{variant.status}"] += 1
                if variant.gate:
                    progress.gates[variant.gate] += 1
            on_result(result)
    except BaseException:
        # Let calls already on the wire finish and be stored: that work is paid for.
        # Gathering also retrieves exceptions of tasks that already failed, so none is printed.
        tasks = [t for _, t in pending if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        raise
