"""Format forcing over HTTP by prefill: the local oracle's state machine, driven by chat requests.

vLLM, SGLang and llama.cpp's ``llama-server`` continue a trailing assistant message instead of
starting a new turn (vLLM and SGLang when asked with ``continue_final_message: true,
add_generation_prompt: false``; ``llama-server`` does so by default and reads the same fields). So
the HTTP oracle drives :class:`~reflectune.oracles.forcing.FormatPlan` as the local oracle does:
the critique is a plain request, and a section is continued from the transcript so far (critique
and marker) as the assistant's last message. What comes back for the whole request is the
transcript, so the strict parser reads it as it reads a local one.

A server cannot be told to stop where the local oracle stops a section (a verbatim loop, a format
header line the model wrote), so a section is asked for in chunks of :data:`CHUNK_TOKENS`, each
continuing the text so far, and checked between them, as the local worker checks a row every 32
tokens. A looping section then costs one chunk more than it should, not the whole budget, and the
sections after it keep their tokens. Servers with a prefix cache (``llama-server``, vLLM) reuse the
prompt's keys and values across the chunks; the prompt tokens each chunk re-sends are counted.

Servers differ in what they return for a continued message: vLLM sends the new text only,
``llama-server`` the prefix and the new text; :func:`continuation` takes either. A server that
ignores the request and starts a new turn is caught once, before any real call, by
:data:`PROBE` and :func:`continues`.

No I/O here: the oracle passes in how one chat request is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reflectune.markers import END, PROMPT_HEADERS, SECTION_MARKERS
from reflectune.oracles.forcing import FORMAT_HEADER, FormatPlan, Segment, loop_cut
from reflectune.types import ChatRequest, Completion, Message

__all__ = ["CHUNK_TOKENS", "CONTINUE_FIELDS", "PROBE", "complete_by_prefill", "continuation", "continues",
           "segment_request"]

#: Tokens a section is asked for at a time (then checked for a loop or a format header).
CHUNK_TOKENS = 64

#: Body fields asking to continue the last (assistant) message (vLLM's and SGLang's names, which
#: llama-server reads too).
CONTINUE_FIELDS: Mapping[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}

#: A request whose answer shows whether the server continued the assistant message: continued, it
#: goes on inside the word ("ippi"); a new turn starts afresh ("Mississippi", "The word is").
#: It carries as many stop strings as a critique does, so a server that takes fewer refuses it here.
PROBE = ChatRequest((Message("user", "Write the word Mississippi."),
                     Message("assistant", "Answer >> Mississ")), max_tokens=4, temperature=0.0,
                    stop=(*SECTION_MARKERS, END, *PROMPT_HEADERS))

#: ``send(request, extra_fields)``: one chat request over the wire, its completion as the server said.
Send = Callable[[ChatRequest, Mapping[str, Any]], Awaitable[Completion]]


def continuation(content: str, prefix: str) -> str:
    """The new text of a continued message: ``content`` without the prefix a server echoed back."""
    return content[len(prefix):] if prefix and content.startswith(prefix) else content


def continues(completion: Completion) -> bool:
    """Whether the answer to :data:`PROBE` continued its assistant message."""
    prefix = PROBE.messages[-1].content
    return continuation(completion.content, prefix).startswith("ip")


def segment_request(request: ChatRequest, prefix: str, budget: int, stops: tuple[str, ...]) -> ChatRequest:
    """One chat request of a segment: the conversation, then the transcript so far as the
    assistant's message (none for the critique), within ``budget`` tokens and ``stops``."""
    messages = request.messages + ((Message("assistant", prefix),) if prefix else ())
    return ChatRequest(messages, max_tokens=budget, temperature=request.temperature,
                       top_p=request.top_p, seed=request.seed, stop=stops)


@dataclass(slots=True)
class _Usage:
    """What the requests of one forced request add up to."""

    prompt_tokens: int = 0
    latency_s: float = 0.0
    estimated: bool = False
    model: str | None = None
    #: each request's reasoning (a reasoning model's, kept apart from the transcript) and its tokens
    reasoning: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0

    def add(self, completion: Completion) -> None:
        self.prompt_tokens += completion.prompt_tokens
        self.latency_s += completion.latency_s
        if completion.reasoning:
            self.reasoning.append(completion.reasoning)
        self.reasoning_tokens += completion.reasoning_tokens
        self.estimated = self.estimated or completion.usage_estimated
        self.model = completion.model or self.model


async def complete_by_prefill(request: ChatRequest, send: Send) -> Completion:
    """Answer ``request`` (which names ``sections``) segment by segment through ``send``.

    The completion holds the whole transcript, the prompt and completion tokens of every request
    summed, the markers the oracle wrote in ``forced`` (``[End]:loop`` where a loop ended a
    section) and ``finish_reason`` ``length`` when a section ran out of tokens, as the local oracle
    reports them. A server strips a stop string it met, so a closing ``[End]`` is written by the
    oracle and listed in ``forced`` unless the model's own ``[End]`` fell across two chunks.
    """
    plan = FormatPlan(request)
    usage = _Usage()
    while (segment := plan.next_segment()) is not None:
        text, tokens, ended = await _segment(request, segment, send, usage)
        plan.feed(text, tokens, ended)
    return Completion(content=plan.content, finish_reason=plan.finish_reason,
                      prompt_tokens=usage.prompt_tokens, completion_tokens=plan.completion_tokens,
                      latency_s=usage.latency_s, forced=tuple(plan.forced),
                      usage_estimated=usage.estimated, model=usage.model,
                      reasoning="\n\n".join(usage.reasoning) or None, reasoning_tokens=usage.reasoning_tokens)


async def _segment(request: ChatRequest, segment: Segment, send: Send, usage: _Usage) -> tuple[str, int, str]:
    """The model's text for one segment, its tokens, and why it ended (``FormatPlan.feed``'s terms).
    A critique is one request; a section goes chunk by chunk until it ends on its own, meets a stop
    string or a format header (perhaps across two chunks), loops, or spends its budget."""
    text, tokens = "", 0
    while tokens < segment.budget:
        left = segment.budget - tokens
        prefix = segment.prefix + text
        completion = await send(segment_request(request, prefix, min(left, CHUNK_TOKENS) if segment.end_loops
                                                else left, segment.stops), CONTINUE_FIELDS if prefix else {})
        usage.add(completion)
        new = continuation(completion.content, prefix)
        text += new
        tokens += completion.completion_tokens
        if completion.finish_reason != "length" or not new:
            return text, tokens, "stop"
        if not segment.end_loops:
            break
        if any(stop in text for stop in segment.stops) or FORMAT_HEADER.search(text):
            return text, tokens, "stop"  # FormatPlan.feed cuts there
        if (cut := loop_cut(text)) is not None:
            return text[:cut], tokens, "loop"
    return text, tokens, "length"
