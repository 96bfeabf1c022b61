"""The prompt a *student* model sees: one place for the papers' vicuna, alpaca and wiz prompts.

IFD scoring (METHOD.md §5.1) and training (§6) must wrap an instruction in exactly the same words, or
the scores select data for a prompt the trained model never sees. Both call :func:`student_prompt`.
It returns the prompt part only; the response is appended directly after it (training adds
:func:`response_separator` first, FastChat's single space for vicuna, and the tokenizer's eos last).

The words are template files, ``prompts/templates/student_<name>.txt`` (one per template; a
``{% if input %}`` inside picks the with-input form), overridable with ``prompts_dir`` like every
prompt. ``chat``'s file holds the user turn, which the tokenizer's own chat template then wraps.
Pure string work: the ``chat`` template calls the tokenizer it is given, nothing is imported here.
"""

from __future__ import annotations

from typing import Any

from reflectune.prompts.render import load_template, render, render_text

__all__ = ["STUDENT_TEMPLATES", "response_separator", "student_prompt"]

STUDENT_TEMPLATES: tuple[str, ...] = ("vicuna", "alpaca", "wiz", "chat")

#: How training joins prompt and response; not in the template files, since scoring never adds it.
_SEPARATORS = {"vicuna": " "}


def _check(template: str) -> None:
    if template not in STUDENT_TEMPLATES:
        import difflib

        close = difflib.get_close_matches(template, STUDENT_TEMPLATES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown student template '{template}'{hint}: "
                         f"choose one of {', '.join(STUDENT_TEMPLATES)}")


def student_prompt(template: str, instruction: str, input: str = "", tokenizer: Any = None,
                   prompts_dir: str | None = None) -> str:
    """The prompt a student sees before its response, for one (instruction, input) pair.

    Args:
        template: ``vicuna`` (the papers' default), ``alpaca``, ``wiz`` or ``chat``.
        instruction: the task.
        input: optional context; templates switch to their "with input" form when it is non-empty.
        tokenizer: needed for ``chat`` only: its chat template renders one user turn plus the
            generation prompt.
        prompts_dir: a folder whose ``student_<template>.txt``, if any, replaces the packaged one.

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
        messages = render(load_template("student_chat", prompts_dir), instruction=instruction, input=input)
        return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             tokenize=False, add_generation_prompt=True)
    return render_text(load_template(f"student_{template}", prompts_dir), instruction=instruction,
                       input=input)


def response_separator(template: str) -> str:
    """What training puts between the prompt and the response: a space for vicuna (FastChat's
    ``"ASSISTANT: " + response``), nothing for the others (their prompts end in a newline or colon)."""
    _check(template)
    return _SEPARATORS.get(template, "")
