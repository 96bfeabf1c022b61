"""The text a local model is prompted with: its chat template, or a student template (``--template``).

A folder ``reflectune train`` saved carries its prompt format in two places that agree:
``reflectune-model.json`` names it, and the tokenizer's chat template renders it (for vicuna, alpaca
and wiz, one built from our template files by :mod:`reflectune.prompts.chat_template`; for chat, the
base's own). So by default (``template=None``) the folder's chat template is the single mechanism:
what ``train`` wrote is what ``generate`` and ``judge`` render, with the very template files (and
``--prompts`` overrides) training used. ``--template NAME`` overrides it by rendering through the
chat template built for NAME, and ``chat`` through the base model's chat template (recorded by
``train``, since the folder's own may now be vicuna's).

That build is the one thing oracles take from ``prompts`` (an edge in tests/test_layers.py): the
oracle still writes no prompt wording of its own, it only applies a chat template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reflectune.errors import ConfigError
from reflectune.prompts.chat_template import CHAT_TEMPLATES, student_chat_template, template_id

__all__ = ["PromptFormat", "prompt_format", "prompt_text", "render"]

@dataclass(frozen=True)
class PromptFormat:
    """How requests are rendered: ``chat_template`` (None: the tokenizer's own, or a plain transcript
    when it has none), the template's ``name`` for records, and the ``override`` that enters the
    oracle's identity (``None`` when the model's own format is used)."""

    name: str
    chat_template: str | None = None
    override: str | None = None


def prompt_format(template: str | None, record: Mapping[str, Any]) -> PromptFormat:
    """The format for an override ``template`` (or None) on a model whose record is ``record``."""
    recorded = record.get("template")
    if template is None:
        return PromptFormat(recorded if isinstance(recorded, str) else "chat")
    if template in CHAT_TEMPLATES:
        return PromptFormat(template, student_chat_template(template), template_id(template))
    if template == "chat":
        base = record.get("base_chat_template")
        if isinstance(base, str) and base:
            return PromptFormat("chat", base, "chat")
        if recorded in CHAT_TEMPLATES:  # the folder's chat template is the student one now
            raise ConfigError(f"--template chat: this model was trained with {recorded} and its base "
                              "had no chat template; choose vicuna, alpaca or wiz")
        return PromptFormat("chat", None, "chat")
    raise ConfigError(f"unknown template '{template}': choose {', '.join((*CHAT_TEMPLATES, 'chat'))}")


def prompt_text(tokenizer: Any, messages: Sequence[Mapping[str, str]], template: str | None = None, *,
                record: Mapping[str, Any] | None = None) -> str:
    """The prompt for ``messages`` (dicts with ``role`` and ``content``), ready to tokenize.

    Args:
        tokenizer: the model's tokenizer (its ``chat_template`` is the default format).
        messages: the conversation; the generation prompt is added.
        template: ``None`` (the model's own format), or vicuna, alpaca, wiz, chat to override it.
        record: the model folder's ``reflectune-model.json`` (for ``chat``: the base's template).
    """
    return render(tokenizer, messages, prompt_format(template, record or {}))


def render(tokenizer: Any, messages: Sequence[Mapping[str, str]], fmt: PromptFormat) -> str:
    """``messages`` rendered in ``fmt``: through its chat template, else the tokenizer's, else (a base
    model without one) as a plain ``role: content`` transcript."""
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    if fmt.chat_template or getattr(tokenizer, "chat_template", None):
        options = {"chat_template": fmt.chat_template} if fmt.chat_template else {}
        return str(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, **options))
    if fmt.override == "chat":
        raise ConfigError("--template chat: this model has no chat template; choose vicuna, alpaca or wiz")
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in chat) + "assistant: "
