"""Row shapes: a record becomes a ``Sample``, and a ``Sample`` plus new texts becomes a record again.

Both directions live here because they are inverses: whatever the reader takes apart, the writer must
put back in the same shape (same column names, extra columns, conversation layout), so that a recycled
file can replace the original. Two shapes exist, told apart per row by content:

- Alpaca: the (mapped) ``instruction``/``input``/``output`` columns.
- ShareGPT: no instruction column, but a ``conversations`` (or ``messages``) list of turns keyed
  ``from``/``value`` or ``role``/``content``. A single exchange (optional system turn, one human turn,
  one assistant turn) is a sample; anything longer is passed through untouched.

``Sample.extra`` keeps every column except the three texts, the id column included and the whole
conversation list of a ShareGPT row: that is what lets the writer rebuild the row without a shape flag.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from reflectune.errors import DataError
from reflectune.types import Sample

CONVERSATION_KEYS = ("conversations", "messages")
_HUMAN = {"human", "user"}
_GPT = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def to_sample(record: Any, *, row: int, fields: Mapping[str, str], path: str | None) -> Sample:
    """Check one record and turn it into a Sample; ``row`` is 1-based, ``fields`` resolved.

    Raises:
        DataError: naming the row and the file's field name, for a missing, mistyped or empty field.
    """
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {_kind(record)}", path=path, row=row)
    ins_col, inp_col, out_col = fields["instruction"], fields["input"], fields["output"]
    if record.get(ins_col) is None:  # no instruction: a ShareGPT row, if it holds a conversation
        conversation_key = next((k for k in CONVERSATION_KEYS if record.get(k) not in (None, "")), None)
        if conversation_key is not None:
            return _sharegpt_sample(record, conversation_key, row=row, fields=fields, path=path)
    instruction, input_, output = record.get(ins_col), record.get(inp_col), record.get(out_col)
    for column, value in ((ins_col, instruction), (out_col, output)):
        if value is None:
            raise DataError("missing (a string is required)", path=path, row=row, field=column)
    instruction = _check_text(instruction, True, path=path, row=row, field=ins_col)
    input_ = "" if input_ is None else _check_text(input_, False, path=path, row=row, field=inp_col)
    output = _check_text(output, False, path=path, row=row, field=out_col)
    extra = {k: v for k, v in record.items() if k != ins_col and k != inp_col and k != out_col}
    sample_id = _own_id(record, fields["id"]) or generated_id(row - 1, instruction, input_, output)
    return Sample(id=sample_id, row=row, instruction=instruction, input=input_, output=output, extra=extra)


def to_record(sample: Sample, instruction: str, input: str, output: str, columns: Mapping[str, Any],
              fields: Mapping[str, str]) -> dict[str, Any]:
    """The output row for ``sample`` with new texts, in the sample's own shape, ``columns`` appended."""
    if sample.passthrough:
        record = dict(sample.raw or {})
    elif (found := _own_conversation(sample)) is not None:
        key, (human, gpt, human_key, gpt_key) = found
        turns = [dict(t) for t in sample.extra[key]]
        turns[human][human_key] = f"{instruction}\n\n{input}" if input else instruction
        turns[gpt][gpt_key] = output
        record = {**sample.extra, key: turns}
    else:
        record = {fields["instruction"]: instruction, fields["input"]: input, fields["output"]: output}
        record.update((k, v) for k, v in sample.extra.items() if k not in record)
    record.update(columns)
    return record


def rewritten_columns(sample: Sample, fields: Mapping[str, str]) -> tuple[str, ...]:
    """The input columns ``to_record`` writes new values into; it copies every other one as it was."""
    if sample.passthrough:
        return ()
    if (found := _own_conversation(sample)) is not None:
        return (found[0],)
    return fields["instruction"], fields["input"], fields["output"]


def generated_id(index: int, instruction: str, input: str, output: str) -> str:
    """``row{index}-{hash}``: stable while the row keeps its place and its texts."""
    digest = hashlib.sha256("\0".join((instruction, input, output)).encode("utf-8", "surrogatepass"))
    return f"row{index}-{digest.hexdigest()[:10]}"


def _sharegpt_sample(record: dict[str, Any], key: str, *, row: int, fields: Mapping[str, str],
                     path: str | None) -> Sample:
    turns = record[key]
    if isinstance(turns, str) and turns.lstrip().startswith("[{"):  # a CSV cell holds it as JSON text
        try:
            turns = json.loads(turns)
        except (ValueError, RecursionError):
            pass
        else:
            record = {**record, key: turns}
    if not isinstance(turns, list) or not turns:
        raise DataError(f"expected a non-empty list of turns, got {_kind(turns)}", path=path, row=row,
                        field=key)
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise DataError(f"turn {i} is {_kind(turn)}, expected an object", path=path, row=row, field=key)
        role = turn.get("from", turn.get("role"))
        if not isinstance(role, str):
            raise DataError(f"turn {i} has no 'from' or 'role' string", path=path, row=row, field=key)
    extra = {k: v for k, v in record.items() if k not in (fields["instruction"], fields["input"],
                                                           fields["output"])}
    single = single_turn(turns)
    if single is None:
        first = next((t.get("value", t.get("content")) for t in turns
                      if t.get("from", t.get("role")) in _HUMAN), "")
        canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        return Sample(id=_own_id(record, fields["id"]) or f"row{row - 1}-{digest}", row=row,
                      instruction=first if isinstance(first, str) else "", extra=extra, passthrough=True,
                      raw=record)
    human, gpt, human_key, gpt_key = single
    instruction = _check_text(turns[human][human_key], True, path=path, row=row, field=key)
    output = _check_text(turns[gpt][gpt_key], False, path=path, row=row, field=key)
    sample_id = _own_id(record, fields["id"]) or generated_id(row - 1, instruction, "", output)
    return Sample(id=sample_id, row=row, instruction=instruction, output=output, extra=extra)


def single_turn(turns: list[Any]) -> tuple[int, int, str, str] | None:
    """(human index, gpt index, human value key, gpt value key) for one exchange, else None."""
    start = 1 if turns and _role(turns[0]) == "system" else 0
    if len(turns) - start != 2 or _role(turns[start]) not in _HUMAN or _role(turns[start + 1]) not in _GPT:
        return None
    keys = [_value_key(turns[i]) for i in (start, start + 1)]
    if keys[0] is None or keys[1] is None:
        return None
    return start, start + 1, keys[0], keys[1]


def _own_conversation(sample: Sample) -> tuple[str, tuple[int, int, str, str]] | None:
    """The conversation in ``extra`` this sample was read from, if it was read from one."""
    for key in CONVERSATION_KEYS:
        turns = sample.extra.get(key)
        if isinstance(turns, list) and all(isinstance(t, dict) for t in turns):
            found = single_turn(turns)
            if found and turns[found[0]][found[2]] == sample.instruction \
                    and turns[found[1]][found[3]] == sample.output:
                return key, found
    return None


def _role(turn: Any) -> Any:
    return turn.get("from", turn.get("role")) if isinstance(turn, dict) else None


def _value_key(turn: dict[str, Any]) -> str | None:
    return "value" if "value" in turn else "content" if "content" in turn else None


def _own_id(record: dict[str, Any], column: str) -> str | None:
    value = record.get(column)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _check_text(value: Any, non_empty: bool, *, path: str | None, row: int, field: str) -> str:
    if type(value) is str and value.isascii() and (not non_empty or value.strip()):
        return value  # the common case, fast
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {_kind(value)}", path=path, row=row, field=field)
    if non_empty and not value.strip():
        raise DataError("is empty", path=path, row=row, field=field)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError("holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode",
                            path=path, row=row, field=field) from None
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"a number ({str(value)[:20]})"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
