"""The call executor: every oracle call of every stage goes through ``Engine.call``.

Why one function: resume, limits, retries, cost and failure accounting are then uniform for
recycle, generate and judge. There are no batch barriers: each call is its own task under a
semaphore, so one slow request never holds another up. The order of a call's life:

1. key = sha256(stage, template version, oracle fingerprint, request);
2. a finished call in the store is returned as is (resume); so is a failure that is final
   (deterministic, ``errors.final_failure``); any other stored failure is asked again;
3. stop checks (cost cap, failure rate, a fatal error, an interrupt), then the semaphore and the
   RPM/TPM buckets; a backend that needs one proves its endpoint with a single call first;
4. send, retrying 429/5xx/timeouts/resets with exponential backoff, full jitter and
   ``Retry-After``; never retrying 4xx or context errors;
5. the outcome, success or failure, is committed to the store before the caller sees it.

Once a stop is triggered, calls already in flight finish and are stored; new ones raise
``RunStopped``. A fatal error (bad key, wrong URL or model, no quota, nothing listening before any
call succeeded) triggers it at once. Rerunning the same command resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from reflectune.config import EngineConfig
from reflectune.engine.limits import RateLimiter
from reflectune.errors import Interrupted, OracleError, RateLimited, RunStopped, StoreError, final_failure
from reflectune.keys import canonical_json
from reflectune.logs import CALLS, get_logger
from reflectune.oracles.base import Oracle, Prices
from reflectune.oracles.pricing import cost_usd, with_overrides
from reflectune.store.calls import CallRecord, Store
from reflectune.types import ChatRequest

DEFAULT_CONCURRENCY = 64
log = get_logger(__name__)


class _Unset:
    """Marks an argument left out (``None`` is a meaningful price: unknown)."""


UNSET = _Unset()


@dataclass
class EngineStats:
    """Live counters; the CLI reads them for its progress display."""

    started: float = field(default_factory=time.monotonic)
    sent: int = 0               # calls completed over the wire in this process
    cached: int = 0             # calls answered from the store
    failed: int = 0             # calls that ended failed in this process
    retries: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0   # of completion_tokens, those a reasoning model spent reasoning
    cost: float = 0.0
    cost_known: bool = True
    usage_estimated: int = 0    # calls whose server sent no usable token counts (estimated instead)
    requests: int = 0           # requests sent to the oracle (every attempt counts)
    failures_by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "started"} | {
            "elapsed_s": round(time.monotonic() - self.started, 3)}


class Engine:
    """Runs oracle calls under limits, with retries, caching every outcome in ``store``.

    Example::

        async with Engine(oracle, store, EngineConfig(concurrency=256, rpm=3000)) as engine:
            record = await engine.call("response", request, version="response@1")
    """

    def __init__(self, oracle: Oracle, store: Store, config: EngineConfig | None = None, *,
                 prices: Prices | _Unset | None = UNSET,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.oracle = oracle
        self.store = store
        self.config = config or EngineConfig()
        if isinstance(prices, _Unset):  # the backend's own price, unless the config overrides it
            prices = with_overrides(oracle.capabilities.price, self.config.price_in, self.config.price_out)
        self.prices = prices
        self.stats = EngineStats(cost_known=prices is not None)
        concurrency = self.config.concurrency or oracle.capabilities.concurrency or DEFAULT_CONCURRENCY
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._limiter = RateLimiter(self.config.rpm, self.config.tpm)
        self._recent: deque[bool] = deque(maxlen=self.config.failure_window)
        self._fingerprint = oracle.fingerprint()
        self._sleep = sleep
        self.stop_reason: str | None = None
        #: set when a signal asked the run to stop (the stop is then an interruption, exit 130)
        self.interrupted_by: str | None = None
        self.interrupt_code = 130
        self._store_error: StoreError | None = None
        self._succeeded = False
        #: calls of this run that are failed right now, by key (a later success removes one)
        self.failed: dict[str, CallRecord] = {}
        # Until one call has come back, a backend that can be misconfigured sends that call alone:
        # a wrong key or URL then costs one request, not a whole concurrency's worth.
        self._proven = asyncio.Event()
        if not oracle.capabilities.preflight:
            self._proven.set()
        self._probing = False
        self._waited = False

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.oracle.aclose()

    def key_for(self, stage: str, request: ChatRequest, version: str,
                request_json: str | None = None) -> str:
        """sha256 over (stage, template version, oracle fingerprint) and the canonical request."""
        head = canonical_json([stage, version, self._fingerprint])
        body = request_json if request_json is not None else canonical_json(request.to_json())
        # surrogatepass: a lone surrogate in the data must not crash the key (and no valid key changes)
        return hashlib.sha256(f"{head}\n{body}".encode("utf-8", "surrogatepass")).hexdigest()

    async def call(self, stage: str, request: ChatRequest, *, version: str = "",
                   sample_id: str = "") -> CallRecord:
        """Answer ``request`` from the store or the oracle; failures come back as records."""
        request_json = canonical_json(request.to_json())  # serialised once: key and store
        key = self.key_for(stage, request, version, request_json)
        cached = self._from_store(key)
        if cached is not None:
            return cached
        self._check_stop()
        probe = await self._preflight()
        if not probe and self._waited:
            cached = self._from_store(key)  # the first call may have answered this very request
            if cached is not None:
                return cached
        try:
            async with self._slots:
                self._check_stop()
                self.stats.in_flight += 1
                try:
                    record = await self._send(key, stage, request, sample_id)
                finally:
                    self.stats.in_flight -= 1
        finally:
            if probe:  # whatever happened to it, the waiting calls go on (or see the stop)
                self._proven.set()
        try:
            self.store.put_call(record, request_json)
        except StoreError as exc:
            # Sticky: an answer that cannot be stored is money lost, so no new call may start.
            self._store_error = exc
            raise
        self._account(record)
        if CALLS.handlers:  # one line per finished call, to the run's log.txt (and -vv)
            CALLS.debug("%s %s %s sample=%s attempts=%d latency=%.3fs tokens=%d/%d%s", stage, key[:16],
                             record.status, sample_id or "-", record.attempts, record.latency_s,
                             record.prompt_tokens, record.completion_tokens,
                             f" {record.error_kind}: {record.error}" if record.error else "")
        return record

    def _from_store(self, key: str) -> CallRecord | None:
        """A finished call, or a failure that is final (unless ``--retry-failed``); else ``None``."""
        cached = self.store.get_call(key)
        if cached is None or not (cached.ok or (final_failure(cached.error_kind)
                                                and not self.config.retry_failed)):
            return None
        self.stats.cached += 1
        if not cached.ok:
            self.failed[key] = cached
        return cached

    async def _preflight(self) -> bool:
        """Let the first call through alone (it returns True); the others wait until it is back."""
        if self._proven.is_set():
            return False
        if not self._probing:
            self._probing = True
            return True
        self._waited = True
        await self._proven.wait()
        self._check_stop()
        return False

    def interrupt(self, reason: str) -> None:
        """Stop starting calls (a signal arrived); calls on the wire finish and are stored."""
        if self.interrupted_by is None:
            self.interrupted_by = reason
            log.warning("stop: %s", reason)
        self._proven.set()

    def _check_stop(self) -> None:
        if self._store_error is not None:
            raise self._store_error
        if self.interrupted_by is not None:
            raise Interrupted(self.interrupted_by)
        if self.stop_reason is None and self.config.max_cost is not None \
                and self.stats.cost >= self.config.max_cost:
            self.stop_reason = (f"cost cap reached (${self.stats.cost:.4f} >= ${self.config.max_cost:.4f}); "
                                "rerun with a higher --max-cost to resume")
            log.warning("stop: %s", self.stop_reason)
        if self.stop_reason is not None:
            raise RunStopped(self.stop_reason)

    def _estimate_tokens(self, request: ChatRequest) -> int:
        chars = sum(len(m.content) for m in request.messages)
        return chars // 4 + (request.max_tokens or 512)

    def _over_context(self, request: ChatRequest) -> str | None:
        """Why a prompt cannot fit the model's known window, or ``None`` (then it is sent)."""
        if not self.oracle.capabilities.context_known:
            return None
        context = self.oracle.context
        chars = sum(len(m.content) for m in request.messages)
        if chars < context // 4:  # a token is at most 4 bytes of text: this prompt fits, no counting
            return None
        messages = request.messages
        tokens = sum(self.oracle.count_tokens(m.content) for m in messages) + 4 * len(messages)
        if tokens < context:
            return None
        return (f"the prompt is {tokens:,} tokens, the model's context {context:,}: not sent "
                "(shorten the input, or pass the real window with --context)")

    async def _send(self, key: str, stage: str, request: ChatRequest, sample_id: str) -> CallRecord:
        too_long = self._over_context(request)
        if too_long is not None:  # deterministic: a final failure, and nothing is paid for it
            return CallRecord(key, stage, "failed", None, None, 0, 0, 0.0, 0, "over_context", too_long, (),
                              sample_id)
        attempts = 0
        while True:
            attempts += 1
            await self._limiter.acquire(self._estimate_tokens(request))
            if attempts > 1:
                self._check_stop()  # a retry is a new request: none starts after a stop
            self.stats.requests += 1
            try:
                [completion] = await self.oracle.complete([request])
            except OracleError as exc:
                # "nothing listening" is fatal only while no call has ever succeeded: later, it is
                # a server restarting, and worth the usual retries
                refused_later = exc.kind == "connection_refused" and self._succeeded
                retryable = exc.retryable or refused_later
                if exc.fatal and not refused_later:
                    self._fatal(exc)
                if not retryable or attempts >= self.config.max_attempts or self.stop_reason is not None:
                    reason = str(exc) if not retryable else f"{exc} (gave up after {attempts} attempts)"
                    log.warning("%s call %s (sample %s) failed: %s: %s", stage, key[:16], sample_id or "-",
                                exc.kind, reason)
                    return CallRecord(key, stage, "failed", None, None, 0, 0, 0.0, attempts,
                                      exc.kind, reason, (), sample_id)
                self.stats.retries += 1
                wait = self._backoff(attempts, exc)
                log.info("%s call %s (sample %s) attempt %d: %s: %s; retrying in %.2f s", stage, key[:16],
                         sample_id or "-", attempts, exc.kind, exc, wait)
                await self._sleep(wait)
                continue
            self._succeeded = True
            if getattr(completion, "usage_estimated", False):
                self.stats.usage_estimated += 1
            return CallRecord(key, stage, "ok", completion.content, completion.finish_reason,
                              completion.prompt_tokens, completion.completion_tokens,
                              completion.latency_s, attempts, None, None, completion.forced, sample_id,
                              getattr(completion, "reasoning", None),
                              getattr(completion, "reasoning_tokens", 0))

    def _fatal(self, exc: OracleError) -> None:
        if self.stop_reason is None:
            self.stop_reason = (f"{exc}: no call can succeed as configured, so the run stopped at the "
                                "first failed call; fix it and rerun to resume (finished calls are kept, "
                                "failed ones are asked again)")
            log.warning("stop: %s", self.stop_reason)

    def _backoff(self, attempt: int, exc: OracleError) -> float:
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return min(exc.retry_after, self.config.backoff_max) + random.uniform(0, 0.1)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter spreads synchronised retries

    def _account(self, record: CallRecord) -> None:
        stats = self.stats
        stats.prompt_tokens += record.prompt_tokens
        stats.completion_tokens += record.completion_tokens
        stats.reasoning_tokens += record.reasoning_tokens  # already in completion_tokens: priced once
        stats.cost += cost_usd(self.prices, record.prompt_tokens, record.completion_tokens)
        if record.ok:
            stats.sent += 1
            self.failed.pop(record.key, None)
        else:
            self.failed[record.key] = record
            stats.failed += 1
            kind = record.error_kind or "error"
            stats.failures_by_kind[kind] = stats.failures_by_kind.get(kind, 0) + 1
        self._recent.append(not record.ok)
        window = self._recent
        if (self.stop_reason is None and len(window) >= (window.maxlen or 0)
                and sum(window) / len(window) > self.config.max_failure_rate):
            self.stop_reason = (
                f"{sum(window)} of the last {len(window)} calls failed (more than "
                f"{self.config.max_failure_rate:.0%}; last: {record.error}); "
                "fix the cause and rerun to resume (failed calls are asked again unless final; "
                "--retry-failed asks them all)")
            log.warning("stop: %s", self.stop_reason)
