"""The run's memory: every oracle call and every score, committed as it arrives.

Resume is a cache lookup: a call's key is a hash of everything that determines its answer, so a
rerun finds finished work and makes only the calls that are missing. SQLite in WAL mode survives a
kill -9 at any instant (a commit is either in the log or not), is readable with any SQLite tool, and
needs no server. Nothing is pickled: payloads are JSON text.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_CALL_COLUMNS = ("key", "stage", "status", "content", "finish_reason", "prompt_tokens",
                 "completion_tokens", "latency_s", "attempts", "error_kind", "error", "forced",
                 "sample_id")


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
    return StoreError(f"{path}: cannot write the store ({hint}); finished work is kept, "
                      "fix the cause and rerun to resume")


class Store:
    """SQLite store of one run. Each ``put_*`` commits before returning."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against process kills
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
            # One harmless write now: a read-only store must fail here, before anything is paid for.
            self._db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the store ({exc.strerror})") from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path} was written by a newer reflectune (schema {version})")
        for index in range(version, len(MIGRATIONS)):
            self._db.executescript(f"BEGIN; {MIGRATIONS[index]} PRAGMA user_version = {index + 1}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- oracle calls -------------------------------------------------------------------------
    def get_call(self, key: str) -> CallRecord | None:
        row = self._db.execute(f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls WHERE key = ?",
                               (key,)).fetchone()
        if row is None:
            return None
        values = dict(zip(_CALL_COLUMNS, row, strict=True))
        values["forced"] = tuple(json.loads(values["forced"] or "[]"))
        return CallRecord(**values)

    def put_call(self, record: CallRecord, request_json: str) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (key, stage, sample_id, status, content, finish_reason,"
                " prompt_tokens, completion_tokens, latency_s, attempts, error_kind, error, forced,"
                " request, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.key, record.stage, record.sample_id, record.status, record.content,
                 record.finish_reason, record.prompt_tokens, record.completion_tokens,
                 record.latency_s, record.attempts, record.error_kind, record.error,
                 json.dumps(list(record.forced)), request_json, time.time()))
        except sqlite3.Error as exc:
            raise _storage_error(self.path, exc) from None

    def call_totals(self) -> dict[str, dict[str, int]]:
        """Per stage and status: number of calls and tokens, for summaries and manifests."""
        out: dict[str, dict[str, int]] = {}
        for stage, status, n, p, c in self._db.execute(
                "SELECT stage, status, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
                " FROM calls GROUP BY stage, status ORDER BY stage, status"):
            out[f"{stage}:{status}"] = {"calls": n, "prompt_tokens": p or 0, "completion_tokens": c or 0}
        return out

    # -- generic JSON results (scores, verdicts) ----------------------------------------------
    def get_result(self, namespace: str, key: str) -> Any | None:
        row = self._db.execute("SELECT value FROM results WHERE namespace = ? AND key = ?",
                               (namespace, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def has_results(self, namespace: str, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(k for (k,) in self._db.execute(
                f"SELECT key FROM results WHERE namespace = ? AND key IN ({marks})", (namespace, *chunk)))
        return found

    def put_results(self, namespace: str, items: Iterable[tuple[str, Any]]) -> None:
        """Commit a batch of results atomically (all or none)."""
        now = time.time()
        rows = [(namespace, key, canonical_json(value), now) for key, value in items]
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise _storage_error(self.path, exc) from None

    def iter_results(self, namespace: str) -> Iterator[tuple[str, Any]]:
        for key, value in self._db.execute(
                "SELECT key, value FROM results WHERE namespace = ? ORDER BY key", (namespace,)):
            yield key, json.loads(value)
