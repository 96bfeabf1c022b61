"""A selection that keeps nothing says why and fails; top-k values say what is wrong; no ``fcntl``.

Issue 19, items 4 and 6. The run folders are written by hand (real Alpaca rows, made-up scores), as in
``test_selection.py``: no model is loaded, so every test here takes well under a second or two.

- A select whose top-k rounds to 0 rows, or whose rule drops every sample, exits 1 with one line
  naming the step and the counts, writes no output and leaves run.json's ``select`` section alone;
  ``--allow-empty`` writes the empty output, exits 0 and warns with the same reason.
- ``reflectune run`` reports it as a failed select stage with the reason, exit 1.
- A bad top-k is one line saying what is wrong (over 100 %, not a whole count, ...), from the CLI and
  from a pipeline file (at load, before any stage runs).
- Every module of the package imports where ``import fcntl`` fails (Windows); the locks still work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reflectune.config import RunConfig, SelectConfig
from reflectune.errors import ConfigError
from reflectune.selection import EmptySelection, select
from reflectune.selection.rules import count_outcomes, parse_top_k, why_empty
from tests.conftest import ALPACA, run_cli
from tests.test_selection import write_scored_run

ALL_KEPT = {"ori": (0.8, 0.7), "Q": (0.9, 0.6), "A": (0.7, 0.5), "QA": (0.85, 0.4)}  # -> QA, kept
OVER_ONE = {**ALL_KEPT, "QA": (1.2, 0.4)}  # -> QA, dropped by the IFD < 1 filter
UNREFLECTED = {**ALL_KEPT, "QA": (0.85, 0.65)}  # QA raises r-IFD -> response_not_reflected


def _rows(n: int) -> list[dict[str, Any]]:
    data = json.loads(ALPACA.read_text(encoding="utf-8"))[:n]
    return [{**row, "id": f"a{i}"} for i, row in enumerate(data)]


def _entry(pair: tuple[float | None, float | None]) -> dict[str, Any]:
    return {"status": "ok", "ifd": pair[0], "rifd": pair[1]}


def scored_run(tmp_path: Path, tables: list[dict[str, tuple[float, float]]]) -> Path:
    """A recycle run folder with finished scores, one score table per real row."""
    return write_scored_run(tmp_path, _rows(len(tables)),
                            [{k: _entry(p) for k, p in table.items()} for table in tables])


def cherry_scored(tmp_path: Path, ifds: list[float | None]) -> tuple[Path, Path]:
    """A plain dataset and the Cherry-mode run folder that scored it (ori only)."""
    rows = _rows(len(ifds))
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "cherry"
    run.mkdir()
    (run / "scores.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "row": n + 1, "variants": {"ori": _entry((ifd, None))}}) + "\n"
        for n, (r, ifd) in enumerate(zip(rows, ifds, strict=True))))
    (run / "run.json").write_text(json.dumps({"score": {
        "status": "done", "source": str(data), "input": {"format": "jsonl"}, "namespace": "ifd:test"}}))
    return data, run


def _one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- why a selection is empty (pure) -------------------------------------------------------------------

def test_the_reason_names_the_step_that_removed_the_last_rows_from_the_counts() -> None:
    def why(tables: list[dict], top_k: str | None = None, **kwargs: Any) -> tuple[str, str]:
        from reflectune.selection.rules import choose_variant

        counts = count_outcomes(choose_variant({k: _entry(p) for k, p in t.items()}) for t in tables)
        return why_empty(counts, parse_top_k(top_k) if top_k else None, **kwargs)

    reason, remedy = why([ALL_KEPT] * 5, "5.5%")
    assert reason == "top-k 5.5% of the 5 rows that passed the rule rounds down to 0 rows"
    assert remedy == "give at least 20% or a row count such as 1, or --allow-empty writes the empty selection"
    assert why([ALL_KEPT] * 3, "33%")[1].startswith("give at least 33.34% ")  # floor(0.3334 * 3) = 1
    reason, remedy = why([OVER_ONE] * 20)
    assert reason == "the IFD < 1 and r-IFD < 1 filter removed all 20 samples"
    assert remedy.startswith("--no-below-one-filter keeps them")
    reason, remedy = why([OVER_ONE] * 2 + [UNREFLECTED] * 3)
    assert reason == "the selection rule dropped all 5 samples (ifd_not_below_1 2, response_not_reflected 3)"
    assert remedy.startswith("--no-below-one-filter keeps the 2 the IFD < 1 and r-IFD < 1 filter removed")
    assert why([UNREFLECTED] * 4) == ("the selection rule dropped all 4 samples (response_not_reflected 4)",
                                      "--allow-empty writes the empty selection")
    assert why([])[0] == "there is no scored sample to select from"
    cherry = {"samples": 4, "kept": 0, "dropped": {"ifd_not_below_1": 4}}
    assert why_empty(cherry, None, cherry=True)[0] == "the IFD < 1 filter removed all 4 rows"
    assert why_empty({"samples": 40, "kept": 40, "dropped": {}}, parse_top_k("2%"), cherry=True)[0] == (
        "top-k 2% of the 40 scored rows rounds down to 0 rows")


@pytest.mark.parametrize(("bad", "reason"), [
    ("150%", "over 100%"), ("0", "a row count must be at least 1"), ("-3", "a row count must be at least 1"),
    ("abc", "not a number"), ("5.5", "not a whole row count (5.5% would be a percentage)"),
    ("0.05", "a bare fraction is ambiguous (5% is that share of the rows)"), ("0%", "above 0%"),
    ("1e3", "write the row count in digits (1000)"), ("%", "no number before the %"),
    ("nan%", "not a finite percentage"), ("", "it is empty"), (5.5, "not a whole row count"),
    (0, "a row count must be at least 1"), (True, "not a number"),
])
def test_a_bad_top_k_says_what_is_wrong(bad: Any, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_top_k(bad)
    message = str(err.value)
    assert message.startswith(f"invalid top-k '{str(bad).strip()}': ") and reason in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="invalid top-k"):  # the config refuses it where it is given
        SelectConfig(top_k=bad)


def test_a_bad_top_k_in_a_pipeline_file_is_refused_at_load_with_the_reason(tmp_path: Path) -> None:
    from reflectune.pipeline import load_run_config

    path = tmp_path / "p.yaml"
    path.write_text("data: x.json\nselect:\n  top_k: 150%\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p\.yaml:2: select: invalid top-k '150%': over 100%"):
        load_run_config(path)
    with pytest.raises(ConfigError, match=r"invalid top-k '5\.5': not a whole row count"):
        load_run_config(path, ["select.top_k=5.5"])
    assert load_run_config(path, ["select.top_k=5.0"]).select.top_k == 5  # a whole float is a count


def test_allow_empty_leaves_the_settings_hash_as_it_was() -> None:
    """Pipelines recorded before the field stay up to date: the default is not in the JSON dump."""
    assert "allow_empty" not in SelectConfig().model_dump(mode="json")
    assert SelectConfig(allow_empty=True).model_dump(mode="json")["allow_empty"] is True
    assert RunConfig().select.step_hash() != RunConfig(select={"allow_empty": True}).select.step_hash()


# -- select() and the CLI ----------------------------------------------------------------------------

def test_a_top_k_that_rounds_to_zero_fails_with_the_reason_and_writes_nothing(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [ALL_KEPT] * 5)
    out = tmp_path / "sel.jsonl"
    done = run_cli("select", str(run), "-o", str(out), "--top-k", "5.5%", "--no-html")
    line = _one_line_error(done, 1)
    assert line == (f"error: {run}: kept no row: top-k 5.5% of the 5 rows that passed the rule rounds down "
                    "to 0 rows; give at least 20% or a row count such as 1, or --allow-empty writes the "
                    "empty selection")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run"]
    assert "select" not in json.loads((run / "run.json").read_text())  # no record of a selection

    kept = run_cli("select", str(run), "-o", str(out), "--top-k", "20%", "--no-html")
    assert kept.returncode == 0, kept.stderr
    assert len(out.read_text().splitlines()) == 1  # 20 % of 5 is the one best row


def test_allow_empty_writes_the_empty_output_and_warns_with_the_reason(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [OVER_ONE] * 4)
    out = tmp_path / "sel.json"
    done = run_cli("select", str(run), "-o", str(out), "--allow-empty", "--no-html")
    assert done.returncode == 0, done.stderr
    warning = next(line for line in done.stderr.splitlines() if line.startswith("warning:"))
    assert warning == (f"warning: kept no row: the IFD < 1 and r-IFD < 1 filter removed all 4 samples; "
                       f"wrote an empty {out} (--allow-empty)")
    assert json.loads(out.read_text()) == []
    manifest = json.loads((run / "run.json").read_text())["select"]
    assert manifest["kept"] == 0 and manifest["empty_reason"].startswith("the IFD < 1 and r-IFD < 1 filter")
    summary = select(run, tmp_path / "again.jsonl", allow_empty=True)  # the same from Python
    assert summary.kept == 0 and summary.empty_reason == manifest["empty_reason"]
    assert (tmp_path / "again.jsonl").read_text() == ""


def test_without_the_filter_the_same_run_keeps_its_rows(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [OVER_ONE] * 4)
    with pytest.raises(EmptySelection, match="--no-below-one-filter keeps them") as err:
        select(run, tmp_path / "sel.jsonl")
    assert err.value.exit_code == 1 and not (tmp_path / "sel.jsonl").exists()
    assert select(run, tmp_path / "sel.jsonl", below_one_filter=False).kept == 4


def test_cherry_mode_says_the_filter_removed_every_row(tmp_path: Path) -> None:
    data, run = cherry_scored(tmp_path, [1.3, 1.1, None, 1.05])
    done = run_cli("select", str(data), "--run-dir", str(run), "--no-html")
    assert _one_line_error(done, 1) == (
        f"error: {data}: kept no row: the selection rule dropped all 4 rows (ifd_not_below_1 3, nan_ifd 1); "
        "--no-below-one-filter keeps the 3 the IFD < 1 filter removed, or --allow-empty writes the empty "
        "selection")
    assert select(data, tmp_path / "c.jsonl", run_dir=run, below_one_filter=False).kept == 3  # NaN never


@pytest.mark.parametrize(("flag", "value", "reason"), [
    ("--top-k", "150%", "over 100%"), ("--ifd-top-k", "5.5", "not a whole row count"),
    ("--top-k", "0", "a row count must be at least 1"),
])
def test_the_cli_refuses_a_bad_top_k_in_one_line_exit_2(tmp_path: Path, flag: str, value: str,
                                                        reason: str) -> None:
    from reflectune.cli import main

    run = scored_run(tmp_path, [ALL_KEPT] * 2)
    assert main(["select", str(run), flag, value, "--no-html"]) == 2
    with pytest.raises(ConfigError, match=rf"^invalid top-k '{value}': {reason}"):
        select(run, top_k=value)


def test_the_pipeline_fails_its_select_stage_with_the_reason(tmp_path: Path) -> None:
    run = scored_run(tmp_path, [ALL_KEPT] * 5)
    off = {"enabled": False}
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"recycle": off, "score": off, "train": off, "generate": off, "judge": off,
                                "select": {"input": str(run), "top_k": "5.5%"},
                                "run_dir": str(tmp_path / "pipe")}), encoding="utf-8")
    done = run_cli("run", str(path), "--no-html", "-q")
    assert done.returncode == 1, done.stderr
    assert (f"error: select: kept no row: top-k 5.5% of the 5 rows that passed the rule rounds down to 0 "
            f"rows; fix it, then rerun: reflectune run {path}") in done.stderr
    entry = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["stages"]["select"]
    assert entry["status"] == "failed" and entry["outputs"] == {}
    assert entry["message"] == ("kept no row: top-k 5.5% of the 5 rows that passed the rule rounds down "
                                "to 0 rows")


# -- no fcntl ----------------------------------------------------------------------------------------

NO_FCNTL = """
import importlib, pkgutil, sys, tempfile, warnings
sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError, as on Windows
warnings.simplefilter("ignore")  # filelock warns that only its soft lock is left
import reflectune
failed = []
for info in pkgutil.walk_packages(reflectune.__path__, "reflectune."):
    if info.name != "reflectune.__main__":
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            failed.append(f"{info.name}: {exc}")
from reflectune.errors import StoreError
from reflectune.store import RunLock
try:
    RunLock(tempfile.mkdtemp()).acquire()
except StoreError as exc:
    print("lock:", exc)
print("failed:", failed, "heavy:", "torch" in sys.modules)
"""


def test_every_module_imports_without_fcntl() -> None:
    done = subprocess.run([sys.executable, "-c", NO_FCNTL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "failed: [] heavy: False" in done.stdout, done.stdout + done.stderr
    # with no lock primitive at all the run lock is one clear StoreError, never an ImportError
    assert "cannot lock the run folder" in done.stdout, done.stdout


def test_the_locks_are_filelocks_native_lock_and_contend_with_filelock(tmp_path: Path) -> None:
    """The run lock and a ``filelock.FileLock`` on run.lock exclude each other (the same primitive)."""
    from filelock import FileLock, Timeout

    from reflectune.errors import StoreError
    from reflectune.io.atomic import OutputLock
    from reflectune.store import RunLock

    for module in ("reflectune.store.lock", "reflectune.io.atomic"):
        assert "fcntl" not in vars(sys.modules[module])
    with RunLock(tmp_path) as lock:
        with pytest.raises(Timeout):
            FileLock(lock.path, timeout=0).acquire()
        assert lock.path.read_text().startswith("reflectune pid ")  # the holder's note is intact
    with FileLock(tmp_path / "run.lock", timeout=0), pytest.raises(StoreError, match="is in use by"):
        RunLock(tmp_path).acquire()
    with OutputLock(tmp_path / "out.json"), pytest.raises(StoreError, match="being written by another run"):
        OutputLock(tmp_path / "out.json").acquire()
