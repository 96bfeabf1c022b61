"""The folder tree is the architecture: imports point down only, and this test keeps them there.

``ALLOWED`` is the table of import edges between the package's units (a sub-package, or a module in
the package root). Every ``import reflectune...`` in every module is checked against it, including
imports inside functions, so a lazy import cannot hide an upward edge. Adding an edge is a design
decision: change the table in the same commit and say why.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import reflectune

ROOT = Path(reflectune.__file__).parent

L1 = {"types", "errors", "keys", "config", "contracts", "markers", "logs", "units"}
L2 = {"io", "prompts", "store", "models", "oracles"}
STAGES = {"recycling", "scoring", "selection", "decontamination", "training", "generation", "judging"}

#: unit -> the units it may import (besides itself). L1 units import only L1.
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "errors": set(),
    "keys": set(),
    "markers": set(),
    "config": {"errors", "keys"},
    "contracts": set(),
    # the run folder's log.txt is named in contracts; every layer may log
    "logs": {"contracts"},
    "units": set(),
    # L2: io, prompts and oracles know nothing of each other (but the one build below); the store
    # writes through io.
    "io": {"types", "errors"},
    "prompts": {"types", "errors", "markers"},
    "models": {"errors"},
    "store": {"errors", "keys", "contracts", "io", "logs"},
    # a local model's --template override renders through the chat template prompts/ builds from the
    # student template files (oracles/local/prompt.py); the oracle still writes no prompt wording
    "oracles": {"types", "errors", "config", "markers", "models", "prompts", "logs", "units"},
    # L3: the engine and the stages.
    "engine": L1 | {"store", "oracles"},
    # recycle --verify asks the judge, by its own rules (one protocol, not two)
    "recycling": L1 | L2 | {"engine", "judging"},
    "generation": L1 | L2 | {"engine"},
    "judging": L1 | L2 | {"engine"},
    "scoring": L1 | {"io", "prompts", "store", "models"},
    # training's run folder is a RunFolder like every stage's: its lock refuses a second process,
    # its run.json holds the train section
    "training": L1 | {"io", "prompts", "models", "store"},
    # select reads finished scores and never runs score: chaining stages is the pipeline's job
    "selection": L1 | {"io", "store"},
    # decontaminate reads the test sets and a dataset, writes in kind and keeps run.json's section
    "decontamination": L1 | {"io", "store"},
    # L4 and L5
    "pipeline": L1 | L2 | {"engine"} | STAGES,
    "report": L1 | L2 | STAGES,
    "cli": L1 | L2 | {"engine", "pipeline", "report", "reflectune"} | STAGES,
    "testing": L1,
    "__main__": {"cli"},
    "reflectune": set(),  # the package's own __init__ loads names lazily, by string
}

#: Modules of ``oracles`` that are backends: no stage and no engine module may import them.
BACKENDS = ("reflectune.oracles.openai_http", "reflectune.oracles.local", "reflectune.oracles.fake")
NEVER_FROM_STAGES = ("hf", "embedded", "openai", "fake")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "reflectune"


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "reflectune":  # ``from reflectune import io``: the submodules only
                found += [(node.lineno, f"reflectune.{a.name}") for a in node.names
                          if (ROOT / f"{a.name}.py").exists() or (ROOT / a.name).is_dir()]
    return [(line, name) for line, name in found if name == "reflectune" or name.startswith("reflectune.")]


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_unit_is_in_the_table() -> None:
    units = {_unit(_module_name(p)) for p in MODULES}
    assert units <= set(ALLOWED), f"add these to ALLOWED with their edges: {sorted(units - set(ALLOWED))}"


def _violations(path: Path, here: str) -> list[str]:
    bad = []
    for line, name in _imports(path):
        there = _unit(name)
        if name == "reflectune" and here in ("reflectune", "cli"):
            continue
        if there != here and there not in ALLOWED[here]:
            bad.append(f"line {line}: {name} ({here} -> {there})")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layer_table(path: Path) -> None:
    bad = _violations(path, _unit(_module_name(path)))
    assert not bad, f"{path.relative_to(ROOT)} imports across the layers: {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if _unit(_module_name(p)) in STAGES | {"engine"}],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_stages_and_the_engine_know_no_backend(path: Path) -> None:
    """They see the Oracle protocol and its capabilities, never a concrete backend."""
    for line, name in _imports(path):
        assert not name.startswith(BACKENDS), f"{path.relative_to(ROOT)}:{line} imports backend {name}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):  # spec == "hf", backend in ("hf", "embedded"), ...
            for const in ast.walk(node):
                if isinstance(const, ast.Constant) and const.value in NEVER_FROM_STAGES:
                    pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} tests a backend by name "
                                f"({const.value!r})")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
            target = node.args[0] if node.args else None
            if isinstance(target, ast.Attribute) and target.attr == "oracle":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} sniffs the oracle with hasattr")


def test_nothing_imports_the_cli() -> None:
    for path in MODULES:
        if _unit(_module_name(path)) in ("cli", "__main__"):
            continue
        for line, name in _imports(path):
            assert _unit(name) != "cli", f"{path.relative_to(ROOT)}:{line} imports {name}"


def test_the_package_root_holds_only_l1_and_the_entry_points() -> None:
    root_modules = {p.stem for p in ROOT.glob("*.py")}
    assert root_modules <= L1 | {"__init__", "__main__", "pipeline"}, sorted(root_modules)


def test_every_module_imports_alone() -> None:
    """No import cycle hides behind import order: each module imports in a fresh interpreter state."""
    import subprocess
    import sys

    names = [m.name for m in pkgutil.walk_packages(reflectune.__path__, "reflectune.")
             if m.name != "reflectune.__main__"]  # __main__ runs the CLI
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for key in [k for k in sys.modules if k.startswith('reflectune')]:\n"
            "        del sys.modules[key]\n"
            "    importlib.import_module(name)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_checker_sees_an_upward_edge_even_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "sneaky.py"
    module.write_text("import json\n\n\ndef later():\n    from reflectune.engine.stage import open_stage\n"
                      "    return open_stage\n", encoding="utf-8")
    assert _violations(module, "io") == ["line 5: reflectune.engine.stage (io -> engine)"]
    assert _violations(module, "recycling") == []
