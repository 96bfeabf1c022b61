"""A student template as a Hugging Face chat template, so the prompt format travels with the model.

``train`` formats its rows with :func:`~reflectune.prompts.student.student_prompt`; a folder it saves
must then prompt the same way wherever it is loaded (``generate``, ``judge``, vLLM, plain
``tokenizer.apply_chat_template``). The one mechanism every loader understands is the tokenizer's
chat template, so :func:`student_chat_template` turns our template files into one: it renders the
no-input form around a sentinel instruction, splits the text there, and embeds the prefix and the
suffix as Jinja string literals. Nothing is copied by hand, and a ``--prompts`` override of the
template file gives the matching chat template.

What the chat template renders, for the plain templates (vicuna, alpaca, wiz):

- one user turn: ``prefix + content + suffix``, exactly ``student_prompt(NAME, content)``. The
  suffix already ends in the assistant's cue (``ASSISTANT:``, ``### Response:``), so the prompt is
  the same with or without ``add_generation_prompt``; the model continues with the separator and
  the response, as it was trained;
- a system message: its text goes in front of the next user turn's content, joined by a blank line
  (``system + "\\n\\n" + content`` takes the instruction's place), the same for all three templates;
  a template's own system line, vicuna's, stays where it is;
- several turns: each completed exchange is ``prompt(user) + separator + answer + eos_token``, then
  the last user turn's prompt.

``json.dumps`` of a string is a valid Jinja string literal (Jinja decodes the same backslash
escapes); ``ensure_ascii=False`` keeps characters outside the BMP whole (``\\uD83D\\uDE00`` would
decode to two lone surrogates). The template is one line with no whitespace between its tags, so
Hugging Face's ``trim_blocks``/``lstrip_blocks`` change nothing.
"""

from __future__ import annotations

import json

from reflectune.errors import ConfigError
from reflectune.prompts.render import load_template
from reflectune.prompts.student import STUDENT_TEMPLATES, response_separator, student_prompt

__all__ = ["CHAT_TEMPLATES", "SYSTEM_JOIN", "student_chat_template", "template_id"]

#: Student templates that become a chat template of their own; ``chat`` is the tokenizer's.
CHAT_TEMPLATES: tuple[str, ...] = tuple(t for t in STUDENT_TEMPLATES if t != "chat")
#: Between a system message and the user's content, in the instruction's place.
SYSTEM_JOIN = "\n\n"
_SENTINEL = "\u0000REFLECTUNE-INSTRUCTION\u0000"


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def template_id(template: str, prompts_dir: str | None = None) -> str:
    """``vicuna@1``: the student template's name and file version, for identities and cache keys."""
    return f"{template}@{load_template(f'student_{template}', prompts_dir).version}"


def student_chat_template(template: str, prompts_dir: str | None = None) -> str:
    """The Jinja chat template that renders a conversation in the student template ``template``.

    Example::

        >>> tpl = student_chat_template("wiz")
        >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], chat_template=tpl,
        ...                               tokenize=False, add_generation_prompt=True)  # doctest: +SKIP
        'Hi\\n\\n### Response:'
    """
    if template not in CHAT_TEMPLATES:
        raise ConfigError(f"template '{template}' has no chat template of its own: choose "
                          f"{', '.join(CHAT_TEMPLATES)} (chat is the tokenizer's own)")
    text = student_prompt(template, _SENTINEL, prompts_dir=prompts_dir)
    if text.count(_SENTINEL) != 1:
        raise ConfigError(f"student_{template}.txt must insert the instruction exactly once "
                          f"(found {text.count(_SENTINEL)} times)")
    prefix, suffix = text.split(_SENTINEL)
    sep, join = _literal(response_separator(template)), _literal(SYSTEM_JOIN)
    return (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        f"{{%- set ns.system = ns.system + message['content'] + {join} -%}}"
        "{%- elif message['role'] == 'user' -%}"
        f"{{{{ {_literal(prefix)} + ns.system + message['content'] + {_literal(suffix)} }}}}"
        "{%- set ns.system = '' -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{ {sep} + message['content'] + eos_token }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )
