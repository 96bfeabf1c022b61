"""A loopback OpenAI-compatible chat server with deterministic answers and injectable faults.

reflectune talks to oracles only over HTTP, so its tests, demo and benchmarks need a real server on
127.0.0.1: mocks at the client layer would skip the connection pool, timeouts and retry paths that
break in production. This server answers from :mod:`reflectune.testing.responder` (a pure function of
the messages, so reruns give identical bytes) and can misbehave on purpose: HTTP errors, dropped
connections, hangs, truncated JSON, empty or cut-off answers, slow bodies and its own rate limit.
``reasoning`` (``REASONING_SHAPES``) answers as a reasoning model does, the normal answer plus a
reasoning that drafts every reflection marker with wrong text (``REASONING_DRAFT``): in
``reasoning_content`` (DeepSeek, with ``completion_tokens_details.reasoning_tokens``), in
``reasoning`` (vLLM, no details), as a leading ``<think>`` block (no details), or hidden with only its
``HIDDEN_REASONING_TOKENS`` billed (OpenAI o-series); the token budget covers reasoning then answer.
Hostile modes (``HOSTILE_MODES``) send what a broken proxy or an unfamiliar server sends: usage as
strings, a list, negative or missing; content as a list of parts or a number; bytes that are not
UTF-8; an HTML page or an error object with status 200; a body of ``huge_mb`` MiB (with or without a
Content-Length); a redirect; ``Retry-After: soon``; no quota; a 401; a 404.

Faults are decided per request by an RNG seeded with (seed, messages hash, attempt number), and only
for the first ``fault_attempts`` attempts of a given request, so a retrying client always gets through
and a test can check that every row is accounted for. ``GET /stats`` counts what was served;
``by_key`` proves that no usable answer was fetched twice. ``authorization`` says whether each chat
request carried an ``Authorization`` header (counts, and a sha256 prefix of its credentials: never
the value), and ``headers`` counts the header names received, so a test can check no key was sent.
``GET /requests`` keeps the last ``KEPT_REQUESTS`` chat request bodies (every field but the messages,
of which only the roles) with the header names and a sha256 prefix of each value but Authorization's,
so a test can check what a client put in its bodies and headers without the server keeping a secret.

It runs in its own process (:func:`running_server`) so that its CPU is not billed to the client being
measured. Handlers are kept light (stdlib json, an LRU of answers, no access log) to sustain thousands
of requests per second on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from reflectune.markers import END, SECTION_MARKERS
from reflectune.testing.responder import CREATED, apply_limits, completion_body, messages_key, respond

__all__ = [
    "FAULT_MODES",
    "HOSTILE_MODES",
    "MIX_MODES",
    "REASONING_DRAFT",
    "REASONING_SHAPES",
    "ServerHandle",
    "ServerOptions",
    "build_handler",
    "main",
    "running_server",
]

#: Every fault mode ``--faults`` accepts.
FAULT_MODES = (
    "429", "429_noretry", "500", "502", "503", "timeout", "reset", "malformed",
    "empty", "length", "trickle", "400", "401", "mix",
)  # fmt: skip
#: What ``mix`` draws from: the transient faults a retrying client must survive. ``timeout`` is left
#: out so a mix never stalls a suite for a whole client timeout; name it explicitly to get it.
MIX_MODES = ("429", "429_noretry", "500", "502", "503", "reset", "malformed", "trickle")
#: Responses of the wrong shape, size or route, also chosen with ``--faults`` (never drawn by ``mix``).
HOSTILE_MODES = (
    "usage_strings", "usage_list", "usage_missing", "usage_negative", "content_parts", "content_int",
    "bad_utf8", "html_200", "error_200", "huge", "huge_chunked", "redirect", "retry_after_garbage",
    "quota", "auth", "not_found",
)  # fmt: skip
#: Hostile modes whose answer is still usable (a client that copes gets the normal content).
_USABLE_HOSTILE = ("usage_strings", "usage_list", "usage_missing", "usage_negative", "content_parts")
_HUGE_CHUNK = 64 << 10
_HANG_S = 3600.0
_TRICKLE_S = 0.5
_CACHE_SIZE = 8192
#: Chat request bodies ``GET /requests`` keeps (the most recent).
KEPT_REQUESTS = 64
#: How ``--reasoning`` sends a reasoning beside the answer ("none": no reasoning).
REASONING_SHAPES = ("none", "field", "reasoning_field", "think_tag", "hidden_tokens")
#: The reasoning sent: a draft holding every section marker with wrong text, which a client must not parse.
REASONING_DRAFT = "Let me draft the reply first.\n" + "".join(
    f"{marker}\nDRAFT {marker[1:-1].lower()}: wrong on purpose, never parse it.\n{END}\n"
    for marker in SECTION_MARKERS
) + "Now the real reply."
#: Tokens the hidden_tokens shape bills for a reasoning it does not send.
HIDDEN_REASONING_TOKENS = 64


@dataclass(frozen=True)
class ServerOptions:
    """Server behaviour; each field is also a CLI flag (``fault_attempts``: ``--fault-attempts``)."""

    latency: float = 0.0  # seconds added to every chat call
    jitter: float = 0.0  # extra uniform [0, jitter) seconds
    faults: str = ""  # "MODE[:RATE],..." e.g. "429:0.2,reset:0.1"
    fault_attempts: int = 1  # faults may fire only on the first K attempts of a request
    seed: int = 0
    rpm: int = 0  # server-enforced requests per minute; 0 = unlimited
    require_key: str | None = None  # demand "Authorization: Bearer KEY"
    bad_format_ratio: float = 0.0
    judge_malformed_ratio: float = 0.0
    judge_alt_ratio: float = 0.2
    model: str = "reflectune-test"
    huge_mb: float = 10.0  # size of the body the huge modes send, in MiB
    redirect_status: int = 301  # the status the redirect mode answers with (301, 302, 307, 308)
    reasoning: str = "none"  # REASONING_SHAPES: how a reasoning is sent beside the answer


#: largest request body the server reads (aiohttp's default is 1 MiB)
MAX_REQUEST_BYTES = 64 * 2**20


def parse_faults(spec: str | None) -> tuple[tuple[str, float], ...]:
    """Parse ``"MODE[:RATE],..."`` into ``((mode, rate), ...)``; raise ValueError on unknown modes."""
    out: list[tuple[str, float]] = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        mode, _, rate = item.partition(":")
        if mode not in FAULT_MODES and mode not in HOSTILE_MODES:
            known = ", ".join(FAULT_MODES + HOSTILE_MODES)
            raise ValueError(f"unknown fault mode {mode!r}; known: {known}")
        value = float(rate) if rate else 1.0
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {value}")
        out.append((mode, value))
    return tuple(out)


def _coerce(changes: dict[str, Any]) -> dict[str, Any]:
    """Check option names and cast values to the field types (``require_key`` may stay None)."""
    defaults = asdict(ServerOptions())
    unknown = sorted(set(changes) - set(defaults))
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(defaults)}")
    out = {}
    for name, value in changes.items():
        kind = type(defaults[name]) if defaults[name] is not None else str
        out[name] = None if value is None and name == "require_key" else kind(value)
    parse_faults(out.get("faults"))
    _check_reasoning(str(out.get("reasoning", "none")))
    return out


def _check_reasoning(shape: str) -> None:
    if shape not in REASONING_SHAPES:
        raise ValueError(f"unknown reasoning shape {shape!r}; known: {', '.join(REASONING_SHAPES)}")


class _State:
    """Options plus counters of one server; reset by ``POST /reset``."""

    def __init__(self, options: ServerOptions) -> None:
        self.in_flight = 0
        self.configure(options)

    def configure(self, options: ServerOptions) -> None:
        self.options = options
        self.cache: OrderedDict[tuple[str, str, str, str, str | None], bytes] = OrderedDict()
        self.faults = parse_faults(options.faults)
        self.jitter_rng = random.Random(options.seed)
        self.requests = 0
        self.completed = 0
        self.by_key: dict[str, int] = {}
        self.fault_counts: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.attempts: dict[str, int] = {}
        self.window: deque[float] = deque()
        self.authorization: dict[str, Any] = {"present": 0, "absent": 0, "sha256": {}}
        self.headers: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEPT_REQUESTS)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "by_key": dict(self.by_key),
            "faults": dict(self.fault_counts),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "authorization": {**self.authorization, "sha256": dict(self.authorization["sha256"])},
            "headers": dict(self.headers),
            "options": asdict(self.options) | ({"require_key": "***"} if self.options.require_key else {}),
        }

    def record_headers(self, request: web.BaseRequest) -> None:
        """Count the header names and whether an Authorization came; of its value only a hash prefix."""
        for name in {h.lower() for h in request.headers}:
            self.headers[name] = self.headers.get(name, 0) + 1
        value = request.headers.get("Authorization")
        if value is None:
            self.authorization["absent"] += 1
            return
        self.authorization["present"] += 1
        credentials = value.partition(" ")[2] or value  # "Bearer KEY" -> sha256(KEY)
        digest = hashlib.sha256(credentials.encode()).hexdigest()[:12]
        self.authorization["sha256"][digest] = self.authorization["sha256"].get(digest, 0) + 1

    def record_request(self, request: web.BaseRequest, body: dict[str, Any]) -> None:
        """Keep what a test needs of one chat request: its fields (not the messages' text) and headers
        as names and value hashes; Authorization's value not even hashed here (``authorization`` is)."""
        hashed = {name.lower(): hashlib.sha256(value.encode()).hexdigest()[:12]
                  for name, value in request.headers.items() if name.lower() != "authorization"}
        roles = [m.get("role") for m in body.get("messages") or []]
        self.recent.append({"body": {k: v for k, v in body.items() if k != "messages"}, "roles": roles,
                            "headers": sorted({h.lower() for h in request.headers}), "header_sha256": hashed})

    def count_fault(self, mode: str) -> None:
        self.fault_counts[mode] = self.fault_counts.get(mode, 0) + 1

    def pick_fault(self, key: str, attempt: int) -> str | None:
        """The fault for this attempt of this request, or None."""
        if not self.faults or attempt >= self.options.fault_attempts:
            return None
        rng = random.Random(f"{self.options.seed}:{key}:{attempt}")
        draw, edge = rng.random(), 0.0
        for mode, rate in self.faults:
            edge += rate
            if draw < edge:
                return rng.choice(MIX_MODES) if mode == "mix" else mode
        return None

    def rpm_wait(self) -> int:
        """0 if this request fits the rpm budget (and record it), else seconds until it would."""
        if self.options.rpm <= 0:
            return 0
        now = time.monotonic()
        while self.window and now - self.window[0] >= 60.0:
            self.window.popleft()
        if len(self.window) >= self.options.rpm:
            return max(1, math.ceil(60.0 - (now - self.window[0])))
        self.window.append(now)
        return 0

    def payload(
        self, key: str, messages: list[dict[str, Any]], body: dict[str, Any], fault: str | None
    ) -> bytes:
        """The response body bytes, from a small LRU (the options are fixed between resets)."""
        o = self.options
        asked = body.get("model")
        model: str = asked if isinstance(asked, str) else o.model
        # a reasoning model's budget comes as max_completion_tokens; the server honours either
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        ck = (key, model, repr(body.get("stop")), repr(limit), fault)
        hit = self.cache.get(ck)
        if hit is not None:
            self.cache.move_to_end(ck)
            return hit
        content = respond(
            messages,
            bad_format_ratio=o.bad_format_ratio,
            judge_malformed_ratio=o.judge_malformed_ratio,
            judge_alt_ratio=o.judge_alt_ratio,
            key=key,
        )
        content, finish = apply_limits(content, {**body, "max_tokens": limit})
        if fault == "empty":
            content = ""
        elif fault == "length":  # cut inside the last section, so the final [End] is missing
            cut = content.rfind(END)
            content, finish = content[: cut - 8 if cut > 8 else len(content) // 2], "length"
        prompt_chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
        if o.reasoning != "none":
            out = _reasoned_body(o.reasoning, key, model, content, finish, prompt_chars, limit)
        else:
            out = completion_body(key, model, content, finish, prompt_chars)
        if fault in _BODY_FAULTS:
            out = _BODY_FAULTS[fault](out)
        self.cache[ck] = out
        if len(self.cache) > _CACHE_SIZE:
            self.cache.popitem(last=False)
        return out


def _reasoned_body(shape: str, key: str, model: str, content: str, finish: str, prompt_chars: int,
                   limit: Any) -> bytes:
    """A reasoning model's completion: the reasoning in ``shape``, then the answer, both within
    ``limit`` tokens (4 characters a token): a budget the reasoning fills leaves no answer."""
    reasoning = "" if shape == "hidden_tokens" else REASONING_DRAFT
    thinking = HIDDEN_REASONING_TOKENS if shape == "hidden_tokens" else len(reasoning) // 4
    if isinstance(limit, int) and limit > 0:
        if thinking >= limit:
            reasoning, thinking, content, finish = reasoning[: limit * 4], limit, "", "length"
        elif len(content) // 4 > limit - thinking:
            content, finish = content[: (limit - thinking) * 4], "length"
    answer = len(content) // 4
    if shape == "think_tag":  # unclosed when the budget ran out while thinking
        content = f"<think>\n{reasoning}" + (f"\n</think>\n\n{content}" if content else "")
    body = json.loads(completion_body(key, model, content, finish, prompt_chars))
    message, usage = body["choices"][0]["message"], body["usage"]
    if shape == "field":
        message["reasoning_content"] = reasoning
    elif shape == "reasoning_field":
        message["reasoning"] = reasoning
    usage["completion_tokens"] = answer + thinking
    usage["total_tokens"] = usage["prompt_tokens"] + answer + thinking
    if shape in ("field", "hidden_tokens"):  # DeepSeek and OpenAI report them; vLLM does not
        usage["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return json.dumps(body).encode()


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


async def _send(request: web.BaseRequest, payload: bytes, trickle: bool = False) -> web.StreamResponse:
    """Write the whole response now, so the caller knows it went out before counting it."""
    if not trickle:
        resp = web.Response(body=payload, content_type="application/json")
        await resp.prepare(request)
        await resp.write_eof()  # headers and body leave in one send
        return resp
    stream = web.StreamResponse(headers={"Content-Type": "application/json"})
    stream.content_length = len(payload)
    await stream.prepare(request)
    every = max(1, len(payload) // 50)  # one byte per write, a 10 ms pause every `every` bytes
    for i in range(len(payload) - 1):
        await stream.write(payload[i : i + 1])
        if i % every == every - 1:
            await asyncio.sleep(_TRICKLE_S / 50)
    await stream.write_eof(payload[-1:])  # no pause after the last byte: the client may hang up at once
    return stream


def _reset_connection(request: web.BaseRequest) -> None:
    """Drop the TCP connection with an RST (SO_LINGER 0), so the client sees a reset, not a clean close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _chat(request: web.BaseRequest, st: _State) -> web.StreamResponse:
    st.requests += 1
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        return await _chat_inner(request, st)
    finally:
        st.in_flight -= 1


async def _chat_inner(request: web.BaseRequest, st: _State) -> web.StreamResponse:
    o = st.options
    st.record_headers(request)
    # 1. gatekeeping: key, then the server's own rate limit
    if o.require_key is not None and request.headers.get("Authorization") != f"Bearer {o.require_key}":
        st.count_fault("auth")
        return _error(401, "Incorrect API key provided.", "invalid_request_error")
    wait = st.rpm_wait()
    if wait:
        st.count_fault("rpm")
        return _error(429, "Rate limit reached (rpm).", "rate_limit_exceeded", {"Retry-After": str(wait)})
    # 2. parse the request
    try:
        body = json.loads(await request.read())
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of objects")
    except (ValueError, KeyError, TypeError) as exc:
        return _error(400, f"Invalid request: {exc}", "invalid_request_error")
    st.record_request(request, body)
    key = messages_key(messages)
    attempt = st.attempts.get(key, 0)
    st.attempts[key] = attempt + 1
    fault = st.pick_fault(key, attempt)
    # 3. latency, then the fault if one fired
    delay = o.latency + (st.jitter_rng.uniform(0.0, o.jitter) if o.jitter > 0 else 0.0)
    if delay > 0:
        await asyncio.sleep(delay)
    if fault is not None:
        st.count_fault(fault)
        early = await _early_fault(request, fault)
        if early is None and fault in HOSTILE_MODES:
            early = await _hostile(request, st, fault, key, body)
        if early is not None:
            return early
    # 4. the answer
    payload = st.payload(key, messages, body, fault)
    if fault == "malformed":
        return web.Response(body=payload[: len(payload) // 2], content_type="application/json")
    if fault in ("content_int", "bad_utf8"):  # an answer no client can use: not counted in by_key
        return web.Response(body=payload, content_type="application/json")
    resp = await _send(request, payload, trickle=fault == "trickle")
    st.completed += 1
    if fault not in ("empty", "length"):
        short = key[:16]
        st.by_key[short] = st.by_key.get(short, 0) + 1
    return resp


_STATUS_FAULTS = {  # mode -> (status, error type, headers)
    "429": (429, "rate_limit_exceeded", {"Retry-After": "1"}),
    "429_noretry": (429, "rate_limit_exceeded", None),
    "500": (500, "server_error", None),
    "502": (502, "server_error", None),
    "503": (503, "server_error", None),
    "400": (400, "invalid_request_error", None),
    "401": (401, "invalid_request_error", None),
}


async def _early_fault(request: web.BaseRequest, fault: str) -> web.StreamResponse | None:
    """Answer a fault that replaces the response entirely; None for faults that alter the body."""
    if fault in _STATUS_FAULTS:
        status, kind, headers = _STATUS_FAULTS[fault]
        return _error(status, f"Injected fault {fault}.", kind, headers)
    if fault == "reset":
        _reset_connection(request)  # connection_lost then cancels the sleep below
    if fault in ("timeout", "reset"):
        await asyncio.sleep(_HANG_S)  # cancelled when the client leaves (handler_cancellation)
        return _error(504, "Injected hang elapsed.", "server_error")
    return None


def _with_json(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def apply(payload: bytes) -> bytes:
        body = json.loads(payload)
        change(body)
        return json.dumps(body).encode()

    return apply


def _usage(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        if value is None:
            del body["usage"]
        else:
            body["usage"] = value(body["usage"]) if callable(value) else value

    return change


def _content(make: Callable[[str], Any]) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        message = body["choices"][0]["message"]
        message["content"] = make(message["content"])

    return change


def _parts(text: str) -> list[dict[str, Any]]:
    """The answer as content parts: two text parts around an image part a client must ignore."""
    half = len(text) // 2
    return [
        {"type": "text", "text": text[:half]},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
        {"type": "output_text", "text": text[half:]},
    ]


def _bad_utf8(payload: bytes) -> bytes:
    """Valid JSON but for two bytes that are not UTF-8 at the start of the content."""
    return payload.replace(b'"content": "', b'"content": "\xff\xfe', 1)


_BODY_FAULTS: dict[str, Callable[[bytes], bytes]] = {
    "usage_strings": _with_json(_usage(lambda u: {k: str(v) for k, v in u.items()})),
    "usage_list": _with_json(_usage(lambda u: [u["prompt_tokens"], u["completion_tokens"]])),
    "usage_missing": _with_json(_usage(None)),
    "usage_negative": _with_json(_usage({"prompt_tokens": -5, "completion_tokens": -1, "total_tokens": -6})),
    "content_parts": _with_json(_content(_parts)),
    "content_int": _with_json(_content(lambda _: 42)),
    "bad_utf8": _bad_utf8,
}
_HTML = (
    "<!DOCTYPE html><html><head><title>Sign in to continue</title></head><body><h1>Network login"
    "</h1><p>Sign in to the guest network to reach the internet.</p></body></html>"
)
_HOSTILE_STATUS = {  # mode -> (status, error object, headers)
    "retry_after_garbage": (429, {"message": "Rate limit reached; retry soon.", "type": "rate_limit_exceeded",
                                  "code": "rate_limit_exceeded"}, {"Retry-After": "soon"}),
    "quota": (429, {"message": "You exceeded your current quota", "type": "insufficient_quota",
                    "code": "insufficient_quota"}, None),
    "auth": (401, {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                   "code": "invalid_api_key"}, None),
    "not_found": (404, {"message": "The model does not exist or you do not have access to it.",
                        "type": "invalid_request_error", "code": "model_not_found"}, None),
}


async def _hostile(
    request: web.BaseRequest, st: _State, fault: str, key: str, body: dict[str, Any]
) -> web.StreamResponse | None:
    """Answer a hostile mode that replaces the response; None for those that alter the body."""
    if fault in _HOSTILE_STATUS:
        status, error, headers = _HOSTILE_STATUS[fault]
        return web.json_response({"error": {**error, "param": None}}, status=status, headers=headers)
    if fault == "html_200":
        return web.Response(text=_HTML, content_type="text/html")
    if fault == "error_200":
        message = "The server had an error while processing your request (injected error_200)."
        return web.json_response({"error": {"message": message, "type": "server_error", "param": None,
                                            "code": None}})
    if fault == "redirect":
        # credentials and a token in the Location, which a client must neither follow nor show
        where = f"http://redirect-user:redirect-pass@{request.host}/elsewhere/v1/chat/completions"
        return web.Response(status=st.options.redirect_status,
                            headers={"Location": f"{where}?token=redirect-token"})
    if fault in ("huge", "huge_chunked"):
        return await _huge(request, st, key, body, chunked=fault == "huge_chunked")
    return None


async def _huge(
    request: web.BaseRequest, st: _State, key: str, body: dict[str, Any], *, chunked: bool
) -> web.StreamResponse:
    """A valid completion of ``huge_mb`` MiB, written in chunks; a client that hangs up ends it."""
    asked = body.get("model")
    model = asked if isinstance(asked, str) else st.options.model
    head, _, tail = completion_body(key, model, "\0", "stop", 0).partition(b"\\u0000")
    size = max(len(head) + len(tail), int(st.options.huge_mb * (1 << 20)))
    filler = size - len(head) - len(tail)
    stream = web.StreamResponse(headers={"Content-Type": "application/json"})
    if chunked:
        stream.enable_chunked_encoding()
    else:
        stream.content_length = size
    try:
        await stream.prepare(request)
        await stream.write(head)
        block = b"x" * _HUGE_CHUNK
        while filler > 0:
            await stream.write(block[: min(filler, _HUGE_CHUNK)])
            filler -= _HUGE_CHUNK
        await stream.write_eof(tail)
    except (ConnectionError, RuntimeError):  # the client refused the rest and closed the connection
        pass
    return stream


async def _models(request: web.BaseRequest, st: _State) -> web.Response:
    model = st.options.model
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": CREATED, "owned_by": "reflectune"}],
        }
    )


async def _stats(request: web.BaseRequest, st: _State) -> web.Response:
    return web.json_response(st.stats())


async def _requests(request: web.BaseRequest, st: _State) -> web.Response:
    return web.json_response({"requests": list(st.recent)})


async def _reset(request: web.BaseRequest, st: _State) -> web.Response:
    raw = await request.read()
    try:
        changes = json.loads(raw) if raw.strip() else {}
        if not isinstance(changes, dict):
            raise TypeError("body must be a JSON object")
        options = replace(st.options, **_coerce(changes))
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc), "invalid_request_error")
    st.configure(options)
    return web.json_response(st.stats())


_ROUTES = {
    ("POST", "/v1/chat/completions"): _chat,
    ("GET", "/v1/models"): _models,
    ("GET", "/stats"): _stats,
    ("GET", "/requests"): _requests,
    ("POST", "/reset"): _reset,
}


def build_handler(
    options: ServerOptions | None = None,
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The request handler for ``aiohttp.web.Server``: a dict lookup instead of a router, for speed."""
    st = _State(options or ServerOptions())

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        route = _ROUTES.get((request.method, request.path))
        if route is None:
            return _error(404, f"No route for {request.method} {request.path}.", "invalid_request_error")
        return await route(request, st)

    return handle


async def _serve(options: ServerOptions, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()

    def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        # real servers take prompts far over aiohttp's 1 MiB default (a 1 MB row is a valid input)
        return web.BaseRequest(message, payload, protocol, writer, task, loop,
                               client_max_size=MAX_REQUEST_BYTES)

    server = web.Server(build_handler(options), access_log=None, handler_cancellation=True,
                        request_factory=make_request)
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


_HELP = {
    "latency": "seconds added to every chat call",
    "jitter": "extra uniform [0, J) seconds",
    "faults": f"MODE[:RATE],... with MODE in {', '.join(FAULT_MODES + HOSTILE_MODES)}",
    "huge_mb": "MiB sent by the huge and huge_chunked modes",
    "redirect_status": "status of the redirect mode (301, 302, 307, 308)",
    "fault_attempts": "faults fire only on the first K attempts of a request",
    "rpm": "server-enforced requests per minute (0: none)",
    "require_key": "answer 401 unless 'Authorization: Bearer KEY'",
    "reasoning": f"send a reasoning beside each answer: {', '.join(REASONING_SHAPES)}",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reflectune.testing.server", description="Loopback OpenAI-compatible test server."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port; printed as 'PORT <n>'")
    for name, default in asdict(ServerOptions()).items():
        kind = type(default) if default is not None else str
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=_HELP.get(name))
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: print ``PORT <n>`` once listening, serve until SIGTERM/SIGINT."""
    parser = _parser()
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        parse_faults(args["faults"])
        _check_reasoning(args["reasoning"])
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_serve(ServerOptions(**args), host, port))


class ServerHandle:
    """A server running in a subprocess; see :func:`running_server`."""

    def __init__(self, process: subprocess.Popen[str], host: str, port: int) -> None:
        self.process, self.host, self.port = process, host, port
        self.url = f"http://{host}:{port}"
        self.base_url = f"{self.url}/v1"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                result: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{exc.code}: {json.loads(exc.read())['error']['message']}") from exc
        return result

    def stats(self) -> dict[str, Any]:
        """``GET /stats``."""
        return self._call("GET", "/stats")

    def requests(self) -> list[dict[str, Any]]:
        """``GET /requests``: the last chat requests, oldest first (see the module's docstring)."""
        found: list[dict[str, Any]] = self._call("GET", "/requests")["requests"]
        return found

    def reset(self, **options: Any) -> dict[str, Any]:
        """Zero the counters and change any :class:`ServerOptions` field; returns the fresh stats."""
        return self._call("POST", "/reset", options)

    def stop(self) -> None:
        """Terminate the subprocess (SIGTERM, then SIGKILL after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _read_port(process: subprocess.Popen[str], timeout: float) -> int:
    """Wait for the ``PORT <n>`` line; a thread keeps the wait bounded on every platform."""
    box: list[str] = []
    stream = process.stdout
    assert stream is not None
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = box[0].strip() if box else ""
    if not line.startswith("PORT "):
        raise RuntimeError(f"test server did not start within {timeout}s (got {line!r}, rc={process.poll()})")
    return int(line.split()[1])


@contextlib.contextmanager
def running_server(
    *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 20.0, **options: Any
) -> Iterator[ServerHandle]:
    """Run the server in a subprocess for the duration of a ``with`` block.

    Args:
        host: interface to bind (loopback by default).
        port: the port to listen on (0: a free one; the handle's ``port`` says which).
        startup_timeout: seconds to wait for the ``PORT`` line.
        **options: any :class:`ServerOptions` field, e.g. ``latency=0.1, faults="429:0.5"``.

    Example:
        >>> with running_server(latency=0.01) as srv:  # doctest: +SKIP
        ...     client = OpenAI(base_url=srv.base_url)
    """
    _coerce(options)
    cmd = [sys.executable, "-m", "reflectune.testing.server", "--host", host, "--port", str(port)]
    for name, value in options.items():
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    handle: ServerHandle | None = None
    try:
        handle = ServerHandle(process, host, _read_port(process, startup_timeout))
        yield handle
    finally:
        if handle is not None:
            handle.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
