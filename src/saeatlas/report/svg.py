"""Self-contained SVG figures (no plotting library, no external fonts or scripts).

Each function returns the SVG document as a string, so the same figure can be
written to a file or inlined into an HTML report.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

# Sequential blue palette (light -> dark) and a diverging one (blue - white - red), as RGB stops.
SEQUENTIAL = [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]
DIVERGING = [(33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43)]


def colour(value: float, vmin: float, vmax: float, stops=SEQUENTIAL) -> str:
    """'#rrggbb' of `value` on a linear scale from vmin to vmax through `stops`; grey for NaN."""
    if value is None or not math.isfinite(value):
        return "#dddddd"
    t = 0.0 if vmax <= vmin else min(1.0, max(0.0, (value - vmin) / (vmax - vmin)))
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    f = pos - i
    rgb = [round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1])]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text_colour(fill: str) -> str:
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


def heatmap_svg(
    values: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    cell_text: list[list[str]] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    row_title: str = "",
    col_title: str = "",
    diverging: bool = False,
    cell: int = 64,
) -> str:
    """A heatmap of values [n_rows, n_cols] with labels, optional per-cell text and a colour bar."""
    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if diverging and vmin is None and vmax is None:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    stops = DIVERGING if diverging else SEQUENTIAL
    left, top, bar = 110, 48, 16
    width, height = left + n_cols * cell + 90, top + n_rows * cell + 56
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(n_rows):
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{escape(row_labels[i])}</text>')
        for j in range(n_cols):
            x = left + j * cell
            fill = colour(values[i, j], lo, hi, stops)
            label = cell_text[i][j] if cell_text else ("" if not np.isfinite(values[i, j]) else f"{values[i, j]:.2f}")
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#ffffff">'
                f"<title>{escape(row_labels[i])} x {escape(col_labels[j])}: {escape(label)}</title></rect>"
            )
            out.append(
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                f'fill="{_text_colour(fill)}" font-size="11">{escape(label)}</text>'
            )
    for j in range(n_cols):
        x = left + j * cell + cell / 2
        out.append(f'<text x="{x}" y="{top + n_rows * cell + 16}" text-anchor="middle">{escape(col_labels[j])}</text>')
    if col_title:
        out.append(
            f'<text x="{left + n_cols * cell / 2}" y="{top + n_rows * cell + 38}" text-anchor="middle" '
            f'font-style="italic">{escape(col_title)}</text>'
        )
    if row_title:
        out.append(
            f'<text x="14" y="{top + n_rows * cell / 2}" text-anchor="middle" font-style="italic" '
            f'transform="rotate(-90 14 {top + n_rows * cell / 2})">{escape(row_title)}</text>'
        )
    bar_x, steps = left + n_cols * cell + 24, 24
    for s in range(steps):
        v = hi - (hi - lo) * s / (steps - 1)
        y = top + s * (n_rows * cell) / steps
        out.append(
            f'<rect x="{bar_x}" y="{y:.1f}" width="{bar}" height="{n_rows * cell / steps + 0.5:.1f}" '
            f'fill="{colour(v, lo, hi, stops)}"/>'
        )
    out.append(f'<text x="{bar_x + bar + 4}" y="{top + 10}">{hi:.2g}</text>')
    out.append(f'<text x="{bar_x + bar + 4}" y="{top + n_rows * cell}">{lo:.2g}</text>')
    out.append("</svg>")
    return "\n".join(out)


def significance_stars(q: float) -> str:
    """'***' q < 0.001, '**' < 0.01, '*' < 0.05, '' otherwise (q-values after Benjamini-Hochberg)."""
    if q is None or not math.isfinite(q):
        return ""
    return "***" if q < 0.001 else "**" if q < 0.01 else "*" if q < 0.05 else ""


SERIES_COLOURS = ["#2171b5", "#cb181d", "#6a51a3", "#238b45"]


def bar_chart_svg(
    categories: list[str],
    series: dict[str, list[float]],
    title: str,
    y_label: str = "",
    y_max: float | None = None,
    bar: int = 9,
) -> str:
    """Grouped bars: one group per category, one bar per series (NaN: no bar, a grey dot), y from 0."""
    names = list(series)
    values = np.array([series[n] for n in names], dtype=float)  # [n_series, n_categories]
    finite = values[np.isfinite(values)]
    top_value = y_max if y_max is not None else max(float(finite.max()) if finite.size else 1.0, 1e-9)
    left, top, plot_h = 56, 44, 200
    group = bar * len(names) + 6
    width, height = left + group * len(categories) + 20, top + plot_h + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for s, name in enumerate(names):
        x = left + 140 * s
        out.append(
            f'<rect x="{x}" y="26" width="10" height="10" fill="{SERIES_COLOURS[s % 4]}"/>'
            f'<text x="{x + 14}" y="35">{escape(name)}</text>'
        )
    for t in range(5):
        v = top_value * t / 4
        y = top + plot_h - plot_h * t / 4
        out.append(
            f'<line x1="{left}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{v:.2g}</text>'
        )
    if y_label:
        out.append(
            f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + plot_h / 2})">{escape(y_label)}</text>'
        )
    for c, category in enumerate(categories):
        x0 = left + c * group + 3
        for s, name in enumerate(names):
            v = values[s, c]
            x = x0 + s * bar
            if not np.isfinite(v):
                out.append(f'<circle cx="{x + bar / 2}" cy="{top + plot_h - 3}" r="2" fill="#bbbbbb"/>')
                continue
            h = plot_h * min(max(v, 0.0), top_value) / top_value
            out.append(
                f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="{bar - 1}" height="{h:.1f}" '
                f'fill="{SERIES_COLOURS[s % 4]}"><title>{escape(category)} {escape(name)}: {v:.3f}</title></rect>'
            )
        out.append(
            f'<text x="{x0 + bar * len(names) / 2}" y="{top + plot_h + 14}" text-anchor="middle">'
            f"{escape(category)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)
