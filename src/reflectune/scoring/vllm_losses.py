"""The optional GPU fast path: target losses from vLLM prompt logprobs (``pip install reflectune[vllm]``).

vLLM returns, for every prompt position j > 0, the log-probability of token j given tokens < j,
which is all an IFD loss needs: one prefill per sequence, no generation (``max_tokens=1``), and
vLLM's own batching and prefix caching (the shared template opening is computed once).

UNTESTED ON A GPU: no GPU was available when this was written. The conversion from prompt logprobs
to losses (``losses_from_prompt_logprobs``) is tested on CPU against the transformers scorer's
numbers; the vLLM call itself is covered by a test that runs only where vLLM and a GPU are present
(``tests/test_scoring.py::test_vllm_matches_transformers``). Its results are stored under their
own namespace, so they never mix with the transformers scorer's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from reflectune.errors import ConfigError
from reflectune.scoring.batching import Item

__all__ = ["VLLMLosses", "losses_from_prompt_logprobs", "require_vllm"]


def _logprob(entry: Any) -> float:
    """vLLM gives ``Logprob`` objects (``.logprob``); accept bare floats too."""
    return float(getattr(entry, "logprob", entry))


def losses_from_prompt_logprobs(item: Item, prompt_logprobs: Sequence[Any]) -> tuple[float, int]:
    """Mean NLL over ``item``'s counted target tokens, from one sequence's prompt logprobs.

    ``prompt_logprobs[j]`` maps token ids to log-probabilities at position j (None at j = 0); the
    entry for ``item.ids[j]`` is always there. Counted tokens are those of ``batch_losses``: from
    ``max(start, 1)`` to the end.
    """
    if len(prompt_logprobs) != len(item.ids):
        raise ValueError(f"got {len(prompt_logprobs)} prompt logprobs for {len(item.ids)} tokens")
    first = max(item.start, 1)
    total = 0.0
    for j in range(first, len(item.ids)):
        position = prompt_logprobs[j]
        if position is None or item.ids[j] not in position:
            raise ValueError(f"vLLM returned no logprob for token {item.ids[j]} at position {j}")
        total -= _logprob(position[item.ids[j]])
    n = len(item.ids) - first
    return (total / n if n else math.nan), n


VLLM_MISSING = "--backend vllm needs vLLM: pip install 'reflectune[vllm]' (on a machine with a CUDA GPU)"


def require_vllm() -> None:
    """Refuse the vLLM backend where vLLM is not installed (checked before any folder is made)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(VLLM_MISSING)


class VLLMLosses:
    """``batch_losses`` for a vLLM engine: call it with a batch of items, get ``[(loss, n), ...]``."""

    def __init__(self, model_path: str, *, dtype: str, max_length: int,
                 gpu_memory_utilization: float = 0.85) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise ConfigError(VLLM_MISSING) from None
        self._llm = LLM(model=model_path, dtype=dtype, max_model_len=max_length + 1,
                        enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                        skip_tokenizer_init=True)
        # prompt_logprobs=0: only the logprob of each actual prompt token; max_tokens=1: no decode.
        self._params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def __call__(self, batch: Sequence[Item]) -> list[tuple[float, int]]:
        prompts = [{"prompt_token_ids": list(item.ids)} for item in batch]
        outputs = self._llm.generate(prompts, self._params, use_tqdm=False)
        return [losses_from_prompt_logprobs(item, out.prompt_logprobs)
                for item, out in zip(batch, outputs, strict=True)]
