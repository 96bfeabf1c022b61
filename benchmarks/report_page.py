"""How fast ``reflectune report`` builds and how fast its page opens (issue 16's acceptance).

Two runs:

- **3,111 rows**: the bundled Alpaca 5 % subset recycled for real against the loopback
  OpenAI-compatible server (``reflectune.testing.server``); its scores are synthesised (seeded IFD /
  r-IFD draws) because scoring 12k candidates with a CPU student takes an hour and the page's cost
  does not depend on the numbers; the scored path itself is tested for real in
  ``tests/test_report.py``. A ``select`` section with top-k 5 % is written so the selection is drawn.
- **52,002 rows**: fully synthetic (the 3,111 rows' texts repeated under new ids), the size of Alpaca.

For each: the report's build time (``report()``, lengths in words) against the floor any report pays,
reading and JSON-parsing the folder's files; the file's size; and in headless Chromium (Debian's,
driven by Playwright) the time from navigation to the first paint of the static page
(``first-contentful-paint``) and to the sample browser being filled, then how long a search and a page
turn take to update the list.

    python benchmarks/report_page.py            # writes the report_page block of RESULTS.md
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import info_lines, machine_info, markdown_table, write_block

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_cherry5pct_3111.json"


def synth_scores(run: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    with (
        (run / "variants.jsonl").open(encoding="utf-8") as src,
        (run / "scores.jsonl").open("w", encoding="utf-8") as out,
    ):
        for line in src:
            record = json.loads(line)
            table = {}
            for name, v in record["variants"].items():
                if v.get("status") == "ok":
                    table[name] = {
                        "status": "ok",
                        "ifd": rng.uniform(0.4, 1.2),
                        "rifd": rng.uniform(0.4, 1.2),
                    }
            out.write(json.dumps({"id": record["id"], "row": record.get("row"), "variants": table}) + "\n")
    manifest = json.loads((run / "run.json").read_text())
    manifest["score"] = {
        "status": "done",
        "student": None,
        "note": "synthesised by benchmarks/report_page.py",
    }
    manifest["select"] = {"top_k": "5%", "below_one_filter": True, "metric": "ppl_ratio"}
    (run / "run.json").write_text(json.dumps(manifest))


def real_run(folder: Path) -> Path:
    from reflectune import recycle
    from reflectune.config import RecycleConfig
    from reflectune.testing.server import running_server

    run = folder / "r3111"
    with running_server() as server:
        config = RecycleConfig.model_validate(
            {"oracle": {"spec": "openai:test", "base_url": server.base_url}, "engine": {"concurrency": 256}}
        )
        recycle(ALPACA, config=config, run_dir=run)
    synth_scores(run)
    return run


def synthetic_run(source: Path, folder: Path, rows: int) -> Path:
    run = folder / f"r{rows}"
    run.mkdir()
    lines = (source / "variants.jsonl").read_text(encoding="utf-8").splitlines()
    with (run / "variants.jsonl").open("w", encoding="utf-8") as out:
        for i in range(rows):
            record = json.loads(lines[i % len(lines)])
            record["id"], record["row"] = f"s{i}", i + 1
            out.write(json.dumps(record) + "\n")
    manifest = json.loads((source / "run.json").read_text())
    manifest["recycle"]["rows"] = rows
    (run / "run.json").write_text(json.dumps(manifest))
    synth_scores(run, seed=1)
    return run


def floor_seconds(run: Path) -> float:
    """Reading and parsing the folder's record files: what any report must at least do."""
    started = time.perf_counter()
    for name in ("variants.jsonl", "scores.jsonl"):
        with (run / name).open(encoding="utf-8") as fh:
            for line in fh:
                json.loads(line)
    return time.perf_counter() - started


def browser_times(page_path: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        # the timing probes poll with wait_for_function, which the page's CSP (no eval) would refuse
        page = browser.new_context(bypass_csp=True, viewport={"width": 1300, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        started = time.perf_counter()
        page.goto(page_path.as_uri(), wait_until="commit")
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        ready = time.perf_counter() - started
        fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
        total = int(page.get_attribute("#s-count", "data-matching"))

        def timed(action: Any, changed: str) -> float:
            t = time.perf_counter()
            action()
            page.wait_for_function(changed, timeout=60_000)
            return time.perf_counter() - t

        search = timed(
            lambda: page.fill("#s-search", "poem"),
            f"document.getElementById('s-count').dataset.matching !== '{total}'",
        )
        first = page.locator("#s-list .card").first.get_attribute("data-id")
        turn = timed(
            lambda: page.click("#s-next"),
            f"document.querySelector('#s-list .card')?.dataset.id !== '{first}'",
        )
        matching = int(page.get_attribute("#s-count", "data-matching"))
        browser.close()
    assert not errors, errors
    return {
        "fcp_s": (fcp or 0) / 1000,
        "ready_s": ready,
        "search_s": search,
        "page_s": turn,
        "rows": total,
        "matching": matching,
    }


def measure(run: Path) -> dict[str, Any]:
    from reflectune.report import report

    floor = min(floor_seconds(run) for _ in range(3))
    result = report(run, run / "report.html", tokens=False)
    return {
        "rows": result.samples,
        "build_s": result.seconds,
        "floor_s": floor,
        "mb": result.bytes / 1e6,
        **browser_times(result.path),
    }


def main() -> None:
    info = machine_info(["playwright"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        small = real_run(folder)
        recycle_s = time.perf_counter() - t
        big = synthetic_run(small, folder, 52_002)
        results = [
            ("3,111 rows (real loopback recycle)", measure(small)),
            ("52,002 rows (synthetic)", measure(big)),
        ]
    rows = [
        (
            name,
            f"{r['rows']:,}",
            f"{r['build_s']:.2f}",
            f"{r['floor_s']:.2f}",
            f"{r['build_s'] / r['floor_s']:.1f}×",
            f"{r['mb']:.1f}",
            f"{r['fcp_s']:.2f}",
            f"{r['ready_s']:.2f}",
            f"{r['search_s']:.2f}",
            f"{r['page_s']:.2f}",
        )
        for name, r in results
    ]
    table = markdown_table(
        (
            "run",
            "samples",
            "build s",
            "read+parse floor s",
            "build / floor",
            "MB",
            "first paint s",
            "browser filled s",
            "search s",
            "page turn s",
        ),
        rows,
    )
    small_r, big_r = results[0][1], results[1][1]
    verdict = (
        f"The 3,111-row report built in {small_r['build_s']:.2f} s (target ≤ 10 s), is "
        f"{small_r['mb']:.1f} MB "
        f"(target ≤ 15 MB) and painted in {small_r['fcp_s']:.2f} s (target ≤ 2 s), its sample browser "
        f"filled at {small_r['ready_s']:.2f} s. The 52,002-row report built in {big_r['build_s']:.2f} s "
        f"({big_r['build_s'] / big_r['floor_s']:.1f}× the time to read and parse its files) and is "
        f"{big_r['mb']:.1f} MB; a search over all rows updated the list in {big_r['search_s']:.2f} s "
        f"and a page turn in {big_r['page_s']:.2f} s. (Recycling the 3,111 rows against the loopback "
        f"server took {recycle_s:.0f} s.)"
    )
    body = (
        "## The report page (issue 16)\n\n`python benchmarks/report_page.py`. "
        + __doc__.split("\n\n")[1].replace("\n", " ")
        + "\n\n"
        + info_lines(info)
        + "\n\n"
        + table
        + "\n\n"
        + verdict
        + "\n"
    )
    write_block("report_page", body)
    print(body)


if __name__ == "__main__":
    main()
