"""How reflectune logs: standard ``logging``, a ``log.txt`` in every run folder, ``-v`` to stderr.

A run's folder keeps the story of every run made in it (``log.txt``, appended): when it opened and
closed, each stage's settings, every finished call (key, sample, status, attempts, latency), every
retry with its reason, stops and decisions. The terminal shows it only when asked (``-v`` info,
``-vv`` debug), so the live display stays clean.

Never a key: the code logs no credential, and as a second line of defence every handler installed
here passes records through :class:`Redact`, which masks the values registered with
:func:`secret` (an oracle registers its API key and header values when it reads them).

Library users get nothing on their terminal unless they configure logging themselves; the run
folder's file is a product feature and is always written. L1: stdlib only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from reflectune.contracts import LOG_FILE

ROOT = "reflectune"
#: one line per finished oracle call: to the run's file (and ``-vv``) only, never to the user's own
#: handlers, so a library user's ``basicConfig`` is not flooded with thousands of lines
CALLS = logging.getLogger(f"{ROOT}.calls")
CALLS.propagate = False
CALLS.setLevel(logging.DEBUG)
FORMAT = "%(asctime)s.%(msecs)03d %(process)d %(levelname)-7s %(name)s: %(message)s"
DATE = "%Y-%m-%dT%H:%M:%S"

_secrets: set[str] = set()
_lock = threading.Lock()
#: open run logs: path -> (handler, nesting depth)
_files: dict[Path, tuple[logging.Handler, int]] = {}
#: the reflectune logger's level before the first run log opened, restored when the last closes
_level_before: list[int] = []


def get_logger(name: str) -> logging.Logger:
    """The logger of a module (``reflectune.<...>``)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def secret(value: str | None) -> None:
    """Mask ``value`` in everything logged from now on (a key, a header value)."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


class Redact(logging.Filter):
    """Replace every registered secret in a record's final message with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            masked = message
            for value in tuple(_secrets):
                masked = masked.replace(value, "***")
            if masked is not message:
                record.msg, record.args = masked, None
        return True


def _handler(handler: logging.Handler, level: int) -> logging.Handler:
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT, DATE))
    handler.addFilter(Redact())
    return handler


def _lower_to(level: int) -> None:
    logger = logging.getLogger(ROOT)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)


def console(verbosity: int) -> None:
    """``-v`` (info) or ``-vv`` (debug, each call too) to stderr; 0 installs nothing."""
    if verbosity <= 0:
        return
    level = logging.INFO if verbosity == 1 else logging.DEBUG
    handler = _handler(logging.StreamHandler(sys.stderr), level)
    logging.getLogger(ROOT).addHandler(handler)
    if verbosity >= 2:
        CALLS.addHandler(handler)
    _lower_to(level)


@contextlib.contextmanager
def run_log(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Append everything logged while the block runs to ``FOLDER/log.txt`` (nested opens share it)."""
    path = Path(folder).resolve() / LOG_FILE
    with _lock:
        root = logging.getLogger(ROOT)
        if not _files:
            _level_before[:] = [root.level]
            _lower_to(logging.INFO)
        handler, depth = _files.get(path, (None, 0))
        if handler is None:
            handler = _handler(logging.FileHandler(path, mode="a", encoding="utf-8", delay=True),
                               logging.DEBUG)
            root.addHandler(handler)
            CALLS.addHandler(handler)
        _files[path] = (handler, depth + 1)
    try:
        yield
    finally:
        with _lock:
            handler, depth = _files.pop(path)
            if depth > 1:
                _files[path] = (handler, depth - 1)
            else:
                root.removeHandler(handler)
                CALLS.removeHandler(handler)
                handler.close()
                if not _files and _level_before:
                    root.setLevel(_level_before.pop())
