"""Scoring's rules (METHOD.md §5.1): a candidate's four losses, the ratios made of them, and the
store namespace that says which setup computed them.

Pure arithmetic. ``ifd`` and ``rifd`` are perplexity ratios ``exp(L_cond - L_direct)``, the
selection default; the ``*_loss_ratio`` variants are Cherry LLM's ``L_cond / L_direct``. A loss with
no target token left is NaN, stored as ``None``, and every ratio built on it is ``None`` too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: bumped when the way a loss is computed changes (part of every store namespace).
SCORING_VERSION = 1


def ratio_exp(cond: float | None, direct: float | None) -> float | None:
    """IFD's perplexity ratio ``exp(L_cond - L_direct)``; ``None`` where a loss is NaN or it overflows."""
    if cond is None or direct is None:
        return None
    try:
        return math.exp(cond - direct)
    except OverflowError:
        return None


def loss_ratio(cond: float | None, direct: float | None) -> float | None:
    """Cherry LLM's ``L_cond / L_direct``; ``None`` where a loss is NaN or the direct loss is 0."""
    if cond is None or direct is None or direct == 0:
        return None
    return cond / direct


@dataclass(frozen=True, slots=True)
class CandidateScores:
    """The four mean losses of one candidate (None where no target token was left: NaN).

    ``ifd`` and ``rifd`` are perplexity ratios, ``exp(L_cond - L_direct)`` (METHOD.md §5.1, the
    default for selection); ``*_loss_ratio`` are Cherry LLM's ``L_cond / L_direct``. Scored for IFD
    only (``with_rifd`` False), the r-IFD side was never computed: it is absent, not NaN.
    """

    a_direct: float | None
    a_condition: float | None
    q_direct: float | None = None
    q_condition: float | None = None
    with_rifd: bool = True

    @property
    def ifd(self) -> float | None:
        return ratio_exp(self.a_condition, self.a_direct)

    @property
    def rifd(self) -> float | None:
        return ratio_exp(self.q_condition, self.q_direct)

    @property
    def ifd_loss_ratio(self) -> float | None:
        return loss_ratio(self.a_condition, self.a_direct)

    @property
    def rifd_loss_ratio(self) -> float | None:
        return loss_ratio(self.q_condition, self.q_direct)

    @property
    def losses(self) -> tuple[float | None, ...]:
        """The losses that were scored (``STATS`` order)."""
        both = (self.a_direct, self.a_condition, self.q_direct, self.q_condition)
        return both if self.with_rifd else both[:2]

    @property
    def has_nan(self) -> bool:
        return None in self.losses

    def to_json(self) -> dict[str, float | None]:
        out = {"a_direct": self.a_direct, "a_condition": self.a_condition, "ifd": self.ifd,
               "ifd_loss_ratio": self.ifd_loss_ratio}
        if self.with_rifd:
            out.update(q_direct=self.q_direct, q_condition=self.q_condition, rifd=self.rifd,
                       rifd_loss_ratio=self.rifd_loss_ratio)
        return out


#: bf16 against fp32 on the first 200 rows of alpaca_cherry5pct_3111.json (embedded student, max length
#: 512, AMD EPYC with AVX512-BF16, 2026-12-02): IFD median relative difference 0.38 %, p95 1.4 %, max
#: 6.4 %; the IFD < 1 decision agreed on 199/200 rows and the top-10 % set shared 18/20. Under the
#: 99 % agreement a default must keep, so a CPU scores in fp32 unless asked; an fp32 final norm and
#: head on the bf16 body moved none of these decisions (median 0.28 %), so it is not done.
BF16_DECISIONS = "IFD < 1 199/200, top-10% 18/20 of fp32's on 200 real rows"


def scoring_dtype(device: str, asked: str | None, gpu_dtype: str = "bfloat16") -> tuple[str, str]:
    """The dtype ``score`` computes in, and why: the fastest one whose *decisions* match fp32's.

    On a CPU that is fp32 even where bf16 is native and 2-3x faster: bf16 changed which rows a
    top-k keeps (``BF16_DECISIONS``). On a GPU the papers' students (7B) do not fit in fp32 on most
    cards and their reference code scores in half precision, so bf16 stays (fp16 without it); its
    decision agreement there is not measured here (benchmarks/gpu_check.sh is where it would be)."""
    if asked and asked != "auto":
        return asked, "--dtype"
    if device.startswith("cuda"):  # ``gpu_dtype``: bf16 where the GPU has it, else fp16
        return gpu_dtype, "the GPU default (half precision; decision agreement unmeasured on GPUs)"
    return "float32", ("exact; bf16 changes decisions (" + BF16_DECISIONS + "); --dtype bfloat16 "
                       "trades that for speed")


def precision_key(dtype: str, batch_tokens: int, backend: str = "hf") -> str:
    """The part of a scoring setup that decides how exact its numbers are.

    fp32 losses do not depend on the batch. In reduced precision they do: a bf16 IFD moved by up to
    1.6 % between ``--batch-tokens 8192`` and ``256``, so the batch budget is part of the setup, and a
    run resumed with another budget computes anew instead of mixing both. vLLM's kernels give
    slightly different numbers again: its results are their own.
    """
    key = dtype if dtype == "float32" else f"{dtype}@{batch_tokens}"
    return f"{key}+{backend}" if backend == "vllm" else key


def score_namespace(fingerprint: str, template: str, max_length: int, dtype: str) -> str:
    """Store namespace of one scoring setup; the per-item key is a content hash within it."""
    return f"ifd:v{SCORING_VERSION}:{fingerprint}:{template}:{max_length}:{dtype}"
