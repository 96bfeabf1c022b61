"""Charts as inline SVG strings: a page that opens from disk with no network and no plotting library.

Every label that can come from data goes through ``html.escape``; numbers are formatted here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: one colour per series, colour-blind safe (Okabe-Ito)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
WTL_COLOURS = ("#009E73", "#BBBBBB", "#D55E00")


def _nice(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def histogram(series: Mapping[str, Sequence[float]], *, title: str, x_label: str, bins: int = 30,
              width: int = 520, height: int = 220, clip: float = 0.99) -> str:
    """Overlaid histograms (outlined steps) of several series on shared bins.

    The x range stops at the ``clip`` quantile of all values so one huge outlier does not squash
    the rest; values beyond it fall in the last bin, which says so.
    """
    values = sorted(v for vs in series.values() for v in vs if math.isfinite(v))
    if not values:
        return (f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
                '<p class="muted">no values</p></figure>')
    lo = values[0]
    hi = values[min(len(values) - 1, int(clip * (len(values) - 1)))]
    clipped = hi < values[-1]
    if hi <= lo:
        hi = lo + 1.0
    step = (hi - lo) / bins
    counts: dict[str, list[int]] = {}
    for name, vs in series.items():
        row = [0] * bins
        for v in vs:
            if math.isfinite(v):
                row[min(bins - 1, max(0, int((v - lo) / step)))] += 1
        counts[name] = row
    top = max((max(row) for row in counts.values()), default=1) or 1
    left, right, upper, lower = 44, 10, 24, 36
    plot_w, plot_h = width - left - right, height - upper - lower
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">']
    parts.append(f'<text x="{left}" y="15" class="t">{escape(title)}</text>')
    for k in range(5):  # horizontal grid
        y = upper + plot_h * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="ax" text-anchor="end">'
                     f'{_nice(top * (4 - k) / 4)}</text>')
    for k in range(6):
        x = left + plot_w * k / 5
        parts.append(f'<text x="{x:.1f}" y="{height - lower + 14}" class="ax" text-anchor="middle">'
                     f'{_nice(lo + (hi - lo) * k / 5)}{"+" if clipped and k == 5 else ""}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" class="ax" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    for index, (name, row) in enumerate(counts.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = [f"{left},{upper + plot_h}"]
        for b, n in enumerate(row):
            y = upper + plot_h * (1 - n / top)
            x0, x1 = left + plot_w * b / bins, left + plot_w * (b + 1) / bins
            points += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
        points.append(f"{left + plot_w},{upper + plot_h}")
        parts.append(f'<polyline points="{" ".join(points)}" fill="{colour}" fill-opacity="0.12" '
                     f'stroke="{colour}" stroke-width="1.5"/>')
        lx = left + 8 + index * 110
        parts.append(f'<rect x="{lx}" y="{upper + 2}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{upper + 11}" class="ax">{escape(name)} '
                     f'(n={sum(row):,})</text>')
    parts.append("</svg>")
    return f'<figure class="chart">{"".join(parts)}</figure>'


def wtl_bars(rows: Sequence[tuple[str, Mapping[str, object]]], *, title: str, name_a: str = "A",
             name_b: str = "B", width: int = 640) -> str:
    """The papers' figure: one stacked bar per test set, win / tie / lose, winning score at the end."""
    if not rows:
        return ""
    bar_h, gap, left, right, upper = 22, 10, 150, 60, 44
    height = upper + len(rows) * (bar_h + gap) + 10
    plot_w = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">', f'<text x="4" y="15" class="t">{escape(title)}</text>']
    for k, (label, colour) in enumerate(zip((f"{name_a} wins", "tie", f"{name_b} wins"), WTL_COLOURS,
                                            strict=True)):
        x = left + k * 150
        parts.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="31" class="ax">{escape(label)}</text>')
    for i, (label, tally) in enumerate(rows):
        y = upper + i * (bar_h + gap)
        counts = [int(tally.get(key) or 0) for key in ("win", "tie", "lose")]  # type: ignore[call-overload]
        total = sum(counts)
        parts.append(f'<text x="{left - 6}" y="{y + bar_h * 0.7:.1f}" class="ax" text-anchor="end">'
                     f'{escape(label)}</text>')
        cursor = float(left)
        for n, colour in zip(counts, WTL_COLOURS, strict=True):
            w = plot_w * n / total if total else 0.0
            if w > 0:
                parts.append(f'<rect x="{cursor:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                             f'fill="{colour}"/>')
                if w > 18:
                    parts.append(f'<text x="{cursor + w / 2:.1f}" y="{y + bar_h * 0.7:.1f}" class="in" '
                                 f'text-anchor="middle">{n}</text>')
            cursor += w
        score = tally.get("winning_score")
        parts.append(f'<text x="{left + plot_w + 6}" y="{y + bar_h * 0.7:.1f}" class="ax">'
                     f'{"—" if score is None else f"{float(score):.2f}"}</text>')  # type: ignore[arg-type]
    parts.append("</svg>")
    return f'<figure class="chart wide">{"".join(parts)}</figure>'
