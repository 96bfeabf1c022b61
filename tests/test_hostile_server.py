"""A hostile or unfamiliar server cannot crash a run, flood its memory, redirect it, or get its key.

Every response shape the loopback server's hostile modes send (``HOSTILE_MODES``) goes through the
real ``OpenAIOracle`` over real HTTP: nothing but an ``OracleError`` with the expected kind escapes,
and the message keeps the server's own words without a credential. Through the ``Engine`` each
outcome is a record in a real ``Store``. Shapes the loopback server has no mode for are served by a
small aiohttp app in this file (``scripted``). The identity of an endpoint (fingerprint), URL
redaction in configs, which key goes where, and plain-http refusal are checked here too.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from reflectune.config import EngineConfig, OracleConfig, RecycleConfig, merged
from reflectune.engine.runner import Engine
from reflectune.errors import (
    ConfigError,
    OracleError,
    OracleFatal,
    OracleRejected,
    OracleUnavailable,
    RateLimited,
)
from reflectune.keys import content_key, redact_url
from reflectune.oracles import make_oracle
from reflectune.oracles.openai_http import OpenAIOracle, _retry_after, body_bound
from reflectune.store.calls import Store
from reflectune.testing.server import HOSTILE_MODES, ServerHandle, ServerOptions, running_server
from reflectune.types import ChatRequest, Completion, Message
from tests.conftest import ALPACA, run_cli

SECRET = "sk-hostile-TEST-5d1e0a77c3"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with running_server() as handle:
        yield handle


@pytest.fixture
def srv(server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> ServerHandle:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MY_KEY"):
        monkeypatch.delenv(name, raising=False)
    server.reset(**asdict(ServerOptions()))
    return server


def request(text: str = "Name a prime number.", max_tokens: int | None = 64) -> ChatRequest:
    return ChatRequest((Message("system", "You are terse."), Message("user", text)), max_tokens=max_tokens)


async def ask(oracle: OpenAIOracle, req: ChatRequest) -> Completion | OracleError:
    """One call; an ``OracleError`` is returned, anything else escapes (and fails the test)."""
    try:
        [completion] = await oracle.complete([req])
        return completion
    except OracleError as exc:
        return exc
    finally:
        await oracle.aclose()


async def hostile(srv: ServerHandle, mode: str, req: ChatRequest | None = None,
                  **options: Any) -> Completion | OracleError:
    srv.reset(faults=mode, fault_attempts=100, **options)
    return await ask(OpenAIOracle("test", base_url=srv.base_url), req or request(f"mode {mode}"))


# 1. shapes of a 200 --------------------------------------------------------------------------------

USAGE_MODES = ["usage_strings", "usage_list", "usage_missing", "usage_negative"]


@pytest.mark.parametrize("mode", USAGE_MODES)
async def test_usage_the_server_does_not_count_is_estimated(srv: ServerHandle, mode: str) -> None:
    req = request(f"usage {mode}")
    normal = await ask(OpenAIOracle("test", base_url=srv.base_url), req)
    assert isinstance(normal, Completion) and not normal.usage_estimated
    got = await hostile(srv, mode, req)
    assert isinstance(got, Completion), got
    assert got.usage_estimated and got.prompt_tokens > 0 and got.completion_tokens > 0
    assert got.content == normal.content and got.model == "test"
    # the estimate counts the request's messages and the answer, not whatever the server sent
    assert got.completion_tokens == OpenAIOracle("test", base_url=srv.base_url).count_tokens(got.content)
    assert (got.prompt_tokens, got.completion_tokens) not in {(-5, -1), (0, 0)}


async def test_content_as_a_list_of_parts_is_joined(srv: ServerHandle) -> None:
    req = request("parts, please")
    normal = await ask(OpenAIOracle("test", base_url=srv.base_url), req)
    got = await hostile(srv, "content_parts", req)
    assert isinstance(normal, Completion) and isinstance(got, Completion), got
    assert got.content == normal.content and len(got.content) > 20  # the image part is ignored
    assert not got.usage_estimated and got.prompt_tokens == normal.prompt_tokens


@dataclass(frozen=True)
class Shape:
    mode: str
    error: type[OracleError]
    kind: str
    says: tuple[str, ...]  # fragments the message must hold
    never: tuple[str, ...] = ()  # fragments it must not
    options: dict[str, Any] = field(default_factory=dict)


SHAPES = [
    Shape("content_int", OracleUnavailable, "invalid_response",
          ("choices[0].message.content", "an integer (42)")),
    Shape("bad_utf8", OracleUnavailable, "invalid_response", ("not valid UTF-8", "chat.completion")),
    Shape("html_200", OracleUnavailable, "invalid_response", ("HTML", "Sign in to continue")),
    Shape("error_200", OracleUnavailable, "error_response", ("HTTP 200", "injected error_200")),
    Shape("huge", OracleUnavailable, "too_large", ("10,485,760 bytes", "refused unread", "1,048,576")),
    Shape("huge_chunked", OracleUnavailable, "too_large", ("1,048,576-byte bound", "stopped after")),
    Shape("redirect", OracleFatal, "redirect", ("HTTP 301", "/elsewhere/v1/chat/completions", "not followed"),
          ("redirect-pass", "redirect-user", "redirect-token")),
    Shape("redirect", OracleFatal, "redirect", ("HTTP 307", "token=***"), ("redirect-pass",),
          {"redirect_status": 307}),
    Shape("retry_after_garbage", RateLimited, "rate_limited", ("HTTP 429", "retry soon")),
    Shape("quota", OracleFatal, "insufficient_quota", ("HTTP 429", "You exceeded your current quota")),
    Shape("auth", OracleFatal, "http_401", ("HTTP 401", "Incorrect API key", "--api-key-env")),
    Shape("not_found", OracleFatal, "http_404", ("HTTP 404", "does not exist", "--base-url")),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.mode + "".join(f"_{v}" for v in s.options.values()))
async def test_each_hostile_shape_is_one_typed_error(srv: ServerHandle, shape: Shape) -> None:
    started = time.monotonic()
    got = await hostile(srv, shape.mode, **shape.options)
    assert isinstance(got, shape.error) and got.kind == shape.kind, got
    message = str(got)
    for fragment in shape.says:
        assert fragment in message, message
    for fragment in shape.never:
        assert fragment not in message, message
    assert len(message) < 700  # the server's own message is cut to 300 characters
    stats = srv.stats()
    assert stats["requests"] == 1, "a hostile answer was followed or retried by the oracle itself"
    assert time.monotonic() - started < 4
    if shape.mode == "retry_after_garbage":
        assert isinstance(got, RateLimited) and got.retry_after is None


async def test_a_streamed_body_is_cut_at_the_bound_not_read_whole(srv: ServerHandle) -> None:
    got = await hostile(srv, "huge_chunked", huge_mb=50)
    assert isinstance(got, OracleUnavailable) and got.kind == "too_large"
    read = int(str(got).split("stopped after ")[1].split(" bytes")[0].replace(",", ""))
    assert body_bound(64) < read <= body_bound(64) + (64 << 10) + 8192


async def test_the_bound_grows_with_max_tokens(srv: ServerHandle) -> None:
    assert body_bound(None) == body_bound(10) == 1 << 20
    assert body_bound(100_000) == 64 * 100_000 + (64 << 10)
    for mode in ("huge", "huge_chunked"):  # a 2 MiB answer fits a request for 100k tokens
        got = await hostile(srv, mode, request(f"long {mode}", max_tokens=100_000), huge_mb=2)
        assert isinstance(got, Completion), got
        assert len(got.content) > (2 << 20) - 1000 and set(got.content) == {"x"}


# shapes the loopback server has no mode for: a scripted app that answers one fixed body

@dataclass
class Scripted:
    base_url: str
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seen: list[dict[str, str]] = field(default_factory=list)

    def answer(self, body: Any, status: int = 200, **headers: str) -> None:
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.status, self.headers = status, {"Content-Type": "application/json", **headers}


@pytest.fixture
async def scripted(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Scripted]:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MY_KEY"):
        monkeypatch.delenv(name, raising=False)
    box: list[Scripted] = []

    async def handle(req: web.Request) -> web.Response:
        box[0].seen.append(dict(req.headers))
        s = box[0]
        return web.Response(status=s.status, body=s.body, headers=s.headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    box.append(Scripted(f"http://127.0.0.1:{runner.addresses[0][1]}/v1"))
    try:
        yield box[0]
    finally:
        await runner.cleanup()


def completion(content: Any = "fine", finish: Any = "stop", usage: Any = None, **extra: Any) -> dict:
    body = {"id": "x", "object": "chat.completion", "model": "gpt-test-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}], **extra}
    if usage is not None:
        body["usage"] = usage
    return body


EST = None  # a count the oracle estimated
GOOD = [  # (body, content, finish_reason, (prompt_tokens, completion_tokens): EST where estimated)
    (completion("hello", usage={"prompt_tokens": 7, "completion_tokens": 2}), "hello", "stop", (7, 2)),
    (completion(None, usage={"prompt_tokens": 7, "completion_tokens": 0}), "", "stop", (7, 0)),
    (completion([{"type": "text", "text": "a"}, "junk", {"type": "refusal"},
                 {"type": "output_text", "text": "b"}]), "ab", "stop", (EST, EST)),
    (completion("x", None, usage={"prompt_tokens": 3.0, "completion_tokens": 1}), "x", None, (3, 1)),
    (completion("x", usage={"prompt_tokens": 2.5, "completion_tokens": 1}), "x", "stop", (EST, 1)),
    (completion("x", usage={"prompt_tokens": True, "completion_tokens": 1}), "x", "stop", (EST, 1)),
    (completion("x", usage={"prompt_tokens": 10**12, "completion_tokens": 1}), "x", "stop", (EST, 1)),
    (completion("x", usage={"prompt_tokens": 4, "completion_tokens": -1}), "x", "stop", (4, EST)),
    (completion("x", usage={"prompt_tokens": 0, "completion_tokens": 0}), "x", "stop", (EST, EST)),
    (completion("x", usage="12 tokens"), "x", "stop", (EST, EST)),
    (completion("x", usage={"prompt_tokens": 9}), "x", "stop", (9, EST)),
]


@pytest.mark.parametrize(("body", "content", "finish", "counts"), GOOD)
async def test_odd_but_usable_shapes(scripted: Scripted, body: dict, content: str, finish: str | None,
                                     counts: tuple[int | None, int | None]) -> None:
    scripted.answer(body)
    oracle = OpenAIOracle("gpt-test", base_url=scripted.base_url)
    got = await ask(oracle, request())
    assert isinstance(got, Completion), got
    assert (got.content, got.finish_reason) == (content, finish)
    assert got.model == "gpt-test-2024"  # the answering model, as the server names it
    assert got.usage_estimated == (EST in counts)
    estimate = (sum(oracle.count_tokens(m.content) + 3 for m in request().messages) + 3,
                oracle.count_tokens(content))
    assert (got.prompt_tokens, got.completion_tokens) == tuple(
        guess if given is EST else given for given, guess in zip(counts, estimate, strict=True))
    assert got.prompt_tokens > 0


BAD = [  # (status, body, headers, error, kind, fragment)
    (200, completion({"text": "x"}), {}, OracleUnavailable, "invalid_response", "not an object"),
    (200, completion([{"type": "text", "text": 5}]), {}, OracleUnavailable, "invalid_response", "part 0"),
    (200, completion("x", 7), {}, OracleUnavailable, "invalid_response", "choices[0].finish_reason"),
    (200, {"choices": []}, {}, OracleUnavailable, "invalid_response", "choices is empty"),
    (200, {"object": "chat.completion"}, {}, OracleUnavailable, "invalid_response", "choices is missing"),
    (200, {"choices": [{"text": "legacy"}]}, {}, OracleUnavailable, "invalid_response",
     "choices[0].message is missing"),
    (200, {"choices": "nope"}, {}, OracleUnavailable, "invalid_response", "must be a list"),
    (200, [1, 2], {}, OracleUnavailable, "invalid_response", "the body must be an object"),
    (200, b"", {}, OracleUnavailable, "malformed", "not JSON"),
    (200, b"[" * 200_000, {}, OracleUnavailable, "malformed", "not JSON"),
    (200, b"\xef\xbb\xbf<html>proxy</html>", {"Content-Type": "application/json"}, OracleUnavailable,
     "invalid_response", "HTML"),
    (200, {"error": {"message": "busy", "code": 503}}, {}, OracleUnavailable, "http_503", "busy"),
    (200, {"error": "plain words"}, {}, OracleUnavailable, "error_response", "plain words"),
    (200, {"error": {"message": "no money", "type": "insufficient_quota"}}, {}, OracleFatal,
     "insufficient_quota", "no money"),
    (402, {"error": {"message": "Payment required"}}, {}, OracleFatal, "insufficient_quota", "HTTP 402"),
    (403, {"error": {"message": "Forbidden"}}, {}, OracleFatal, "http_403", "Forbidden"),
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens",
                     "code": "context_length_exceeded"}}, {}, OracleRejected, "context_length", "8192"),
    (400, {"error": {"message": "The response was filtered due to the prompt triggering Azure "
                                "OpenAI's content management policy.", "code": "content_filter"}}, {},
     OracleRejected, "content_filter", "content management policy"),
    (400, {"detail": "FastAPI-style detail"}, {}, OracleRejected, "http_400", "FastAPI-style detail"),
    (422, b"\xff\xfe not utf-8 at all", {}, OracleRejected, "http_422", "not utf-8"),
    (500, b"<html>" + b"y" * 500_000 + b"</html>", {"Content-Type": "text/html"}, OracleUnavailable,
     "http_500", "yyyy"),
    (302, b"", {"Location": "/v2/chat/completions?sig=abcdef123"}, OracleFatal, "redirect",
     "/v2/chat/completions?sig=***"),
    (308, b"", {}, OracleFatal, "redirect", "no Location"),
]


@pytest.mark.parametrize(("status", "body", "headers", "error", "kind", "fragment"), BAD,
                         ids=[f"{b[0]}-{b[4]}-{i}" for i, b in enumerate(BAD)])
async def test_odd_failures_are_typed(scripted: Scripted, status: int, body: Any, headers: dict[str, str],
                                      error: type[OracleError], kind: str, fragment: str) -> None:
    scripted.answer(body, status, **headers)
    got = await ask(OpenAIOracle("gpt-test", base_url=scripted.base_url), request())
    assert type(got) is error and got.kind == kind, got
    assert fragment in str(got) and len(str(got)) < 700
    assert "abcdef123" not in str(got)


RETRY_AFTER = [
    ("5", 5.0), ("1.5", 1.5), (" 2 ", 2.0), ("0", 0.0), ("soon", None), ("-3", None), ("", None),
    (None, None), ("nan", None), ("inf", None), ("1e999", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ("Mon, 99 Foo 2015 99:99:99 GMT", None), ("\x00", None),
]


@pytest.mark.parametrize(("header", "seconds"), RETRY_AFTER)
def test_retry_after_in_any_form_never_raises(header: str | None, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


def test_retry_after_as_a_future_http_date() -> None:
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    got = _retry_after(header)
    assert got is not None and 27 <= got <= 31


async def test_retry_after_seconds_reach_the_error(scripted: Scripted) -> None:
    scripted.answer({"error": {"message": "slow down"}}, 429, **{"Retry-After": "2.5"})
    got = await ask(OpenAIOracle("gpt-test", base_url=scripted.base_url), request())
    assert isinstance(got, RateLimited) and got.retry_after == 2.5


# 2. through the engine: every outcome is a record in the store --------------------------------------

ENGINE_CASES = [  # mode, status, error kind, attempts
    ("usage_missing", "ok", None, 1),
    ("usage_strings", "ok", None, 1),
    ("content_parts", "ok", None, 1),
    ("content_int", "failed", "invalid_response", 2),
    ("bad_utf8", "failed", "invalid_response", 2),
    ("html_200", "failed", "invalid_response", 2),
    ("error_200", "failed", "error_response", 2),
    ("huge", "failed", "too_large", 2),
    ("redirect", "failed", "redirect", 1),
    ("quota", "failed", "insufficient_quota", 1),
    ("auth", "failed", "http_401", 1),
    ("not_found", "failed", "http_404", 1),
]


@pytest.mark.parametrize(("mode", "status", "kind", "attempts"), ENGINE_CASES)
async def test_engine_records_every_hostile_outcome(srv: ServerHandle, tmp_path: Path, mode: str, status: str,
                                                    kind: str | None, attempts: int) -> None:
    srv.reset(faults=mode, fault_attempts=100)
    req = request(f"engine {mode}")
    config = EngineConfig(max_attempts=2, backoff_base=0.0, backoff_max=0.0)
    with Store(tmp_path / "store.sqlite") as store:
        async with Engine(OpenAIOracle("test", base_url=srv.base_url), store, config) as engine:
            record = await engine.call("probe", req)
            key = engine.key_for("probe", req, "")
    assert (record.status, record.error_kind, record.attempts) == (status, kind, attempts)
    with Store(tmp_path / "store.sqlite") as store:  # committed, and read back by a new process
        stored = store.get_call(key)
    assert stored is not None and (stored.status, stored.error_kind) == (status, kind)
    if status == "ok":
        assert stored.prompt_tokens > 0 and stored.completion_tokens > 0 and stored.content
    else:
        assert stored.error and len(stored.error) < 800
    assert srv.stats()["requests"] == attempts


# 3. connections ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nothing_listening_is_fatal_and_names_the_url_without_its_secrets() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1?api-key=QUERYSECRET"
    got = await ask(OpenAIOracle("test", base_url=url), request())
    assert isinstance(got, OracleFatal) and got.kind == "connection_refused", got
    assert "nothing is listening" in str(got) and "api-key=***" in str(got)
    assert "QUERYSECRET" not in str(got)


class NoSuchHost(AbstractResolver):
    """A resolver that answers as a DNS server does for a name that does not exist."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_a_host_that_does_not_resolve_is_fatal() -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=NoSuchHost()))
    try:
        oracle = OpenAIOracle("test", base_url="https://no-such-host.invalid/v1", session=session)
        got = await ask(oracle, request())
    finally:
        await session.close()
    assert isinstance(got, OracleFatal) and got.kind == "connection_refused", got
    assert "cannot resolve the host no-such-host.invalid" in str(got)


# 4. the endpoint is the oracle's identity --------------------------------------------------------------

def test_same_model_at_two_ports_has_two_fingerprints() -> None:
    a = OpenAIOracle("qwen", base_url="http://127.0.0.1:8000/v1").fingerprint()
    b = OpenAIOracle("qwen", base_url="http://127.0.0.1:8001/v1").fingerprint()
    assert a == "openai:qwen@http://127.0.0.1:8000/v1" and b == "openai:qwen@http://127.0.0.1:8001/v1"
    assert OpenAIOracle("qwen", base_url="http://127.0.0.1:8000/v2").fingerprint() != a


@pytest.mark.parametrize(("url", "endpoint"), [
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("HTTP://LocalHost:80/v1", "http://localhost/v1"),
    ("https://Example.COM:443/v1//", "https://example.com/v1"),
    ("https://example.com:8443/", "https://example.com:8443"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("https://user:pw@example.com/v1?api-key=QSECRET#frag", "https://example.com/v1"),
])
def test_fingerprint_is_the_normalised_endpoint_without_credentials(url: str, endpoint: str) -> None:
    oracle = OpenAIOracle("m", base_url=url)
    assert oracle.fingerprint() == f"openai:m@{endpoint}"
    for secret in ("user", "pw", "QSECRET", "frag"):
        assert secret not in oracle.fingerprint() and secret not in repr(oracle)
    assert "?" not in oracle.fingerprint() and "#" not in oracle.fingerprint()


def test_default_endpoint_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    oracle = OpenAIOracle("gpt-4o-mini")
    assert oracle.fingerprint() == "openai:gpt-4o-mini@https://api.openai.com/v1"
    assert SECRET not in oracle.fingerprint() + repr(oracle)


def test_base_url_comes_from_openai_base_url_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    assert OpenAIOracle("m").fingerprint() == "openai:m@http://127.0.0.1:9999/v1"


# 5. credentials: redaction, routing, plain http -----------------------------------------------------

@pytest.mark.parametrize(("url", "redacted"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1/"),
    ("https://user:pass@host/v1", "https://***@host/v1"),
    ("https://user@host/v1", "https://***@host/v1"),
    ("https://host/v1?api-key=SECRET&api-version=2024-02-01", "https://host/v1?api-key=***&api-version=***"),
    ("https://u:p@host:8443/v1?k=v#access_token=T", "https://***@host:8443/v1?k=***#***"),
    ("https://host/v1?bare", "https://host/v1?***"),
    ("https://host/path@with-at?x=1", "https://host/path@with-at?x=***"),
    ("u:p@host:80/v1?t=1", "***@host:80/v1?t=***"),
    ("/relative?sig=abc", "/relative?sig=***"),
    ("", ""),
])
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_url(redacted) == redacted


URL_WITH_SECRETS = "https://user:pass@gateway.example/v1?api-key=SECRETVALUE"


def test_config_dump_canonical_and_hash_never_hold_url_credentials() -> None:
    config = OracleConfig(spec="openai:m", base_url=URL_WITH_SECRETS)
    assert config.base_url == URL_WITH_SECRETS  # the live attribute keeps the real URL
    dumped = json.dumps(config.model_dump(mode="json"))
    for text in (dumped, config.canonical(), RecycleConfig(oracle=config).canonical()):
        assert "pass" not in text and "SECRETVALUE" not in text and "user:" not in text
        assert "https://***@gateway.example/v1?api-key=***" in text
    # the hash's input is the redacted dump: same hash as the redacted URL's config
    redacted = OracleConfig(spec="openai:m", base_url=redact_url(URL_WITH_SECRETS))
    assert config.config_hash() == redacted.config_hash() == content_key(config.model_dump(mode="json"))[:16]
    # the python dump (how make_oracle and merged build things) keeps the real URL
    assert config.model_dump()["base_url"] == URL_WITH_SECRETS
    oracle = make_oracle(config)
    assert oracle.fingerprint() == "openai:m@https://gateway.example/v1"


def test_config_hash_of_urls_without_credentials_is_unchanged() -> None:
    # the hashes these configs had before base_url was redacted and allow_insecure_http added
    assert OracleConfig().config_hash() == "2c6714c0cc7d7f87"
    loopback = OracleConfig(spec="openai:gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")
    assert loopback.config_hash() == "7792cfa521ae2358"
    assert "allow_insecure_http" not in loopback.canonical()
    allowed = OracleConfig(spec="openai:m", base_url="http://10.0.0.5/v1", allow_insecure_http=True)
    assert '"allow_insecure_http":true' in allowed.canonical()
    assert OracleConfig.model_validate(allowed.model_dump(mode="json")) == allowed
    kept = merged(RecycleConfig, RecycleConfig(oracle=OracleConfig(base_url=URL_WITH_SECRETS,
                                                                   allow_insecure_http=True)),
                  {"engine": {"rpm": 60}})
    assert kept.oracle.base_url == URL_WITH_SECRETS and kept.oracle.allow_insecure_http


async def test_default_key_is_not_sent_to_a_loopback_server(srv: ServerHandle,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    got = await ask(OpenAIOracle("test", base_url=srv.base_url), request("no key"))
    assert isinstance(got, Completion)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)  # also when the URL comes from the environment
    got = await ask(make_oracle("openai:test"), request("no key either"))
    assert isinstance(got, Completion)
    stats = srv.stats()
    assert stats["authorization"] == {"present": 0, "absent": 2, "sha256": {}}
    assert "authorization" not in stats["headers"] and stats["headers"]["content-type"] == 2
    assert SECRET not in json.dumps(stats)


async def test_named_key_is_sent_and_only_its_hash_is_recorded(srv: ServerHandle,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-default-one")
    srv.reset(require_key=SECRET)
    got = await ask(OpenAIOracle("test", base_url=srv.base_url, api_key_env="MY_KEY"), request("key"))
    assert isinstance(got, Completion), got
    stats = srv.stats()
    digest = hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    assert stats["authorization"] == {"present": 1, "absent": 0, "sha256": {digest: 1}}
    assert SECRET not in json.dumps(stats)


def test_cli_default_key_stays_home_and_a_named_key_goes(srv: ServerHandle, tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(json.loads(ALPACA.read_text(encoding="utf-8"))[:2]))
    common = ["--oracle", "openai:test", "--base-url", srv.base_url, "--phases", "response", "-q"]
    first = run_cli("recycle", str(src), "-o", str(tmp_path / "a.json"), "--run-dir", str(tmp_path / "a"),
                    *common, env={"OPENAI_API_KEY": SECRET})
    assert first.returncode == 0, first.stderr
    seen = srv.stats()["authorization"]
    assert seen["present"] == 0 and seen["absent"] >= 1
    srv.reset(require_key=SECRET)
    second = run_cli("recycle", str(src), "-o", str(tmp_path / "b.json"), "--run-dir", str(tmp_path / "b"),
                     *common, "--api-key-env", "MY_KEY", env={"MY_KEY": SECRET})
    assert second.returncode == 0, second.stderr
    seen = srv.stats()["authorization"]
    assert seen["present"] >= 1 and seen["absent"] == 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_default_key_goes_to_openai_and_is_required_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIOracle("gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    oracle = OpenAIOracle("gpt-4o-mini", base_url="https://API.openai.com/v1/")
    assert oracle._headers()["Authorization"] == f"Bearer {SECRET}"
    assert "Authorization" not in OpenAIOracle("m", base_url="https://other.example/v1")._headers()


def test_a_named_key_variable_that_is_not_set_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY"):
        OpenAIOracle("m", base_url="http://127.0.0.1:8000/v1", api_key_env="MY_KEY")


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.1.2.3:8000/v1", "http://[2001:db8::1]/v1",
                                 "http://localhost.example.com/v1"])
def test_a_key_over_plain_http_to_a_remote_host_is_refused(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="--allow-insecure-http") as info:
        OpenAIOracle("m", base_url=url, api_key_env="MY_KEY")
    assert SECRET not in str(info.value) and "plain http" in str(info.value)
    assert time.monotonic() - started < 1  # refused before any connection
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        make_oracle(OracleConfig(spec="openai:m", base_url=url, api_key_env="MY_KEY"))
    allowed = make_oracle(OracleConfig(spec="openai:m", base_url=url, api_key_env="MY_KEY",
                                       allow_insecure_http=True))
    assert allowed.fingerprint().startswith("openai:m@http://")


def test_credentials_in_the_url_over_plain_http_are_refused_too() -> None:
    with pytest.raises(ConfigError, match="credentials in --base-url") as info:
        OpenAIOracle("m", base_url="http://user:hunter22@example.com/v1")
    assert "hunter22" not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://127.9.9.9/v1", "http://localhost:1/v1",
                                 "http://[::1]:8000/v1", "https://example.com/v1"])
def test_a_key_to_loopback_or_over_https_is_fine(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    assert OpenAIOracle("m", base_url=url, api_key_env="MY_KEY")._headers()["Authorization"].endswith(SECRET)


def test_no_key_over_plain_http_needs_no_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the default key is not sent there: nothing to protect
    assert "Authorization" not in OpenAIOracle("m", base_url="http://example.com/v1")._headers()


@pytest.mark.parametrize("url", ["ftp://host/v1", "localhost:8000/v1", "http:///v1", "http://host:99999/v1"])
def test_unusable_base_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="base-url"):
        OpenAIOracle("m", base_url=url)


async def test_basic_auth_from_the_url_is_sent_but_never_shown(scripted: Scripted) -> None:
    port = scripted.base_url.rsplit(":", 1)[1].split("/")[0]
    scripted.answer({"error": {"message": "echo: Basic dXNlcjpodW50ZXIyMg== at "
                                          f"http://user:hunter22@127.0.0.1:{port}/v1"}}, 401)
    got = await ask(OpenAIOracle("m", base_url=f"http://user:hunter22@127.0.0.1:{port}/v1"), request())
    assert isinstance(got, OracleFatal) and got.kind == "http_401"
    assert scripted.seen[0]["Authorization"] == "Basic dXNlcjpodW50ZXIyMg=="
    assert "hunter22" not in str(got) and "dXNlcjpodW50ZXIyMg" not in str(got), got
    assert "http://***@127.0.0.1" in str(got)


async def test_a_key_echoed_in_a_redirect_or_a_200_error_is_redacted(scripted: Scripted,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)
    for status, body, headers in [
        (302, b"", {"Location": f"https://evil.example/steal?key={SECRET}"}),
        (302, b"", {"Location": f"https://evil.example/{SECRET}/x"}),
        (200, {"error": {"message": f"bad key {SECRET}"}}, {}),
        (200, f"<html>{SECRET}</html>".encode(), {"Content-Type": "text/html"}),
        (200, f'{{"choices": [{{"message": {{"content": {{"k": "{SECRET}"}}}}}}]}}'.encode(), {}),
    ]:
        scripted.answer(body, status, **headers)
        got = await ask(OpenAIOracle("m", base_url=scripted.base_url, api_key_env="MY_KEY"), request())
        assert isinstance(got, OracleError), got
        assert SECRET not in str(got) and SECRET not in repr(got), got


def test_hostile_modes_all_have_a_case() -> None:
    covered = {s.mode for s in SHAPES} | set(USAGE_MODES) | {"content_parts"}
    assert covered == set(HOSTILE_MODES)
