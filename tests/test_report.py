"""``reflectune report`` on a real run, opened in real headless Chromium.

The run is real end to end: recycle against the loopback OpenAI-compatible server, score with the
embedded student, select, and a judge (loopback) over two answer files. Some rows, answers and a
category hold markup (``<script>``, ``onerror=``, ``</textarea>``, ``javascript:`` links): the page
must show them as text and run none of them. The browser checks that the counts in the DOM are the
run's, that filters, search and paging work, and that the console stays clean; a screenshot is kept
in ``build/test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reflectune.testing.server import running_server
from tests.conftest import ALPACA, ROOT, run_cli

pytestmark = pytest.mark.slow

HOSTILE = [
    "<script>window.__pwned = 1; alert('script')</script>",
    '<img src=x onerror="window.__pwned = 2; alert(2)">',
    "</textarea><b id=bold>bold</b><textarea>",
    '<a id=js href="javascript:alert(3)">click me</a>',
    "</script><script>window.__pwned = 4</script>",
]
ARTIFACTS = ROOT / "build" / "test-artifacts"


def _chromium() -> str | None:
    for name in (os.environ.get("REFLECTUNE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (no browser download). CI sets
    REFLECTUNE_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping."""
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if os.environ.get("REFLECTUNE_REQUIRE_BROWSER") == "1":
            pytest.fail("headless Chromium (apt install chromium) and playwright are required here")
        pytest.skip("no chromium or no playwright on this machine")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


def _rows() -> list[dict[str, str]]:
    real = json.loads(ALPACA.read_text(encoding="utf-8"))[:17]
    hostile = [{"instruction": f"Explain this snippet: {h}", "input": "", "output": f"It is markup: {h}"}
               for h in HOSTILE]
    return real[:10] + hostile + real[10:17]


def _answers(path: Path, generator: str, hostile: bool) -> None:
    testset = [json.loads(line) for line in
               (ROOT / "src/reflectune/data/testsets/vicuna_test_set.jsonl").read_text().splitlines()[:6]]
    with path.open("w", encoding="utf-8") as fh:
        for i, item in enumerate(testset):
            output = f"{HOSTILE[i % len(HOSTILE)]} answer {i}" if hostile else f"A plain answer {i}."
            fh.write(json.dumps({"dataset": "vicuna", "id": str(item["question_id"]),
                                 "instruction": item["text"],
                                 "category": "<svg onload=alert(5)>" if i == 0 else item.get("category"),
                                 "output": output, "generator": generator}) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("report")
    data = folder / "data.json"
    data.write_text(json.dumps(_rows()), encoding="utf-8")
    recycle_dir, judge_dir = folder / "recycle", folder / "judge"
    with running_server() as server:
        done = run_cli("recycle", str(data), "--oracle", "openai:test", "--base-url", server.base_url,
                       "--run-dir", str(recycle_dir), "--phases", "response", "-q")
        assert done.returncode == 0, done.stderr[-2000:]
        recycle_err = done.stderr
        done = run_cli("score", str(recycle_dir), "--student", "embedded", "--max-length", "512", "-q")
        assert done.returncode == 0, done.stderr[-2000:]
        done = run_cli("select", str(recycle_dir))
        assert done.returncode == 0, done.stderr[-2000:]
        select_err = done.stderr
        _answers(folder / "a.jsonl", "tuned", hostile=True)
        _answers(folder / "b.jsonl", "base", hostile=False)
        done = run_cli("judge", str(folder / "a.jsonl"), str(folder / "b.jsonl"), "--judge", "openai:judge",
                       "--base-url", server.base_url, "--run-dir", str(judge_dir), "-q", "--no-chart")
        assert done.returncode == 0, done.stderr[-2000:]
        judge_err = done.stderr
    return {"folder": folder, "recycle": recycle_dir, "judge": judge_dir, "recycle_err": recycle_err,
            "select_err": select_err, "judge_err": judge_err}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_stage_that_ends_a_run_prints_a_fresh_report(run: dict[str, Any]) -> None:
    page = run["recycle"] / "report.html"
    assert f"report:   {page}" in run["select_err"].replace("\n", "")  # select rewrote it last
    assert "report:" in run["recycle_err"] and "median" in run["recycle_err"]
    assert "median IFD: ori" in run["select_err"]
    assert (run["judge"] / "report.html").is_file() and "report:" in run["judge_err"]
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:|//)""", text)  # nothing to fetch
    for hostile in HOSTILE:  # the server-rendered part holds no raw markup from the data
        assert hostile not in text


def _open(browser: Any, page_path: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(page_path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    return page, errors, dialogs


def _matching(page: Any, prefix: str) -> int:
    return int(page.get_attribute(f"#{prefix}-count", "data-matching"))


def _settle(page: Any) -> None:
    page.wait_for_timeout(400)  # the search box waits 150 ms after the last key


def test_the_page_shows_the_runs_counts_and_its_browser_works(browser: Any, run: dict[str, Any]) -> None:
    report = run_cli("report", str(run["recycle"]), "-o", str(run["folder"] / "recycle.html"))
    assert report.returncode == 0, report.stderr
    page, errors, dialogs = _open(browser, Path(report.stdout.strip()))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-recycle.png"))  # what a reader sees first
    variants = _lines(run["recycle"] / "variants.jsonl")
    manifest = json.loads((run["recycle"] / "run.json").read_text())
    # counts in the DOM are the run's
    assert _matching(page, "s") == len(variants) == 22
    gates = {r[0]: int(r[1].replace(",", "")) for r in _table(page, "gates")}
    assert gates == manifest["recycle"]["rejected_by_gate"]
    status = {r[0]: int(r[1].replace(",", "")) for r in _table(page, "variant-status")}
    expected = {k: v for k, v in manifest["recycle"]["variant_status"].items() if not k.startswith("ori:")}
    assert status == expected
    outcomes = {r[0]: int(r[1]) for r in _table(page, "outcomes")}
    assert sum(outcomes.values()) == manifest["select"]["samples"]
    cut = dict(_table(page, "cut"))
    assert int(cut["selected"]) == manifest["select"]["kept"]
    # filtering: by status, then back to all; by outcome
    statuses = [v["status"] for v in variants]
    page.select_option("#s-status", statuses[0])
    assert _matching(page, "s") == statuses.count(statuses[0])
    page.select_option("#s-status", "")
    kept = manifest["select"]["kept"]
    page.select_option("#s-outcome", "selected" if kept else "not selected")
    assert _matching(page, "s") == (kept or len(variants))
    page.select_option("#s-outcome", "")
    # paging: 22 samples, 20 a page
    assert page.locator("#s-list .card").count() == 20
    page.click("#s-next")
    assert page.locator("#s-list .card").count() == 2 and "2 / 2" in page.inner_text("#s-page")
    # search finds the hostile rows and shows their markup as text
    page.fill("#s-search", "onerror")
    _settle(page)
    assert _matching(page, "s") == 1
    assert 'onerror="window.__pwned = 2; alert(2)"' in page.inner_text("#s-list")
    page.fill("#s-search", "")
    _settle(page)
    _no_script_ran(page, errors, dialogs)


def _table(page: Any, name: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"[data-test='{name}'] tbody tr",
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))")


def _no_script_ran(page: Any, errors: list[str], dialogs: list[str]) -> None:
    for selector in ("#s-list .card", "#j-list .card"):  # render every page of every browser
        if page.locator(selector).count():
            page.locator(selector).first.scroll_into_view_if_needed()
    assert dialogs == []
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#bold, #js, img, textarea, a[href^='javascript']").count() == 0
    assert page.locator("script").count() == 2  # the payload and the page's own
    assert errors == []


def test_hostile_data_stays_text_in_the_judge_page(browser: Any, run: dict[str, Any]) -> None:
    page, errors, dialogs = _open(browser, run["judge"] / "report.html")
    verdict = json.loads((run["judge"] / "judge.json").read_text())["overall"]
    rows = {r[0]: r for r in _table(page, "judge-table")}
    assert [int(x) for x in rows["overall"][1:4]] == [verdict["win"], verdict["tie"], verdict["lose"]]
    assert _matching(page, "j") == 6
    outcomes = [j["outcome"] for j in _lines(run["judge"] / "judgments.jsonl")]
    page.select_option("#j-outcome", outcomes[0])
    assert _matching(page, "j") == outcomes.count(outcomes[0])
    page.select_option("#j-outcome", "")
    page.fill("#j-search", "javascript:")
    _settle(page)
    assert _matching(page, "j") >= 1 and 'href="javascript:alert(3)"' in page.inner_text("#j-list")
    page.fill("#j-search", "")
    _settle(page)
    assert "<svg onload=alert(5)>" in page.inner_text("#j-list")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-judge.png"), full_page=True)
    _no_script_ran(page, errors, dialogs)
