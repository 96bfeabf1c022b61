"""Reasoning kept apart from the answer.

Reasoning models write a chain of thought before their answer, and a draft in it may hold the very
reflection markers the answer is parsed for (``[Better Answer] ... [End]``). The draft must never be
parsed, so the HTTP oracle splits the reasoning off before anything else sees the content:

- ``message.reasoning_content`` (DeepSeek's API, vLLM's older reasoning parsers) and
  ``message.reasoning`` (vLLM, OpenRouter) are reasoning as sent; both are kept if both come;
- a ``<think>...</think>`` block at the very start of the content (DeepSeek-R1 distills and Qwen3's
  thinking mode served without a reasoning parser) is reasoning; only a *leading* block counts, so an
  answer that quotes ``<think>`` later on (an answer about these tags) keeps it as text;
- a leading ``<think>`` that is never closed is a reply cut off while thinking: all of it is
  reasoning and there is no answer (``""``), which then fails as a cut-off or empty output;
- reasoning that is empty or only whitespace (Qwen3's ``<think>\\n\\n</think>`` with thinking off)
  is ``None``: nothing to store, but the empty block is still removed from the answer.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_think(content: str) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a content that may open with a ``<think>`` block."""
    body = content.lstrip()
    if not body.startswith(THINK_OPEN):
        return None, content
    inner, closed, answer = body[len(THINK_OPEN):].partition(THINK_CLOSE)
    if not closed:  # cut off while thinking: everything is reasoning, there is no answer
        return _text(inner), ""
    return _text(inner), answer.lstrip()


def join_reasoning(*parts: str | None) -> str | None:
    """The reasoning of one reply from each place it came in (fields, then the think block)."""
    kept = [part.strip() for part in parts if part and part.strip()]
    return "\n\n".join(kept) if kept else None


def _text(reasoning: str) -> str | None:
    return reasoning.strip() or None
