"""Render the oracle prompts from versioned template files.

Templates are package files (``prompts/templates/*.txt``) so users can read and override them with
``--prompts DIR`` without touching code. Each file starts with ``version: N`` and has ``--- system``
and ``--- user`` sections rendered with Jinja2 (strict undefined, no autoescape: this is plain
text). The version enters every cache key, so editing a template re-runs exactly the calls it
affects. Pure string work: no I/O beyond reading the template files once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from reflectune.errors import ConfigError
from reflectune.prompts.markers import BETTER_ANSWER, MERGED_INSTRUCTION, NEW_ANSWER, NEW_INSTRUCTION
from reflectune.types import Message

TEMPLATE_NAMES = ("instruction_reflection", "response_reflection", "response_reflection_input",
                  "input_merge", "format_reminder")

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                          keep_trailing_newline=False)


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: jinja2.Template | None
    user: jinja2.Template
    source: str

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
    unknown = set(sections) - {"system", "user"}
    if "user" not in sections or unknown:
        raise ConfigError(f"{source}: needs a '--- user' section (and optionally '--- system'); "
                          f"found {sorted(sections)}")
    try:
        system = _ENV.from_string("\n".join(sections["system"]).strip()) if "system" in sections else None
        user = _ENV.from_string("\n".join(sections["user"]).strip())
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{source}, line {exc.lineno}: {exc.message}") from None
    return Template(name, version, system, user, source)


@functools.lru_cache(maxsize=32)
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
    try:
        messages = []
        if template.system is not None:
            messages.append(Message("system", template.system.render(**values)))
        messages.append(Message("user", template.user.render(**values)))
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{template.source}: {exc.message}") from None
    return tuple(messages)


def with_reminder(messages: tuple[Message, ...], kind: ReflectionKind, reason: str,
                  prompts_dir: str | None = None) -> tuple[tuple[Message, ...], str]:
    """The retry prompt after a parse failure: the same prompt plus a stricter format reminder.

    The reminder is appended to the last user message (not sent as a new turn) so that small
    local models and strict chat templates see a single, complete request.
    """
    reminder = load_template("format_reminder", prompts_dir)
    text = reminder.user.render(reason=reason, markers=list(kind.sections))
    last = messages[-1]
    return (*messages[:-1], Message(last.role, f"{last.content}\n\n{text}")), reminder.id
