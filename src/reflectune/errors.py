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
    └── OracleError              a call that did not produce a completion
        ├── RateLimited          429; carries ``retry_after``                    retried
        ├── OracleTimeout        no answer in time                               retried
        ├── OracleUnavailable    5xx, reset connection, garbled body             retried
        └── OracleRejected       400/401/403/404, context too long               never retried
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


class OracleError(ReflectuneError):
    retryable = False

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


class OracleRejected(OracleError):
    retryable = False
