"""Keys, the SQLite store, the run lock and the run folder: the promises resume is built on.

Content keys must be a pure function of content (any dict order, any process). The store commits each
``put_*`` before returning, survives kill -9, refuses foreign or newer files with a ``StoreError``
naming the path, and runs in WAL mode. The run lock admits one process per folder, names the holder
when it refuses, and is freed by the OS when the holder dies. The manifest is merged by section and
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reflectune.errors import StoreError
from reflectune.keys import canonical_json, content_key
from reflectune.store import CallRecord, RunFolder, RunLock, Store, default_run_dir, read_manifest
from reflectune.store.calls import MIGRATIONS


def record(key: str = "k1", *, stage: str = "response", status: str = "ok", content: str | None = "answer",
           prompt_tokens: int = 3, completion_tokens: int = 4, error_kind: str | None = None,
           error: str | None = None, forced: tuple[str, ...] = (), sample_id: str = "") -> CallRecord:
    return CallRecord(key, stage, status, content, "stop" if status == "ok" else None, prompt_tokens,
                      completion_tokens, 0.25, 1 if status == "ok" else 3, error_kind, error, forced,
                      sample_id)


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child running ``code``; it prints ``ready`` once it holds what the test needs."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"child did not get ready: {line!r} {err}")
    return child


# -- keys --------------------------------------------------------------------------------------------
def test_canonical_json_ignores_dict_order_at_every_depth():
    a = {"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": None}}
    b = {"a": {"x": None, "y": [1, {"p": 2, "q": 1}]}, "b": 1}
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == '{"a":{"x":null,"y":[1,{"p":2,"q":1}]},"b":1}'  # compact, sorted
    assert json.loads(canonical_json(a)) == a


def test_canonical_json_keeps_unicode_unescaped():
    text = canonical_json({"k": "Café 東京 🚀", "rtl": "שלום"})
    assert "Café 東京 🚀" in text and "שלום" in text and "\\u" not in text
    assert json.loads(text) == {"k": "Café 東京 🚀", "rtl": "שלום"}


def test_content_key_is_sha256_hex_and_order_of_dict_keys_does_not_matter():
    key = content_key("stage", {"b": 2, "a": 1})
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == content_key("stage", {"a": 1, "b": 2})
    assert key == hashlib.sha256(b'["stage",{"a":1,"b":2}]').hexdigest()


@pytest.mark.parametrize(("left", "right"), [
    (("a", "b"), ("ab",)),
    (("a", "b"), ("b", "a")),
    (("a", "b"), (["a", "b"],)),
    ((1,), ("1",)),
    ((1,), (1.0,)),
    ((True,), (1,)),
    ((None,), ("",)),
    (({"a": 1},), ({"a": 1, "b": None},)),
    (("é",), ("e\u0301",)),  # no Unicode normalisation: different code points, different key
    ((), ("",)),
])
def test_content_key_differs_for_different_parts(left, right):
    assert content_key(*left) != content_key(*right)


def test_content_key_treats_tuples_as_lists():
    """JSON has one sequence type, so a tuple and a list with the same items are the same content."""
    assert content_key(("a", 1, ("x",))) == content_key(["a", 1, ["x"]])
    assert canonical_json((1, 2)) == canonical_json([1, 2]) == "[1,2]"


def test_content_key_is_the_same_in_another_process():
    """Keys are shared across processes and machines: no hash seed, no object identity."""
    parts = ("response", {"messages": [{"role": "user", "content": "Café"}], "temperature": 0.0})
    code = ("import json, sys; from reflectune.keys import content_key; "
            "print(content_key(*json.loads(sys.argv[1])))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(parts)], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == content_key(*parts)


def test_content_key_refuses_what_json_cannot_say():
    with pytest.raises(TypeError):
        content_key({"a": object()})
    with pytest.raises(TypeError):
        content_key({1, 2})


def test_content_key_of_a_lone_surrogate_is_a_key():
    assert content_key("a\udcff") != content_key("a")


# -- store: calls ------------------------------------------------------------------------------------
def test_call_round_trip_keeps_every_field(tmp_path):
    rec = record(forced=("[Better Answer]", "[End]"), sample_id="row3-abc", content="Réponse\nligne 2")
    with Store(tmp_path / "s.sqlite") as store:
        assert store.get_call("k1") is None
        store.put_call(rec, '{"messages":[]}')
        back = store.get_call("k1")
    assert back == rec
    assert back.forced == ("[Better Answer]", "[End]") and isinstance(back.forced, tuple)
    assert back.ok


def test_failed_call_round_trip_and_ok_property(tmp_path):
    rec = record(status="failed", content=None, prompt_tokens=0, completion_tokens=0,
                 error_kind="http_503", error="HTTP 503: busy (gave up after 3 attempts)")
    with Store(tmp_path / "s.sqlite") as store:
        store.put_call(rec, "{}")
        back = store.get_call("k1")
    assert back == rec and not back.ok
    assert (back.error_kind, back.attempts, back.content) == ("http_503", 3, None)


def test_put_call_with_the_same_key_replaces(tmp_path):
    """A failed call retried with --retry-failed overwrites its failure, leaving one row per key."""
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.put_call(record(status="failed", content=None, error_kind="timeout", error="slow"), "{}")
        store.put_call(record(content="fixed"), "{}")
        assert store.get_call("k1").content == "fixed"
        assert store.call_totals() == {"response:ok": {"calls": 1, "prompt_tokens": 3,
                                                       "completion_tokens": 4}}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1


def test_put_call_stores_the_request_json_as_given(tmp_path):
    path = tmp_path / "s.sqlite"
    request = canonical_json({"messages": [{"role": "user", "content": "Salut"}], "temperature": 0.0})
    with Store(path) as store:
        store.put_call(record(), request)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT request FROM calls WHERE key = 'k1'").fetchone()[0] == request


def test_call_totals_groups_by_stage_and_status(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        assert store.call_totals() == {}
        store.put_call(record("a", stage="instruction", prompt_tokens=10, completion_tokens=5), "{}")
        store.put_call(record("b", stage="instruction", prompt_tokens=1, completion_tokens=2), "{}")
        store.put_call(record("c", stage="response", status="failed", content=None, prompt_tokens=0,
                              completion_tokens=0, error_kind="timeout"), "{}")
        store.put_call(record("d", stage="response", prompt_tokens=7, completion_tokens=0), "{}")
        totals = store.call_totals()
    assert totals == {
        "instruction:ok": {"calls": 2, "prompt_tokens": 11, "completion_tokens": 7},
        "response:failed": {"calls": 1, "prompt_tokens": 0, "completion_tokens": 0},
        "response:ok": {"calls": 1, "prompt_tokens": 7, "completion_tokens": 0},
    }
    assert list(totals) == sorted(totals)


def test_each_put_is_visible_to_another_connection_at_once(tmp_path):
    """Each ``put_*`` commits before returning: a reader sees it while the store is still open."""
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.put_call(record(), "{}")
        store.put_results("scores", [("a", 1.5)])
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert reader.execute("SELECT content FROM calls").fetchall() == [("answer",)]
            assert reader.execute("SELECT value FROM results").fetchall() == [("1.5",)]
        finally:
            reader.close()


def test_store_is_in_wal_mode(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.put_call(record(), "{}")
        assert (tmp_path / "s.sqlite-wal").exists()
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            other.close()


def test_reopen_persists_calls_and_results(tmp_path):
    path = tmp_path / "nested" / "run" / "s.sqlite"  # parent folders are created
    with Store(path) as store:
        store.put_call(record(sample_id="s1"), "{}")
        store.put_results("scores", [("a", {"ifd": 0.5}), ("b", [1, 2])])
    with Store(path) as store:
        assert store.get_call("k1") == record(sample_id="s1")
        assert dict(store.iter_results("scores")) == {"a": {"ifd": 0.5}, "b": [1, 2]}


def test_commits_survive_kill_9(tmp_path):
    path = tmp_path / "s.sqlite"
    code = ("import os, signal, sys\n"
            "from reflectune.store import CallRecord, Store\n"
            "s = Store(sys.argv[1])\n"
            "s.put_call(CallRecord('k1', 'response', 'ok', 'answer', 'stop', 3, 4, 0.25, 1, None, None, (),"
            " ''), '{}')\n"
            "s.put_results('scores', [('a', {'ifd': 0.5})])\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    with Store(path) as store:
        assert store.get_call("k1") == record()
        assert store.get_result("scores", "a") == {"ifd": 0.5}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- store: results ----------------------------------------------------------------------------------
def test_results_are_kept_per_namespace(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.put_results("scores", [("k", 1)])
        store.put_results("verdicts", [("k", "win")])
        assert store.get_result("scores", "k") == 1
        assert store.get_result("verdicts", "k") == "win"
        assert store.get_result("other", "k") is None
        assert store.has_results("scores", ["k"]) == {"k"}
        assert store.has_results("other", ["k"]) == set()
        assert list(store.iter_results("verdicts")) == [("k", "win")]


def test_result_values_round_trip_as_json(tmp_path):
    value = {"ifd": 0.8123456789012345, "text": "Ça 東京", "nested": [{"a": None}], "t": (1, 2)}
    with Store(tmp_path / "s.sqlite") as store:
        store.put_results("n", [("k", value)])
        back = store.get_result("n", "k")
    assert back == {**value, "t": [1, 2]}  # JSON, not pickle: tuples come back as lists
    assert back["ifd"] == 0.8123456789012345


def test_null_result_is_told_apart_from_a_missing_one_by_has_results(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.put_results("n", [("k", None)])
        assert store.get_result("n", "k") is None and store.get_result("n", "missing") is None
        assert store.has_results("n", ["k", "missing"]) == {"k"}


def test_put_results_replaces_the_same_key(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.put_results("n", [("k", 1)])
        store.put_results("n", [("k", 2)])
        assert list(store.iter_results("n")) == [("k", 2)]


def test_has_results_handles_more_keys_than_one_query_can_bind(tmp_path):
    keys = [f"key{i:05d}" for i in range(1234)]
    with Store(tmp_path / "s.sqlite") as store:
        store.put_results("n", ((k, i) for i, k in enumerate(keys)))  # any iterable
        asked = [*keys, *(f"absent{i}" for i in range(100))]
        assert store.has_results("n", iter(asked)) == set(keys)
        assert store.has_results("n", []) == set()
        assert store.has_results("n", keys[500:501]) == {keys[500]}


def test_iter_results_is_ordered_by_key(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.put_results("n", [("b", 2), ("a", 1), ("c", 3)])
        store.put_results("n", [("10", 10), ("9", 9)])
        assert [k for k, _ in store.iter_results("n")] == ["10", "9", "a", "b", "c"]
        assert list(store.iter_results("empty")) == []


def test_put_results_is_all_or_nothing(tmp_path):
    """A batch that fails halfway writes none of its rows, and the store stays usable."""
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.put_results("n", [("old", 0)])
        with pytest.raises(StoreError) as info:
            store.put_results("n", [("a", 1), (["not", "a", "key"], 2)])  # fails on the second row
        assert str(path) in str(info.value)
        with pytest.raises(TypeError):
            store.put_results("n", [("b", 1), ("c", object())])
        assert list(store.iter_results("n")) == [("old", 0)]
        store.put_results("n", [("d", 4)])
        assert dict(store.iter_results("n")) == {"old": 0, "d": 4}


# -- store: schema and bad files ---------------------------------------------------------------------
def test_new_store_is_at_the_latest_schema_version(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 1
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"calls", "results"} <= tables
    Store(path).close()  # reopening does not run the migrations again


def test_plain_sqlite_file_is_migrated_and_its_tables_kept(tmp_path):
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    with Store(path) as store:
        store.put_results("n", [("k", 1)])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT x FROM notes").fetchall() == [("mine",)]
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_store_from_a_newer_version_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(path) in str(info.value) and f"schema {len(MIGRATIONS) + 5}" in str(info.value)
    assert "newer" in str(info.value)


@pytest.mark.parametrize("content", [b"this is not sqlite at all\n" * 50,
                                     b"SQLite format 3\x00" + b"\xff" * 84, b"\x00" * 4096])
def test_non_sqlite_file_is_a_store_error_naming_the_path(tmp_path, content):
    path = tmp_path / "store.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(info.value).startswith(f"{path}: ")
    assert path.read_bytes() == content  # nothing was written over the user's file


def test_corrupted_store_is_a_store_error(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.put_results("n", [(str(i), "x" * 50) for i in range(2000)])
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\x00" * 60 + data[160:])  # smash the header's page fields
    with pytest.raises(StoreError, match=r"malformed|not a database") as info:
        Store(path)
    assert str(path) in str(info.value)


def test_store_path_that_cannot_be_a_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreError) as info:
        Store(tmp_path)  # a folder
    assert str(tmp_path) in str(info.value)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the store") as info:
        Store(blocker / "store.sqlite")  # parent is a file
    assert str(blocker / "store.sqlite") in str(info.value)


# -- run lock ----------------------------------------------------------------------------------------
HOLD_LOCK = ("import sys\nfrom reflectune.store import RunLock\nlock = RunLock(sys.argv[1]).acquire()\n"
             "print('ready', flush=True)\nsys.stdin.read()\n")


def test_lock_file_names_the_holder_pid(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert lock.path == tmp_path / "run" / "run.lock"
        assert lock.path.read_text() == f"reflectune pid {os.getpid()}"


def test_second_process_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = spawn(HOLD_LOCK, str(run))
    try:
        with pytest.raises(StoreError) as info:
            RunLock(run).acquire()
        message = str(info.value)
        assert f"reflectune pid {holder.pid}" in message and str(run) in message
        assert "--run-dir" in message
        code = ("import sys\nfrom reflectune.errors import StoreError\nfrom reflectune.store import RunLock\n"
                "try:\n    RunLock(sys.argv[1]).acquire()\nexcept StoreError as e:\n    print(e)\n"
                "else:\n    print('acquired')\n")
        other = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                               timeout=60)
        assert f"in use by reflectune pid {holder.pid}" in other.stdout, other.stdout + other.stderr
        assert (run / "run.lock").read_text() == f"reflectune pid {holder.pid}"  # refusal rewrote nothing
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_lock_is_freed_when_the_holder_is_killed_with_sigkill(tmp_path):
    run = tmp_path / "run"
    holder = spawn(HOLD_LOCK, str(run))
    with pytest.raises(StoreError):
        RunLock(run).acquire()
    holder.kill()  # SIGKILL: no cleanup code runs in the child
    assert holder.wait(timeout=10) == -9
    with RunLock(run) as lock:  # the stale lock file is still there, but the OS dropped the lock
        assert lock.path.read_text() == f"reflectune pid {os.getpid()}"


def test_holder_that_wrote_no_pid_is_named_another_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import fcntl, sys\nf = open(sys.argv[1] + '/run.lock', 'a+')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    holder = spawn(code, str(run))
    try:
        with pytest.raises(StoreError, match="is in use by another process"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_lock_is_exclusive_within_one_process_and_reusable_after_release(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    first.release()  # idempotent
    second = RunLock(tmp_path).acquire()
    second.release()
    with first:  # the same object can be taken again
        pass


def test_lock_in_an_unusable_folder_is_a_store_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot use the run folder") as info:
        RunLock(blocker).acquire()
    assert str(blocker) in str(info.value)


# -- run folder --------------------------------------------------------------------------------------
def test_run_folder_opens_lock_and_store_and_releases_both(tmp_path):
    run = tmp_path / "runs" / "r1"
    with RunFolder(run) as folder:
        assert folder.store is not None
        folder.store.put_results("n", [("k", 1)])
        assert folder.file("out.jsonl") == run / "out.jsonl"
        assert {p.name for p in run.iterdir()} >= {"store.sqlite", "run.lock"}
        with pytest.raises(StoreError, match="in use"), RunFolder(run):
            pass
        assert folder.store.get_result("n", "k") == 1  # the refused second opener changed nothing
    with RunFolder(run) as again:  # released on exit
        assert again.store.get_result("n", "k") == 1


def test_run_folder_refused_by_another_process_never_opens_the_store(tmp_path):
    run = tmp_path / "run"
    holder = spawn(HOLD_LOCK, str(run))
    try:
        with pytest.raises(StoreError, match=f"pid {holder.pid}"), RunFolder(run):
            pass
        assert not (run / "store.sqlite").exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_run_folder_with_a_bad_store_releases_the_lock(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match=r"store\.sqlite"), RunFolder(tmp_path):
        pass
    RunLock(tmp_path).acquire().release()  # not left locked by the failed open


def test_manifest_sections_merge_and_replace(tmp_path):
    with RunFolder(tmp_path) as folder:
        assert folder.read_manifest() == {}
        folder.update_manifest("recycle", {"status": "running", "rows": 3})
        first = read_manifest(tmp_path)
        folder.update_manifest("score", {"status": "done"})
        folder.update_manifest("recycle", {"status": "done"})
        manifest = folder.read_manifest()
    assert manifest["recycle"] == {"status": "done"}  # a section is replaced whole
    assert manifest["score"] == {"status": "done"}    # other sections are kept
    assert manifest["created_at"] == first["created_at"]
    assert manifest["updated_at"] >= first["updated_at"]
    assert manifest["versions"]["python"] == sys.version.split()[0]
    assert set(manifest) == {"created_at", "updated_at", "versions", "recycle", "score"}


def test_manifest_keeps_foreign_keys_and_unicode(tmp_path):
    (tmp_path / "run.json").write_text('{"note": "kept by hand"}', encoding="utf-8")
    with RunFolder(tmp_path) as folder:
        folder.update_manifest("recycle", {"input": "données.json"})
    text = (tmp_path / "run.json").read_text(encoding="utf-8")
    assert "données.json" in text and text.endswith("\n")
    assert json.loads(text)["note"] == "kept by hand"


def test_manifest_write_leaves_no_temp_file(tmp_path):
    with RunFolder(tmp_path) as folder:
        for i in range(3):
            folder.update_manifest("recycle", {"i": i})
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert read_manifest(tmp_path)["recycle"] == {"i": 2}


def test_failed_manifest_write_keeps_the_old_one_and_no_temp_file(tmp_path):
    with RunFolder(tmp_path) as folder:
        folder.update_manifest("recycle", {"ok": True})
        before = (tmp_path / "run.json").read_bytes()
        with pytest.raises(TypeError):
            folder.update_manifest("recycle", {"bad": object()})
        assert (tmp_path / "run.json").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_manifest_that_cannot_be_replaced_is_a_store_error_and_no_temp_is_left(tmp_path):
    (tmp_path / "run.json").mkdir()
    (tmp_path / "run.json" / "x").write_text("blocks the rename")
    with RunFolder(tmp_path) as folder, pytest.raises(StoreError, match="cannot write") as info:
        folder.update_manifest("recycle", {"a": 1})
    assert str(tmp_path / "run.json") in str(info.value)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("text", ["{not json", "", '{"a": 1', "\x00\x00"])
def test_read_manifest_of_a_broken_file_is_a_store_error(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(StoreError, match="unreadable manifest") as info:
        read_manifest(tmp_path)
    assert str(tmp_path / "run.json") in str(info.value)


def test_read_manifest_of_a_missing_folder_is_empty(tmp_path):
    assert read_manifest(tmp_path / "nope") == {}


def test_read_manifest_of_binary_garbage_is_a_store_error(tmp_path):
    (tmp_path / "run.json").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(StoreError, match="unreadable manifest"):
        read_manifest(tmp_path)


def test_manifest_that_is_not_an_object_is_a_store_error(tmp_path):
    (tmp_path / "run.json").write_text("[1, 2]")
    with RunFolder(tmp_path) as folder, pytest.raises(StoreError, match=r"run\.json"):
        folder.update_manifest("recycle", {"a": 1})


# -- default run folder names ------------------------------------------------------------------------
@pytest.mark.parametrize(("input_path", "oracle", "stage", "expected"), [
    ("data/alpaca.json", "openai:gpt-4o-mini", "", "alpaca-openai_gpt-4o-mini"),
    ("alpaca.json", "embedded", "", "alpaca-embedded"),
    ("alpaca.json", "embedded", "score", "alpaca-embedded-score"),
    ("/abs/path/data.tar.gz", "fake", "", "data-fake"),       # everything after the first dot goes
    ("data/folder", "hf:/models/llama-2", "", "folder-llama-2"),  # a path spec keeps its last part
    (".hidden.json", "embedded", "", "data-embedded"),       # no stem: "data"
    ("x.json", "my model (v2)", "", "x-my_model_v2"),         # runs of odd characters become one "_"
    ("x.json", "::", "", "x"),                                # nothing left of the oracle: dropped
])
def test_default_run_dir_naming(input_path, oracle, stage, expected):
    assert default_run_dir(input_path, oracle, stage) == Path("runs") / expected


@pytest.mark.parametrize(("input_path", "oracle"), [
    ("../../etc/passwd", "openai:../../x"), ("..", "openai:.."), ("a/b/c.json", "hf:/a/b/c/"),
    ("x.json", "openai:a\\b"), ("x.json", "openai:ÿ/é"),
])
def test_default_run_dir_is_one_folder_under_runs(input_path, oracle):
    """Whatever the input and spec, the default never escapes ``runs/`` or nests folders."""
    path = default_run_dir(input_path, oracle)
    assert path.parts[0] == "runs" and len(path.parts) == 2
    assert path.name not in ("", ".", "..") and "/" not in path.name


def test_default_run_dir_is_stable_and_tells_oracles_and_inputs_apart():
    assert default_run_dir("a.json", "openai:gpt-4o") == default_run_dir("a.json", "openai:gpt-4o")
    names = {default_run_dir(i, o) for i in ("a.json", "b.json") for o in ("openai:gpt-4o", "hf:gpt-4o",
                                                                             "embedded")}
    assert len(names) == 6
