"""The public surface is deliberate: pinned here, importable, and light."""

from __future__ import annotations

import subprocess
import sys

import reflectune

EXPECTED = [
    "ChatRequest", "Completion", "ConfigError", "DataError", "DatasetWriter", "Engine", "EngineConfig",
    "FakeOracle", "GenerateConfig", "Message", "Oracle", "OracleConfig", "OracleError", "RecycleConfig",
    "RecycleSummary", "ReflectuneError", "RunStopped", "Sample", "SamplingConfig", "Store", "StoreError",
    "TrainConfig", "__version__", "choose_variant", "estimate", "generate", "judge", "load_testsets",
    "make_oracle", "parse_reflection", "read_samples", "recycle", "score", "select", "train",
]


def test_all_is_pinned_and_sorted() -> None:
    assert reflectune.__all__ == sorted(EXPECTED)


def test_every_public_name_resolves() -> None:
    for name in reflectune.__all__:
        assert getattr(reflectune, name) is not None, name


def test_importing_the_package_and_the_http_path_does_not_import_torch() -> None:
    code = ("import sys, reflectune, reflectune.recycling.run, reflectune.oracles.openai_http, "
            "reflectune.cli; reflectune.recycling.rules; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
