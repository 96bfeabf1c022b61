"""Plain records shared by every layer.

They live at the bottom so that ``io``, ``prompts``, ``oracles`` and the engine can exchange them
without importing each other. Frozen dataclasses: cheap to build by the million, hashable where it
matters, and nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat-completions request, backend-neutral.

    ``sections`` asks a backend that can (``Capabilities.prefill``) to force the output format: after
    a critique of at most ``critique_tokens`` tokens it writes each marker itself (prefill) and lets
    the model fill the section up to ``[End]``; an HTTP backend with ``--forcing grammar`` constrains
    one answer to that shape instead. Backends that cannot ignore both; the fields still enter the
    cache key.
    """

    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    critique_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop),
            "sections": list(self.sections),
            "critique_tokens": self.critique_tokens,
        }


@dataclass(frozen=True, slots=True)
class Completion:
    """What a backend returns for one request. ``forced`` lists the markers a local backend wrote."""

    content: str
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    forced: tuple[str, ...] = ()
    #: the server sent no usable token counts: ``prompt_tokens``/``completion_tokens`` are estimates
    usage_estimated: bool = False
    #: the model that answered, as the server names it (``None`` when it does not say)
    model: str | None = None
    #: the reasoning sent apart from the answer (a field or a leading ``<think>`` block): stored, never
    #: parsed; ``content`` is the answer only
    reasoning: str | None = None
    #: tokens spent on reasoning, a part of ``completion_tokens`` (reported, or estimated from the text)
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    """One (instruction, input, output) pair read from a dataset.

    ``id`` is stable across runs: the row's own id, or ``row-<index>-<hash>``. ``row`` is the
    1-based position in the file; ``extra`` keeps every other column so outputs can write them back.
    ``raw`` is the untouched record for rows kept unchanged (multi-turn conversations).
    """

    id: str
    row: int
    instruction: str
    input: str = ""
    output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    passthrough: bool = False
    raw: dict[str, Any] | None = None
