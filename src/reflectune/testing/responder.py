"""Canned, deterministic oracle answers for the loopback test server.

The test server must behave like a real oracle closely enough that the engine's prompt routing,
marker parsing, parse-failure retry and judge-score parsing are exercised for real, yet every answer
must be a pure function of the request messages so reruns give identical bytes and cached results can
be compared byte for byte. So this module only does string work: it recognises which reflectune prompt
it was sent (by the method's marker strings, METHOD.md §2 and §7.1), pulls the original sections out of
it, and writes an answer in the right format. Variation between samples comes from a hash of the
messages, never from an unseeded random generator.

Deliberate imperfections, each a deterministic subset chosen by hash:

- ``bad_format_ratio``: reflection answers come back without markers, unless the request carries a
  format reminder: the word "reminder" (any case) in an extra user/system turn, or in the prompt
  after its last ``[System]`` header (where reflectune's engine appends it).
- ``judge_malformed_ratio``: judge reviews come back without a score line.
- ``judge_alt_ratio``: judge score lines in other styles ("8, 9" or "Assistant 1: 8\\nAssistant 2: 9").
- Some answers contain the word "Endpoint", which a lax parser mistakes for the end marker.

Texts echoed from the prompt keep every marker they quote: an instruction that quotes ``[End]`` or
``[New Answer]`` comes back quoted inside its section, as a real oracle would write it, so the parser's
handling of quoted markers is exercised end to end. Only the deliberately bad-format answers defuse
them (``[End]`` -> ``End``), since they must stay unparseable. The prompt kind is read from the task
after the prompt's last ``[System]`` header, so quoted markers in the data do not change it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

from reflectune.markers import (
    BETTER_ANSWER,
    END,
    JUDGE_ANSWER_1,
    JUDGE_ANSWER_2,
    MERGED_INSTRUCTION,
    NEW_ANSWER,
    NEW_INSTRUCTION,
    SECTION_MARKERS,
)

__all__ = ["CREATED", "apply_limits", "classify", "completion_body", "messages_key", "respond"]

#: Fixed ``created`` stamp, so identical requests give identical bytes.
CREATED = 1_700_000_000

_JUDGE_END_1 = "[The End of Assistant 1's Answer]"
_JUDGE_END_2 = "[The End of Assistant 2's Answer]"
_PAIR_A = ("[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]")
_PAIR_B = ("[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]")
_VERDICT_A = "[[A]]"
_KIND_MARKERS = (JUDGE_ANSWER_1, MERGED_INSTRUCTION, NEW_INSTRUCTION, BETTER_ANSWER, _VERDICT_A)

_INSTRUCTION_PREFIXES = (
    "Explain in depth, with examples:",
    "Give a detailed, step-by-step treatment, stating your assumptions:",
    "Answer thoroughly, comparing at least two approaches and their trade-offs:",
    "Provide a complete explanation suitable for a careful beginner, with a worked example:",
)
#: Added after the original instruction, so a rewritten instruction is more than a copy of it.
_INSTRUCTION_SUFFIXES = (
    "Then say which of your points matters most in practice, what a careful reader could still get "
    "wrong about it, and how you would check the result against a second independent source.",
    "Finish with a short worked example, the two most common mistakes people make here, and a "
    "one-paragraph summary that someone new to the subject could follow without any further help.",
    "Compare at least two ways of doing this, state the trade-offs of each in plain words, and end "
    "with a recommendation for a beginner and another one for an expert with limited time.",
)
_STEPS = (
    "state what is being asked and why it matters",
    "name the facts the answer rests on",
    "work through the main case with concrete numbers",
    "check the edge cases and where the reasoning stops holding",
    "say plainly what could still go wrong",
)
_ANSWER_OPENERS = (
    "Here is a detailed answer.",
    "Let us work through this carefully, one step at a time.",
    "A complete answer needs some context first.",
    "Endpoint of the reasoning first, then the details.",
)
_CRITIQUE_POINTS = (
    "the topic is treated superficially",
    "the required level of detail is left unstated",
    "little domain knowledge is asked for",
    "the wording is ambiguous about the expected output",
    "no logical reasoning or problem solving is involved",
)


def messages_key(messages: Sequence[dict[str, Any]]) -> str:
    """Return the sha256 hex digest of the canonical JSON of ``messages`` (the server's ``by_key`` id)."""
    canon = json.dumps(list(messages), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


_SLOTS = {
    name: i
    for i, name in enumerate(
        (
            "bad-format",
            "judge-malformed",
            "judge-style",
            "prefix",
            "opener",
            "steps",
            "crit-a",
            "crit-b",
            "crit-score",
            "suffix",
        )
    )
}


def _unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1): a 16-bit slice of the hex digest ``key``, one slice per salt."""
    i = 4 * _SLOTS[salt]
    return int(key[i : i + 4], 16) / 65536


def _text_unit(text: str) -> float:
    """A deterministic number in [0, 1) from any text."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _pick(key: str, salt: str, options: Sequence[str]) -> str:
    return options[int(_unit(key, salt) * len(options))]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_index(messages: Sequence[dict[str, Any]]) -> int:
    """Index of the prompt message: the first user message carrying a kind marker, else the last user one."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    for i in users:
        text = _text(messages[i])
        if any(marker in text for marker in _KIND_MARKERS):
            return i
    return users[-1] if users else len(messages) - 1


def _task(text: str) -> str:
    """The task block of a reflection prompt: after its last ``[System]`` header (all of it if none).

    The data (instruction, input, answer) sits before that header, so a marker it quotes is not read
    as the prompt's own format.
    """
    at = text.rfind("[System]")
    return text if at < 0 else text[at:]


def _kind(messages: Sequence[dict[str, Any]], text: str) -> str:
    system = " ".join(_text(m) for m in messages if m.get("role") == "system")
    if _VERDICT_A in text or _VERDICT_A in system:
        return "pair"
    if JUDGE_ANSWER_1 in text:
        return "judge"
    task = _task(text)
    if MERGED_INSTRUCTION in task:
        return "merge"
    if NEW_INSTRUCTION in task:
        return "instruction"
    if BETTER_ANSWER in task:
        return "response"
    return "generic"


def classify(messages: Sequence[dict[str, Any]]) -> str:
    """Name the prompt kind: ``instruction``, ``response``, ``merge``, ``judge``, ``pair`` or ``generic``."""
    if not messages:
        return "generic"
    return _kind(messages, _text(messages[_prompt_index(messages)]))


def _has_reminder(messages: Sequence[dict[str, Any]], prompt_at: int) -> bool:
    """True when the request carries a format reminder (the word "reminder", any case).

    It may come as an extra user/system turn, or appended to the prompt itself (reflectune's engine
    does that); in the prompt only the tail after the last ``[System]`` header counts, so an
    instruction that merely mentions a reminder does not count.
    """
    for i, m in enumerate(messages):
        role = m.get("role")
        if (i == 0 and role == "system") or role not in ("user", "system"):
            continue
        text = _text(m)
        if i == prompt_at:
            text = text[text.rfind("[System]") + 1 :]
        if "reminder" in text.lower():
            return True
    return False


def _section(text: str, start: str, ends: Sequence[str]) -> str:
    """Text after the header ``start`` up to the first later header in ``ends`` (or the end)."""
    at = text.find(start)
    if at < 0:
        return ""
    at += len(start)
    cut = len(text)
    for end in ends:
        i = text.find(end, at, cut)
        if i >= 0:
            cut = i
    return text[at:cut].strip()


def _clean(text: str, limit: int = 1200) -> str:
    """Bound the length of a text echoed from the prompt; markers it quotes are kept."""
    return text[:limit].strip()


def _defuse(text: str) -> str:
    """Unbracket every marker (``[End]`` -> ``End``): a bad-format answer must stay unparseable."""
    if "[" in text:
        for marker in (*SECTION_MARKERS, END):
            text = text.replace(marker, marker.strip("[]"))
    return text


def _pair_parts(text: str) -> tuple[str, str, str]:
    """(instruction, input, answer) of a reflection or merge prompt; empty strings where absent."""
    ends = ("[The Start of Answer]", "[The Start of Input]", "[System]")
    instruction = _section(text, "[Instruction]", ends)
    inp = _section(text, "[The Start of Input]", ("[The End of Input]",))
    answer = _section(text, "[The Start of Answer]", ("[The End of Answer]",))
    if not instruction:
        instruction = text.split("[System]")[0]
    return _clean(instruction, 600), _clean(inp, 600), _clean(answer)


def _critique(key: str, subject: str) -> str:
    n = len(_CRITIQUE_POINTS)
    i = int(_unit(key, "crit-a") * n)
    j = (i + 1 + int(_unit(key, "crit-b") * (n - 1))) % n
    a, b = _CRITIQUE_POINTS[i], _CRITIQUE_POINTS[j]
    score = 3 + int(_unit(key, "crit-score") * 4)
    return (
        f"Critique: the {subject} is weak because {a}, and {b}. "
        f"On helpfulness, relevance, accuracy and level of details it rates about {score} out of 10, "
        "so a more complete version is needed."
    )


def _elaborate(key: str, topic: str, base: str) -> str:
    opener = _pick(key, "opener", _ANSWER_OPENERS)
    n = 2 + int(_unit(key, "steps") * 3)
    steps = " ".join(f"Step {i}: {_STEPS[i - 1]}." for i in range(1, n + 1))
    core = base or f"The question concerns: {topic[:200]}."
    # New words of about the original's length, so the rewrite is no near-copy of its source (the
    # quality gates' "unchanged"): the source's words in an order drawn from this request's key.
    retold_words = core.split()[:200]
    random.Random(key).shuffle(retold_words)
    retold = " ".join(retold_words)
    return (f"{opener} {core} Seen from the other end: {retold} {steps} "
            f"In summary, each point above answers part of it (ref {key[:8]}).")


def _instruction_reflection(key: str, text: str, bad: bool) -> str:
    instruction, inp, answer = _pair_parts(text)
    original = f"{instruction} {inp}".strip() if inp else instruction
    new_instruction = (f"{_pick(key, 'prefix', _INSTRUCTION_PREFIXES)} {original} "
                       f"{_pick(key, 'suffix', _INSTRUCTION_SUFFIXES)}")
    new_answer = _elaborate(key, new_instruction, answer)
    critique = _critique(key, "instruction")
    if bad:
        return _defuse(f"{critique}\n\nNew instruction: {new_instruction}\n\nNew answer: {new_answer}\n")
    return f"{critique}\n\n{NEW_INSTRUCTION}\n{new_instruction}\n{END}\n\n{NEW_ANSWER}\n{new_answer}\n{END}\n"


def _response_reflection(key: str, text: str, bad: bool) -> str:
    instruction, _, answer = _pair_parts(text)
    better = _elaborate(key, instruction, answer)
    critique = _critique(key, "answer")
    if bad:
        return _defuse(f"{critique}\n\nImproved answer: {better}\n")
    return f"{critique}\n\n{BETTER_ANSWER}\n{better}\n{END}\n"


def _merge(key: str, text: str, bad: bool) -> str:
    instruction, inp, _ = _pair_parts(text)
    merged = f"{instruction.rstrip()} Use the following input: {inp}" if inp else instruction
    if bad:
        return _defuse(f"Merged version: {merged}\n")
    return f"{MERGED_INSTRUCTION}\n{merged}\n{END}\n"


def _answer_score(answer: str) -> int:
    """Swap-invariant 1-10 score: longer answers score higher, plus a hash nudge of -1..+1."""
    nudge = int(_text_unit(answer) * 3) - 1
    return max(1, min(10, 4 + min(5, len(answer) // 150) + nudge))


def _judge(key: str, text: str, malformed_ratio: float, alt_ratio: float, strict: bool) -> str:
    s1 = _answer_score(_section(text, JUDGE_ANSWER_1, (_JUDGE_END_1,)))
    s2 = _answer_score(_section(text, JUDGE_ANSWER_2, (_JUDGE_END_2,)))
    why = (
        f"Assistant 1 is rated {s1} and Assistant 2 is rated {s2} for helpfulness, relevance, accuracy "
        f"and level of details; the order of presentation did not affect the judgment (ref {key[:8]})."
    )
    if not strict and _unit(key, "judge-malformed") < malformed_ratio:
        return f"Both answers have merits. {why}\n"
    style = _unit(key, "judge-style")
    if strict or style >= alt_ratio:
        return f"{s1} {s2}\n{why}\n"
    if style < alt_ratio / 2:
        return f"{s1}, {s2}\n{why}\n"
    return f"Assistant 1: {s1}\nAssistant 2: {s2}\n{why}\n"


def _pair_verdict(key: str, text: str) -> str:
    a = _section(text, _PAIR_A[0], (_PAIR_A[1],))
    b = _section(text, _PAIR_B[0], (_PAIR_B[1],))
    sa, sb = _answer_score(a), _answer_score(b)
    verdict = "[[A]]" if sa > sb else "[[B]]" if sb > sa else "[[C]]"
    return f"Comparing both assistants on helpfulness and accuracy (ref {key[:8]}): {verdict}"


def respond(
    messages: Sequence[dict[str, Any]],
    *,
    bad_format_ratio: float = 0.0,
    judge_malformed_ratio: float = 0.0,
    judge_alt_ratio: float = 0.2,
    key: str | None = None,
) -> str:
    """Return the deterministic assistant content for a chat request.

    Args:
        messages: OpenAI chat messages, as sent.
        bad_format_ratio: share of reflection answers (by hash) that come back without markers.
        judge_malformed_ratio: share of judge reviews (by hash) that come back without a score line.
        judge_alt_ratio: share of judge reviews that use the "8, 9" or "Assistant 1: 8" styles.
        key: ``messages_key(messages)`` when the caller already has it.

    Returns:
        The content string; the same messages always give the same string.

    Example:
        >>> respond([{"role": "user", "content": "hi"}]).startswith("This is")
        True
    """
    key = key or messages_key(messages)
    if not messages:
        return f"This is a deterministic answer from the reflectune test server (ref {key[:12]})."
    at = _prompt_index(messages)
    text = _text(messages[at])
    kind = _kind(messages, text)
    reminded = _has_reminder(messages, at)
    bad = not reminded and _unit(key, "bad-format") < bad_format_ratio
    if kind == "instruction":
        return _instruction_reflection(key, text, bad)
    if kind == "response":
        return _response_reflection(key, text, bad)
    if kind == "merge":
        return _merge(key, text, bad)
    if kind == "judge":
        return _judge(key, text, judge_malformed_ratio, judge_alt_ratio, reminded)
    if kind == "pair":
        return _pair_verdict(key, text)
    words = " ".join(text.split()[:12])
    return f"This is a deterministic answer from the reflectune test server (ref {key[:12]}) to: {words}"


def completion_body(key: str, model: str, content: str, finish: str, prompt_chars: int) -> bytes:
    """The OpenAI ``chat.completion`` JSON bytes; usage counts 4 characters a token."""
    prompt_tokens, completion_tokens = prompt_chars // 4, len(content) // 4
    body = {
        "id": f"chatcmpl-{key[:24]}",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return json.dumps(body).encode()


def apply_limits(content: str, body: dict[str, Any]) -> tuple[str, str]:
    """Honour ``stop`` and ``max_tokens`` (4 chars a token) like a real server would."""
    stop = body.get("stop")
    for s in [stop] if isinstance(stop, str) else stop or []:
        if isinstance(s, str) and s and s in content:
            content = content[: content.index(s)]
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0 and len(content) // 4 > max_tokens:
        return content[: max_tokens * 4], "length"
    return content, "stop"
