"""Token classes of the local oracle's stopping rules are cached per tokenizer object, never by
``id()``: an id is reused once its object is collected, and a new tokenizer (another model, in the
same process) must not inherit an old one's classes. No model, no torch: fake tokenizers."""

from __future__ import annotations

import gc
import weakref

import pytest

from reflectune.oracles.local import stopping
from reflectune.oracles.local.stopping import vocab_classes


class FakeTokenizer:
    """Just what ``vocab_classes`` reads: ``get_vocab()``."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.calls = 0

    def get_vocab(self) -> dict[str, int]:
        self.calls += 1
        return dict(self.vocab)


def test_a_tokenizer_that_gets_an_old_id_gets_its_own_classes(monkeypatch):
    # every object "has" the same id, as two tokenizers do when the first was collected
    monkeypatch.setattr(stopping, "id", lambda _obj: 4242, raising=False)
    first = FakeTokenizer({"[": 0, "a": 1, "Ġ": 2})
    second = FakeTokenizer({"a": 0, "[": 1, "b": 2})
    assert vocab_classes(first)["bracket"] == {0} and vocab_classes(first)["blank"] == {2}
    assert vocab_classes(second)["bracket"] == {1}
    assert vocab_classes(second)["blank"] == frozenset()


def test_classes_follow_the_tokenizer_when_its_address_is_reused():
    first = FakeTokenizer({"[": 0, "a": 1})
    assert vocab_classes(first)["bracket"] == {0}
    address = id(first)
    del first  # freed at once (reference counting): the next object of its size often gets its address
    alive = []  # keep the misses alive so that they do not take the freed address back
    for _ in range(1000):
        second = FakeTokenizer({"a": 0, "[": 1})
        if id(second) == address:
            break
        alive.append(second)
    else:
        pytest.skip("the allocator did not reuse the address")
    assert vocab_classes(second)["bracket"] == {1}


def test_classes_are_computed_once_per_tokenizer_and_do_not_keep_it_alive():
    tok = FakeTokenizer({"[x": 0, "7": 1, " 7": 2, "\n": 3})
    classes = vocab_classes(tok)
    assert vocab_classes(tok) is classes and tok.calls == 1
    assert classes["shape"][1] == classes["shape"][2] == -1 and 3 not in classes["shape"]
    gone = weakref.ref(tok)
    del tok
    gc.collect()
    assert gone() is None


def test_an_unhashable_tokenizer_still_gets_classes():
    class Unhashable(FakeTokenizer):
        __hash__ = None  # type: ignore[assignment]

    tok = Unhashable({"[": 0})
    assert vocab_classes(tok)["bracket"] == {0} and vocab_classes(tok)["bracket"] == {0}  # uncached
