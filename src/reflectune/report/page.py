"""The report page: one self-contained HTML file built from ``ReportData``.

Everything the server side writes is escaped here (``html.escape``); the browser's records travel as
gzip + base64 inside a non-executable ``<script type="application/octet-stream">`` and the inline
script builds their DOM with ``textContent`` only, so no string from the data, the oracle or the
judge is ever parsed as HTML. Summary tables and charts are static HTML and SVG: they show before the
script has decoded a byte, and without it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from html import escape
from importlib import resources
from typing import Any

from reflectune.report.charts import histogram, wtl_bars
from reflectune.report.gather import REFLECTED, TABLE_ROWS, ReportData, median

VARIANT_LABELS = {"ori": "original", "Q": "Q (instruction reflected)", "A": "A (response reflected)",
                  "QA": "QA (both reflected)"}


def _asset(name: str) -> str:
    return resources.files("reflectune.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_hash() -> str:
    """The CSP hash of the page's one script: no other script, inline handler or injected tag runs."""
    digest = hashlib.sha256(_asset("report.js").encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "", test_id: str = "") -> str:
    attrs = (f' class="{cls}"' if cls else "") + (f' data-test="{escape(test_id)}"' if test_id else "")
    out = [f"<table{attrs}><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{escape(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _kv(pairs: Iterable[tuple[str, Any]], test_id: str = "") -> str:
    attrs = f' data-test="{escape(test_id)}"' if test_id else ""
    rows = "".join(f'<tr><th>{escape(k)}</th><td data-key="{escape(k)}">{escape(_fmt(v))}</td></tr>'
                   for k, v in pairs if v not in (None, "", {}))
    return f'<table class="kv"{attrs}><tbody>{rows}</tbody></table>'


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _glance(data: ReportData) -> str:
    recycle, score, judge = data.section("recycle"), data.section("score"), data.section("judge")
    engine = recycle.get("engine") or {}
    judge_stats = judge.get("stats") or {}
    calls = (engine.get("sent") or 0) + (judge_stats.get("sent") or 0)
    tokens_in = (engine.get("prompt_tokens") or 0) + (judge_stats.get("prompt_tokens") or 0)
    tokens_out = (engine.get("completion_tokens") or 0) + (judge_stats.get("completion_tokens") or 0)
    costs = [float(s.get("cost") or 0) for s in (engine, judge_stats) if s.get("cost_known")]
    elapsed = sum(float(f.section(st).get("elapsed_s") or 0) for f in data.folders
                  for st in ("recycle", "score", "judge"))
    versions: dict[str, str] = {}
    for folder in data.folders:
        versions |= folder.manifest.get("versions") or {}
    oracle = ((recycle.get("config") or {}).get("oracle") or {}).get("spec")
    pairs = [("folder", data.title), ("rows", recycle.get("rows") or (data.selection or {}).get("samples")),
             ("oracle calls sent (recycle + judge)", calls if calls else None),
             ("prompt tokens", tokens_in or None),
             ("completion tokens", tokens_out or None),
             ("cost (USD)", round(sum(costs), 4) if costs else None),
             ("time (s)", round(elapsed, 1) if elapsed else None), ("oracle", oracle),
             ("oracle fingerprint", recycle.get("oracle_fingerprint")),
             ("student", score.get("student")), ("template", score.get("template")),
             ("judge", ((judge.get("judge") or {}).get("spec"))),
             ("recycle config hash", recycle.get("config_hash")),
             ("lengths counted in", data.length_unit if data.lengths else None)]
    out = ['<section id="glance"><h2>The run at a glance</h2>', _kv(pairs, "glance")]
    if versions:
        out.append("<details><summary>versions</summary>" + _kv(sorted(versions.items())) + "</details>")
    if data.pipeline:
        order = ("recycle", "score", "select", "train", "generate", "judge")
        stages = data.pipeline.get("stages") or {}
        rows = [(name, e.get("status"), e.get("made"), e.get("reused"), e.get("unit"), e.get("rows"),
                 e.get("cost"), e.get("seconds"), e.get("fingerprint"))
                for name, e in sorted(stages.items(), key=lambda kv: order.index(kv[0])
                                      if kv[0] in order else len(order))]
        out.append("<h3>Pipeline stages</h3>" + _table(
            ("stage", "status", "made", "reused", "unit", "rows", "cost (USD)", "seconds", "fingerprint"),
            rows, test_id="stages"))
    out += [f'<p class="note">{escape(n)}</p>' for n in data.notes]
    out.append("</section>")
    return "".join(out)


def _recycle(data: ReportData) -> str:
    section = data.section("recycle")
    if not data.samples and not section:
        return ""
    statuses = Counter(s["status"] or "—" for s in data.samples)
    variant_status: Counter[str] = Counter()
    gates: Counter[str] = Counter()
    failures: Counter[tuple[str, str, str]] = Counter()
    for sample in data.samples:
        for name, v in sample["variants"].items():
            if name == "ori":
                continue
            variant_status[f"{name}:{v['status']}"] += 1
            if v["status"] == "rejected":
                gates[v.get("gate") or "?"] += 1
            if v["status"] != "ok":
                reason = (v.get("reason") or "").split(":")[0][:80]
                failures[(v["status"], v.get("gate") or "", reason)] += 1
    out = ['<section id="recycle"><h2>Recycling: what happened to each sample</h2><div class="cols">']
    out.append("<div><h3>Samples by status</h3>" + _table(("status", "samples"), sorted(statuses.items()),
                                                          test_id="sample-status") + "</div>")
    out.append("<div><h3>Variants by status</h3>" + _table(
        ("variant:status", "count"), sorted(variant_status.items()), test_id="variant-status") + "</div>")
    out.append("<div><h3>Rejected by gate</h3>" + (_table(("gate", "variants"), gates.most_common(),
                                                          test_id="gates") if gates else "<p>none</p>")
               + "</div></div>")
    if failures:
        out.append("<h3>Failures grouped by reason</h3>" + _table(
            ("status", "gate", "reason", "variants"), [(*k, n) for k, n in failures.most_common(30)],
            test_id="failures"))
    out.append("</section>")
    return "".join(out)


def _papers_table(data: ReportData) -> str:
    if not data.lengths:
        return ""
    unit = data.length_unit
    rows = []
    for name in TABLE_ROWS:
        lengths = data.lengths.get(name) or {}
        ins, res = lengths.get("instruction") or [], lengths.get("response") or []
        if not ins and not res:
            continue
        rows.append((VARIANT_LABELS[name], len(res), _mean(ins), median(ins), _mean(res), median(res),
                     _mean(data.ifd.get(name) or []), _mean(data.rifd.get(name) or [])))
    selected = [s for s in data.samples if (s.get("choice") or {}).get("selected")]
    if selected:
        landed = [s["variants"][s["choice"]["variant"]] for s in selected]
        ins = [v["len"]["instruction"] for v in landed if v.get("len")]
        res = [v["len"]["response"] for v in landed if v.get("len")]
        rows.append(("selected (what the student keeps)", len(landed), _mean(ins), median(ins), _mean(res),
                     median(res), _mean([v["ifd"] for v in landed if v.get("ifd") is not None]),
                     _mean([v["rifd"] for v in landed if v.get("rifd") is not None])))
    head = ("data", "samples", f"instruction ({unit}, mean)", "median", f"response ({unit}, mean)", "median",
            "IFD (mean)", "r-IFD (mean)")
    return ('<section id="table"><h2>The papers\' table for this run</h2>'
            "<p>Instruction and response length and IFD before and after reflection (METHOD.md §7.3: "
            "the papers report Alpaca 20.7 → 37.9 instruction tokens, 65.5 → 377.2 response tokens, "
            "IFD 0.71 → 0.84).</p>" + _table(head, rows, test_id="papers-table") + "</section>")


def _distributions(data: ReportData) -> str:
    if not data.lengths and not data.ifd:
        return ""
    unit = data.length_unit
    charts = []
    if data.lengths:
        charts.append(histogram({n: data.lengths[n].get("instruction", []) for n in ("ori", "Q")
                                 if n in data.lengths}, title="Instruction length", x_label=unit))
        charts.append(histogram({n: data.lengths[n].get("response", []) for n in ("ori", "A", "QA")
                                 if n in data.lengths}, title="Response length", x_label=unit))
    if data.ifd:
        charts.append(histogram(dict(data.ifd), title="IFD per variant", x_label="IFD"))
    if data.rifd:
        charts.append(histogram(dict(data.rifd), title="r-IFD per variant", x_label="r-IFD"))
    return '<section id="distributions"><h2>Distributions</h2><div class="charts">' + "".join(charts) + \
        "</div></section>"


def _selection(data: ReportData) -> str:
    sel = data.selection
    if not sel:
        return ""
    outcomes = sel["outcomes"]
    labels = {"both": "both reflected (QA)", "instruction": "instruction only", "response": "response only",
              "none": "none", "undecided": "undecided (NaN or no ori)"}
    rows = [(labels.get(k, k), outcomes.get(k, 0)) for k in ("both", "instruction", "response", "none",
                                                              "undecided") if outcomes.get(k)]
    out = ['<section id="selection"><h2>Selection</h2><div class="cols"><div><h3>Which version won</h3>',
           _table(("outcome", "samples"), rows, test_id="outcomes"), "</div><div><h3>Dropped, by reason</h3>",
           _table(("reason", "samples"), sel["dropped"].items(), test_id="dropped"), "</div><div>",
           "<h3>The cut</h3>", _kv([("samples", sel["samples"]), ("passed the rule", sel["passed_rule"]),
                                   ("top-k", sel["top_k"] or "none"), ("selected", sel["selected"]),
                                   ("IFD < 1 filter", sel["below_one_filter"]), ("metric", sel["metric"]),
                                   ("select ran here", sel["ran"])], "cut"), "</div></div>"]
    if not sel["ran"]:
        out.append('<p class="note">select has not run in this folder: the decisions shown are the rule '
                   "applied with its defaults.</p>")
    out.append("</section>")
    return "".join(out)


def _judge(data: ReportData) -> str:
    if not data.judge:
        return ""
    tallies = data.judge["tallies"]
    name_a = (tallies.get("a") or {}).get("name", "A")
    name_b = (tallies.get("b") or {}).get("name", "B")
    by_dataset = tallies.get("by_dataset") or {}
    rows = [*by_dataset.items(), ("overall", tallies.get("overall") or {})]
    head = ("slice", f"{name_a} wins", "tie", f"{name_b} wins", "winning score", "unparsed / failed",
            "skipped", f"mean score {name_a}", f"mean score {name_b}")

    def line(label: str, t: dict[str, Any]) -> tuple[Any, ...]:
        return (label, t.get("win"), t.get("tie"), t.get("lose"), t.get("winning_score"), t.get("errors"),
                t.get("skipped"), t.get("mean_score_a"), t.get("mean_score_b"))

    out = [f'<section id="judge"><h2>Judge: {escape(name_a)} vs {escape(name_b)}</h2>',
           f"<p>judge: {escape(str(tallies.get('judge', '?')))}, "
           f"mode {escape(str(tallies.get('mode', '?')))}, "
           f"{escape(_fmt(tallies.get('pairs')))} pairs; winning score = (W − L) / (W + T + L) + 1.</p>",
           wtl_bars(list(by_dataset.items()), title="Win / tie / lose per test set", name_a=name_a,
                    name_b=name_b),
           _table(head, [line(k, v) for k, v in rows], test_id="judge-table")]
    by_category = tallies.get("by_category") or {}
    if by_category:
        out.append("<details><summary>per category</summary>" + _table(
            head, [line(k, v) for k, v in by_category.items()], test_id="judge-categories") + "</details>")
    out.append("</section>")
    return "".join(out)


def _browser(data: ReportData) -> str:
    parts = []
    if data.samples:
        parts.append('<section id="samples"><h2>Samples</h2><div class="controls" data-for="samples">'
                     '<input type="search" id="s-search" placeholder="search text">'
                     '<select id="s-status"></select><select id="s-gate"></select>'
                     '<select id="s-outcome"></select><span id="s-count" class="count"></span>'
                     '<button id="s-prev">‹ prev</button><span id="s-page"></span>'
                     '<button id="s-next">next ›</button></div><div id="s-list" class="list">'
                     '<p class="muted">loading…</p></div></section>')
    if data.judgments:
        parts.append('<section id="judgments"><h2>Judgments</h2><div class="controls" data-for="judgments">'
                     '<input type="search" id="j-search" placeholder="search text">'
                     '<select id="j-dataset"></select><select id="j-outcome"></select>'
                     '<span id="j-count" class="count"></span><button id="j-prev">‹ prev</button>'
                     '<span id="j-page"></span><button id="j-next">next ›</button></div>'
                     '<div id="j-list" class="list"><p class="muted">loading…</p></div></section>')
    return "".join(parts)


def _payload(data: ReportData) -> str:
    records = {"samples": data.samples, "judgments": data.judgments,
               "names": {"a": ((data.judge or {}).get("tallies") or {}).get("a", {}).get("name", "A"),
                         "b": ((data.judge or {}).get("tallies") or {}).get("b", {}).get("name", "B")},
               "reflected": list(REFLECTED)}
    raw = json.dumps(records, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def render(data: ReportData) -> str:
    """The whole page as one string."""
    nav = [("glance", "at a glance"), ("recycle", "recycling"), ("table", "table"),
           ("distributions", "distributions"), ("selection", "selection"), ("judge", "judge"),
           ("samples", "samples"), ("judgments", "judgments")]
    body = "".join([_glance(data), _recycle(data), _papers_table(data), _distributions(data),
                    _selection(data), _judge(data), _browser(data)])
    links = "".join(f'<a href="#{k}">{escape(v)}</a>' for k, v in nav if f'id="{k}"' in body)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        f"style-src 'unsafe-inline'; script-src '{_script_hash()}'; img-src data:\">"
        f"<title>reflectune report: {escape(data.title)}</title><style>{_asset('report.css')}</style></head>"
        f"<body><header><h1>reflectune report: {escape(data.title)}</h1><nav>{links}</nav>"
        f"<p class=\"muted\">written {escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p></header><main>{body}"
        f"</main><script type=\"application/octet-stream\" id=\"payload\">{_payload(data)}</script>"
        f"<script>{_asset('report.js')}</script></body></html>\n")
