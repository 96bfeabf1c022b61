"""Chat completions over HTTP against any OpenAI-compatible server.

OpenAI, vLLM, llama.cpp, Ollama, SGLang and TGI all speak this protocol. aiohttp with one shared
session: measured 2,244 calls/s at 256 in flight on 2 cores, against 634 for the openai SDK
(DESIGN.md). The engine bounds concurrency, so the connector itself is unbounded.

This module only translates: HTTP statuses and transport failures become typed ``OracleError``s,
and the engine decides what to retry. The API key is read from the environment variable the user
names, held privately, and never appears in ``repr``, errors or the fingerprint.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from reflectune.errors import (
    ConfigError,
    OracleRejected,
    OracleTimeout,
    OracleUnavailable,
    RateLimited,
)
from reflectune.oracles.base import Capabilities
from reflectune.oracles.pricing import list_price
from reflectune.oracles.tokens import approx_tokens, exact_tokens_available
from reflectune.types import ChatRequest, Completion

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONTEXT = 8192
_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens",
                  "context window", "prompt is too long")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_message(body: str) -> str:
    try:
        detail = json.loads(body).get("error", {})
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
    except (ValueError, AttributeError):
        message = body
    return " ".join(str(message or "").split())[:300]


class OpenAIOracle:
    """An OpenAI-compatible endpoint. Spec: ``openai:MODEL``.

    Example::

        oracle = OpenAIOracle("gpt-4o-mini")                       # key from $OPENAI_API_KEY
        oracle = OpenAIOracle("qwen2.5", base_url="http://localhost:8000/v1")   # vLLM, no key
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, context: int | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        if not model:
            raise ConfigError("the openai oracle needs a model: --oracle openai:MODEL")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.context = context or DEFAULT_CONTEXT
        self.timeout = timeout
        self.__key = os.environ.get(api_key_env) or None
        if self.__key is None and self.base_url == DEFAULT_BASE_URL:
            raise ConfigError(f"no API key: set the environment variable {api_key_env} "
                              "(or point --base-url at a local server)")
        self._session = session
        self._owns_session = session is None
        self._url = f"{self.base_url}/chat/completions"
        self.capabilities = Capabilities(prefill=False, exact_tokens=exact_tokens_available(model),
                                         price=list_price(model))

    @classmethod
    def from_spec(cls, arg: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                  timeout: float = 120.0, context: int | None = None,
                  session: aiohttp.ClientSession | None = None) -> OpenAIOracle:
        return cls(arg, base_url=base_url, api_key_env=api_key_env, timeout=timeout,
                   context=context, session=session)

    def __repr__(self) -> str:
        return f"OpenAIOracle(model={self.model!r}, base_url={self.base_url!r})"

    def fingerprint(self) -> str:
        # The URL is left out on purpose: a local server restarted on another port must still
        # resume the same run. The model name identifies the answers.
        return f"openai:{self.model}"

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text, self.model)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        return headers

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers(),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._owns_session = True
        return self._session

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    async def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return [await self._one(request) for request in requests]

    async def _one(self, request: ChatRequest) -> Completion:
        session = self._session_now()
        started = time.monotonic()
        headers = None if self._owns_session else self._headers()  # injected sessions
        try:
            async with session.post(self._url, json=self._payload(request), headers=headers) as resp:
                body = await resp.text()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise OracleTimeout(f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise OracleUnavailable(f"connection failed: {type(exc).__name__}", kind="connection") from None
        if status != 200:  # some proxies echo the key back in an error body: never keep it
            raise self._status_error(status, body.replace(self.__key, "[key]") if self.__key else body,
                                     retry_after)
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise OracleUnavailable("malformed response body", kind="malformed") from None
        return Completion(
            content=content,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=time.monotonic() - started,
        )

    @staticmethod
    def _status_error(status: int, body: str, retry_after: str | None) -> Exception:
        message = _error_message(body)
        if status == 429:
            return RateLimited(f"HTTP 429: {message}", retry_after=_retry_after(retry_after))
        if status == 408:
            return OracleTimeout(f"HTTP 408: {message}")
        if status >= 500:
            return OracleUnavailable(f"HTTP {status}: {message}", kind=f"http_{status}")
        if any(hint in message.lower() for hint in _CONTEXT_HINTS):
            return OracleRejected(f"HTTP {status}: {message}", kind="context_length")
        return OracleRejected(f"HTTP {status}: {message}", kind=f"http_{status}")

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)
