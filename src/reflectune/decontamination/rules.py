"""Which training rows are test prompts: word n-gram overlap, pure (no I/O).

The method is lm-evaluation-harness's (``lm_eval/decontamination/janitor.py``): lowercase, delete
ASCII punctuation (``string.punctuation``, so ``don't`` is ``dont``), split on whitespace, and
compare word 13-grams. A training row whose instruction (with its input) or response shares ``min_shared``
13-grams with one test prompt is dropped, and the prompt it shares most with is named.

A prompt shorter than ``n`` words has no n-gram at all, and many Vicuna, Koala, LIMA and AlpacaEval
prompts are that short ("What is Atlantis?"). Such a prompt matches a row whose *instruction* (with
its input) holds the whole normalised prompt as a contiguous word sequence, when the prompt makes up
at least ``short_coverage`` of the instruction's words. Responses are not searched for short
prompts, and the coverage floor keeps "write a poem" from matching every longer poem request: a short
prompt is contamination when the row asks it, not when the row mentions it.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

#: lm-evaluation-harness's normaliser: these characters are deleted, not replaced by spaces
_DELETE = str.maketrans("", "", string.punctuation)
#: the row's texts that are searched: its instruction (with the input after a blank line, as the
#: test sets join them) and its response
FIELDS = ("instruction", "output")
#: ShareGPT's "2 / 2" answer counter, glued to some Koala prompts ("2 / 2Create 10 ..."): not the prompt
_COUNTER = re.compile(r"^\s*\d+\s*/\s*\d+(?=[^\s\d])")


def normalize(text: str) -> str:
    """Lowercase, punctuation deleted, whitespace collapsed to one space (janitor's normaliser,
    with Unicode lowercase so accented capitals fold too)."""
    return " ".join(text.lower().translate(_DELETE).split())


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return text.lower().translate(_DELETE).split()


def prompt_text(text: str) -> str:
    """A test prompt as it was asked: without ShareGPT's "N / N" counter glued to its first word."""
    return _COUNTER.sub("", text, count=1)


def ngrams(tokens: Sequence[str], n: int) -> Iterator[str]:
    """The word n-grams of ``tokens``, each joined by one space; none when there are fewer than n."""
    for start in range(len(tokens) - n + 1):
        yield " ".join(tokens[start:start + n])


@dataclass(frozen=True, slots=True)
class TestPrompt:
    """One prompt of a test set: ``(dataset, id)`` names it in a reject line."""

    __test__ = False  # pytest: a record, not a test class

    dataset: str
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Match:
    """Why a row is dropped: the test prompt, the field it was found in, one shared n-gram (or the
    whole short prompt) and how many n-grams the two share."""

    prompt: TestPrompt
    field: str
    reason: str  # "ngram" or "short_prompt"
    shared: int
    ngram: str

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason, "field": self.field, "shared": self.shared, "ngram": self.ngram,
                "test": {"dataset": self.prompt.dataset, "id": self.prompt.id,
                         "instruction": self.prompt.text}}


@dataclass
class NgramIndex:
    """The test prompts' n-grams (long prompts) and whole word sequences (short ones)."""

    n: int = 13
    min_shared: int = 1
    short_coverage: float = 0.5
    prompts: list[TestPrompt] = field(default_factory=list)
    #: n-gram -> indexes of the prompts that hold it
    grams: dict[str, list[int]] = field(default_factory=dict)
    #: a short prompt's normalised text -> indexes of the prompts that are it
    short: dict[str, list[int]] = field(default_factory=dict)
    #: the word counts the short prompts have
    short_lengths: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, prompts: Iterable[TestPrompt], n: int = 13, *, min_shared: int = 1,
              short_coverage: float = 0.5) -> NgramIndex:
        if n < 1 or min_shared < 1 or not 0 < short_coverage <= 1:
            raise ValueError("n and min_shared must be at least 1, short_coverage in (0, 1]")
        index = cls(n=n, min_shared=min_shared, short_coverage=short_coverage)
        for prompt in prompts:
            index.add(prompt)
        return index

    def add(self, prompt: TestPrompt) -> None:
        tokens = words(prompt_text(prompt.text))
        if not tokens:
            return
        number = len(self.prompts)
        self.prompts.append(prompt)
        if len(tokens) < self.n:
            self.short.setdefault(" ".join(tokens), []).append(number)
            self.short_lengths.add(len(tokens))
            return
        for gram in dict.fromkeys(ngrams(tokens, self.n)):
            self.grams.setdefault(gram, []).append(number)

    def shared(self, text: str) -> tuple[Counter[int], dict[int, str]]:
        """How many distinct n-grams of ``text`` each prompt holds, and the first one shared."""
        counts: Counter[int] = Counter()
        first: dict[int, str] = {}
        for gram in dict.fromkeys(ngrams(words(text), self.n)):
            for number in self.grams.get(gram, ()):
                counts[number] += 1
                first.setdefault(number, gram)
        return counts, first

    def short_match(self, instruction: str) -> int | None:
        """The short prompt ``instruction`` asks (contiguous, and at least ``short_coverage`` of it),
        the longest first; None if none."""
        tokens = words(instruction)
        for length in sorted(self.short_lengths, reverse=True):
            if length < self.short_coverage * len(tokens):
                break
            for start in range(len(tokens) - length + 1):
                hit = self.short.get(" ".join(tokens[start:start + length]))
                if hit:
                    return hit[0]
        return None

    def match(self, instruction: str, input: str = "", output: str = "") -> Match | None:
        """Why a row with these texts is a test prompt, or None: the prompt sharing the most
        n-grams with one of its fields, else the short prompt its instruction asks."""
        asked = instruction if not input else f"{instruction}\n\n{input}"
        best: Match | None = None
        for name, text in zip(FIELDS, (asked, output), strict=True):
            if not text:
                continue
            counts, first = self.shared(text)
            if not counts:
                continue
            number, count = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
            if count >= self.min_shared and (best is None or count > best.shared):
                best = Match(self.prompts[number], name, "ngram", count, first[number])
        if best is not None:
            return best
        number_short = self.short_match(asked) if self.short else None
        if number_short is not None:
            prompt = self.prompts[number_short]
            return Match(prompt, "instruction", "short_prompt", 0, normalize(prompt_text(prompt.text)))
        return None
