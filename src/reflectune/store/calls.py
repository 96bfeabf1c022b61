"""The run's memory: every oracle call and every score, committed as it arrives.

Resume is a cache lookup: a call's key is a hash of everything that determines its answer, so a
rerun finds finished work and makes only the calls that are missing. SQLite in WAL mode survives a
kill -9 at any instant (a commit is either in the log or not), is readable with any SQLite tool, and
needs no server. Nothing is pickled: payloads are JSON text.

Opening a store checks it (``PRAGMA quick_check``) before anything is written to it: a damaged file
is a one-line ``StoreError`` with the way to recover it, never a traceback and never a fresh start.
Text that UTF-8 cannot hold (a lone surrogate such as ``"\\ud800"`` in a server's answer) is stored
as a BLOB of its ``surrogatepass`` bytes and read back as the same ``str``; every other string is
stored as the same TEXT as before.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from reflectune.errors import StoreError
from reflectune.keys import canonical_json

# Numbered migrations: index i brings the schema from version i to i + 1. Append only.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE calls (
        key TEXT PRIMARY KEY,
        stage TEXT NOT NULL,
        sample_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,              -- ok | failed
        content TEXT,
        finish_reason TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 1,
        error_kind TEXT,
        error TEXT,
        forced TEXT,                       -- JSON list of markers a local backend wrote
        request TEXT NOT NULL,             -- canonical JSON of the request
        created_at REAL NOT NULL
    );
    CREATE INDEX calls_stage ON calls(stage, status);
    CREATE TABLE results (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,               -- JSON
        created_at REAL NOT NULL,
        PRIMARY KEY (namespace, key)
    );
    """,
    # 2: a reasoning model's reasoning, kept beside the answer it was split from (never parsed), and
    # its tokens (a part of completion_tokens). Rows written before read as no reasoning.
    """
    ALTER TABLE calls ADD COLUMN reasoning TEXT;
    ALTER TABLE calls ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
    """,
]


@dataclass(frozen=True, slots=True)
class CallRecord:
    key: str
    stage: str
    status: str
    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    error_kind: str | None
    error: str | None
    forced: tuple[str, ...]
    sample_id: str = ""
    #: the reasoning a reasoning model sent apart from ``content`` (None: none, or an older row)
    reasoning: str | None = None
    #: of ``completion_tokens``, those spent on reasoning
    reasoning_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_CALL_COLUMNS = ("key", "stage", "status", "content", "finish_reason", "prompt_tokens",
                 "completion_tokens", "latency_s", "attempts", "error_kind", "error", "forced",
                 "sample_id", "reasoning", "reasoning_tokens")


def recovery_hint(path: Path, *, missing: bool = False) -> str:
    """How to get a damaged or lost store back, for the end of a one-line error.

    A recovered store goes into a new run folder: this folder's manifest records calls it may lack.
    """
    recover = "" if missing else (
        f", or recover what it holds (in {path.parent}: `sqlite3 {path.name} .recover | sqlite3 "
        f"recovered.sqlite`) and rerun with a new --run-dir holding recovered.sqlite as its "
        f"{path.name} (only the lost calls are made again)")
    return (f"to keep its calls, restore {path.name} from a backup{recover}; or start over with a new "
            "--run-dir")


def damaged_error(path: Path, detail: str) -> StoreError:
    detail = " ".join(detail.split())[:200]  # one line, whatever sqlite said
    return StoreError(f"{path}: the store is damaged ({detail}); {recovery_hint(path)}")


def _is_damage(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    return (name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            or "malformed" in text or "not a database" in text)


def _blobs(params: Iterable[Any]) -> tuple[Any, ...]:
    """``params`` with each str that UTF-8 cannot hold (lone surrogates) as its surrogatepass bytes."""
    out: list[Any] = []
    for value in params:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                value = value.encode("utf-8", "surrogatepass")
        out.append(value)
    return tuple(out)


def _text(value: Any) -> Any:
    """A value read back: a BLOB written by ``_blobs`` is the str it was."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def _storage_error(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        hint = "the run folder is read-only"
    elif "full" in text:
        hint = "the disk is full"
    elif "locked" in text:
        hint = "the database is locked by another process"
    else:
        hint = text
    if _is_damage(exc):
        return damaged_error(path, text)
    return StoreError(f"{path}: cannot write the store ({hint}); finished work is kept, "
                      "fix the cause and rerun to resume")


def _read_error(path: Path, exc: sqlite3.Error) -> StoreError:
    if _is_damage(exc):
        return damaged_error(path, str(exc))
    return StoreError(f"{path}: cannot read the store ({exc}); finished work is kept, "
                      "fix the cause and rerun to resume")


class Store:
    """SQLite store of one run. Each ``put_*`` commits before returning.

    Opening runs ``PRAGMA quick_check`` (a read of every page, no index cross-checks) before the first
    write: a damaged file raises ``StoreError`` naming it and the way to recover it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            self._check()
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable against process kills
            self._migrate()
            # One harmless write now: a read-only store must fail here, before anything is paid for.
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(self.path, exc) from None
            if isinstance(exc, OSError):
                raise StoreError(f"{self.path}: cannot open the store ({exc.strerror or exc})") from None
            raise

    def _check(self) -> None:
        """``PRAGMA quick_check``: anything but ``ok`` is a damaged store."""
        rows = self._db.execute("PRAGMA quick_check(5)").fetchall()
        problems = [str(row[0]) for row in rows]
        if problems != ["ok"]:
            raise damaged_error(self.path, "; ".join(problems) or "quick_check gave no answer")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path} was written by a newer reflectune (schema {version})")
        for index in range(version, len(MIGRATIONS)):
            self._db.executescript(f"BEGIN; {MIGRATIONS[index]} PRAGMA user_version = {index + 1}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def call_count(self) -> int:
        """Number of calls stored (a count over the primary key: milliseconds for 200k calls)."""
        try:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from None

    def _execute(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """Execute with ``params``; text with lone surrogates goes in as BLOB (see ``_blobs``)."""
        try:
            return self._db.execute(sql, params)
        except UnicodeEncodeError:
            return self._db.execute(sql, _blobs(params))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- oracle calls -------------------------------------------------------------------------
    def get_call(self, key: str) -> CallRecord | None:
        try:
            row = self._execute(f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls WHERE key = ?",
                                (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from None
        if row is None:
            return None
        values = dict(zip(_CALL_COLUMNS, map(_text, row), strict=True))
        values["forced"] = tuple(json.loads(values["forced"] or "[]"))
        return CallRecord(**values)

    def put_call(self, record: CallRecord, request_json: str) -> None:
        try:
            self._execute(
                "INSERT OR REPLACE INTO calls (key, stage, sample_id, status, content, finish_reason,"
                " prompt_tokens, completion_tokens, latency_s, attempts, error_kind, error, forced,"
                " request, created_at, reasoning, reasoning_tokens)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.key, record.stage, record.sample_id, record.status, record.content,
                 record.finish_reason, record.prompt_tokens, record.completion_tokens,
                 record.latency_s, record.attempts, record.error_kind, record.error,
                 json.dumps(list(record.forced)), request_json, time.time(), record.reasoning,
                 record.reasoning_tokens))
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from None

    def call_totals(self) -> dict[str, dict[str, int]]:
        """Per stage and status: number of calls and tokens, for summaries and manifests."""
        out: dict[str, dict[str, int]] = {}
        try:
            rows = self._db.execute(
                "SELECT stage, status, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
                " FROM calls GROUP BY stage, status ORDER BY stage, status").fetchall()
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from None
        for stage, status, n, p, c in rows:
            out[f"{_text(stage)}:{_text(status)}"] = {"calls": n, "prompt_tokens": p or 0,
                                                      "completion_tokens": c or 0}
        return out

    # -- generic JSON results (scores, verdicts) ----------------------------------------------
    def get_result(self, namespace: str, key: str) -> Any | None:
        try:
            row = self._execute("SELECT value FROM results WHERE namespace = ? AND key = ?",
                                (namespace, key)).fetchone()
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from None
        return None if row is None else json.loads(_text(row[0]))

    def has_results(self, namespace: str, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            try:
                rows = self._execute(f"SELECT key FROM results WHERE namespace = ? AND key IN ({marks})",
                                     (namespace, *chunk)).fetchall()
            except sqlite3.Error as exc:
                raise _read_error(self.path, exc) from None
            found.update(cast(str, _text(k)) for (k,) in rows)
        return found

    def put_results(self, namespace: str, items: Iterable[tuple[str, Any]]) -> None:
        """Commit a batch of results atomically (all or none)."""
        now = time.time()
        rows = [(namespace, key, canonical_json(value), now) for key, value in items]
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?)", rows)
            except UnicodeEncodeError:  # same rows again, lone surrogates as BLOBs (replaces any done)
                self._db.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?)",
                                     [_blobs(row) for row in rows])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise _storage_error(self.path, exc) from None

    def iter_results(self, namespace: str) -> Iterator[tuple[str, Any]]:
        try:
            rows = self._execute("SELECT key, value FROM results WHERE namespace = ? ORDER BY key",
                                 (namespace,))
            for key, value in rows:
                yield _text(key), json.loads(_text(value))
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from None
