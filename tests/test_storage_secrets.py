"""Storage faults (disk full, read-only folders) and secrets (the API key is never written).

Storage faults are simulated on a real run folder. "Disk full" is ``RLIMIT_FSIZE`` in the recycle
process (with ``SIGXFSZ`` ignored, a write past the limit fails with ``EFBIG`` the way a full disk
fails with ``ENOSPC``). "Read-only" is ``chmod`` for a normal user; these tests often run as root,
which ``chmod`` does not stop, so there the immutable flag (``chattr +i``) is used instead, and a
probe checks that writes are really refused before the test relies on it.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from reflectune.config import EngineConfig, OracleConfig, RecycleConfig
from reflectune.engine.runner import Engine
from reflectune.errors import OracleFatal, RunStopped
from reflectune.oracles import make_oracle
from reflectune.oracles.openai_http import OpenAIOracle
from reflectune.recycling.run import recycle
from reflectune.store.calls import Store
from reflectune.testing.responder import messages_key
from reflectune.testing.server import running_server
from reflectune.types import ChatRequest, Message
from tests.conftest import ALPACA, ROOT, run_cli

SECRET = "sk-reflectune-SECRET-4b9e02c7d1f8"


# -- helpers -----------------------------------------------------------------------------------------
def write_rows(path: Path, n: int, *, bad_row: int | None = None) -> Path:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:n]
    if bad_row is not None:
        rows[bad_row - 1] = {"instruction": rows[bad_row - 1]["instruction"]}  # no output
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def recycle_args(src: Path, out: Path, run: Path, server, *extra: str) -> list[str]:
    return ["recycle", str(src), "-o", str(out), "--oracle", "openai:test", "--base-url", server.base_url,
            "--run-dir", str(run), "--phases", "response", "-q", *extra]


def run_cli_limited(*args: str, max_file_bytes: int) -> subprocess.CompletedProcess[str]:
    """``run_cli`` with every file the process writes capped at ``max_file_bytes`` ("disk full")."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "reflectune", *args], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], proc.stderr


def store_facts(store: Path) -> tuple[str, set[str]]:
    """(integrity_check, server keys of the committed answers), read from a fresh connection."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        requests = [r for (r,) in db.execute("SELECT request FROM calls WHERE status = 'ok'")]
    finally:
        db.close()
    return integrity, {messages_key(json.loads(r)["messages"])[:16] for r in requests}


def delivered(server) -> dict[str, int]:
    return server.stats()["by_key"]


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make ``paths`` unwritable for any process of this user; undone on exit."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        undo = [lambda: [p.chmod(m) for p, m in modes.items()]]
    else:  # root ignores permission bits; the immutable flag binds root too
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a folder read-only")
        made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True)
        undo = [lambda: subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True)]
        if made.returncode != 0:
            undo[0]()
            pytest.skip(f"chattr +i refused here: {made.stderr.strip()}")
    try:
        for p in paths:  # probe: the simulation must really refuse writes
            try:
                if p.is_dir():
                    (p / ".probe").touch()
                    (p / ".probe").unlink()
                else:
                    open(p, "ab").close()
            except OSError:
                continue
            pytest.skip(f"{p} is still writable: no way to simulate a read-only folder here")
        yield
    finally:
        undo[0]()


# -- disk full ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 10-row run, then a 120-row run of the same folder whose files may not pass 200 kB, then a
    rerun without the limit. One call in flight at a time, so the bound on lost answers is exact."""
    tmp = tmp_path_factory.mktemp("diskfull")
    src, run, out = write_rows(tmp / "in.jsonl", 120), tmp / "run", tmp / "out.jsonl"
    with running_server() as server:
        args = recycle_args(src, out, run, server, "--concurrency", "1")
        first = run_cli(*args, "--limit", "10")
        assert first.returncode == 0, first.stderr
        _, before = store_facts(run / "store.sqlite")
        full = run_cli_limited(*args, max_file_bytes=200_000)
        integrity, at_failure = store_facts(run / "store.sqlite")
        delivered_at_failure = delivered(server)
        out_at_failure = out.read_bytes()
        resumed = run_cli(*args)
        final = delivered(server)
    return {"run": run, "out": out, "full": full, "integrity": integrity, "before": before,
            "at_failure": at_failure, "delivered_at_failure": delivered_at_failure, "resumed": resumed,
            "out_at_failure": out_at_failure,
            "final": final}


def test_disk_full_is_a_one_line_error_and_the_store_survives(disk_full):
    assert_one_line_error(disk_full["full"], 3, str(disk_full["run"] / "store.sqlite"),
                          "cannot write the store", "rerun to resume")
    assert disk_full["integrity"] == "ok"
    assert disk_full["before"] <= disk_full["at_failure"], "work committed before the fault was lost"
    assert len(disk_full["at_failure"]) > len(disk_full["before"]), "the fault must land mid-run"
    # the failed run did not touch the previous output (it is replaced only on completion)
    assert len(disk_full["out_at_failure"].splitlines()) == 10


def test_after_disk_full_a_rerun_completes_without_repeating_committed_calls(disk_full):
    assert disk_full["resumed"].returncode == 0, disk_full["resumed"].stderr
    rows = [json.loads(x) for x in disk_full["out"].read_text().splitlines()]
    assert len(rows) == 120 and {r["reflect_status"] for r in rows} == {"A"}
    final = disk_full["final"]
    assert all(final[key] == 1 for key in disk_full["at_failure"]), "a committed call was made again"
    integrity, committed = store_facts(disk_full["run"] / "store.sqlite")
    assert integrity == "ok" and len(committed) == 120


def test_no_call_is_sent_after_the_store_fails(disk_full):
    # with one call in flight, at most that one answer can be lost with the store
    lost = sum(disk_full["delivered_at_failure"].values()) - len(disk_full["at_failure"])
    assert lost <= 1, f"{lost} answers were paid for and lost after the store failed"


# -- read-only folders -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory):
    """A server, and a finished 10-row run whose folder each test then makes read-only its own way."""
    def make(name: str) -> dict[str, Any]:
        tmp = tmp_path_factory.mktemp(name)
        src, run = write_rows(tmp / "in.jsonl", 20), tmp / "run"
        proc = run_cli(*recycle_args(src, tmp / "out.jsonl", run, server, "--limit", "10"))
        assert proc.returncode == 0, proc.stderr
        return {"tmp": tmp, "src": src, "run": run, "server": server}

    with running_server() as server:
        yield make


def test_read_only_run_folder_is_refused_before_any_call(finished_run):
    r = finished_run("ro_folder")
    run, server = r["run"], r["server"]
    _, before = store_facts(run / "store.sqlite")
    server.reset()
    with read_only(run, *run.iterdir()):
        proc = run_cli(*recycle_args(r["src"], r["tmp"] / "out2.jsonl", run, server, "--limit", "20"))
        requests = server.stats()["requests"]
    assert_one_line_error(proc, 3, str(run), "cannot use the run folder")
    assert requests == 0, "nothing may be paid for when the results cannot be kept"
    integrity, after = store_facts(run / "store.sqlite")
    assert integrity == "ok" and after == before and len(after) == 10


@pytest.fixture(scope="module")
def read_only_store(finished_run) -> dict[str, Any]:
    r = finished_run("ro_store")
    run, server = r["run"], r["server"]
    server.reset()
    with read_only(run / "store.sqlite"):
        proc = run_cli(*recycle_args(r["src"], r["tmp"] / "out2.jsonl", run, server, "--limit", "20"))
        stats = server.stats()
    return r | {"proc": proc, "stats": stats}


def test_read_only_store_file_is_a_one_line_error_and_stays_intact(read_only_store):
    run = read_only_store["run"]
    assert_one_line_error(read_only_store["proc"], 3, str(run / "store.sqlite"), "read-only")
    integrity, committed = store_facts(run / "store.sqlite")
    assert integrity == "ok" and len(committed) == 10


def test_read_only_store_file_is_refused_before_any_call(read_only_store):
    assert read_only_store["stats"]["requests"] == 0


def test_unwritable_output_folder_is_a_one_line_error(finished_run):
    r = finished_run("ro_output")
    outdir = r["tmp"] / "outdir"
    outdir.mkdir()
    with read_only(outdir):
        proc = run_cli(*recycle_args(r["src"], outdir / "out.jsonl", r["tmp"] / "run2", r["server"],
                                     "--limit", "5"))
    assert_one_line_error(proc, 3, str(outdir))


# -- secrets -----------------------------------------------------------------------------------------
def assert_no_secret_under(root: Path, secret: str = SECRET) -> int:
    """Scan every file under ``root`` (store, -wal, -shm, manifest, outputs, rejects, temp files)."""
    scanned = 0
    for path in root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the key leaked into {path}"
            scanned += 1
    return scanned


def test_key_never_written_by_killed_resumed_or_rejecting_runs(tmp_path: Path) -> None:
    src = write_rows(tmp_path / "in.jsonl", 60, bad_row=5)
    run, out = tmp_path / "run", tmp_path / "out.jsonl"
    env = {**os.environ, "MY_KEY": SECRET}
    with running_server(require_key=SECRET, latency=0.05) as server:
        args = recycle_args(src, out, run, server, "--api-key-env", "MY_KEY", "--on-bad-record", "skip",
                            "--concurrency", "4")
        killed = subprocess.Popen([sys.executable, "-m", "reflectune", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while not store_has_calls(run / "store.sqlite"):
            assert killed.poll() is None and time.monotonic() < deadline, "the run made no call"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
        killed_out, killed_err = killed.communicate()
        assert (run / "store.sqlite-wal").stat().st_size > 0, "the -wal file must be part of the scan"
        assert assert_no_secret_under(tmp_path) >= 4
        resumed = run_cli(*args, env={"MY_KEY": SECRET})
        auth_failures = server.stats()["faults"].get("auth", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert auth_failures == 0, "the key was not sent"
    assert (run / "rejects.jsonl").exists() and len(out.read_text().splitlines()) == 59
    assert assert_no_secret_under(tmp_path) >= 6
    for text in (killed_out, killed_err, resumed.stdout.encode(), resumed.stderr.encode()):
        assert SECRET.encode() not in text
    manifest = json.loads((run / "run.json").read_text())["recycle"]
    assert manifest["config"]["oracle"]["api_key_env"] == "MY_KEY"


def store_has_calls(store: Path) -> bool:
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] > 0
        finally:
            db.close()
    except sqlite3.Error:
        return False


def test_key_never_in_repr_errors_or_manifest_of_a_refused_run(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MY_KEY", SECRET)
    with running_server(require_key="sk-the-one-the-server-wants") as server:
        oracle = make_oracle("openai:test", base_url=server.base_url, api_key_env="MY_KEY")
        assert SECRET not in repr(oracle) and SECRET not in str(oracle) and SECRET not in oracle.fingerprint()
        config = RecycleConfig(
            oracle=OracleConfig(spec="openai:test", base_url=server.base_url, api_key_env="MY_KEY"),
            engine=EngineConfig(failure_window=5, backoff_base=0.01, concurrency=1), phases=("response",),
            limit=12)
        with pytest.raises(RunStopped) as info:
            recycle(write_rows(tmp_path / "in.jsonl", 12), tmp_path / "out.jsonl", config=config,
                    run_dir=tmp_path / "run")
        assert server.stats()["faults"]["auth"] >= 1  # a 401 is fatal: the run stops at the first
    assert "HTTP 401" in str(info.value)
    for text in (str(info.value), repr(info.value), str(info.value.__cause__), str(info.value.__context__)):
        assert SECRET not in text
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())["recycle"]
    assert manifest["status"] == "stopped" and manifest["config"]["oracle"]["api_key_env"] == "MY_KEY"
    assert assert_no_secret_under(tmp_path) >= 3
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err


async def test_key_echoed_back_by_a_server_is_redacted(tmp_path, monkeypatch):
    """Some proxies echo the Authorization header in their error body; it must not reach the store."""
    async def echo(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"Invalid key: {header}"}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    monkeypatch.setenv("MY_KEY", SECRET)
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    request = ChatRequest((Message("user", "Say hi."),), max_tokens=16)
    try:
        oracle = OpenAIOracle("test", base_url=base_url, api_key_env="MY_KEY")
        with pytest.raises(OracleFatal) as info:  # a 401 stops a run at once
            await oracle.complete([request])
        await oracle.aclose()
        assert "Invalid key" in str(info.value) and SECRET not in str(info.value)
        with Store(tmp_path / "store.sqlite") as store:
            async with Engine(OpenAIOracle("test", base_url=base_url, api_key_env="MY_KEY"), store) as engine:
                record = await engine.call("probe", request)
        assert record.status == "failed" and SECRET not in (record.error or "")
    finally:
        await runner.cleanup()
    assert assert_no_secret_under(tmp_path) >= 1


# -- static checks -----------------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
UNSAFE_CALLS = {"eval", "exec"}
UNSAFE_ATTRS = {("os", "system"), ("os", "popen"), ("yaml", "load"), ("pickle", "load"), ("pickle", "loads")}


def unsafe_uses(source: str, name: str) -> list[str]:
    """Imports of pickle-like modules, eval/exec, os.system/popen, yaml.load and shell=... in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
                found.append(f"{where} {func.id}()")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and (func.value.id, func.attr) in UNSAFE_ATTRS:
                found.append(f"{where} {func.value.id}.{func.attr}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{where} shell=...")
    return found


def test_no_eval_pickle_or_shell_in_the_source():
    files = sorted((ROOT / "src").rglob("*.py"))
    assert len(files) > 20
    found = [hit for path in files
             for hit in unsafe_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not found, "unsafe constructs in src/: " + "; ".join(found)
    # the checker catches each construct it looks for (and not a method named eval)
    probe = ("import pickle\nfrom marshal import loads\neval(x)\nos.system(c)\n"
             "subprocess.run(c, shell=True)\nmodel.eval()\n")
    assert len(unsafe_uses(probe, "probe.py")) == 5
