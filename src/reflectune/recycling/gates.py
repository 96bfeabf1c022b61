"""Quality gates: a reflection that parses is kept only if it is a rewrite.

The strict parser checks the markers, not the content. A small oracle fills them with its own
critique ("The answer is not good for the instruction because..."), with the original copied
back, with loops; a strong one still refuses now and then, answers in another language, or cuts a
long answer to a line. Each gate here is a pure rule over one rewritten field and what it can be
compared with: the original field, the field it must not copy, this call's own critique and the
prompt's own wording. A field that fails a gate is *rejected* with the gate's name and a reason;
the sample keeps its best accepted variant.

Gates are post-processing: they read only texts the store already holds, so changing one (or its
threshold) and rerunning re-decides every sample and makes no new call.

``echo`` is judged from overlap, not from a list of phrases: the share of the rewrite's word
trigrams that come from the critique or the prompt's task wording, leaving out trigrams the
critique merely quoted from the original texts. ``refusal`` is the one gate that reads phrases:
a refusal is a speech act with a small, stable vocabulary ("I'm sorry, but I can't help with that").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher

from reflectune.config import GATE_NAMES, GatesConfig
from reflectune.recycling.rules import Variant
from reflectune.types import Sample

_WORD = re.compile(r"\w+", re.UNICODE)
_ASCII_LETTER = re.compile(r"[A-Za-z]")
#: Texts shorter than this many words are compared by bigrams: a trigram set of one or two items
#: says nothing.
_SHORT = 6
#: The opening the echo gate also judges on its own.
ECHO_HEAD_WORDS = 24


@dataclass(frozen=True, slots=True)
class Candidate:
    """One rewritten field and what a gate may compare it with."""

    #: ``instruction`` or ``output``
    field: str
    text: str
    #: the same field before this reflection
    original: str
    #: texts it must not copy: for an instruction, the answers; for an answer, its instruction
    others: tuple[str, ...]
    #: this call's critique (the text before the first section marker), "" when none was written
    critique: str
    #: the prompt's own wording, the template rendered without the sample's texts
    task: str
    #: the sample's original texts, which a critique may quote without being echoed
    quoted: tuple[str, ...] = ()
    #: the original instruction (with its input), which may hold the very text an answer must
    #: extract or edit
    instruction: str = ""
    #: whether the rewrite answers the same instruction as ``original`` (then a much shorter answer
    #: is a collapse; a new instruction may ask for a shorter one)
    same_task: bool = True


@dataclass(frozen=True, slots=True)
class Rejection:
    gate: str
    reason: str

    def __str__(self) -> str:
        return f"{self.gate}: {self.reason}"


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _grams(tokens: list[str]) -> tuple[set[tuple[str, ...]], int]:
    n = 2 if len(tokens) < _SHORT else 3
    return ngrams(tokens, n), n


def _union(texts: Iterable[str], n: int) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for text in texts:
        out |= ngrams(words(text), n)
    return out


def similarity(a: list[str], b: list[str]) -> float:
    """Word-level similarity, 2·matches / total (difflib), 1.0 for two empty texts."""
    if not a and not b:
        return 1.0
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() < 0.5 or matcher.quick_ratio() < 0.5:
        return matcher.quick_ratio()
    return matcher.ratio()


def _stems(text: str) -> list[str]:
    """Words cut to their first five letters: "helpful", "helpfulness" -> "helpf" (a crude stemmer,
    enough to see that "relevant, accurate" restates "Relevance, Accuracy")."""
    return [w[:5] for w in words(text)]


@functools.lru_cache(maxsize=4096)
def _text_stem_grams(text: str, n: int) -> frozenset[tuple[str, ...]]:
    """Cached: the prompt's wording and a sample's originals are compared with every rewrite."""
    return frozenset(ngrams(_stems(text), n))


def _stem_grams(texts: Iterable[str], n: int) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for text in texts:
        out |= _text_stem_grams(text, n)
    return out


def _share(tokens: list[str], source: Iterable[str], quoted: Iterable[str]) -> float:
    """The larger share of ``tokens``' n-grams, over all of them or over the first
    ``ECHO_HEAD_WORDS``, found in ``source`` texts and not in ``quoted`` texts."""
    sources, quotes = list(source), list(quoted)
    worst = 0.0
    for part in (tokens, tokens[:ECHO_HEAD_WORDS]):
        n = 2 if len(part) < _SHORT else 3
        grams = ngrams(part, n)
        if grams:
            found = _stem_grams(sources, n) - _stem_grams(quotes, n)
            worst = max(worst, len(grams & found) / len(grams))
    return worst


def echo(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    """Overlap with the prompt's wording and with a critique, over the whole text and over its
    opening: an echo often starts by restating the criteria ("The answer is not good for the
    instruction...") and goes on in its own words. The critique counts only when it is one (it
    restates the criteria itself): a small model's "critique" is often a first draft of the answer,
    and a section that copies a draft answer is an answer."""
    quoted = (c.original, *c.quoted)
    sources = [c.task]
    if c.critique and _share(_stems(c.critique), [c.task], quoted) >= cfg.critique_overlap:
        sources.append(c.critique)
    share = _share(_stems(c.text), sources, quoted)
    if share >= cfg.echo_overlap:
        return Rejection("echo", f"{share:.0%} of its word n-grams restate the critique or the prompt")
    return None


def unchanged(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    """The original again: near-identical, or a cut-down copy (a small model often starts copying
    the original and stops short)."""
    new, old = words(c.text), words(c.original)
    ratio = similarity(new, old)
    if ratio >= cfg.unchanged_similarity:
        return Rejection("unchanged", f"{ratio:.0%} the same as the original {c.field}")
    # Short answers ("The Matrix", "Moon Jae-in") are often a phrase of a long original by right,
    # and so is text an answer extracts from its instruction's input.
    grams = ngrams(new, 3) - ngrams(words(c.instruction), 3)
    if len(new) >= cfg.cut_copy_min_words and len(new) < len(old) and grams:
        copied = len(grams & ngrams(old, 3)) / len(grams)
        if copied >= cfg.unchanged_similarity:
            return Rejection("unchanged", f"a cut-down copy: {copied:.0%} of it is the original {c.field}, "
                                          f"{len(new)} of its {len(old)} words")
    return None


def copy(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    """Mostly made of a text it should not copy: a new instruction made of the answer, an answer made
    of its new instruction. (The original instruction is never among these: it often carries the
    text an answer must edit or classify.)"""
    tokens = words(c.text)
    grams, n = _grams(tokens)
    if not grams:
        return None
    for other in c.others:
        other_grams = ngrams(words(other), n)
        if not other_grams:
            continue
        share = len(grams & other_grams) / len(grams)
        if share >= cfg.copy_overlap:
            what = "an answer" if c.field == "instruction" else "its instruction"
            return Rejection("copy", f"{share:.0%} of it is copied from {what}")
    return None


def degenerate(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    tokens = words(c.text)
    if len(tokens) > cfg.max_words:
        return Rejection("degenerate", f"runaway length: {len(tokens):,} words (limit {cfg.max_words:,})")
    if len(tokens) < cfg.repetition_min_words:
        return None
    # A text that repeats itself by nature (a refrain, a scale, a list of links) may be rewritten
    # with the same repeats: only repeats of 4-grams the original does not have are loops.
    repeated = repetition(tokens, inherited=ngrams(words(c.original), 4))
    if repeated >= cfg.repetition:
        return Rejection("degenerate", f"loops: {repeated:.0%} of its word 4-grams are repeats")
    return None


def repetition(tokens: list[str], inherited: Collection[tuple[str, ...]] = ()) -> float:
    """Share of word 4-grams that repeat an earlier one, leaving out those in ``inherited``."""
    counts = Counter(zip(tokens, tokens[1:], tokens[2:], tokens[3:], strict=False))
    total = sum(counts.values())
    repeats = sum(v - 1 for gram, v in counts.items() if v > 1 and gram not in inherited)
    return repeats / total if total else 0.0


def collapsed(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    if not c.same_task:
        return None
    before, after = len(words(c.original)), len(words(c.text))
    if before >= cfg.collapsed_min_words and after < cfg.collapsed_ratio * before:
        return Rejection("collapsed", f"{after} words for an original of {before}")
    return None


_REFUSAL = re.compile(
    r"^\W*(?:no[,.!]?\s+)?(?:(?:i'?m|i am)\s+(?:very\s+|really\s+)?sorry|sorry|i\s+apologi[sz]e"
    r"|unfortunately)"
    r"[^.!?\n]{0,80}?\bi\s*(?:can'?t|cannot|can\s+not|am\s+(?:not\s+able|unable)|'m\s+(?:not\s+able|unable)"
    r"|won'?t|will\s+not|must\s+decline)\b"
    r"|^\W*as\s+an?\s+(?:ai|artificial\s+intelligence|language\s+model)[^.!?\n]{0,60}?\bi\s*"
    r"(?:can'?t|cannot|can\s+not|am\s+(?:not\s+able|unable)|don'?t|do\s+not)\b"
    r"|^\W*i\s*(?:can'?t|cannot|am\s+unable\s+to|won'?t|will\s+not)\s+(?:help|assist)\s+(?:you\s+)?with\b"
    r"|^\W*i\s*(?:can'?t|cannot|am\s+unable\s+to|won'?t|will\s+not)\s+(?:fulfill|comply|provide|do)\s+"
    r"(?:that|this|your|with)\b",
    re.IGNORECASE)


def refusal(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    head = c.text.strip().replace("\u2019", "'")[:300]
    if _REFUSAL.search(head):
        return Rejection("refusal", f"refuses: {head.splitlines()[0][:60]!r}")
    return None


def script(text: str) -> Counter[str]:
    """Letters by Unicode script (the first word of the character's name: LATIN, CJK, CYRILLIC...)."""
    out: Counter[str] = Counter()
    if text.isascii():  # most texts: every letter is Latin, no per-character name lookup
        letters = len(_ASCII_LETTER.findall(text))
        if letters:
            out["LATIN"] = letters
        return out
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            out[name.split(" ")[0] if name else "UNKNOWN"] += 1
    return out


def language(c: Candidate, cfg: GatesConfig) -> Rejection | None:
    before, after = script(c.original), script(c.text)
    if not before or not after:
        return None
    main = before.most_common(1)[0][0]
    share = after[main] / sum(after.values())
    if share < cfg.script_share:
        now = after.most_common(1)[0][0]
        return Rejection("language", f"written in {now.title()} script, the original in {main.title()}")
    return None


#: Every gate, in the order they are tried (the first that fails names the rejection).
GATES = {"refusal": refusal, "degenerate": degenerate, "echo": echo, "unchanged": unchanged,
         "copy": copy, "collapsed": collapsed, "language": language}


def check(candidate: Candidate, cfg: GatesConfig) -> Rejection | None:
    """The first enabled gate ``candidate`` fails, or None when it is a rewrite."""
    for name, gate in GATES.items():
        if name not in cfg.enabled:
            continue
        rejection = gate(candidate, cfg)
        if rejection is not None:
            return rejection
    return None



def _original_instruction(sample: Sample) -> str:
    return f"{sample.instruction}\n\n{sample.input}" if sample.input.strip() else sample.instruction


def candidates(sample: Sample, variants: dict[str, Variant]) -> dict[str, list[Candidate]]:
    """The rewritten fields of each parsed variant, with what each may be compared to.

    A rewrites the answer to the original instruction; Q writes a new instruction and its answer;
    QA rewrites Q's answer under Q's instruction. The original instruction is never a text an
    answer may not copy: it often carries the very text an answer must edit or classify.
    """
    a, q, qa = variants["A"], variants["Q"], variants["QA"]
    instruction = _original_instruction(sample)
    quoted = (instruction, sample.output)
    out: dict[str, list[Candidate]] = {}
    if a.ok and a.output is not None:
        out["A"] = [Candidate("output", a.output, sample.output, (), a.critique, a.task, quoted,
                              instruction=instruction)]
    if q.ok and q.instruction is not None and q.output is not None:
        out["Q"] = [Candidate("instruction", q.instruction, instruction, (sample.output, q.output),
                              q.critique, q.task, quoted),
                    Candidate("output", q.output, sample.output, (q.instruction,), q.critique, q.task, quoted,
                              q.instruction, same_task=False)]
    if qa.ok and qa.output is not None:
        out["QA"] = [Candidate("output", qa.output, q.output or "", (qa.instruction or "",), qa.critique,
                               qa.task, quoted, qa.instruction or "")]
    return out


def apply_gates(sample: Sample, variants: dict[str, Variant], cfg: GatesConfig) -> None:
    """Reject, in place, each parsed variant of ``sample`` whose rewrite fails a gate.

    QA shares Q's instruction, so a Q rejected for its instruction takes its QA with it.
    """
    if not cfg.enabled:
        return
    found_instruction: Rejection | None = None
    for name, fields in candidates(sample, variants).items():
        if name == "QA" and found_instruction is not None:
            variants[name].reject(found_instruction.gate, f"instruction (from Q): {found_instruction.reason}")
            continue
        for candidate in fields:
            found = check(candidate, cfg)
            if found is not None:
                if name == "Q" and candidate.field == "instruction":
                    found_instruction = found
                what = "instruction" if candidate.field == "instruction" else "answer"
                variants[name].reject(found.gate, f"{what}: {found.reason}")
                break


assert tuple(sorted(GATES)) == tuple(sorted(GATE_NAMES)), "config.GATE_NAMES lists every gate"
