"""One exception tree for the whole package.

Callers catch ``ReflectuneError`` to tell user-facing failures (bad input, bad config, an oracle
that refuses) from programming errors. The CLI turns every ``ReflectuneError`` into a one-line
message and an exit code, never a traceback.

    ReflectuneError
    ├── ConfigError              bad option, unknown key, missing model          exit 2
    ├── DataError                bad input file / row / field                    exit 2
    ├── StoreError               run folder unusable: locked, read-only, full    exit 3
    ├── ParseError               oracle output that does not follow the format
    ├── RunStopped               a clean, resumable stop (cost cap, failure rate) exit 4
    │   └── Interrupted          a signal asked the run to stop                   exit 130
    └── OracleError              a call that did not produce a completion
        ├── RateLimited          429; carries ``retry_after``                    retried
        ├── OracleTimeout        no answer in time                               retried
        ├── OracleUnavailable    5xx, reset connection, garbled body             retried
        ├── OracleFatal          401/403/404, no quota, nothing listening        stops the run at once
        └── OracleRejected       400, context too long, content filter           final: never retried

Which failures a plain rerun asks again is one rule, ``final_failure(kind)``: only deterministic
outcomes (the same request would fail the same way) stay final in the store; everything else (auth,
a wrong URL, timeouts, 5xx, rate limits that ran out of attempts) is retried by the next run.

How a run that ended on an exception is recorded in ``run.json`` is one rule too, ``stop_status(exc)``,
shared by the engine's stages and by training (which runs no engine).
"""

from __future__ import annotations


class ReflectuneError(Exception):
    """Base of every error reflectune raises on purpose."""

    exit_code = 1


class ConfigError(ReflectuneError):
    exit_code = 2


class DataError(ReflectuneError):
    """Bad input. The message names the file, the row (1-based) and the field."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.row, self.field, self.reason = path, row, field, message
        where = [p for p in (path, f"row {row}" if row is not None else None,
                             f"field '{field}'" if field else None) if p]
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class StoreError(ReflectuneError):
    exit_code = 3


class ParseError(ReflectuneError):
    pass


class RunStopped(ReflectuneError):
    """Raised to stop a run cleanly; rerunning the same command resumes it."""

    exit_code = 4


class Interrupted(RunStopped):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the run; calls on the wire were finished and kept."""

    exit_code = 130


class OracleError(ReflectuneError):
    #: worth another attempt within this run (with backoff)
    retryable = False
    #: no call can succeed until the user fixes the cause: the run stops new calls at once
    fatal = False

    def __init__(self, message: str, *, kind: str = "error") -> None:
        self.kind = kind
        super().__init__(message)


class RateLimited(OracleError):
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, kind="rate_limited")


class OracleTimeout(OracleError):
    retryable = True

    def __init__(self, message: str = "request timed out") -> None:
        super().__init__(message, kind="timeout")


class OracleUnavailable(OracleError):
    retryable = True


class OracleFatal(OracleError):
    """The endpoint cannot answer any call as configured (bad key, wrong route or model, no quota)."""

    retryable = False
    fatal = True


class OracleRejected(OracleError):
    """This request cannot succeed as it is (context too long, a content filter, a bad field)."""

    retryable = False


#: Failure kinds that are deterministic: the same request would fail the same way again.
FINAL_KINDS = frozenset({"context_length", "content_filter", "rejected", "over_context",
                         # the server answered, with something no retry of the same request fixes
                         "invalid_response", "too_large"})
#: 4xx statuses that say nothing about the request itself (auth, route, timeout, rate): not final.
_TRANSIENT_4XX = frozenset({401, 403, 404, 408, 409, 425, 429})


def final_failure(kind: str | None) -> bool:
    """Whether a stored failure of ``kind`` stays final on a plain rerun (``--retry-failed`` retries all)."""
    if kind is None:
        return False
    if kind in FINAL_KINDS:
        return True
    if kind.startswith("http_4") and kind[5:].isdigit():
        return int(kind[5:]) not in _TRANSIENT_4XX
    return False


def stop_status(exc: BaseException) -> str:
    """``stopped`` for a clean stop the tool chose (resumable), ``interrupted`` for anything else
    (a signal, Ctrl-C, an unexpected error)."""
    if isinstance(exc, Interrupted) or not isinstance(exc, ReflectuneError):
        return "interrupted"
    return "stopped"
