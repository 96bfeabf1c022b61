"""Training data: instruction samples in, TRL prompt/completion rows out.

The papers train on single-turn pairs in the vicuna template with the loss on the response only
(METHOD.md §6). Rows become TRL *prompt/completion* pairs (the prompt from
:mod:`reflectune.prompts.student`, shared with IFD scoring) so that ``completion_only_loss`` masks
every prompt token with -100. The dry-run planner and the trainer both build rows here, so the plan
counts the tokens training will see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from reflectune.errors import ConfigError, DataError
from reflectune.prompts.student import response_separator, student_prompt
from reflectune.types import Sample

__all__ = ["build_examples", "data_label", "example_lengths", "load_training_samples", "too_long_error"]


def data_label(data: str | Path | Iterable[Sample]) -> str | None:
    """The data's path for messages, or None for samples in memory."""
    return str(data) if isinstance(data, str | Path) else None


def too_long_error(data: str | Path | Iterable[Sample], rows: int, max_length: int) -> DataError:
    """Every row's prompt fills ``max_length``: nothing of any response would be trained on."""
    return DataError(f"all {rows} rows were dropped: each prompt alone fills --max-length {max_length} "
                     "tokens, so no response token is left to train on; pass a larger --max-length",
                     path=data_label(data))


def load_training_samples(data: str | Path | Iterable[Sample], max_samples: int | None = None, *,
                          fields: Mapping[str, str] | None = None) -> tuple[list[Sample], dict[str, int]]:
    """Single-turn samples with a response, plus counts of what was skipped and why.

    ``data`` is a file or folder (read by ``reflectune.io.read_samples``) or samples already read.
    Multi-turn rows (``passthrough``) and rows with an empty output are skipped: the papers train on
    single-turn pairs only.
    """
    if isinstance(data, str | Path):
        from reflectune.io import read_samples

        source: Iterable[Sample] = read_samples(str(data), fields=fields)
    else:
        source = data
    kept: list[Sample] = []
    skipped = {"multi_turn": 0, "empty_output": 0}
    for sample in source:
        if sample.passthrough:
            skipped["multi_turn"] += 1
        elif not sample.output.strip():
            skipped["empty_output"] += 1
        else:
            kept.append(sample)
            if max_samples and len(kept) >= max_samples:
                break
    if not kept:
        raise DataError(f"no trainable rows (skipped: {skipped})", path=data_label(data))
    return kept, skipped


def build_examples(samples: Iterable[Sample], template: str, tokenizer: Any,
                   prompts_dir: str | None = None) -> list[dict[str, Any]]:
    """TRL prompt/completion rows. Plain templates give strings ending in the tokenizer's eos (the
    ``</s>`` of the vicuna recipe); ``chat`` gives conversational rows rendered by the chat template."""
    rows: list[dict[str, Any]] = []
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; use vicuna or alpaca")
        for s in samples:
            content = f"{s.instruction}\n\n{s.input}" if s.input else s.instruction
            rows.append({"prompt": [{"role": "user", "content": content}],
                         "completion": [{"role": "assistant", "content": s.output}]})
        return rows
    eos, sep = tokenizer.eos_token or "", response_separator(template)
    for s in samples:
        rows.append({"prompt": student_prompt(template, s.instruction, s.input, prompts_dir=prompts_dir),
                     "completion": sep + s.output + eos})
    return rows



def example_lengths(example: Mapping[str, Any], tokenizer: Any) -> tuple[int, int]:
    """(prompt tokens, prompt + completion tokens) of one row, tokenized the way TRL does: plain
    rows as text, conversational ones through the chat template."""
    if isinstance(example["prompt"], list):
        def ids(messages: list[dict[str, str]], generation: bool) -> list[int]:
            return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                      add_generation_prompt=generation)["input_ids"])

        return len(ids(example["prompt"], True)), len(ids(example["prompt"] + example["completion"], False))
    return (len(tokenizer(example["prompt"])["input_ids"]),
            len(tokenizer(example["prompt"] + example["completion"])["input_ids"]))
