"""The store is never silently empty, and outputs are safe to share.

Opening a run folder checks its store against ``run.json``: a store that is missing, empty, holds fewer
calls than the manifest recorded, or is damaged (``PRAGMA quick_check``) is a one-line ``StoreError``
(exit 3) that names the recovery, never a fresh start that buys every call again and never a traceback.
An output being written is locked (``.NAME.lock`` beside it): a second writer of the same path is
refused, in this process or another. A full disk on an output is a one-line error that leaves no temp
file. Text that UTF-8 cannot hold (lone surrogates) is stored and keyed instead of crashing the run.

Faults are real where they can be: truncated and garbage files, rows deleted with sqlite3, two real
CLI processes against a slow loopback server, and ``RLIMIT_FSIZE`` for a full disk (``EFBIG``, the way
``ENOSPC`` fails). ``ENOSPC`` itself cannot be caused without a small filesystem, so one test injects
it by wrapping the writer's file.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reflectune.errors import StoreError
from reflectune.io import DatasetWriter, atomic, read_samples, tabular, writers
from reflectune.io.atomic import OutputLock, same_file, write_json_atomic
from reflectune.keys import content_key
from reflectune.store import CallRecord, RunFolder, RunLock, Store
from reflectune.store.rundir import recorded_calls
from reflectune.testing.server import running_server
from tests.conftest import ROOT, run_cli

DEMO = ROOT / "src" / "reflectune" / "data" / "demo_alpaca20.json"
DEMO_CALLS = 64  # what a fake-oracle recycle of the demo stores (20 rows, both phases)


def fake_recycle(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("recycle", str(DEMO), "--oracle", "fake", "--run-dir", str(run), "-q", *extra)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], proc.stderr
    return lines[0]


def stored_calls(store: Path) -> int:
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    finally:
        db.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fake-oracle recycle of the demo; tests copy it and damage the copy."""
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = fake_recycle(run)
    assert proc.returncode == 0, proc.stderr
    assert stored_calls(run / "store.sqlite") == DEMO_CALLS
    manifest = json.loads((run / "run.json").read_text())["recycle"]
    assert sum(v["calls"] for v in manifest["calls_in_store"].values()) == DEMO_CALLS
    return run


def copy_run(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in src.iterdir():
        if path.is_file():
            (dest / path.name).write_bytes(path.read_bytes())
    return dest


# -- content keys --------------------------------------------------------------------------------
# Computed with content_key before lone surrogates were allowed: cache keys of existing run folders
# depend on every normal string keeping exactly this key.
FIXED_KEYS = [
    ((), "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"),
    (("",), "055539df4a0b804c58caf46c0cd2941af10d64c1395ddd8e50b5f55d945841e6"),
    (("a",), "0eb5b8d6f81bc677da8a08567cc4fa9a06a57e9ec8da85ed73a7f62727996002"),
    (("response", {"messages": [{"role": "user", "content": "Café 東京 🚀"}], "temperature": 0.0}),
     "be4f9079ccdce282e0c5822bcbc6aee5a93d70aeee96e1d4931e86e560add45d"),
    (("שלום", 1, 2.5, None, True, ["x", {"b": 1, "a": 2}]),
     "8b94f5f36c65e79b73dfce4be9ed28514130df45bb74395fe1cbc4ee04141474"),
    (("e\u0301",), "32860394d411eb384be988968561412199087c5fd8be3004ef5516db217fb254"),
    (("\u00e9",), "0b657be394b1d432f8d1942406ed09c213604cbcd87b299641cf994bcaf84b11"),
    (('tab\t"quote" \\ back\n',), "9a65051095af7c2f71136014bcd5812144afe7a8bbd4e98ab35b1abe92c23010"),
]


@pytest.mark.parametrize(("parts", "expected"), FIXED_KEYS)
def test_content_key_of_normal_strings_is_unchanged(parts, expected):
    assert content_key(*parts) == expected


def test_content_key_of_lone_surrogates_is_distinct_and_stable():
    keys = {content_key(s) for s in ("a\udcff", "a\udcfe", "a", "a\ufffd", "\ud83d\ude80", "🚀")}
    assert len(keys) == 6  # a separated surrogate pair is not the character it would combine into
    assert content_key("a\udcff") == content_key("a\udcff")


# -- lone surrogates in the store ----------------------------------------------------------------
def test_lone_surrogates_round_trip_and_normal_text_stays_text(tmp_path):
    path = tmp_path / "s.sqlite"
    odd = CallRecord("k-odd", "response", "failed", "broken \ud800 text", "stop", 1, 2, 0.5, 2,
                     "rejected", "bad byte \udcff", ("[End\udc80]",), "row\udcff")
    plain = CallRecord("k-plain", "response", "ok", "Réponse 東京 🚀", "stop", 1, 2, 0.5, 1, None, None,
                       (), "row-1")
    with Store(path) as store:
        store.put_call(odd, '{"messages":[{"content":"q \ud800"}]}')
        store.put_call(plain, '{"messages":[]}')
        store.put_results("ns", [("r\udcff", {"v": "x\ud800"}), ("plain", {"v": "é"})])
    with Store(path) as store:
        assert store.get_call("k-odd") == odd
        assert store.get_call("k-plain") == plain
        assert store.get_result("ns", "r\udcff") == {"v": "x\ud800"}
        assert store.has_results("ns", ["r\udcff", "plain", "missing"]) == {"r\udcff", "plain"}
        assert dict(store.iter_results("ns")) == {"r\udcff": {"v": "x\ud800"}, "plain": {"v": "é"}}
        assert store.call_totals()["response:ok"]["calls"] == 1
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT typeof(content), content, typeof(request) FROM calls WHERE key = 'k-plain'")
        assert row.fetchone() == ("text", "Réponse 東京 🚀", "text")  # byte-identical TEXT as before
        assert db.execute("SELECT typeof(content) FROM calls WHERE key = 'k-odd'").fetchone() == ("blob",)
    finally:
        db.close()


# -- the store against the manifest --------------------------------------------------------------
def test_deleted_store_with_a_manifest_that_recorded_calls_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "store.sqlite").unlink()
    proc = fake_recycle(run)
    line = assert_one_line_error(proc, 3, str(run), f"records {DEMO_CALLS} oracle calls",
                                 "store.sqlite is missing", "restore store.sqlite", "new --run-dir")
    assert "Traceback" not in line
    assert not (run / "store.sqlite").exists(), "the refused run created a fresh store"
    assert json.loads((run / "run.json").read_text())["recycle"]["status"] == "complete"


def test_emptied_store_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    db = sqlite3.connect(run / "store.sqlite")
    db.execute("DELETE FROM calls")
    db.commit()
    db.close()
    proc = fake_recycle(run)
    assert_one_line_error(proc, 3, f"records {DEMO_CALLS} oracle calls", "store.sqlite holds none",
                          ".recover", "new --run-dir")
    assert stored_calls(run / "store.sqlite") == 0


def test_store_with_fewer_calls_than_recorded_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    db = sqlite3.connect(run / "store.sqlite")
    db.execute("DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls LIMIT 10)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"holds only {DEMO_CALLS - 10}") as info:
        RunFolder(run).__enter__()
    assert str(run) in str(info.value)
    RunLock(run).acquire().release()  # the refusal released the run lock


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_store_is_a_one_line_error_with_the_recovery(finished, tmp_path, damage):
    run = copy_run(finished, tmp_path / "run")
    store = run / "store.sqlite"
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    before = store.read_bytes()
    proc = fake_recycle(run)
    assert_one_line_error(proc, 3, str(store), "the store is damaged",
                          "`sqlite3 store.sqlite .recover | sqlite3 recovered.sqlite`", "new --run-dir")
    assert store.read_bytes() == before, "a damaged store was written to"


def test_damaged_page_inside_a_valid_file_is_found_on_open(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        for i in range(300):
            store.put_call(CallRecord(f"k{i:04d}", "response", "ok", "answer " * 40, "stop", 1, 1, 0.0, 1,
                                      None, None, ()), '{"messages":[]}')
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    assert pages > 8
    with open(path, "r+b") as fh:  # the header (page 1) stays valid; a page in the middle is smashed
        fh.seek(4096 * (pages // 2) + 8)
        fh.write(b"\xff" * 200)
    with pytest.raises(StoreError, match="the store is damaged") as info:
        Store(path)
    assert str(path) in str(info.value) and ".recover" in str(info.value)


def test_normal_resume_makes_no_new_call_and_gives_identical_outputs(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    proc = fake_recycle(run)
    assert proc.returncode == 0, proc.stderr
    engine = json.loads((run / "run.json").read_text())["recycle"]["engine"]
    assert (engine["sent"], engine["failed"], engine["cached"]) == (0, 0, DEMO_CALLS)
    for name in ("recycled.json", "variants.jsonl"):
        assert (run / name).read_bytes() == (finished / name).read_bytes()


def test_brand_new_folder_and_a_folder_without_calls_open(tmp_path):
    with RunFolder(tmp_path / "new") as folder:
        assert folder.store is not None and folder.store.call_count() == 0
        folder.update_manifest("recycle", {"status": "running", "calls_in_store": {}})
    (tmp_path / "new" / "store.sqlite").unlink()
    with RunFolder(tmp_path / "new"):  # the manifest recorded no call: nothing was lost
        pass


@pytest.mark.parametrize(("section", "store_calls", "refused"), [
    ({"calls_in_store": {"response:ok": {"calls": 3}, "merge:failed": {"calls": 2}}}, 5, False),
    ({"calls_in_store": {"response:ok": {"calls": 3}, "merge:failed": {"calls": 2}}}, 4, True),
    ({"stats": {"sent": 7, "failed": 1, "cached": 0}}, 0, True),      # generate and judge
    ({"stats": {"sent": 7, "failed": 1, "cached": 0}}, 1, False),     # one key may be sent twice
    ({"engine": {"sent": 0, "failed": 0, "cached": 9}}, 0, True),     # answered from a store
    ({"stats": {"sent": 0, "failed": 0, "cached": 0}}, 0, False),
    ({"status": "done", "namespace": "ifd:x"}, 0, False),            # score: no calls
])
def test_manifest_claims_against_the_store(tmp_path, section, store_calls, refused):
    with Store(tmp_path / "store.sqlite") as store:
        for i in range(store_calls):
            store.put_call(CallRecord(f"k{i}", "response", "ok", "a", "stop", 1, 1, 0.0, 1, None, None,
                                      ()), "{}")
    (tmp_path / "run.json").write_text(json.dumps({"stage": section, "note": "x"}))
    if refused:
        with pytest.raises(StoreError, match=r"run\.json records \d+ oracle calls? \(stage\)"):
            RunFolder(tmp_path).__enter__()
    else:
        with RunFolder(tmp_path) as folder:
            assert folder.store is not None


def test_a_stage_without_oracle_calls_may_open_a_folder_without_its_store(finished, tmp_path):
    """``score`` on a copy of a recycle folder without its store buys nothing: it may opt out."""
    run = copy_run(finished, tmp_path / "run")
    (run / "store.sqlite").unlink()
    with pytest.raises(StoreError, match=r"store\.sqlite is missing"):
        RunFolder(run).__enter__()
    with RunFolder(run, check_calls=False) as folder:
        assert folder.store is not None and folder.store.call_count() == 0


def test_recorded_calls_takes_the_largest_claim_and_ignores_junk():
    manifest: dict[str, Any] = {
        "recycle": {"calls_in_store": {"a:ok": {"calls": 10}, "b:ok": {"calls": True}, "c": "x"}},
        "generate": {"stats": {"sent": 40, "failed": "3"}},
        "versions": {"python": "3.11"}, "created_at": "now", "odd": [1, 2],
    }
    assert recorded_calls(manifest) == (10, 10, "recycle")
    assert recorded_calls({"generate": {"stats": {"sent": 40}}}) == (1, 40, "generate")
    assert recorded_calls({}) == (0, 0, "")


def test_empty_store_file_is_refused_before_it_is_written(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"recycle": {"calls_in_store": {"x:ok": {"calls": 2}}}}))
    (tmp_path / "store.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match=r"store\.sqlite is empty"):
        RunFolder(tmp_path).__enter__()
    assert (tmp_path / "store.sqlite").read_bytes() == b""


# -- the output lock -----------------------------------------------------------------------------
def test_second_writer_of_one_path_in_this_process_is_refused(tmp_path):
    out = tmp_path / "out.json"
    with DatasetWriter(out) as first:
        first.write_record({"instruction": "a", "output": "b"})
        with pytest.raises(StoreError) as info, DatasetWriter(out):
            pass
        assert str(info.value) == (f"{out} is being written by another run (pid {os.getpid()}); "
                                   "wait for it or choose another -o")
        first.write_record({"instruction": "c", "output": "d"})
    assert [s.instruction for s in read_samples(out)] == ["a", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no lock or temp file left
    with DatasetWriter(out) as again:  # released on close
        again.write_record({"instruction": "e", "output": "f"})
    assert [s.instruction for s in read_samples(out)] == ["e"]


def test_an_aborted_writer_releases_its_lock(tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), DatasetWriter(out) as w:
        w.write_record({"instruction": "a", "output": "b"})
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with DatasetWriter(out) as w:
        w.write_record({"instruction": "a", "output": "b"})
    assert out.read_text().startswith("instruction,output")


HOLD_WRITER = ("import sys\nfrom reflectune.io import DatasetWriter\nw = DatasetWriter(sys.argv[1])\n"
               "w.open()\nw.write_record({'instruction': 'child', 'output': 'x'})\n"
               "print('ready', flush=True)\nsys.stdin.read()\nw.close()\n")


def test_writer_in_another_process_is_named_and_a_killed_one_does_not_block(tmp_path):
    out = tmp_path / "out.jsonl"
    child = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match=rf"being written by another run \(pid {child.pid}\)"):
            DatasetWriter(out).open()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert (tmp_path / ".out.jsonl.lock").exists()  # the killed writer's lock file is left behind
    with DatasetWriter(out) as w:  # ... but the OS released its lock
        w.write_record({"instruction": "mine", "output": "y"})
    assert [s.instruction for s in read_samples(out)] == ["mine"]
    assert not (tmp_path / ".out.jsonl.lock").exists()


def test_output_lock_follows_the_file_at_the_path(tmp_path):
    """A lock taken on a lock file that its holder has just removed guards nothing: retake."""
    target = tmp_path / "out.json"
    first = OutputLock(target).acquire()
    stale = os.open(first.path, os.O_RDWR)  # a writer that opened the file before it was removed
    first.release()
    assert not first.path.exists()
    second = OutputLock(target).acquire()
    try:
        assert second.path.exists()
        with pytest.raises(StoreError, match="being written"):
            OutputLock(target).acquire()
    finally:
        second.release()
        os.close(stale)


def test_two_cli_runs_writing_the_same_output_the_second_is_refused(tmp_path):
    rows = json.loads(DEMO.read_text(encoding="utf-8"))[:6]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with running_server(latency=0.5) as server:
        def args(run: str) -> list[str]:
            return ["recycle", str(src), "-o", str(out), "--oracle", "openai:m", "--base-url",
                    server.base_url, "--run-dir", str(tmp_path / run), "--phases", "response",
                    "--concurrency", "1", "-q"]

        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        first = subprocess.Popen([sys.executable, "-m", "reflectune", *args("run1")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / ".out.jsonl.lock").exists():
                assert first.poll() is None and time.monotonic() < deadline, "the first run never wrote"
                time.sleep(0.02)
            second = run_cli(*args("run2"), env={"OPENAI_API_KEY": "sk-test"})
            still_running = first.poll() is None
            _, first_err = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert still_running, "the runs must overlap"
    assert_one_line_error(second, 3, f"{out} is being written by another run (pid {first.pid})",
                          "choose another -o")
    assert first.returncode == 0, first_err
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 6 and all(r["reflect_status"] == "A" for r in written)
    assert stored_calls(tmp_path / "run2" / "store.sqlite") == 0, "the refused run paid for calls"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "run1", "run2"]


# -- same_file -----------------------------------------------------------------------------------
def test_same_file_sees_through_names(tmp_path):
    data = tmp_path / "in.json"
    data.write_text("[]")
    (tmp_path / "link.json").symlink_to(data)
    os.link(data, tmp_path / "hard.json")
    (tmp_path / "other.json").write_text("[]")
    (tmp_path / "sub").mkdir()
    assert same_file(data, data)
    assert same_file(data, tmp_path / "link.json")               # a symlink to the input
    assert same_file(tmp_path / "hard.json", data)               # a hard link
    assert same_file(data, tmp_path / "sub" / ".." / "in.json")
    assert same_file(os.path.relpath(data), data)                # the tests run in tmp_path
    assert not same_file(data, tmp_path / "other.json")          # same content, another file
    assert not same_file(data, tmp_path / "new.json")            # an output not written yet
    assert same_file(tmp_path / "new.json", tmp_path / "sub" / ".." / "new.json")
    assert same_file(tmp_path / "nope" / ".." / "in.json", data)  # mkdir -p would write over it
    (tmp_path / "dangling.json").symlink_to(tmp_path / "target.json")
    assert same_file(tmp_path / "dangling.json", tmp_path / "target.json")


# -- full disk -----------------------------------------------------------------------------------
class _FullDisk:
    """A file that refuses writes past ``room`` bytes with ENOSPC, like a disk that fills up."""

    def __init__(self, real: Any, room: int) -> None:
        self._real, self._room = real, room

    def write(self, data: Any) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _filling(room: int):
    real_open = open

    def fake_open(*args: Any, **kwargs: Any) -> Any:
        return _FullDisk(real_open(*args, **kwargs), room)

    return fake_open


@pytest.mark.parametrize("name", ["out.jsonl", "out.json", "out.csv"])
def test_enospc_on_an_output_is_one_store_error_and_leaves_no_temp_file(tmp_path, monkeypatch, name):
    out = tmp_path / name
    out.write_text("old\n")
    monkeypatch.setattr(writers, "open", _filling(2000), raising=False)
    monkeypatch.setattr(tabular, "open", _filling(2000), raising=False)
    with pytest.raises(StoreError) as info, DatasetWriter(out) as w:
        for i in range(100):
            w.write_record({"instruction": f"q{i}", "output": "x" * 50})
    message = str(info.value)
    assert message.startswith(f"{out}: cannot write the output (disk full: ") and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp, spool or lock file
    assert out.read_text() == "old\n"


def test_enospc_on_a_manifest_is_one_store_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "open", _filling(10), raising=False)
    with pytest.raises(StoreError, match=r"run\.json: cannot write \(disk full: "):
        write_json_atomic(tmp_path / "run.json", {"recycle": {"rows": 3}})
    assert list(tmp_path.iterdir()) == []


def _fsize_limit(max_bytes: int):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def test_full_disk_on_the_output_through_the_cli_is_one_line_and_a_rerun_resumes(tmp_path):
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue.", "notes": "n" * 300_000},
            {"instruction": "Say hi.", "input": "", "output": "Hi."}]
    src, out, run = tmp_path / "in.json", tmp_path / "out.json", tmp_path / "run"
    src.write_text(json.dumps(rows), encoding="utf-8")
    args = ["recycle", str(src), "-o", str(out), "--oracle", "fake", "--run-dir", str(run), "-q"]
    full = subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          timeout=300, preexec_fn=_fsize_limit(150_000))
    assert_one_line_error(full, 3, f"{out}: cannot write the output (disk full: ", "rerun")
    leftovers = sorted(p.name for p in [*tmp_path.iterdir(), *run.iterdir()] if p.name.startswith("."))
    assert leftovers == [], "temp or lock files were left"
    assert not out.exists()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "run.json").read_text())["recycle"]["engine"]["sent"] == 0
    assert json.loads(out.read_text())[0]["notes"] == "n" * 300_000
