"""Render every prompt from versioned template files: oracle, judge, student and r-IFD guess.

Templates are package files (``prompts/templates/*.txt``) so users can read and override them with
``--prompts DIR`` without touching code. Each file starts with ``version: N``, then has either chat
sections, ``--- user`` and optionally ``--- system`` (a request to an oracle or judge), or one
``--- text`` section (a plain prompt a student completes, no chat roles); lines between the version
and the first section are a note for readers, ignored. Sections are rendered with
Jinja2 (strict undefined, no autoescape: this is plain text; values are inserted verbatim, never
read as template syntax). Each section is stripped of the whitespace around it, so a prompt that must
end in whitespace writes it inside a ``{% if %}`` branch or as ``{{ "\\n" }}``. The version enters
the cache keys (``Template.id``, ``name@version``), so editing a template re-runs exactly the calls
it affects. Pure string work: no I/O beyond reading the template files once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from reflectune.errors import ConfigError
from reflectune.markers import BETTER_ANSWER, MERGED_INSTRUCTION, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.types import Message

#: Templates with a ``--- text`` section: the student prompts and the r-IFD "guess" prompt.
TEXT_TEMPLATES = ("student_vicuna", "student_alpaca", "student_wiz", "guess_instruction")
#: Every template, by file name (without ``.txt``). The judge's names are its modes (``judge-score``,
#: ``judge-pair-v2``), so its ids, ``judge-score@1`` and ``judge-pair-v2@1``, are those of its keys.
TEMPLATE_NAMES = ("instruction_reflection", "response_reflection", "response_reflection_input",
                  "input_merge", "format_reminder",
                  "judge-score", "judge-score-reminder", "judge-pair-v2", "judge-pair-v2-reminder",
                  "student_chat", *TEXT_TEMPLATES)

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=False)


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: jinja2.Template | None
    user: jinja2.Template | None
    source: str
    #: the ``--- text`` section of a plain-text template (then ``system`` and ``user`` are None).
    text: jinja2.Template | None = None

    @property
    def id(self) -> str:
        """``name@version``, part of every cache key."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ReflectionKind:
    """What a prompt asks for: its template and the sections the answer must contain."""

    template: str
    sections: tuple[str, ...]
    fields: tuple[str, ...]
    #: The prompt's own format wording; an answer that echoes it back is a placeholder.
    placeholders: tuple[str, ...]


INSTRUCTION = ReflectionKind("instruction_reflection", (NEW_INSTRUCTION, NEW_ANSWER),
                             ("instruction", "output"), ("your instruction", "your answer"))
RESPONSE = ReflectionKind("response_reflection", (BETTER_ANSWER,), ("output",), ("your answer",))
RESPONSE_INPUT = ReflectionKind("response_reflection_input", (BETTER_ANSWER,), ("output",),
                                ("your answer",))
MERGE = ReflectionKind("input_merge", (MERGED_INSTRUCTION,), ("instruction",),
                       ("the rewritten instruction",))


def _parse_template(name: str, text: str, source: str) -> Template:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or not lines[0].startswith("version:"):
        raise ConfigError(f"{source}: a prompt template must start with 'version: N'")
    version = lines[0].partition(":")[2].strip()
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line.startswith("--- "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    if name in TEXT_TEMPLATES:
        wanted, shapes = "a single '--- text' section (a plain-text prompt)", [{"text"}]
    else:
        wanted = "a '--- user' section (and optionally '--- system')"
        shapes = [{"user"}, {"system", "user"}]
    if set(sections) not in shapes:
        raise ConfigError(f"{source}: needs {wanted}; found {sorted(sections)}")
    try:
        compiled = {key: _ENV.from_string("\n".join(body).strip()) for key, body in sections.items()}
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{source}, line {exc.lineno}: {exc.message}") from None
    return Template(name, version, compiled.get("system"), compiled.get("user"), source,
                    compiled.get("text"))


@functools.lru_cache(maxsize=64)
def load_template(name: str, prompts_dir: str | None = None) -> Template:
    """The template ``name``: from ``prompts_dir`` when it has one, else the packaged file."""
    if name not in TEMPLATE_NAMES:
        raise ConfigError(f"unknown prompt template '{name}'")
    if prompts_dir:
        override = Path(prompts_dir) / f"{name}.txt"
        if override.is_file():
            return _parse_template(name, override.read_text(encoding="utf-8"), str(override))
        if not Path(prompts_dir).is_dir():
            raise ConfigError(f"--prompts {prompts_dir}: not a directory")
    packaged = resources.files("reflectune.prompts") / "templates" / f"{name}.txt"
    return _parse_template(name, packaged.read_text(encoding="utf-8"), f"<package>/{name}.txt")


def render(template: Template, **values: str | list[str]) -> tuple[Message, ...]:
    """The chat messages of a chat template (system, if it has one, then user)."""
    if template.user is None:
        raise ConfigError(f"{template.source}: needs a '--- user' section (chat messages), "
                          "not a plain '--- text' prompt")
    try:
        messages = []
        if template.system is not None:
            messages.append(Message("system", template.system.render(**values)))
        messages.append(Message("user", template.user.render(**values)))
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{template.source}: {exc.message}") from None
    return tuple(messages)


def render_text(template: Template, **values: str) -> str:
    """The prompt of a plain-text template (``--- text``): one string, no chat roles."""
    if template.text is None:
        raise ConfigError(f"{template.source}: needs a '--- text' section (a plain-text prompt), "
                          "not chat messages")
    try:
        return template.text.render(**values)
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{template.source}: {exc.message}") from None


def with_reminder(messages: tuple[Message, ...], kind: ReflectionKind, reason: str,
                  prompts_dir: str | None = None) -> tuple[tuple[Message, ...], str]:
    """The retry prompt after a parse failure: the same prompt plus a stricter format reminder.

    The reminder is appended to the last user message (not sent as a new turn) so that small
    local models and strict chat templates see a single, complete request.
    """
    reminder = load_template("format_reminder", prompts_dir)
    text = render(reminder, reason=reason, markers=list(kind.sections))[-1].content
    last = messages[-1]
    return (*messages[:-1], Message(last.role, f"{last.content}\n\n{text}")), reminder.id
