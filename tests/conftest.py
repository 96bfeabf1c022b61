"""Shared fixtures: an isolated environment, the real data files, the CLI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ALPACA = SHARED_DATA / "alpaca_cherry5pct_3111.json"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No keys, no hub, and runs land in the test's own folder."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def alpaca_path() -> Path:
    if not ALPACA.is_file():
        pytest.fail(f"{ALPACA} is missing: the tests need ../shared/data beside the repository")
    return ALPACA


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m reflectune ARGS`` in a real subprocess (exit codes, stderr, kills)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
