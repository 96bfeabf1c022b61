"""The public surface is deliberate: pinned here, importable, light, and each name what it says."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

from pydantic import BaseModel

import reflectune

VERBS = ["estimate", "generate", "judge", "recycle", "run", "score", "select", "train"]
CONFIGS = ["EngineConfig", "GenerateConfig", "JudgeConfig", "OracleConfig", "RecycleConfig", "RunConfig",
           "SamplingConfig", "ScoreConfig", "SelectConfig", "TrainConfig"]
SUMMARIES = ["GenerateSummary", "JudgeReport", "PipelineResult", "RecycleSummary", "ScoreSummary",
             "SelectSummary", "TrainResult"]
ERRORS = ["ConfigError", "DataError", "OracleError", "ReflectuneError", "RunStopped", "StoreError"]
RECORDS_AND_SEAMS = ["Capabilities", "ChatRequest", "Completion", "DatasetWriter", "Engine", "FakeOracle",
                     "Message", "Oracle", "Sample", "Store"]
FUNCTIONS = ["choose_variant", "load_run_config", "load_testsets", "make_oracle", "parse_reflection",
             "read_samples"]
EXPECTED = [*VERBS, *CONFIGS, *SUMMARIES, *ERRORS, *RECORDS_AND_SEAMS, *FUNCTIONS, "__version__"]


def _import_every_submodule() -> None:
    """Submodules loaded first: a submodule named like a verb would then shadow it (the old bug)."""
    for info in pkgutil.walk_packages(reflectune.__path__, "reflectune."):
        if info.name != "reflectune.__main__":
            importlib.import_module(info.name)


def test_all_is_pinned_and_sorted() -> None:
    assert reflectune.__all__ == sorted(EXPECTED)


def test_every_public_name_is_what_it_says_after_every_submodule_is_imported() -> None:
    _import_every_submodule()
    public = {name: getattr(reflectune, name) for name in reflectune.__all__}
    for name in [*VERBS, *FUNCTIONS]:
        assert inspect.isfunction(public[name]), f"{name} is {public[name]!r}, not a function"
    for name in CONFIGS:
        assert inspect.isclass(public[name]) and issubclass(public[name], BaseModel), name
    for name in SUMMARIES + RECORDS_AND_SEAMS:
        assert inspect.isclass(public[name]), f"{name} is {public[name]!r}, not a class"
    for name in ERRORS:
        assert issubclass(public[name], reflectune.ReflectuneError), name
    assert isinstance(public["__version__"], str)


def test_recycle_is_the_function_even_when_its_run_module_was_imported_first() -> None:
    code = ("import inspect, reflectune.recycling.run; from reflectune import recycle; "
            "print(inspect.isfunction(recycle), recycle.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "reflectune.recycling.run"]


def test_every_verb_takes_its_config() -> None:
    takes = {"recycle": "RecycleConfig", "estimate": "RecycleConfig", "score": "ScoreConfig",
             "select": "SelectConfig", "train": "TrainConfig", "generate": "GenerateConfig",
             "judge": "JudgeConfig", "run": "RunConfig"}
    for verb, config in takes.items():
        parameter = inspect.signature(getattr(reflectune, verb)).parameters.get("config")
        assert parameter is not None, f"{verb}() takes no config"
        assert config in str(parameter.annotation), (verb, parameter.annotation)


def test_run_config_gathers_one_section_per_stage() -> None:
    sections = reflectune.RunConfig.model_fields
    assert list(sections) == ["recycle", "score", "select", "train", "generate", "judge", "data", "run_dir"]
    takes = {"recycle": "RecycleConfig", "score": "ScoreConfig", "select": "SelectConfig",
             "train": "TrainConfig", "generate": "GenerateConfig", "judge": "JudgeConfig"}
    for name, config in takes.items():
        section = getattr(reflectune.RunConfig(), name)
        assert sections[name].annotation is type(section), name
        assert isinstance(section, getattr(reflectune, config)) and type(section.stage()).__name__ == config


def test_importing_the_package_and_the_http_path_does_not_import_torch() -> None:
    code = ("import sys, reflectune, reflectune.recycling.run, reflectune.oracles.openai_http, "
            "reflectune.cli; reflectune.recycling.rules; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
