"""The pairwise judge's pure rules (METHOD.md §7.1): reading reviews, both orders, the winning score.

``tests/test_judging.py`` has the 3 x 3 truth table, a dozen review shapes and whole runs; this file
adds the review shapes real judges write (markdown, labels, "/10", CRLF, named lines in either order),
the shapes that must *not* be read (out of range, a score line that comes later), the order-bias
properties the both-orders protocol exists for, and ``Tally``'s bookkeeping. Prompt wording is not
tested here (it is moving into template files).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reflectune.judging.rules import (
    Tally,
    combine_orders,
    order_outcome,
    parse_scores,
    parse_verdict,
    review_outcome,
    verdict_outcome,
    winning_score,
)

OUTCOMES = ("win", "tie", "lose")
FLIP = {"win": "lose", "tie": "tie", "lose": "win"}

# -- parse_scores: shapes to read --------------------------------------------------------------------------


@pytest.mark.parametrize(("review", "expected"), [
    ("8 6", (8.0, 6.0)),
    ("8.5 7", (8.5, 7.0)),
    ("9.75 3.25\nBoth are fine.", (9.75, 3.25)),
    ("0 10", (0.0, 10.0)),
    ("10/10 9/10", (10.0, 9.0)),
    ("8/10 and 6/10", (8.0, 6.0)),
    ("8 / 10 and 6 / 10", (8.0, 6.0)),
    ("7.5/10, 8/10", (7.5, 8.0)),
    ("Scores: 8/10; 6/10", (8.0, 6.0)),
    ("8 and 6", (8.0, 6.0)),
    ("8 vs. 6", (8.0, 6.0)),
    ("8 vs 6", (8.0, 6.0)),
    ("8|6", (8.0, 6.0)),
    ("8 - 6", (8.0, 6.0)),
    ("Overall score: 8 6", (8.0, 6.0)),
    ("Rating = 8, 6", (8.0, 6.0)),
    ("Evaluation: 8 6", (8.0, 6.0)),
    ("score 8 6", (8.0, 6.0)),
    ("### 8 6\nAssistant 1 is better.", (8.0, 6.0)),
    ("> 8 6", (8.0, 6.0)),
    ("`8 6`", (8.0, 6.0)),
    ("__8__ __6__", (8.0, 6.0)),
    ("***\n\n**8 6**\nwhy", (8.0, 6.0)),          # a decoration-only line is not the first line
    ("8 6\r\nWindows line endings.", (8.0, 6.0)),
    ("8 10.0", (8.0, 10.0)),
    ("Assistant 1: 8\nAssistant 2: 6", (8.0, 6.0)),
    ("Assistant 1: 8/10\nAssistant 2: 6/10", (8.0, 6.0)),
    ("Assistant 2: 6\nAssistant 1: 8", (8.0, 6.0)),  # named lines keep their assistants, in any order
    ("**Assistant 1:** 8\n**Assistant 2:** 6", (8.0, 6.0)),
    ("assistant 1 score = 7, ASSISTANT 2 SCORE = 9", (7.0, 9.0)),
    ("Assistant 1's overall rating: 7\nAssistant 2's overall rating: 9", (7.0, 9.0)),
    ("Assistant 1 - 7 out of 10\nAssistant 2 - 9 out of 10", (7.0, 9.0)),
    ("Here is my evaluation.\n\nAssistant 1: 8\nAssistant 2: 6", (8.0, 6.0)),  # named lines: anywhere
])
def test_real_world_score_lines_are_read(review: str, expected: tuple[float, float]) -> None:
    """(Assistant 1, Assistant 2) in that order, whatever decoration surrounds them."""
    assert parse_scores(review) == expected


def test_the_first_line_wins_over_named_scores_in_the_explanation() -> None:
    """The protocol puts the scores first; later "Assistant 1: ..." text is explanation."""
    assert parse_scores("8 6\n\nAssistant 1: 1\nAssistant 2: 2") == (8.0, 6.0)


def test_an_out_of_range_first_line_falls_back_to_named_scores() -> None:
    assert parse_scores("12 14\nAssistant 1: 8\nAssistant 2: 6") == (8.0, 6.0)


# -- parse_scores: shapes to refuse ------------------------------------------------------------------------

@pytest.mark.parametrize("review", [
    "10.5 9", "11 7", "8 11", "-1 5", "100 90",                 # out of range, on the first line
    "8/10 9/100",                                               # not out of 10
    "Assistant 1: 10.5\nAssistant 2: 9",                        # out of range, named
    "Assistant 1: 85\nAssistant 2: 90",
    "Assistant 1: 8\nAssistant 2 was less helpful.",            # only one named score
    "Assistant 1: 8",
    "Here are the scores.\n8 6",                                # the score line must come first
    "Assistant 1 deserves an 8, Assistant 2 a 6.",              # prose, no score line
    "   \n\t\n",
    "***\n---",
    "[[A]]",                                                    # a verdict is not a score line
])
def test_unreadable_or_out_of_range_reviews_give_none(review: str) -> None:
    """An unreadable line is an error to report (METHOD.md §7.1), never a guess and never a tie."""
    assert parse_scores(review) is None


@pytest.mark.parametrize("review", ["Assistant 1: 100\nAssistant 2: 5", "Assistant 1: 105\nAssistant 2: 5",
                                    "Assistant 1: 8/100\nAssistant 2: 9/100"])
def test_named_scores_out_of_range_are_refused(review: str) -> None:
    """Scores must lie in 0-10; a 100-point score is not silently cut to its first two digits."""
    assert parse_scores(review) is None


tenths = st.integers(min_value=0, max_value=100).map(lambda n: n / 10)


def _fmt(x: float) -> str:
    return f"{x:g}"


@settings(max_examples=200, deadline=None)
@given(tenths, tenths, st.sampled_from(["{a} {b}", "{a}, {b}", "{a}/10 {b}/10", "Score: {a} {b}",
                                        "**{a} {b}**", "Assistant 1: {a}\nAssistant 2: {b}",
                                        "Assistant 2: {b}\nAssistant 1: {a}"]),
       st.text(alphabet="abcdefgh .,\n", max_size=40))
def test_any_in_range_pair_round_trips(a: float, b: float, shape: str, explanation: str) -> None:
    """Every 0-10 score pair the judge can write (one decimal) is read back exactly."""
    review = shape.format(a=_fmt(a), b=_fmt(b)) + "\n" + explanation
    assert parse_scores(review) == (a, b)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=11, max_value=99), st.integers(min_value=0, max_value=10), st.booleans())
def test_two_digit_scores_above_ten_are_never_read(high: int, low: int, high_first: bool) -> None:
    pair = (high, low) if high_first else (low, high)
    assert parse_scores(f"{pair[0]} {pair[1]}\nexplanation") is None


@given(st.text(max_size=200))
def test_parse_scores_never_raises_and_stays_in_range(review: str) -> None:
    scores = parse_scores(review)
    assert scores is None or (len(scores) == 2 and all(0.0 <= s <= 10.0 for s in scores))


# -- parse_verdict -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("review", "expected"), [
    ("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "C"),
    ("Assistant B is more accurate.\n\nFinal verdict: [[B]]", "B"),
    ("**[[A]]**", "A"),
    ("[[B]] [[B]]", "B"),
])
def test_verdict_markers(review: str, expected: str) -> None:
    """MT-Bench pair-v2: the one double-bracketed A, B or C (MT-Bench's own pick when only one occurs)."""
    assert parse_verdict(review) == expected


@pytest.mark.parametrize("review", [None, "", "A", "[A]", "[[D]]", "[[a]]", "[[ A ]]", "[[AB]]", "[[A]",
                                    "Verdict: A is better", "8 6",
                                    "[[A]] ... on reflection they are equal: [[C]]"])  # distinct: refused
def test_verdict_garbage_is_none(review: str | None) -> None:
    assert parse_verdict(review) is None


@given(st.sampled_from("ABC"),
       st.text(alphabet="ABCabc []().:\n", max_size=30).filter(lambda s: "[[" not in s))
def test_the_final_verdict_is_found_after_any_text(verdict: str, before: str) -> None:
    assert parse_verdict(f"{before}[[{verdict}]]") == verdict


# -- one order: from the review to A's outcome -------------------------------------------------------------

@pytest.mark.parametrize(("scores", "a_first", "expected"), [
    ((9.0, 7.0), True, "win"), ((9.0, 7.0), False, "lose"),   # Assistant 1 scored higher
    ((7.0, 9.0), True, "lose"), ((7.0, 9.0), False, "win"),
    ((8.0, 8.0), True, "tie"), ((8.0, 8.0), False, "tie"),
    ((8.5, 8.0), False, "lose"),
])
def test_review_outcome_reads_the_scores_from_as_position(scores, a_first: bool, expected: str) -> None:
    """``a_first`` says whether model A was Assistant 1; the outcome is always A's."""
    assert review_outcome(scores, a_first=a_first) == expected


@given(tenths, tenths)
def test_swapping_the_presentation_flips_the_outcome(s1: float, s2: float) -> None:
    """The same review means opposite things for A depending on where A was shown."""
    assert review_outcome((s1, s2), a_first=False) == FLIP[review_outcome((s1, s2), a_first=True)]


@pytest.mark.parametrize("verdict", "ABC")
def test_verdict_outcome_flips_with_the_order(verdict: str) -> None:
    assert verdict_outcome(verdict, a_first=False) == FLIP[verdict_outcome(verdict, a_first=True)]  # type: ignore[arg-type]


def test_order_outcome_compares_a_against_b() -> None:
    assert [order_outcome(*p) for p in ((9, 1), (5, 5), (1, 9), (7.5, 7.4))] == ["win", "tie", "lose", "win"]


# -- both orders -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "second"), list(itertools.product(OUTCOMES, repeat=2)))
def test_combine_orders_is_symmetric_and_antisymmetric_in_the_models(first: str, second: str) -> None:
    """The two orders weigh the same, and renaming A <-> B flips the combined outcome."""
    combined = combine_orders(first, second)  # type: ignore[arg-type]
    assert combined == combine_orders(second, first)  # type: ignore[arg-type]
    assert combine_orders(FLIP[first], FLIP[second]) == FLIP[combined]  # type: ignore[arg-type]


def test_combine_orders_needs_a_win_and_no_loss_to_win() -> None:
    """METHOD.md §7.1: win = win + win or win + tie; a split decision is a tie; otherwise lose."""
    wins = {p for p in itertools.product(OUTCOMES, repeat=2) if combine_orders(*p) == "win"}  # type: ignore[arg-type]
    ties = {p for p in itertools.product(OUTCOMES, repeat=2) if combine_orders(*p) == "tie"}  # type: ignore[arg-type]
    assert wins == {("win", "win"), ("win", "tie"), ("tie", "win")}
    assert ties == {("tie", "tie"), ("win", "lose"), ("lose", "win")}


def _judge_item(review_a_first: tuple[float, float], review_b_first: tuple[float, float]) -> str:
    """A's combined outcome from the two reviews of one item (A shown first, then B shown first)."""
    return combine_orders(review_outcome(review_a_first, a_first=True),
                          review_outcome(review_b_first, a_first=False))


@given(tenths, tenths)
def test_a_consistent_judge_gives_the_plain_comparison(score_a: float, score_b: float) -> None:
    """A judge that scores each answer the same wherever it stands: the protocol changes nothing."""
    assert _judge_item((score_a, score_b), (score_b, score_a)) == order_outcome(score_a, score_b)


@given(tenths, tenths, st.sampled_from([0, 1]))
def test_a_purely_position_biased_judge_yields_ties(high: float, low: float, favoured: int) -> None:
    """A judge that always prefers one position (whatever it is shown) is cancelled into a tie."""
    assume(high != low)
    high, low = max(high, low), min(high, low)
    review = (high, low) if favoured == 0 else (low, high)
    assert _judge_item(review, review) == "tie"
    verdict = "A" if favoured == 0 else "B"
    assert combine_orders(verdict_outcome(verdict, a_first=True),  # type: ignore[arg-type]
                          verdict_outcome(verdict, a_first=False)) == "tie"  # type: ignore[arg-type]


def test_a_bias_that_only_breaks_ties_still_lets_the_better_model_win() -> None:
    """Clear win in one order, a tie in the other (the judge nudged by position): win."""
    assert _judge_item((9.0, 6.0), (7.0, 7.0)) == "win"
    assert _judge_item((7.0, 7.0), (9.0, 6.0)) == "lose"  # B shown first and scored higher: B's win


# -- the winning score -------------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=500)


@given(counts, counts, counts)
def test_winning_score_is_the_formula_and_stays_in_0_2(w: int, t: int, n_l: int) -> None:
    """(W - L) / N + 1 with N = W + T + L, in [0, 2]; None when nothing was judged."""
    score = winning_score(w, t, n_l)
    if w + t + n_l == 0:
        assert score is None
        return
    assert score is not None and 0.0 <= score <= 2.0
    assert score == pytest.approx((w - n_l) / (w + t + n_l) + 1)
    assert winning_score(n_l, t, w) == pytest.approx(2 - score)  # swapping the models mirrors it about 1


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_equal_wins_and_losses_are_parity_whatever_the_ties(w: int, t: int) -> None:
    if w + t:
        assert winning_score(w, t, w) == 1.0


def test_winning_score_extremes() -> None:
    assert winning_score(0, 7, 0) == 1.0
    assert winning_score(1, 0, 0) == 2.0 and winning_score(0, 0, 1) == 0.0
    assert winning_score(3, 1, 0) == pytest.approx(1.75)
    assert winning_score(0, 0, 0) is None


# -- Tally -------------------------------------------------------------------------------------------------

def test_an_outcome_of_none_is_an_error_never_a_tie() -> None:
    """The reference code counts unreadable reviews as ties; here they are errors, outside N."""
    tally = Tally()
    tally.add(None)
    tally.add("tie", error=True)
    assert (tally.tie, tally.errors, tally.n, tally.score) == (0, 2, 0, None)


def test_a_skip_is_neither_an_error_nor_an_outcome() -> None:
    tally = Tally()
    tally.add("win", skipped=True)
    tally.add(None, error=True, skipped=True)
    assert (tally.win, tally.errors, tally.skipped, tally.n) == (0, 0, 2, 0)


def test_tally_score_is_the_winning_score_of_its_counts() -> None:
    tally = Tally()
    for outcome in ["win"] * 150 + ["tie"] * 40 + ["lose"] * 28:   # the V2 paper's WizardLM-218 result
        tally.add(outcome)  # type: ignore[arg-type]
    assert tally.n == 218 and tally.score == winning_score(150, 40, 28)
    assert tally.as_dict()["winning_score"] == 1.5596  # reported to four places


def test_tally_keeps_one_score_pair_per_order_and_reports_their_means() -> None:
    """``scores`` are (A, B) per order; the means are per model over all orders, to three places."""
    tally = Tally()
    tally.add("win", scores=[(9.0, 6.0), (8.0, 7.0)])
    tally.add("tie", scores=[(7.0, 7.0)])
    tally.add("lose", scores=[(5.0, 9.0), (6.0, 8.0)])
    assert tally.scores_a == [9.0, 8.0, 7.0, 5.0, 6.0] and tally.scores_b == [6.0, 7.0, 7.0, 9.0, 8.0]
    summary = tally.as_dict()
    assert summary["mean_score_a"] == 7.0 and summary["mean_score_b"] == 7.4
    thirds = Tally()
    thirds.add("win", scores=[(1.0, 0.0), (0.0, 0.0), (0.0, 0.0)])
    assert thirds.as_dict()["mean_score_a"] == 0.333


def test_an_empty_tally_reports_nothing_judged() -> None:
    assert Tally().as_dict() == {"win": 0, "tie": 0, "lose": 0, "n": 0, "winning_score": None, "errors": 0,
                                 "skipped": 0, "mean_score_a": None, "mean_score_b": None}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["win", "tie", "lose", None, "error", "skip"]), max_size=60))
def test_tally_counts_add_up(events: list) -> None:
    """Every item lands in exactly one bucket; N counts outcomes only."""
    tally = Tally()
    for event in events:
        if event == "error":
            tally.add("win", error=True)
        elif event == "skip":
            tally.add("lose", skipped=True)
        else:
            tally.add(event)
    assert tally.n + tally.errors + tally.skipped == len(events)
    assert (tally.win, tally.tie, tally.lose) == tuple(events.count(o) for o in OUTCOMES)
    assert tally.errors == events.count(None) + events.count("error")
    assert tally.score == winning_score(tally.win, tally.tie, tally.lose)


def test_a_forced_judge_is_asked_for_its_scores_under_a_heading_and_read_there_only() -> None:
    from reflectune.judging.rules import FORCED_SCORES, forced_scores, judge_request

    plain = judge_request("Q?", "a", "b")
    forced = judge_request("Q?", "a", "b", forced=True)
    assert plain.sections == () and forced.sections == (FORCED_SCORES,)
    assert forced.messages == plain.messages  # the same prompt: only the answer's shape is forced
    assert judge_request("Q?", "a", "b", mode="pair-v2", forced=True).sections == ()
    review = f"Both are fine, 3 4 points.\n\n{FORCED_SCORES}\n1. Assistant 1: 8.5\n2. Assistant 2: 6\n[End]"
    assert forced_scores(review) == (8.5, 6.0)
    assert forced_scores("8 7\nGood.") is None  # numbers outside the forced section are never read
    assert forced_scores(f"{FORCED_SCORES}\n1. 1. 2. 3. 4.") is None
