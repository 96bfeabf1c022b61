"""The selection rule of METHOD.md §5.2-5.3 branch by branch, and its top-k cut, as properties.

``tests/test_selection.py`` walks the main paths; this file pins the edges: ties on either statistic,
NaN (and other non-finite numbers) in each slot, which numbers a decision may and may not depend on,
the below-one filter on the *kept* pair, the metric option, and ``parse_top_k``/``select_top_k``/
``count_outcomes`` on everything hypothesis can throw at them.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reflectune.errors import ConfigError
from reflectune.selection.rules import (
    OUTCOMES,
    Choice,
    TopK,
    choose_variant,
    count_outcomes,
    parse_top_k,
    select_top_k,
)

NAN = float("nan")
# outcome -> the variant the rule lands on (METHOD.md §5.2: instruction from Q or ori, response reflected?)
LANDS_ON = {"both": "QA", "instruction": "Q", "response": "A", "none": "ori"}


def entry(ifd: float | None, rifd: float | None, status: str = "ok", **extra: float | None) -> dict:
    """One variant's scores.jsonl entry; the loss-ratio columns copy the ppl ones unless given."""
    return {"status": status, "ifd": ifd, "rifd": rifd, "ifd_loss_ratio": extra.get("ifd_loss", ifd),
            "rifd_loss_ratio": extra.get("rifd_loss", rifd)}


def rule(ori=(0.6, 0.8), q=(0.7, 0.7), a=(0.5, 0.6), qa=(0.65, 0.5), **kwargs) -> Choice:
    """``choose_variant`` on four (ifd, rifd) pairs; the defaults reflect both parts and pass the filter."""
    return choose_variant({"ori": entry(*ori), "Q": entry(*q), "A": entry(*a), "QA": entry(*qa)}, **kwargs)


# -- the four outcomes and their landed scores -------------------------------------------------------------

@pytest.mark.parametrize(("q", "a", "qa", "outcome", "kept"), [
    ((0.7, 0.7), (0.5, 0.6), (0.65, 0.5), "both", True),           # IFD(Q) > IFD(ori), r-IFD(QA) < r-IFD(Q)
    ((0.7, 0.7), (0.5, 0.6), (0.65, 0.75), "instruction", False),  # QA raises r-IFD
    ((0.5, 0.7), (0.5, 0.6), (0.65, 0.5), "response", True),       # Q's instruction is easier
    ((0.5, 0.7), (0.5, 0.9), (0.65, 0.5), "none", False),          # A raises r-IFD
])
def test_each_outcome_lands_on_its_variant_and_reports_that_variants_scores(q, a, qa, outcome, kept) -> None:
    """The Choice carries the landed pair's own IFD and r-IFD, whichever variant that is."""
    pairs = {"ori": (0.6, 0.8), "Q": q, "A": a, "QA": qa}
    c = rule(q=q, a=a, qa=qa)
    assert (c.outcome, c.variant, c.kept) == (outcome, LANDS_ON[outcome], kept)
    assert (c.ifd, c.rifd) == pairs[LANDS_ON[outcome]]
    assert (c.reason is None) == kept


def test_rifd_tie_on_the_q_branch_keeps_qs_response_and_drops_the_sample() -> None:
    """r-IFD(QA) == r-IFD(Q) does not *lower* r-IFD: instruction only, dropped."""
    c = rule(q=(0.7, 0.5), qa=(0.65, 0.5))
    assert (c.variant, c.outcome, c.kept, c.reason) == ("Q", "instruction", False, "response_not_reflected")


def test_ifd_tie_sends_the_sample_down_the_ori_branch() -> None:
    """IFD(Q) == IFD(ori) is not harder: ori's instruction stays, A competes against ori."""
    c = rule(ori=(0.6, 0.8), q=(0.6, 0.1), qa=(0.6, 0.05))
    assert (c.variant, c.outcome, c.kept) == ("A", "response", True)


def test_smallest_improvements_count() -> None:
    """Strict comparisons, no tolerance: a hair's difference decides both steps."""
    eps = 1e-12
    c = rule(ori=(0.6, 0.8), q=(0.6 + eps, 0.7), qa=(0.65, 0.7 - eps))
    assert (c.variant, c.outcome, c.kept) == ("QA", "both", True)


# -- the below-one filter is on the kept pair ---------------------------------------------------------------

@pytest.mark.parametrize(("qa", "reason"), [((1.0, 0.5), "ifd_not_below_1"), ((0.999999, 0.5), None),
                                            ((0.65, 0.999999), None), ((5.0, 0.5), "ifd_not_below_1")])
def test_filter_boundary_is_strictly_below_one(qa, reason) -> None:
    """IFD < 1 and r-IFD < 1: exactly 1 is out, anything below is in."""
    c = rule(q=(0.7, 1.2), qa=qa)
    assert c.variant == "QA" and c.reason == reason and c.kept is (reason is None)


def test_filter_ignores_the_base_pairs_scores() -> None:
    """Q itself above 1 on both statistics does not stop QA (the pair actually kept) from passing."""
    c = rule(ori=(0.9, 1.5), q=(1.3, 1.4), qa=(0.95, 0.4))
    assert (c.variant, c.outcome, c.kept) == ("QA", "both", True)


def test_no_filter_keeps_what_the_filter_drops_but_never_an_unreflected_response() -> None:
    """``below_one_filter=False`` only lifts step 3's threshold; the response must still be reflected."""
    above = rule(q=(0.7, 3.0), qa=(2.0, 1.5), below_one_filter=False)
    assert (above.variant, above.kept, above.ifd, above.rifd) == ("QA", True, 2.0, 1.5)
    unreflected = rule(qa=(0.65, 0.9), below_one_filter=False)
    assert (unreflected.kept, unreflected.reason) == (False, "response_not_reflected")


# -- NaN (None) and other non-finite numbers ----------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"q": (None, 0.7)}, "nan_ifd"),                    # step 1 needs IFD(Q)
    ({"q": (NAN, 0.7)}, "nan_ifd"),
    ({"q": (math.inf, 0.7)}, "nan_ifd"),                # an overflowed exp is no score either
    ({"ori": (-math.inf, 0.8)}, "nan_ifd"),
    ({"q": (0.7, None)}, "nan_rifd"),                   # step 2 on the Q branch needs r-IFD(Q)
    ({"q": (0.5, 0.7), "ori": (0.6, NAN)}, "nan_rifd"),  # ... and on the ori branch r-IFD(ori)
    ({"q": (0.5, 0.7), "a": (0.5, None)}, "nan_rifd"),
    ({"q": (0.5, 0.7), "a": (None, 0.6)}, "nan_ifd"),   # landed A, filter needs its IFD
    ({"qa": (0.65, math.inf)}, "nan_rifd"),
])
def test_a_missing_number_that_the_rule_needs_drops_the_sample_with_its_reason(kwargs, reason) -> None:
    """METHOD.md §5.1: a NaN score is never selected, and the report says which statistic was missing."""
    c = rule(**kwargs)
    assert not c.kept and c.reason == reason


@pytest.mark.parametrize("kwargs", [
    {"a": (None, None)},                                  # Q branch: A is never looked at
    {"q": (0.5, 0.7), "qa": (None, None)},                # ori branch: QA is never looked at
    {"q": (0.5, 0.7), "qa": (NAN, NAN)},
])
def test_nan_in_the_branch_not_taken_changes_nothing(kwargs) -> None:
    """Only the numbers a comparison needs can stop the rule."""
    expected = rule(**{k: v for k, v in kwargs.items() if k == "q"})
    assert rule(**kwargs) == expected and expected.kept


def test_oris_ifd_is_needed_only_when_q_competes() -> None:
    """Q unavailable: step 1 has nothing to compare, so a NaN IFD(ori) does not drop the sample."""
    c = choose_variant({"ori": entry(None, 0.8), "Q": entry(0.9, 0.5, "parse_failed"), "A": entry(0.5, 0.6)})
    assert (c.variant, c.outcome, c.kept) == ("A", "response", True)


@pytest.mark.parametrize("landed", [{"qa": (None, 0.4)}, {"q": (0.5, 0.7), "a": (None, 0.5)}])
def test_nan_landed_pair_is_never_kept_even_without_the_filter(landed) -> None:
    """The kept pair must have both statistics, filter or no filter."""
    c = rule(**landed, below_one_filter=False)
    assert not c.kept and c.reason == "nan_ifd"


# -- availability ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", ["parse_failed", "call_failed", "skipped"])
def test_an_unavailable_variant_never_wins_however_good_its_numbers(status: str) -> None:
    """A failed QA with a perfect r-IFD still loses: the sample lands on Q, unreflected."""
    c = choose_variant({"ori": entry(0.6, 0.8), "Q": entry(0.7, 0.7), "A": entry(0.5, 0.6),
                        "QA": entry(0.65, 0.01, status)})
    assert (c.variant, c.outcome, c.kept, c.reason) == ("Q", "instruction", False, "QA_unavailable")


def test_failed_q_means_the_ori_branch_even_if_qa_has_scores() -> None:
    """QA is built on Q; Q unavailable -> ori branch, and a (stale) QA entry is ignored."""
    c = choose_variant({"ori": entry(0.6, 0.8), "Q": entry(0.9, 0.7, "call_failed"), "A": entry(0.5, 0.9),
                        "QA": entry(0.65, 0.1)})
    assert (c.variant, c.outcome, c.reason) == ("ori", "none", "response_not_reflected")


def test_none_entries_and_missing_status_keys() -> None:
    """An entry of None is unavailable; an entry without ``status`` counts as ``ok``."""
    bare = {"ori": {"ifd": 0.6, "rifd": 0.8}, "Q": None, "A": {"ifd": 0.5, "rifd": 0.6}, "QA": None}
    assert choose_variant(bare).variant == "A" and choose_variant(bare).kept
    assert choose_variant({"ori": None, "A": entry(0.5, 0.6)}).reason == "ori_unavailable"
    assert choose_variant({}).reason == "ori_unavailable"


def test_ori_alone_is_dropped_unreflected() -> None:
    """With only the original there is no reflected response to keep."""
    c = choose_variant({"ori": entry(0.6, 0.8)})
    assert (c.variant, c.outcome, c.kept, c.reason) == ("ori", "none", False, "A_unavailable")


# -- the metric option ------------------------------------------------------------------------------------

def test_loss_ratio_decides_the_instruction_step_too() -> None:
    """The metric is used for both comparisons, not only the filter (Cherry's L_cond / L_direct)."""
    scores = {"ori": entry(0.6, 0.8, ifd_loss=0.9), "Q": entry(0.7, 0.7, ifd_loss=0.8),
              "A": entry(0.5, 0.6, ifd_loss=0.5), "QA": entry(0.65, 0.5, ifd_loss=0.85)}
    assert choose_variant(scores).variant == "QA"                      # ppl ratio: Q is harder
    loss = choose_variant(scores, metric="loss_ratio")                 # loss ratio: ori is harder
    assert (loss.variant, loss.outcome, loss.ifd) == ("A", "response", 0.5)


def test_loss_ratio_never_falls_back_to_the_ppl_columns() -> None:
    """Entries scored without the loss-ratio columns are NaN under that metric."""
    scores = {name: {"ifd": 0.5, "rifd": 0.5} for name in ("ori", "Q", "A", "QA")}
    assert choose_variant(scores, metric="loss_ratio").reason == "nan_ifd"


def test_an_unknown_metric_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="ppl_ratio") as err:
        rule(metric="ifd")
    assert "loss_ratio" in str(err.value) and "'ifd'" in str(err.value)


# -- properties over random score tables ------------------------------------------------------------------

score = st.one_of(st.none(), st.just(NAN), st.floats(min_value=0.0, max_value=2.0))
variant = st.one_of(st.none(), st.builds(entry, score, score,
                                         st.sampled_from(["ok", "ok", "ok", "parse_failed", "skipped"])))
tables = st.fixed_dictionaries({"ori": variant, "Q": variant, "A": variant, "QA": variant})


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@settings(max_examples=400, deadline=None)
@given(tables, st.booleans())
def test_every_choice_is_consistent(scores: dict, below_one: bool) -> None:
    """kept <=> no reason; outcomes land on their variant; kept pairs are available, reflected, scored."""
    c = choose_variant(scores, below_one_filter=below_one)
    assert c.kept == (c.reason is None)
    assert c.reason is None or (isinstance(c.reason, str) and c.reason)
    if c.outcome is not None:
        assert c.variant == LANDS_ON[c.outcome]
        landed = scores[c.variant]
        assert landed is not None and landed["status"] == "ok"
        assert c.ifd == (landed["ifd"] if _finite(landed["ifd"]) else None)
        assert c.rifd == (landed["rifd"] if _finite(landed["rifd"]) else None)
    else:
        assert c.variant is None and not c.kept
    if c.kept:
        assert c.outcome in ("both", "response")
        if below_one:
            assert _finite(c.ifd) and _finite(c.rifd) and c.ifd < 1 and c.rifd < 1  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(tables)
def test_the_filter_only_ever_removes(scores: dict) -> None:
    """Filtered selection is a subset of unfiltered selection, on the same variant and outcome."""
    on, off = choose_variant(scores), choose_variant(scores, below_one_filter=False)
    assert (on.variant, on.outcome) == (off.variant, off.outcome)
    assert not on.kept or off.kept


finite = st.floats(min_value=0.01, max_value=2.0)


@settings(max_examples=300, deadline=None)
@given(st.tuples(finite, finite), st.tuples(finite, finite), st.tuples(finite, finite),
       st.tuples(finite, finite))
def test_with_all_four_scored_the_rule_is_the_papers(ori, q, a, qa) -> None:
    """METHOD.md §5.2 verbatim: Q iff IFD(Q) > IFD(ori); reflected iff it lowers the branch's r-IFD."""
    c = rule(ori=ori, q=q, a=a, qa=qa, below_one_filter=False)
    q_branch = q[0] > ori[0]
    reflected = qa[1] < q[1] if q_branch else a[1] < ori[1]
    expected = {(True, True): "both", (True, False): "instruction", (False, True): "response",
                (False, False): "none"}[(q_branch, reflected)]
    assert c.outcome == expected and c.kept == reflected


@settings(max_examples=200, deadline=None)
@given(tables, st.booleans())
def test_both_metrics_agree_when_their_columns_agree(scores: dict, below_one: bool) -> None:
    """The metric only chooses the columns; the rule is the same."""
    assert choose_variant(scores, below_one_filter=below_one) == choose_variant(
        scores, below_one_filter=below_one, metric="loss_ratio")


# -- parse_top_k --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "pool", "size"), [
    ("10%", 1000, 100), (" 10% ", 1000, 100), ("100%", 37_114, 37_114), ("0.5%", 1000, 5),
    ("2%", 46_325, 926),
    ("100", 1000, 100), ("100", 40, 40), (100, 1000, 100), (" 7 ", 10, 7), ("1", 0, 0),
])
def test_parse_top_k_sizes(text, pool: int, size: int) -> None:
    """A percentage of the pool (floored) or a row count, never more than the pool."""
    assert parse_top_k(text).size(pool) == size


@pytest.mark.parametrize("bad", ["abc", "5.5", "1e3", "%", "-5%", "101%", "nan%", "inf%", "5 rows", "10%%",
                                 "0", "-1", "0.05", ""])
def test_parse_top_k_refuses_bad_strings_with_a_clear_message(bad: str) -> None:
    """The message quotes the input and shows both accepted forms."""
    with pytest.raises(ConfigError) as err:
        parse_top_k(bad)
    message = str(err.value)
    assert f"'{bad.strip()}'" in message and "5%" in message and "1000" in message


@pytest.mark.parametrize("bad", [0, -3, True, False])
def test_parse_top_k_refuses_non_positive_ints_and_bools(bad) -> None:
    with pytest.raises(ConfigError):
        parse_top_k(bad)


def test_parse_top_k_passes_a_topk_through() -> None:
    spec = TopK(fraction=0.25)
    assert parse_top_k(spec) is spec


def test_every_whole_percentage_floors_exactly() -> None:
    """No float round-off: p % of n is exactly floor(p * n / 100) (29 % of 100 is 29, not 28)."""
    wrong = [(pct, pool) for pct in range(1, 101) for pool in range(0, 2001)
             if parse_top_k(f"{pct}%").size(pool) != pct * pool // 100]
    assert wrong == []


@given(st.one_of(st.integers(min_value=1, max_value=10**6).map(str),
                 st.integers(min_value=1, max_value=100).map(lambda p: f"{p}%")))
def test_topk_text_round_trips(text: str) -> None:
    """``str(TopK)`` is the form it was parsed from (it appears in manifests and reports)."""
    spec = parse_top_k(text)
    assert str(spec) == text and parse_top_k(str(spec)) == spec


# -- select_top_k --------------------------------------------------------------------------------------------

def test_select_top_k_ranks_only_finite_scores_below_one() -> None:
    """NaN, None, inf and IFD >= 1 are never ranked, even when k asks for more rows."""
    ifds = [1.0, math.inf, None, NAN, 0.3, -math.inf, 0.99, 1.5]
    assert select_top_k(ifds, 100) == [6, 4]
    assert select_top_k(ifds, "100%") == [6, 4]
    assert select_top_k([None, NAN, 1.0], "5") == []
    assert select_top_k([], "10%") == []


def test_select_top_k_percent_refers_to_the_pool() -> None:
    """``pool`` is the size a percentage is of (the selected count), not the eligible count."""
    ifds = [0.9, 0.8, 0.7, 0.6]
    assert select_top_k(ifds, "50%") == [0, 1]
    assert select_top_k(ifds, "50%", pool=100) == [0, 1, 2, 3]
    assert select_top_k(ifds, "50%", pool=3) == [0]
    assert select_top_k(ifds, 3, pool=10) == [0, 1, 2]  # a count is a count, capped by the pool
    assert select_top_k(ifds, 3, pool=2) == [0, 1]


ifd_lists = st.lists(st.one_of(st.none(), st.just(NAN), st.just(math.inf),
                               st.sampled_from([0.25, 0.5, 0.75, 1.0]),  # duplicates: ties
                               st.floats(min_value=0.0, max_value=1.5)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ifd_lists, st.integers(min_value=1, max_value=80))
def test_select_top_k_is_the_top_k_in_order(ifds: list, k: int) -> None:
    """Highest IFD first, ties in input order, exactly min(k, eligible) rows, none better left out."""
    picked = select_top_k(ifds, k)
    eligible = [i for i, v in enumerate(ifds) if _finite(v) and v < 1]
    assert len(picked) == len(set(picked)) == min(k, len(eligible))
    assert set(picked) <= set(eligible)
    keys = [(-ifds[i], i) for i in picked]
    assert keys == sorted(keys)
    if picked:
        worst = ifds[picked[-1]]
        assert all(ifds[i] < worst or (ifds[i] == worst and i > picked[-1])
                   for i in set(eligible) - set(picked))


@settings(max_examples=200, deadline=None)
@given(ifd_lists, st.integers(min_value=1, max_value=100))
def test_select_top_k_percent_is_a_prefix_of_the_full_ranking(ifds: list, pct: int) -> None:
    """k % is the first floor(k % of the pool) rows of the 100 % ranking."""
    full = select_top_k(ifds, "100%")
    assert select_top_k(ifds, f"{pct}%") == full[:pct * len(ifds) // 100]


# -- count_outcomes ------------------------------------------------------------------------------------------

def test_count_outcomes_on_nothing() -> None:
    assert count_outcomes([]) == {"samples": 0, "outcomes": dict.fromkeys(OUTCOMES, 0), "kept": 0,
                                  "dropped": {}}


def test_count_outcomes_reports_every_outcome_and_sorted_drop_reasons() -> None:
    """All four outcome names always appear; a drop without a reason is still counted, as ``dropped``."""
    made = [Choice("QA", "both", True), Choice("Q", "instruction", False, "response_not_reflected"),
            Choice(None, None, False, "ori_unavailable"), Choice("A", "response", False),
            Choice("QA", "both", False, "ifd_not_below_1"), Choice(None, None, False, "nan_ifd")]
    choices = (c for c in made)
    counts = count_outcomes(choices)  # any iterable, consumed once
    assert counts["samples"] == 6 and counts["kept"] == 1
    assert list(counts["outcomes"]) == list(OUTCOMES) == ["both", "instruction", "response", "none"]
    assert counts["outcomes"] == {"both": 2, "instruction": 1, "response": 1, "none": 0}
    assert list(counts["dropped"].items()) == [("dropped", 1), ("ifd_not_below_1", 1), ("nan_ifd", 1),
                                               ("ori_unavailable", 1), ("response_not_reflected", 1)]


@settings(max_examples=100, deadline=None)
@given(st.lists(tables, max_size=25))
def test_counts_add_up(all_scores: list) -> None:
    """samples = kept + dropped; the outcome counts cover every sample the rule could classify."""
    choices = [choose_variant(s) for s in all_scores]
    counts = count_outcomes(choices)
    assert counts["samples"] == len(choices) == counts["kept"] + sum(counts["dropped"].values())
    assert sum(counts["outcomes"].values()) == sum(c.outcome is not None for c in choices)
    assert counts["kept"] <= counts["outcomes"]["both"] + counts["outcomes"]["response"]


def test_top_k_without_the_below_one_filter_ranks_every_finite_ifd() -> None:
    from reflectune.selection.rules import select_top_k

    ifds = [0.5, None, 1.4, 1.2, float("nan")]
    assert select_top_k(ifds, "2") == [0]  # the reference: IFD >= 1 never kept
    assert select_top_k(ifds, "2", below_one=False) == [2, 3]  # the filter the user turned off stays off
