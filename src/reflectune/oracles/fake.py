"""An in-process oracle for tests and dry runs: deterministic, free, instant.

It answers every reflection prompt in the expected format, derived from a hash of the prompt, so
pipelines can be exercised without a server. Faults that need a real socket are the loopback
server's job (``reflectune.testing.server``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from reflectune.markers import BETTER_ANSWER, END, MERGED_INSTRUCTION, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.oracles.base import Capabilities
from reflectune.oracles.tokens import approx_tokens
from reflectune.types import ChatRequest, Completion


class FakeOracle:
    name = "fake"
    context = 32768
    capabilities = Capabilities()

    def __init__(self, label: str = "fake") -> None:
        self.label = label or "fake"
        self.calls = 0

    @classmethod
    def from_spec(cls, arg: str) -> FakeOracle:
        return cls(arg)

    def fingerprint(self) -> str:
        return f"fake:{self.label}"

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def answer(self, prompt: str) -> str:
        tag = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        if NEW_INSTRUCTION in prompt:
            return (f"The instruction is vague. {NEW_INSTRUCTION} Explain topic {tag} in depth, "
                    f"with two examples. {END}\n{NEW_ANSWER} A detailed answer about {tag}. {END}")
        if BETTER_ANSWER in prompt:
            return f"The answer lacks detail. {BETTER_ANSWER} A better, detailed answer ({tag}). {END}"
        if MERGED_INSTRUCTION in prompt:
            return f"{MERGED_INSTRUCTION} A merged instruction ({tag}). {END}"
        return f"Answer {tag}."

    async def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for request in requests:
            self.calls += 1
            prompt = "\n".join(m.content for m in request.messages)
            content = self.answer(prompt)
            out.append(Completion(content, "stop", approx_tokens(prompt), approx_tokens(content)))
        return out

    async def aclose(self) -> None:
        return None
