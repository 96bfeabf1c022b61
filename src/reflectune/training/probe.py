"""A dry run's measured training: how long the run's optimizer step takes on this machine.

Time is a local run's cost, and the plan already knows the steps; what it cannot know is this
machine's speed. So the probe builds the very trainer the run would build (same base, dtype,
batch, accumulation, checkpointing, LoRA or full), on the run's first rows, in a temporary folder
that is removed after, and times a few optimizer steps after a warm-up one. The estimate scales the
timed steps to the run's steps and its mean row length, as a range from the fastest to the slowest
step; rows differ in length and a shared machine's load moves, so it is rough and says so.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reflectune.training.plan import TrainPlan
from reflectune.training.rules import make_config
from reflectune.types import Sample

__all__ = ["StepProbe", "probe_step"]


@dataclass(frozen=True)
class StepProbe:
    """Timed optimizer steps of the run's own shape, on its first rows."""

    #: seconds of each timed step (the warm-up step is not among them)
    seconds: tuple[float, ...]
    #: mean tokens of the rows the probe trained on
    mean_tokens: float
    #: seconds to load the base and build the trainer
    load_seconds: float
    device: str
    dtype: str

    def run_seconds(self, plan: TrainPlan) -> tuple[float, float]:
        """(fastest, slowest) time for the plan's steps, scaled to its mean row length."""
        scale = plan.total_steps * plan.mean_tokens / max(self.mean_tokens, 1.0)
        return min(self.seconds) * scale, max(self.seconds) * scale


def probe_step(plan: TrainPlan, data: str | Path | Iterable[Sample], *,
               fields: Mapping[str, str] | None = None, steps: int = 2) -> StepProbe | None:
    """Time ``steps`` optimizer steps (after one warm-up) of the run's trainer; ``None`` where a probe
    here would not measure the run (a multi-process plan runs on other devices)."""
    if plan.world_size > 1:
        return None
    from transformers import TrainerCallback

    from reflectune.training.trainer import build_trainer

    cfg = plan.config
    rows = cfg.per_device_batch * plan.gradient_accumulation * (steps + 1)
    probe = make_config(cfg, max_samples=rows, report_to="none", resume=False, overwrite=True,
                        sft={**cfg.sft, "max_steps": steps + 1, "save_strategy": "no", "logging_steps": 1})
    timed: list[float] = []

    class _Clock(TrainerCallback):
        began = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.began = time.monotonic()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            timed.append(time.monotonic() - self.began)

    with tempfile.TemporaryDirectory(prefix="reflectune-train-probe-") as folder:
        began = time.monotonic()
        trainer, info = build_trainer(data, plan.base, folder, config=probe, fields=fields,
                                      on_log=lambda _: None)
        load_seconds = time.monotonic() - began
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        trainer.add_callback(_Clock())
        trainer.train()
    if len(timed) < 2:
        return None
    return StepProbe(tuple(timed[1:]), sum(lengths) / len(lengths), load_seconds, info["device"],
                     info["dtype"])
