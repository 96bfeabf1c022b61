"""Generation's rules: the request a test prompt becomes, and the row its answer becomes.

Pure: the papers' protocol (one user message, greedy, 1,024 new tokens) and AlpacaEval's row schema
(``instruction``, ``output``, ``generator``, ``dataset``) plus ``id`` and ``category``, so the judge
can pair two answer files by test-set identity. A failed generation keeps its row, with an empty
``output`` and an ``error``.
"""

from __future__ import annotations

from typing import Any

from reflectune.config import GenerateConfig
from reflectune.io.testsets import EvalItem
from reflectune.store.calls import CallRecord
from reflectune.types import ChatRequest, Message

GENERATE_STAGE = "generate"
#: Enters every generation call's cache key; bump it if the request shape changes.
GENERATE_VERSION = "generate@1"


def generation_request(item: EvalItem, config: GenerateConfig) -> ChatRequest:
    """The prompt as a single user message; sampling from ``config`` (greedy by default)."""
    return ChatRequest(messages=(Message("user", item.instruction),), max_tokens=config.max_tokens,
                       temperature=config.temperature, top_p=config.top_p, seed=config.seed)


def answer_row(item: EvalItem, record: CallRecord, generator: str) -> dict[str, Any]:
    """One output row in AlpacaEval's ``model_outputs.json`` schema, test-set identity kept."""
    row: dict[str, Any] = {"instruction": item.instruction,
                           "output": (record.content or "") if record.ok else "",
                           "generator": generator, "dataset": item.dataset, "id": item.id}
    if item.category is not None:
        row["category"] = item.category
    if not record.ok:
        row["error"] = f"{record.error_kind or 'error'}: {record.error or 'generation failed'}"
    return row
