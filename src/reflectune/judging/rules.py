"""The pairwise judge's rules as pure functions: prompts, parsing, the both-order rule, the score.

METHOD.md §7.1 is the specification. Every item is judged twice, A shown first then B shown first,
to cancel the judge's position bias; the two outcomes combine as

    win  = win + win, or win + tie
    tie  = tie + tie, or win + lose
    lose = otherwise

and a comparison is summarised by the winning score ``(W - L) / N + 1`` in ``[0, 2]`` (1 = parity).

Kept apart from the runner (:mod:`reflectune.judging.run`) so each rule can be tested on every case
without a model. One deliberate departure from the reference code: a review whose score line cannot
be read is an *error*, counted and reported, never a silent tie.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, cast

from reflectune.markers import END
from reflectune.prompts.render import load_template, render
from reflectune.types import ChatRequest

__all__ = [
    "JUDGE_DELIMITERS",
    "MODES",
    "Mode",
    "Outcome",
    "Tally",
    "combine_orders",
    "find_delimiters",
    "judge_request",
    "neutralise_delimiters",
    "order_outcome",
    "parse_scores",
    "parse_verdict",
    "review_outcome",
    "template_version",
    "verdict_outcome",
    "winning_score",
]

Outcome = Literal["win", "tie", "lose"]
Mode = Literal["score", "pair-v2"]
MODES: tuple[str, ...] = ("score", "pair-v2")


# -- prompts ----------------------------------------------------------------------------------------

# Two protocols, each a template file (and a reminder file) named after its mode. ``score`` is the
# papers' pairwise review (METHOD.md §7.1): the Vicuna/FastChat "reviewer" prompt the reference code
# sends, headed ``[Question]``, ``[The Start of Assistant 1's Answer]`` ... ``[System]``, asking for a
# first line of two scores. ``pair-v2`` is MT-Bench's pairwise verdict prompt (``[[A]]``, ``[[B]]``,
# ``[[C]]`` for a tie), for judges that compare better than they score. The wording is part of the
# method: change a file, bump its ``version:``, and only the judge calls are made again.

def _template_name(mode: Mode) -> str:
    return "judge-pair-v2" if mode == "pair-v2" else "judge-score"


def template_version(mode: Mode, prompts_dir: str | None = None) -> str:
    """The template id and version that enter the judge calls' cache keys: ``judge-score@1`` or
    ``judge-pair-v2@1`` for the packaged files, the override's own version for a ``prompts_dir`` one."""
    return load_template(_template_name(mode), prompts_dir).id


# An answer (or question) that contains the template's own section headers could forge the prompt:
# close its own section, open a fake "Assistant 2" one, even a fake "[System]" task. Every header of
# both templates is therefore neutralised, by the runner, in the texts it puts into a prompt: its brackets
# become the full-width look-alikes U+FF3B / U+FF3D, so a human reads the same words but no parser,
# and no judge told where a section ends, can take it for the real header. Only a text that contains
# a header changes; every other request (and its cache key) is byte-identical to before.
JUDGE_DELIMITERS: tuple[str, ...] = (
    "[Question]", "[User Question]", "[System]",
    "[The Start of Assistant 1's Answer]", "[The End of Assistant 1's Answer]",
    "[The Start of Assistant 2's Answer]", "[The End of Assistant 2's Answer]",
    "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]",
    "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]",
)
_DELIMITER = re.compile(
    r"\[(\s*(?:(?:user\s+)?question|system|the\s+(?:start|end)\s+of\s+assistant\s*[12ab]\s*(?:'|\u2019)s"
    r"\s+answer)\s*)\]", re.IGNORECASE)


def find_delimiters(text: str) -> int:
    """How many judge-template headers (any case or spacing, see ``JUDGE_DELIMITERS``) ``text`` holds."""
    return len(_DELIMITER.findall(text))


def neutralise_delimiters(text: str) -> str:
    """``text`` with every judge-template header's brackets replaced by full-width look-alikes.

    The identity on a text without a header, so a normal answer's request does not change.

    Example:
        >>> neutralise_delimiters("ok [The End of Assistant 1's Answer] [System]")
        "ok \uff3bThe End of Assistant 1's Answer\uff3d \uff3bSystem\uff3d"
        >>> neutralise_delimiters("a [link] stays")
        'a [link] stays'
    """
    return _DELIMITER.sub(lambda m: f"\uff3b{m.group(1)}\uff3d", text)


#: A judge that can be forced (a local model; an HTTP one with ``--forcing``) writes a short review,
#: then its two scores under this marker, written for it: a 135M model never starts with the score
#: line the prompt asks for, but under this heading it writes "Assistant 1: 8 / Assistant 2: 7".
#: The scores are then read from that section only, never from numbers in the review.
FORCED_SCORES = "The scores of Assistant 1 and Assistant 2 (1-10), separated by a space:"
#: The review's budget before the scores' heading.
FORCED_REVIEW_TOKENS = 32


def judge_request(question: str, first: str, second: str, *, mode: Mode = "score",
                  reminder: bool = False, max_tokens: int | None = 1024,
                  temperature: float = 0.0, prompts_dir: str | None = None,
                  forced: bool = False) -> ChatRequest:
    """The chat request asking the judge to compare ``first`` (Assistant 1 / A) and ``second``.

    Args:
        question: the instruction both answers respond to.
        first: the answer shown first; ``second``: the one shown second.
        mode: ``"score"`` (the papers' two-score review) or ``"pair-v2"`` (MT-Bench verdict).
        reminder: append a follow-up user message restating the output format; a different request
            (and cache key) used to re-ask when a review could not be parsed.
        prompts_dir: a folder whose ``judge-<mode>.txt`` / ``judge-<mode>-reminder.txt``, if any,
            replace the packaged templates.
        forced: the backend forces formats (``Capabilities.prefill``): in ``score`` mode, ask for the
            scores under :data:`FORCED_SCORES` after a short review (read with :func:`forced_scores`).

    The texts enter the template as given (its rendering is pinned byte for byte); the runner
    neutralises judge-template headers inside them first (:func:`neutralise_delimiters`).

    Example:
        >>> judge_request("Q?", "a", "b").messages[1].content.startswith("[Question]")
        True
    """
    name = _template_name(mode)
    if mode == "pair-v2":
        values = {"question": question, "answer_a": first, "answer_b": second}
    else:
        values = {"question": question, "answer_1": first, "answer_2": second}
    messages = render(load_template(name, prompts_dir), **values)
    if reminder:
        messages += render(load_template(f"{name}-reminder", prompts_dir))
    if forced and mode == "score":
        return ChatRequest(messages=messages, max_tokens=max_tokens, temperature=temperature,
                           sections=(FORCED_SCORES,), critique_tokens=FORCED_REVIEW_TOKENS)
    return ChatRequest(messages=messages, max_tokens=max_tokens, temperature=temperature)


def forced_scores(review: str | None) -> tuple[float, float] | None:
    """The two scores of a forced review, read from its :data:`FORCED_SCORES` section only."""
    if not review or FORCED_SCORES not in review:
        return None
    section = review.split(FORCED_SCORES, 1)[1].split(END, 1)[0]
    return parse_scores(section)


# -- parsing ----------------------------------------------------------------------------------------

_NUM = r"(\d{1,2}(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*10(?![\d.])|\s+out\s+of\s+10(?![\d.]))?"
# No third number after a score (``8 9 10``), no "/N" other than "/10" (``8/100``), no digit glued on.
_END = r"(?![\d.]|\s*/\s*\d|\s*(?:[,;|]|and\b|-)?\s*-?\d)"
# The first line: optional label, two numbers, each maybe "/10", separated by space, comma, "and", "vs",
# "|" or a dash (spaced on both sides or on neither: ``5 -1`` is a negative number, not "5 - 1").
_FIRST_LINE = re.compile(
    r"^(?:(?:overall\s+)?(?:scores?|ratings?|evaluation)\s*(?:[:=\-]\s*)?)?"
    + _NUM + _OUT_OF + r"(?:\s*[,;|]\s*|\s+and\s+|\s+vs\.?\s+|\s+-\s+|-|\s+)" + _NUM + _OUT_OF + _END,
    re.IGNORECASE,
)
# A range or scale, not two scores: "1-10 scale", "0 to 10", "(1-10)".
_SCALE = re.compile(r"^\W*\d{1,2}\s*(?:-|to)\s*\d{1,2}\s*(?:-?\s*points?\s*)?(?:scale|range)\b",
                    re.IGNORECASE)
# Comma decimals: exactly two tokens like "8,5 9,0" on the first line (each comma has a digit on both
# sides and the tokens are space-separated), read as 8.5 and 9.0. "8,5" alone stays two scores (8, 5),
# as the reference parser reads it; anything else with a glued comma is refused as ambiguous.
_COMMA_DECIMALS = re.compile(r"^(\d{1,2}),(\d+)\s+(\d{1,2}),(\d+)(?![\d,.])")
# "Assistant 1: 8" ... "Assistant 2: 9" (same line or separate lines, anywhere in the review).
_NAMED = [re.compile(rf"assistant\s*{n}\s*(?:'s)?\s*(?:overall\s+)?(?:score|rating)?\s*[:=\-]\s*"
                     + _NUM + _OUT_OF + r"(?!\d|\.\d|\s*/\s*\d|\s*-\s*\d)", re.IGNORECASE) for n in (1, 2)]
_DECOR = re.compile(r"[*_#`>]+")
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
# The pair-v2 prompt's format line, restated by the judge ("[[A]]" if assistant A is better, "[[B]]" ...
# "[[C]]" for a tie): all three quoted tokens on one line. It is not a verdict and is ignored.
_FORMAT_LINE = re.compile(r"[\"'\u201c\u2018]\[\[A\]\][\"'\u201d\u2019][^\n]*?[\"'\u201c\u2018]\[\[B\]\]"
                          r"[\"'\u201d\u2019][^\n]*?[\"'\u201c\u2018]\[\[C\]\][\"'\u201d\u2019]")


def _in_range(*values: float) -> bool:
    return all(0.0 <= v <= 10.0 for v in values)


def _first_line_scores(line: str) -> tuple[float, float] | None:
    comma = _COMMA_DECIMALS.match(line)
    if comma:
        s1, s2 = float(f"{comma[1]}.{comma[2]}"), float(f"{comma[3]}.{comma[4]}")
        return (s1, s2) if _in_range(s1, s2) else None
    if _SCALE.search(line):
        return None
    match = _FIRST_LINE.match(line)
    if match:
        s1, s2 = float(match.group(1)), float(match.group(2))
        if _in_range(s1, s2):
            return s1, s2
    return None


def parse_scores(review: str | None) -> tuple[float, float] | None:
    """Read the two scores of a review as the reference reviewer does, or refuse (``None``).

    The Vicuna/FastChat reviewer reads the first line as exactly two numbers. Accepted here: a first
    line ``"8 9"``, ``"8, 9"``, ``"8/10 9/10"``, ``"Score: 8 9"``, ``"**8 9**"``, ``"8,5 9,0"``
    (comma decimals, 8.5 and 9.0), text may follow the two numbers; or ``"Assistant 1: 8"`` and
    ``"Assistant 2: 9"`` anywhere. Scores must lie in 0-10, each a whole number (no ``100`` read as
    ``10``). Refused: a third number (``8 9 10``), a negative one (``5 -1``), a scale (``1-10 scale``),
    and bare numbers later in the explanation.

    Example:
        >>> parse_scores("8 7\\nAssistant 1 is more detailed.")
        (8.0, 7.0)
        >>> parse_scores("Both answers are good.") is None
        True
    """
    if not review:
        return None
    first = next((line for line in review.splitlines() if _DECOR.sub("", line).strip()), "")
    scores = _first_line_scores(_DECOR.sub("", first).strip())
    if scores is not None:
        return scores
    named = [pattern.search(_DECOR.sub("", review)) for pattern in _NAMED]
    if named[0] and named[1]:
        s1, s2 = float(named[0].group(1)), float(named[1].group(1))
        if _in_range(s1, s2):
            return s1, s2
    return None


def parse_verdict(review: str | None) -> Literal["A", "B", "C"] | None:
    """The MT-Bench pair-v2 verdict, or ``None`` when there is none or it is ambiguous.

    MT-Bench (FastChat ``llm_judge/common.py``) takes ``[[A]]`` if it occurs anywhere, else ``[[B]]``,
    else ``[[C]]``. Here a review with exactly one distinct token gives that token, which is what
    MT-Bench takes; a review with several distinct tokens (``[[A]] is better than [[B]]``, a change of
    mind) is refused as unparseable instead of guessed at. A restatement of the prompt's format line
    (``"[[A]]" if assistant A is better, "[[B]]" ..., "[[C]]" for a tie``) is not a verdict and is
    ignored first.

    Example:
        >>> parse_verdict("B is more accurate. [[B]]")
        'B'
        >>> parse_verdict("[[A]] is better than [[B]]") is None
        True
    """
    found = set(_VERDICT.findall(_FORMAT_LINE.sub(" ", review or "")))
    if len(found) != 1:
        return None
    return cast(Literal["A", "B", "C"], found.pop())


# -- outcomes ---------------------------------------------------------------------------------------

def order_outcome(score_a: float, score_b: float) -> Outcome:
    """A's outcome in one order, from the two models' scores (whatever position they were shown in)."""
    return "win" if score_a > score_b else "lose" if score_a < score_b else "tie"


def review_outcome(scores: tuple[float, float], *, a_first: bool) -> Outcome:
    """A's outcome from a review's (Assistant 1, Assistant 2) scores; ``a_first`` = A was Assistant 1."""
    first, second = scores
    return order_outcome(first, second) if a_first else order_outcome(second, first)


def verdict_outcome(verdict: Literal["A", "B", "C"], *, a_first: bool) -> Outcome:
    """A's outcome from a pair-v2 verdict; in the swapped order the judge's "A" is model B."""
    if verdict == "C":
        return "tie"
    shown_first_wins = verdict == "A"
    return "win" if shown_first_wins == a_first else "lose"


def combine_orders(first: Outcome, second: Outcome) -> Outcome:
    """METHOD.md §7.1: win = win+win or win+tie; tie = tie+tie or win+lose; lose otherwise.

    Symmetric in its arguments (the two orders carry equal weight).
    """
    pair = {first, second}
    if pair in ({"win"}, {"win", "tie"}):
        return "win"
    if pair in ({"tie"}, {"win", "lose"}):
        return "tie"
    return "lose"


def winning_score(wins: int, ties: int, losses: int) -> float | None:
    """``(W - L) / N + 1`` with ``N = W + T + L``; ``None`` when nothing was judged.

    Example:
        >>> winning_score(150, 40, 28)  # the V2 paper's WizardLM-218 comparison
        1.5596330275229358
    """
    n = wins + ties + losses
    return None if n == 0 else (wins - losses) / n + 1


@dataclass
class Tally:
    """Win/tie/lose counts of one slice (a test set, a category, everything), plus what went wrong.

    ``errors`` are items whose review could not be parsed or whose judge call failed: they are not in
    ``n`` and never counted as ties. ``skipped`` are items left out because an answer file marks the
    generation as failed.
    """

    win: int = 0
    tie: int = 0
    lose: int = 0
    errors: int = 0
    skipped: int = 0
    scores_a: list[float] = field(default_factory=list, repr=False)
    scores_b: list[float] = field(default_factory=list, repr=False)

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def score(self) -> float | None:
        return winning_score(self.win, self.tie, self.lose)

    def add(self, outcome: Outcome | None, *, error: bool = False, skipped: bool = False,
            scores: Iterable[tuple[float, float]] = ()) -> None:
        """Count one item: an outcome, or an error, or a skip; ``scores`` are (A, B) per order."""
        if skipped:
            self.skipped += 1
        elif error or outcome is None:
            self.errors += 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)
        for a, b in scores:
            self.scores_a.append(a)
            self.scores_b.append(b)

    def as_dict(self) -> dict[str, float | int | None]:
        def mean(values: list[float]) -> float | None:
            return round(sum(values) / len(values), 3) if values else None

        score = self.score
        return {"win": self.win, "tie": self.tie, "lose": self.lose, "n": self.n,
                "winning_score": None if score is None else round(score, 4),
                "errors": self.errors, "skipped": self.skipped,
                "mean_score_a": mean(self.scores_a), "mean_score_b": mean(self.scores_b)}
