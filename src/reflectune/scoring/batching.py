"""Turn (instruction, input, output) candidates into exact token sequences, deduplicated and packed.

IFD needs four losses per candidate (METHOD.md §5.1). Each is the mean NLL of a *target* given a
*prefix*. We tokenize prefix and target separately and join the ids, so the target mask is exact by
construction (the reference finds the target by ``rfind`` on the joined string, which can move the
boundary by one token). Pure Python: no torch here, so the rules can be read and tested alone.

The rules, applied to every computation (and mirrored by the reference in the tests):

* ``ids = [BOS] + prefix + target`` where BOS is present only when the tokenizer itself adds one to
  a plain encode (Llama-style); a chat prompt that already starts with BOS does not get a second.
* Counted tokens: every target token that has at least one token before it. A direct loss has an
  empty prefix, so with a BOS tokenizer BOS is the sole context and every target token counts;
  without BOS (SmolLM2, the embedded student) the first target token has no context and is not
  counted, exactly as ``model(ids, labels=ids)`` does in the reference code.
* Truncation: ``max_length`` bounds the conditioned sequence; the target is cut, the prompt never.
  The direct partner (A_direct for A_condition, Q_direct for Q_condition) keeps the *same* target
  tokens, so the ratio compares like with like (Cherry LLM approximates this with
  ``max_length - len(prompt) + 4``). No target token left -> the loss is NaN (``n_counted == 0``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reflectune.keys import content_key
from reflectune.prompts.render import load_template, render_text

#: the four statistics of one candidate, in the order they are stored.
STATS = ("a_direct", "a_condition", "q_direct", "q_condition")
#: the two that IFD alone needs (Cherry LLM mode ranks by IFD only).
IFD_STATS = STATS[:2]


def guess_instruction_prompt(response: str, prompts_dir: str | None = None) -> str:
    """y': the response wrapped in a request to guess its instruction (the r-IFD context of
    Q_condition, METHOD.md §5.1), from the template ``guess_instruction.txt``."""
    return render_text(load_template("guess_instruction", prompts_dir), response=response)


def question_text(instruction: str, input: str = "") -> str:
    """x (+ input): the target of Q_direct and Q_condition. A non-empty input follows on a new line."""
    return f"{instruction}\n{input}" if input else instruction


@dataclass(frozen=True, slots=True)
class Item:
    """One loss computation: ``ids[start:]`` is the target, ``ids[:start]`` its context.

    ``head`` is a constant template opening that ``ids`` starts with (the vicuna system line, say):
    its keys and values are computed once and shared by every batch of its group. It never changes
    the result, only the work, so it is not part of ``key``.
    """

    key: str
    ids: tuple[int, ...]
    start: int
    head: tuple[int, ...] = ()

    @property
    def n_counted(self) -> int:
        """Target tokens whose loss counts (a token needs at least one token of context)."""
        return max(0, len(self.ids) - max(self.start, 1))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def work(self) -> int:
        """Tokens that go through the model: everything after the shared head."""
        return len(self.ids) - len(self.head)


@dataclass(frozen=True, slots=True)
class CandidateItems:
    """The computations of one candidate, by statistic name (``STATS``, or ``IFD_STATS`` alone)."""

    items: dict[str, Item]


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id if a plain ``tokenizer(text)`` adds one, else None (we add BOS exactly when it does)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    if len(with_special) > len(without) and with_special[0] == bos:
        return int(bos)
    return None


class Tokenized:
    """Tokenizes texts once per chunk (fast tokenizers batch well) and builds ``Item``s from them."""

    def __init__(self, tokenizer: Any, *, template: str, max_length: int,
                 prompts_dir: str | None = None) -> None:
        from reflectune.prompts.student import student_prompt

        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.prompts_dir = prompts_dir
        self.bos = bos_id(tokenizer)
        self._prompt = student_prompt
        self._cache: dict[str, tuple[int, ...]] = {}
        self.heads = self._find_heads()

    def _find_heads(self) -> tuple[tuple[int, ...], ...]:
        """The constant openings of the two conditioned prompts (the template's fixed text, and for
        Q_condition also the fixed "Below is the response..." line): the longest common token prefix
        of a few probe prompts, longest first. Items are matched against them token by token."""
        probes = (("alpha", ""), ("Beta gamma?", ""), ("alpha", "delta"), ("Beta", "epsilon zeta"))
        heads = []
        for wrap in (lambda text: text, self.guess):
            ids = [self._context(self.prompt(wrap(x), i)) for x, i in probes]
            common = 0
            while all(len(t) > common and t[common] == ids[0][common] for t in ids):
                common += 1
            if common >= 4:  # not worth a cached prefix below that
                heads.append(ids[0][:common])
        self.clear()
        return tuple(sorted(set(heads), key=len, reverse=True))

    def _head_for(self, ids: tuple[int, ...], start: int) -> tuple[int, ...]:
        """The longest head ``ids`` begins with that leaves the last context token to compute."""
        for head in self.heads:
            if len(head) <= start - 1 and ids[:len(head)] == head:
                return head
        return ()

    def prompt(self, instruction: str, input: str = "") -> str:
        return self._prompt(self.template, instruction, input, tokenizer=self.tokenizer,
                            prompts_dir=self.prompts_dir)

    def guess(self, output: str) -> str:
        return guess_instruction_prompt(output, self.prompts_dir)

    def encode_all(self, texts: Iterable[str]) -> None:
        """Tokenize every text not seen yet in one batched call."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for text, ids in zip(todo, self.tokenizer(todo, add_special_tokens=False).input_ids,
                                 strict=True):
                self._cache[text] = tuple(ids)

    def ids(self, text: str) -> tuple[int, ...]:
        if text not in self._cache:
            self.encode_all([text])
        return self._cache[text]

    def clear(self) -> None:
        self._cache.clear()

    def _context(self, prefix: str) -> tuple[int, ...]:
        ids = self.ids(prefix) if prefix else ()
        if self.bos is not None and (not ids or ids[0] != self.bos):
            ids = (self.bos, *ids)
        return ids

    def pair(self, prefix: str, target: str) -> tuple[Item, Item]:
        """(conditioned, direct) items for one target, truncated together (see the module doc)."""
        context = self._context(prefix)
        target_ids = self.ids(target)
        keep = max(0, min(len(target_ids), self.max_length - len(context)))
        kept = target_ids[:keep]
        ids = (*context, *kept)
        conditioned = Item(content_key("ifd-item", prefix, target, keep), ids, len(context),
                           self._head_for(ids, len(context)))
        direct_context = self._context("")
        direct = Item(content_key("ifd-item", "", target, keep), (*direct_context, *kept),
                      len(direct_context))
        return conditioned, direct

    def candidate(self, instruction: str, input: str, output: str, *, rifd: bool = True) -> CandidateItems:
        """The items of one (instruction, input, output) candidate: all four, or IFD's two."""
        a_condition, a_direct = self.pair(self.prompt(instruction, input), output)
        items = {"a_direct": a_direct, "a_condition": a_condition}
        if rifd:
            items["q_condition"], items["q_direct"] = self.pair(
                self.prompt(self.guess(output)), question_text(instruction, input))
        return CandidateItems(items)

    def chunk(self, candidates: Sequence[tuple[str, str, str]], *, rifd: bool = True) -> list[CandidateItems]:
        """The items of a chunk of candidates, every text tokenized in one batched call, then forgotten
        (the scorer and the dry run's count build items through here alike)."""
        self.encode_all(text for c in candidates for text in self.texts_of(*c, rifd=rifd))
        built = [self.candidate(*c, rifd=rifd) for c in candidates]
        self.clear()
        return built

    def texts_of(self, instruction: str, input: str, output: str, *, rifd: bool = True) -> list[str]:
        """Every text ``candidate`` will tokenize, for one batched ``encode_all`` per chunk."""
        texts = [self.prompt(instruction, input), output]
        if rifd:
            texts += [self.prompt(self.guess(output)), question_text(instruction, input)]
        return texts


#: a batch closes when the next item is shorter than this share of the batch's longest: padding
#: stays under ~15 % even for a few hundred items of very mixed lengths.
MIN_FILL = 0.75


def pack(items: Sequence[Item], batch_tokens: int) -> list[list[Item]]:
    """Group by shared head, sort by length (longest first) and cut into batches of at most
    ``batch_tokens`` padded tokens (counted after the head, which is computed once), each spanning
    lengths within ``MIN_FILL`` of its longest item.

    Longest first makes the peak memory show up in the first batch. An item longer than the budget
    gets a batch of its own. Items with nothing to count must be filtered out before.
    """
    ordered = sorted(items, key=lambda i: (len(i.head), i.head, i.work), reverse=True)
    batches: list[list[Item]] = []
    current: list[Item] = []
    width = 0
    for item in ordered:
        if current and (item.head != current[0].head or item.work < MIN_FILL * width
                        or (len(current) + 1) * max(width, item.work) > batch_tokens):
            batches.append(current)
            current, width = [], 0
        current.append(item)
        width = max(width, item.work)
    if current:
        batches.append(current)
    return batches
