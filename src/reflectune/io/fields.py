"""Field mapping: which column of the user's file holds each canonical field.

Datasets name their columns freely (``prompt``/``completion``, ``question``/``answer``). Rather than
rename files, the user maps the four canonical names onto theirs once, and both the reader and the
writer use the same resolved mapping, so the output keeps the file's own names. The mapping is a
plain dict, validated here once, so a typo fails before a single row is read.
"""

from __future__ import annotations

from collections.abc import Mapping

from reflectune.errors import ConfigError

CANONICAL = ("instruction", "input", "output", "id")


def parse_fields(spec: str) -> dict[str, str]:
    """Parse the CLI syntax ``"instruction=prompt,output=completion"`` into a mapping.

    Args:
        spec: comma-separated ``canonical=column`` pairs; an empty string means no mapping.

    Returns:
        ``{"instruction": "prompt", "output": "completion"}``; validated like ``resolve_fields``.

    Raises:
        ConfigError: on a pair without ``=``, an empty side, an unknown canonical name or a repeat.
    """
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not name or not column:
            raise ConfigError(f"bad field mapping {part!r}: expected canonical=column, "
                              f"e.g. 'instruction=prompt,output=completion'")
        if name in mapping:
            raise ConfigError(f"bad field mapping: {name!r} is mapped twice")
        mapping[name] = column
    resolve_fields(mapping)
    return mapping


def resolve_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    """Return the full canonical -> column mapping, defaults filled in.

    Raises:
        ConfigError: on an unknown canonical name, a non-string or empty column name, or two canonical
            names mapped to the same column.
    """
    resolved = {name: name for name in CANONICAL}
    for name, column in (fields or {}).items():
        if name not in CANONICAL:
            raise ConfigError(f"unknown field {name!r} in field mapping; "
                              f"expected one of {', '.join(CANONICAL)}")
        if not isinstance(column, str) or not column:
            raise ConfigError(f"field mapping for {name!r} must be a non-empty column name")
        resolved[name] = column
    columns = list(resolved.values())
    for column in columns:
        if columns.count(column) > 1:
            names = [n for n, c in resolved.items() if c == column]
            raise ConfigError(f"field mapping sends {' and '.join(names)} to the same column {column!r}")
    return resolved
