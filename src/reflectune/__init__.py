"""reflectune: recycle instruction-tuning data with Reflection-Tuning and Selective Reflection-Tuning.

The public surface is the names in ``__all__``: one function per command (``recycle``, ``score``,
``select``, ``train``, ``generate``, ``judge``), each stage's Config (all gathered in ``RunConfig``)
and Summary, and the records and seams needed to extend it (oracles and their capabilities, the
engine, the store, data I/O). Names load lazily, so ``import reflectune``
stays cheap and never imports torch; a test pins ``__all__``.

Example::

    from reflectune import OracleConfig, RecycleConfig, recycle
    recycle("alpaca.json", "recycled.json",
            config=RecycleConfig(oracle=OracleConfig(spec="openai:gpt-4o-mini")))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # commands
    "recycle": "reflectune.recycling",
    "estimate": "reflectune.recycling",
    "score": "reflectune.scoring",
    "select": "reflectune.selection",
    "train": "reflectune.training",
    "generate": "reflectune.generation",
    "judge": "reflectune.judging",
    "run": "reflectune.pipeline",
    "load_run_config": "reflectune.pipeline",
    # configs: one per stage, gathered in RunConfig
    "RunConfig": "reflectune.config",
    "RecycleConfig": "reflectune.config",
    "OracleConfig": "reflectune.config",
    "SamplingConfig": "reflectune.config",
    "EngineConfig": "reflectune.config",
    "ScoreConfig": "reflectune.config",
    "SelectConfig": "reflectune.config",
    "TrainConfig": "reflectune.config",
    "GenerateConfig": "reflectune.config",
    "JudgeConfig": "reflectune.config",
    # what each verb returns
    "RecycleSummary": "reflectune.recycling",
    "ScoreSummary": "reflectune.scoring",
    "SelectSummary": "reflectune.selection",
    "TrainResult": "reflectune.training",
    "GenerateSummary": "reflectune.generation",
    "JudgeReport": "reflectune.judging",
    "PipelineResult": "reflectune.pipeline",
    # records and seams
    "ChatRequest": "reflectune.types",
    "Completion": "reflectune.types",
    "Message": "reflectune.types",
    "Sample": "reflectune.types",
    "Oracle": "reflectune.oracles",
    "Capabilities": "reflectune.oracles",
    "make_oracle": "reflectune.oracles",
    "FakeOracle": "reflectune.oracles.fake",
    "Engine": "reflectune.engine",
    "Store": "reflectune.store",
    "read_samples": "reflectune.io",
    "DatasetWriter": "reflectune.io",
    "parse_reflection": "reflectune.prompts.parse",
    "choose_variant": "reflectune.selection",
    "load_testsets": "reflectune.io.testsets",
    # errors
    "ReflectuneError": "reflectune.errors",
    "ConfigError": "reflectune.errors",
    "DataError": "reflectune.errors",
    "StoreError": "reflectune.errors",
    "OracleError": "reflectune.errors",
    "RunStopped": "reflectune.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reflectune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
