"""The pairwise judge: its rules on every case, its parser, and whole runs against a real server."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from reflectune.cli import main
from reflectune.errors import ConfigError, DataError
from reflectune.io.testsets import load_testset
from reflectune.judging.rules import (
    Tally,
    combine_orders,
    judge_request,
    parse_scores,
    parse_verdict,
    review_outcome,
    verdict_outcome,
    winning_score,
)
from reflectune.judging.run import Answer, judge, pair_answers, read_answers, write_chart
from reflectune.markers import JUDGE_ANSWER_1, JUDGE_ANSWER_2
from reflectune.testing.server import running_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# -- the both-order rule on all 3 x 3 combinations ----------------------------------------------------

EXPECTED = {
    ("win", "win"): "win", ("win", "tie"): "win", ("tie", "win"): "win",
    ("tie", "tie"): "tie", ("win", "lose"): "tie", ("lose", "win"): "tie",
    ("lose", "lose"): "lose", ("lose", "tie"): "lose", ("tie", "lose"): "lose",
}


@pytest.mark.parametrize(("first", "second"), list(itertools.product(("win", "tie", "lose"), repeat=2)))
def test_both_order_rule_on_every_combination(first: str, second: str) -> None:
    assert combine_orders(first, second) == EXPECTED[(first, second)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("s_a", "s_b", "expected"), [(9, 7, "win"), (7, 7, "tie"), (6, 8, "lose")])
def test_scores_map_to_a_outcome_in_both_orders(s_a: float, s_b: float, expected: str) -> None:
    assert review_outcome((s_a, s_b), a_first=True) == expected     # A shown as Assistant 1
    assert review_outcome((s_b, s_a), a_first=False) == expected    # B shown as Assistant 1


def test_pair_v2_verdicts_map_from_a_perspective_in_both_orders() -> None:
    assert [verdict_outcome(v, a_first=True) for v in "ABC"] == ["win", "lose", "tie"]  # type: ignore[arg-type]
    assert [verdict_outcome(v, a_first=False) for v in "ABC"] == ["lose", "win", "tie"]  # type: ignore[arg-type]


def test_winning_score_against_hand_computed_counts() -> None:
    assert winning_score(150, 40, 28) == pytest.approx(1 + 122 / 218)   # V2 paper: 1.56
    assert round(winning_score(150, 40, 28) or 0, 2) == 1.56
    assert winning_score(10, 0, 0) == 2.0 and winning_score(0, 0, 10) == 0.0
    assert winning_score(3, 4, 3) == 1.0
    assert winning_score(0, 0, 0) is None
    tally = Tally()
    for outcome in ["win"] * 5 + ["tie"] * 3 + ["lose"] * 2:
        tally.add(outcome)  # type: ignore[arg-type]
    tally.add(None, error=True)
    tally.add(None, skipped=True)
    summary = tally.as_dict()
    assert (summary["win"], summary["tie"], summary["lose"], summary["n"]) == (5, 3, 2, 10)
    assert summary["winning_score"] == pytest.approx((5 - 2) / 10 + 1)   # errors are not in N
    assert (summary["errors"], summary["skipped"]) == (1, 1)


# -- score-line parsing -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("review", "expected"), [
    ("8 9\nAssistant 2 is more detailed.", (8.0, 9.0)),
    ("8, 9\nexplanation", (8.0, 9.0)),
    ("8/10 9/10\nexplanation", (8.0, 9.0)),
    ("8 out of 10 and 6 out of 10", (8.0, 6.0)),
    ("Score: 8 9\nexplanation", (8.0, 9.0)),
    ("Scores: 7.5, 9", (7.5, 9.0)),
    ("**8 9**\n\nThe first answer...", (8.0, 9.0)),
    ("\n\n  10 4  \nwhy", (10.0, 4.0)),
    ("Assistant 1: 8\nAssistant 2: 9\nexplanation", (8.0, 9.0)),
    ("Assistant 1: 8 Assistant 2: 9", (8.0, 9.0)),
    ("Assistant 1's score: 6/10\nAssistant 2's score: 3/10", (6.0, 3.0)),
    ("9 8 Assistant 1 gives more detail.", (9.0, 8.0)),
])
def test_score_lines_are_read_tolerantly(review: str, expected: tuple[float, float]) -> None:
    assert parse_scores(review) == expected


@pytest.mark.parametrize("review", [
    "", None, "Both answers have merits. Assistant 1 is rated 8 and Assistant 2 is rated 7.",
    "8\nThe first answer is good.", "1. Assistant 1 explains well\n2. Assistant 2 too",
    "12 14\nout of range", "2023 was a good year for 7 and 8",
    "The scores are below.\n8 9",  # the score line must come first
])
def test_unreadable_reviews_are_none_never_a_guess(review: str | None) -> None:
    assert parse_scores(review) is None


def test_verdicts_are_the_one_marker_given_else_refused() -> None:
    """MT-Bench's verdict when only one marker occurs; several distinct markers are unparseable."""
    assert parse_verdict("A is more thorough. [[A]]") == "A"
    assert parse_verdict('Format: "[[A]]" or "[[B]]"... final: [[C]]') is None
    assert parse_verdict("no verdict") is None


def test_judge_prompt_keeps_the_protocol_headers() -> None:
    request = judge_request("What?", "first answer", "second answer")
    system, user = request.messages
    assert system.role == "system" and user.role == "user"
    text = user.content
    order = ["[Question]", JUDGE_ANSWER_1, "first answer", "[The End of Assistant 1's Answer]",
             JUDGE_ANSWER_2, "second answer", "[The End of Assistant 2's Answer]", "[System]"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert text.endswith("does not affect your judgment.\n\n")  # the papers' criteria, last
    assert "separated by a space" in text and "order" in text
    assert request.temperature == 0.0 and request.max_tokens == 1024
    retry = judge_request("What?", "first answer", "second answer", reminder=True)
    assert len(retry.messages) == 3 and "reminder" in retry.messages[2].content.lower()
    pair = judge_request("What?", "a", "b", mode="pair-v2")
    assert "[[C]]" in pair.messages[0].content
    assert "[The Start of Assistant A's Answer]" in pair.messages[1].content


# -- pairing --------------------------------------------------------------------------------------------

def _answer(row: int, instruction: str, dataset: str | None = None, id: str | None = None) -> Answer:
    return Answer(row=row, instruction=instruction, output="o", dataset=dataset, id=id)


def test_pairing_by_identity_then_by_instruction_text() -> None:
    a = [_answer(1, "q1", "vicuna", "1"), _answer(2, "q2", "vicuna", "2"), _answer(3, "q3"),
         _answer(4, "only in A", "vicuna", "9")]
    b = [_answer(1, "q2 (reworded)", "vicuna", "2"), _answer(2, "q1", "vicuna", "1"), _answer(3, " q3 "),
         _answer(4, "only in B")]
    pairing = pair_answers(a, b)
    assert [(x.row, y.row) for x, y in pairing.pairs] == [(1, 2), (2, 1), (3, 3)]
    assert [x.instruction for x in pairing.unmatched_a] == ["only in A"]
    assert [x.instruction for x in pairing.unmatched_b] == ["only in B"]


# -- whole runs against the loopback server --------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[object]:
    with running_server() as srv:
        yield srv


def _reset(server, **options: object) -> None:
    """Zero the server's counters; options not named go back to their defaults."""
    server.reset(**({"faults": "", "judge_malformed_ratio": 0.0, "judge_alt_ratio": 0.2} | options))


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _answers(dataset: str, n: int, length: int, generator: str) -> list[dict]:
    """Answers of a given length: the test server scores longer answers higher (swap-invariant)."""
    return [{"instruction": item.instruction, "output": (f"Answer {item.id}. " + "detail " * 200)[:length],
             "generator": generator, "dataset": item.dataset, "id": item.id,
             **({"category": item.category} if item.category else {})}
            for item in load_testset(dataset, limit=n)]


def _judge(server, a: Path, b: Path, **kwargs):
    return judge(a, b, judge="openai:judge", base_url=server.base_url, **kwargs)


def test_a_clearly_better_model_wins_both_orders_and_the_swap_loses(server, tmp_path: Path) -> None:
    _reset(server, judge_malformed_ratio=0.0, judge_alt_ratio=0.5)  # alternative score styles too
    long_ = _write(tmp_path / "long.jsonl",
                   _answers("vicuna", 20, 1200, "long") + _answers("koala", 10, 1200, "long"))
    short = _write(tmp_path / "short.jsonl",
                   _answers("vicuna", 20, 40, "short") + _answers("koala", 10, 40, "short"))
    report = _judge(server, long_, short, run_dir=tmp_path / "r1")
    counts = {k: report.overall[k] for k in ("win", "tie", "lose", "n", "errors")}
    assert counts == {"win": 30, "tie": 0, "lose": 0, "n": 30, "errors": 0}
    assert report.overall["winning_score"] == 2.0
    assert report.by_dataset["vicuna"]["n"] == 20 and report.by_dataset["koala"]["n"] == 10
    assert report.data["by_category"]["vicuna"]["generic"]["win"] == 10
    assert server.stats()["completed"] == 60  # both orders for each of 30 items
    swapped = _judge(server, short, long_, run_dir=tmp_path / "r2")
    assert (swapped.overall["lose"], swapped.overall["winning_score"]) == (30, 0.0)
    same = _judge(server, short, short, run_dir=tmp_path / "r3")
    assert (same.overall["tie"], same.overall["winning_score"]) == (30, 1.0)


def test_malformed_reviews_are_errors_not_ties_and_retry_unparsed_fixes_them(server, tmp_path: Path) -> None:
    _reset(server, judge_malformed_ratio=0.3)
    a = _write(tmp_path / "a.jsonl", _answers("wizardlm", 40, 900, "a"))
    b = _write(tmp_path / "b.jsonl", _answers("wizardlm", 40, 300, "b"))
    run = tmp_path / "run"
    first = _judge(server, a, b, run_dir=run)
    overall = first.overall
    assert overall["errors"] > 0
    assert overall["n"] + overall["errors"] == 40
    rows = [json.loads(line) for line in first.judgments_path.read_text().splitlines()]
    broken = [r for r in rows if r["error"]]
    assert len(broken) == overall["errors"] and all(r["outcome"] is None for r in broken)
    assert all("unparsed" in r["error"] for r in broken)
    assert len(first.data["errors"]) == overall["errors"]
    unparsed_orders = sum(o["error"] == "unparsed" for r in rows for o in r["orders"])
    calls_before = server.stats()["completed"]
    assert calls_before == 80

    second = _judge(server, a, b, run_dir=run, retry_unparsed=True)
    assert second.overall["errors"] == 0 and second.overall["n"] == 40
    assert second.data["retried"] == unparsed_orders
    # resume: only the re-asks were sent, every first review came from the store
    assert server.stats()["completed"] - calls_before == unparsed_orders
    assert second.data["calls"]["cached"] == 80


def test_failed_calls_and_failed_generations_are_reported_not_tied(server, tmp_path: Path) -> None:
    _reset(server, faults="400:0.05")
    rows_a = _answers("vicuna", 30, 900, "a")
    rows_a[0] |= {"output": "", "error": "timeout: no answer"}
    a = _write(tmp_path / "a.jsonl", rows_a)
    b = _write(tmp_path / "b.jsonl", _answers("vicuna", 30, 100, "b"))
    report = _judge(server, a, b)
    overall = report.overall
    assert overall["skipped"] == 1 and report.data["skipped"][0]["id"] == "1"
    failed = [e for e in report.data["errors"] if "call failed" in e["error"]]
    assert failed and overall["errors"] == len(report.data["errors"])
    assert overall["n"] + overall["errors"] + overall["skipped"] == 30
    assert overall["tie"] == 0  # A's answers are all longer: nothing may turn into a tie
    _reset(server)


def test_pair_v2_agrees_with_the_score_protocol(server, tmp_path: Path) -> None:
    _reset(server)
    a = _write(tmp_path / "a.jsonl", _answers("sinstruct", 25, 700, "a"))
    b_rows = _answers("sinstruct", 25, 1400, "b")
    for i, row in enumerate(b_rows):
        row["output"] = row["output"][: (100 if i % 3 == 0 else 700 if i % 3 == 1 else 1400)]
    b = _write(tmp_path / "b.jsonl", b_rows)
    scored = _judge(server, a, b, run_dir=tmp_path / "s")
    verdicts = _judge(server, a, b, run_dir=tmp_path / "v", mode="pair-v2")
    keys = ("win", "tie", "lose", "errors")
    assert {k: verdicts.overall[k] for k in keys} == {k: scored.overall[k] for k in keys}
    assert verdicts.data["mode"] == "pair-v2"
    assert min(verdicts.overall[k] for k in ("win", "tie", "lose")) > 0


def test_cli_judge_writes_report_table_and_a_valid_png(server, tmp_path: Path, capsys) -> None:
    _reset(server, judge_malformed_ratio=0.1)
    a = _write(tmp_path / "a.jsonl", _answers("vicuna", 12, 900, "ours") + _answers("lima", 8, 900, "ours"))
    b_rows = _answers("vicuna", 12, 200, "base") + _answers("lima", 8, 200, "base")
    for row in b_rows:  # an AlpacaEval-style file: no ids, so items pair on the instruction text
        del row["id"], row["dataset"]
    b = tmp_path / "model_outputs.json"
    b.write_text(json.dumps(b_rows[:-1]))
    rc = main(["judge", str(a), str(b), "--judge", "openai:judge", "--base-url", server.base_url,
               "--run-dir", str(tmp_path / "run"), "-q"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "ours wins" in out and "overall" in out and "vicuna by category" in out
    assert "unmatched" in err and "could not be judged" in err
    report = json.loads((tmp_path / "run" / "judge.json").read_text())
    assert report["unmatched"]["a"] == 1 and report["unmatched"]["b"] == 0
    assert set(report["by_dataset"]) == {"vicuna", "lima"}
    png = (tmp_path / "run" / "judge.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "run" / "judge.png").shape[2] in (3, 4)


def test_chart_is_a_png_and_input_errors_are_one_line(tmp_path: Path) -> None:
    path = write_chart({"vicuna": {"win": 50, "tie": 20, "lose": 10, "winning_score": 1.5},
                        "koala": {"win": 0, "tie": 0, "lose": 0, "winning_score": None}},
                       tmp_path / "c.png", name_a="x", name_b="y")
    assert path.read_bytes().startswith(PNG_MAGIC)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2"}\n')
    with pytest.raises(DataError) as err:
        read_answers(bad)
    assert err.value.row == 2 and err.value.field == "output"
    ok = _write(tmp_path / "ok.jsonl", [{"instruction": "q", "output": "a"}])
    other = _write(tmp_path / "other.jsonl", [{"instruction": "different", "output": "a"}])
    with pytest.raises(DataError, match="no item"):
        judge(ok, other, judge="fake")
    with pytest.raises(ConfigError, match="pair-v3"):
        judge(ok, ok, judge="fake", mode="pair-v3")  # type: ignore[arg-type]
