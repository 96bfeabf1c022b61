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
from typing import Literal

from reflectune.prompts.render import load_template, render
from reflectune.types import ChatRequest

__all__ = [
    "MODES",
    "Mode",
    "Outcome",
    "Tally",
    "combine_orders",
    "judge_request",
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


def judge_request(question: str, first: str, second: str, *, mode: Mode = "score",
                  reminder: bool = False, max_tokens: int | None = 1024,
                  temperature: float = 0.0, prompts_dir: str | None = None) -> ChatRequest:
    """The chat request asking the judge to compare ``first`` (Assistant 1 / A) and ``second``.

    Args:
        question: the instruction both answers respond to.
        first: the answer shown first; ``second``: the one shown second.
        mode: ``"score"`` (the papers' two-score review) or ``"pair-v2"`` (MT-Bench verdict).
        reminder: append a follow-up user message restating the output format; a different request
            (and cache key) used to re-ask when a review could not be parsed.
        prompts_dir: a folder whose ``judge-<mode>.txt`` / ``judge-<mode>-reminder.txt``, if any,
            replace the packaged templates.

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
    return ChatRequest(messages=messages, max_tokens=max_tokens, temperature=temperature)


# -- parsing ----------------------------------------------------------------------------------------

_NUM = r"(\d{1,2}(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*10(?![\d.])|\s+out\s+of\s+10(?![\d.]))?"
# The first line: optional label, two numbers, each maybe "/10", separated by space, comma, "and"...
_FIRST_LINE = re.compile(
    r"^(?:(?:overall\s+)?(?:scores?|ratings?|evaluation)\s*(?:[:=\-]\s*)?)?"
    + _NUM + _OUT_OF + r"\s*(?:[,;|]|\s+and\s+|\s+vs\.?\s+|\s*-\s*|\s)\s*" + _NUM + _OUT_OF
    + r"(?![\d.]|\s*/\s*\d)",
    re.IGNORECASE,
)
# "Assistant 1: 8" ... "Assistant 2: 9" (same line or separate lines, anywhere in the review).
_NAMED = [re.compile(rf"assistant\s*{n}\s*(?:'s)?\s*(?:overall\s+)?(?:score|rating)?\s*[:=\-]\s*"
                     + _NUM + _OUT_OF, re.IGNORECASE) for n in (1, 2)]
_DECOR = re.compile(r"[*_#`>]+")
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


def _in_range(*values: float) -> bool:
    return all(0.0 <= v <= 10.0 for v in values)


def parse_scores(review: str | None) -> tuple[float, float] | None:
    """Read the two scores of a review, tolerantly; ``None`` when it has no readable score line.

    Accepted: a first line ``"8 9"``, ``"8, 9"``, ``"8/10 9/10"``, ``"Score: 8 9"``, ``"**8 9**"``
    (text may follow the two numbers), or ``"Assistant 1: 8"`` and ``"Assistant 2: 9"`` anywhere.
    Scores must lie in 0-10. Bare numbers later in the explanation are never guessed at.

    Example:
        >>> parse_scores("8 7\\nAssistant 1 is more detailed.")
        (8.0, 7.0)
        >>> parse_scores("Both answers are good.") is None
        True
    """
    if not review:
        return None
    first = next((line for line in review.splitlines() if _DECOR.sub("", line).strip()), "")
    match = _FIRST_LINE.match(_DECOR.sub("", first).strip())
    if match:
        s1, s2 = float(match.group(1)), float(match.group(2))
        if _in_range(s1, s2):
            return s1, s2
    named = [pattern.search(_DECOR.sub("", review)) for pattern in _NAMED]
    if named[0] and named[1]:
        s1, s2 = float(named[0].group(1)), float(named[1].group(1))
        if _in_range(s1, s2):
            return s1, s2
    return None


def parse_verdict(review: str | None) -> Literal["A", "B", "C"] | None:
    """The MT-Bench pair-v2 verdict: the last ``[[A]]``/``[[B]]``/``[[C]]`` in the review, or ``None``."""
    found: list[Literal["A", "B", "C"]] = _VERDICT.findall(review or "")
    return found[-1] if found else None


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
