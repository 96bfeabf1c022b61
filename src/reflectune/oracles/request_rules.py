"""Which fields a chat request body carries, per model family: one table, no I/O.

OpenAI's reasoning models refuse what every other chat model takes: a body with ``max_tokens``,
``temperature`` or ``top_p`` (or ``stop``, for o3 and o4-mini) is a 400 ``unsupported_parameter``.
They want ``max_completion_tokens``, a budget that also pays for the hidden reasoning tokens.

Sources (checked 2026-12):

- OpenAI API reference, Chat Completions, ``max_tokens``: "deprecated in favor of
  max_completion_tokens, and is not compatible with o-series models"
  (https://platform.openai.com/docs/api-reference/chat/create); reasoning guide: the budget
  includes reasoning tokens (https://platform.openai.com/docs/guides/reasoning).
- The 400s the API answers, as users reported them: ``Unsupported parameter: 'max_tokens' is not
  supported with this model. Use 'max_completion_tokens' instead.`` (o1, o3-mini, gpt-5,
  gpt-5.4); ``'temperature' does not support 0 with this model. Only the default (1) value is
  supported`` (o3-mini, gpt-5 family); ``'top_p' is not supported`` (o4-mini); ``'stop' is not
  supported with this model`` (o3, o4-mini) (openai/openai-python#2104, pydantic/pydantic-ai#1205,
  langgenius/dify#18971, lobehub/lobehub#7747).

The rules go by the model's name wherever it is served: an o4-mini behind Azure OpenAI or a proxy
needs them as much as on api.openai.com, and a model a local server names ``qwen`` is a chat model.
A name with a vendor prefix (OpenRouter's ``openai/o4-mini``) is left to that router, which
translates the parameters itself. A family matches its own name, its dated snapshots and variants
(``o3-mini-2025-01-31``, ``gpt-5-mini``) and its point releases (``gpt-5.1``); a name that matches
no family takes the chat rules. ``rules="chat"`` or ``"reasoning"`` (``--request-rules``) overrides
the table for a deployment with a name of its own (Azure deployment names are the user's).

The reasoning rule is also the safe side for an OpenAI model the table may misjudge: every OpenAI
chat model takes ``max_completion_tokens``, and leaving sampling out is always valid (it samples at
the default). So ``gpt-5-chat-latest``, a chat model in the gpt-5 family, gets the reasoning rule.
o1-mini and o1-preview (retired) also refused system messages; that is not handled here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from reflectune.types import ChatRequest

__all__ = ["CHAT", "FAMILIES", "REASONING", "RULE_NAMES", "RequestRule", "payload_for", "rule_for"]

RuleName = Literal["auto", "chat", "reasoning"]
#: What ``--request-rules`` accepts: ``auto`` (by the model name) or a rule by its name.
RULE_NAMES: tuple[str, ...] = get_args(RuleName)


@dataclass(frozen=True, slots=True)
class RequestRule:
    """How one family's request body is written."""

    name: str
    #: the field that carries the completion budget
    tokens_field: str
    #: ``temperature`` and ``top_p`` are sent
    sampling: bool
    #: ``stop`` strings are sent
    stop: bool


#: Every chat model but OpenAI's reasoning ones, and every OpenAI-compatible server (vLLM, llama.cpp,
#: Ollama, SGLang, TGI read ``max_tokens``; older vLLM releases do not know ``max_completion_tokens``).
CHAT = RequestRule("chat", tokens_field="max_tokens", sampling=True, stop=True)
#: OpenAI's reasoning models (o-series, gpt-5 family): see the module's sources.
REASONING = RequestRule("reasoning", tokens_field="max_completion_tokens", sampling=False, stop=False)

#: (family, rule): the longest family that matches a name decides. Chat families are listed to say
#: so; a name that matches none is chat too.
FAMILIES: tuple[tuple[str, RequestRule], ...] = (
    ("o1", REASONING),        # o1, o1-2024-12-17, o1-pro (o1-mini, o1-preview: retired)
    ("o3", REASONING),        # o3, o3-pro, o3-deep-research: 'stop' refused too
    ("o3-mini", REASONING),   # 'temperature' refused (openai-python#2104)
    ("o4-mini", REASONING),   # 'top_p' and 'stop' refused (lobehub#7747, dify#18971)
    ("gpt-5", REASONING),     # gpt-5, -mini, -nano, -codex, -pro, gpt-5.1 ... : temperature 1 only
    ("gpt-4.1", CHAT),
    ("gpt-4o", CHAT),
    ("chatgpt-4o", CHAT),
    ("gpt-4", CHAT),
    ("gpt-3.5-turbo", CHAT),
)
_RULES = {rule.name: rule for rule in (CHAT, REASONING)}


def _matches(model: str, family: str) -> bool:
    """``family`` itself, a snapshot or variant (``family-...``) or a point release (``family.N...``)."""
    return model == family or re.match(re.escape(family) + r"(-|\.\d)", model) is not None


def rule_for(model: str, rules: str = "auto") -> RequestRule:
    """The rule for ``model``: by its family (``rules="auto"``), or the one ``rules`` names.

    Example:
        >>> rule_for("o3-mini-2025-01-31").name, rule_for("gpt-4o-mini").name, rule_for("qwen").name
        ('reasoning', 'chat', 'chat')
    """
    if rules != "auto":
        if rules not in _RULES:
            raise ValueError(f"unknown request rules '{rules}': use {' | '.join(RULE_NAMES)}")
        return _RULES[rules]
    name = model.strip().lower()
    found = [(len(family), rule) for family, rule in FAMILIES if _matches(name, family)]
    return max(found, key=lambda pair: pair[0])[1] if found else CHAT


def payload_for(model: str, request: ChatRequest, rule: RequestRule = CHAT) -> dict[str, Any]:
    """The JSON body of one chat request under ``rule``, before any extra fields are merged in.

    The chat rule writes the body as reflectune always has (same fields, same order), so servers'
    caches and recorded bodies do not change for chat models.
    """
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    if rule.sampling:
        payload["temperature"] = request.temperature
        payload["top_p"] = request.top_p
    if request.max_tokens is not None:
        payload[rule.tokens_field] = request.max_tokens
    if request.seed is not None:
        payload["seed"] = request.seed
    if request.stop and rule.stop:
        payload["stop"] = list(request.stop)
    return payload
