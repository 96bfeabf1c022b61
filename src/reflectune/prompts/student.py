"""Prompt templates a *student* model sees: one place for the papers' vicuna, alpaca and wiz strings.

IFD scoring (METHOD.md §5.1) and training (§6) must wrap an instruction in exactly the same words, or
the scores select data for a prompt the trained model never sees. Both call :func:`student_prompt`.
It returns the prompt part only; the response is appended directly after it (training adds
:func:`response_separator` first, FastChat's single space for vicuna, and the tokenizer's eos last).

Pure string work: the ``chat`` template calls the tokenizer it is given, nothing is imported here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STUDENT_TEMPLATES", "response_separator", "student_prompt"]

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_VICUNA = VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:"
_VICUNA_INPUT = VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:"

# Stanford Alpaca (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), verbatim.
_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# WizardLM / Cherry LLM: no system line; an input, when present, follows the instruction on a new line.
_WIZ = "{instruction}\n\n### Response:"
_WIZ_INPUT = "{instruction}\n{input}\n\n### Response:"

#: name -> (template without input, template with input); ``chat`` uses the tokenizer instead.
_TEMPLATES: dict[str, tuple[str, str]] = {
    "vicuna": (_VICUNA, _VICUNA_INPUT),
    "alpaca": (_ALPACA, _ALPACA_INPUT),
    "wiz": (_WIZ, _WIZ_INPUT),
}
STUDENT_TEMPLATES: tuple[str, ...] = ("vicuna", "alpaca", "wiz", "chat")

_SEPARATORS = {"vicuna": " "}


def _check(template: str) -> None:
    if template not in STUDENT_TEMPLATES:
        import difflib

        close = difflib.get_close_matches(template, STUDENT_TEMPLATES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown student template '{template}'{hint}: "
                         f"choose one of {', '.join(STUDENT_TEMPLATES)}")


def student_prompt(template: str, instruction: str, input: str = "", tokenizer: Any = None) -> str:
    """The prompt a student sees before its response, for one (instruction, input) pair.

    Args:
        template: ``vicuna`` (the papers' default), ``alpaca``, ``wiz`` or ``chat``.
        instruction: the task.
        input: optional context; templates switch to their "with input" form when it is non-empty.
        tokenizer: needed for ``chat`` only: its chat template renders one user turn plus the
            generation prompt.

    Returns:
        The prompt text; the response is appended directly after it.

    Example::

        >>> student_prompt("wiz", "Name a colour.")
        'Name a colour.\\n\\n### Response:'
    """
    _check(template)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the 'chat' template needs a tokenizer that has a chat template")
        content = f"{instruction}\n\n{input}" if input else instruction
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    plain, with_input = _TEMPLATES[template]
    if input:
        return with_input.format(instruction=instruction, input=input)
    return plain.format(instruction=instruction)


def response_separator(template: str) -> str:
    """What training puts between the prompt and the response: a space for vicuna (FastChat's
    ``"ASSISTANT: " + response``), nothing for the others (their prompts end in a newline or colon)."""
    _check(template)
    return _SEPARATORS.get(template, "")
