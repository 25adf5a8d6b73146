"""Self-contained SVG figures (no plotting library, no external fonts or scripts), all coloured from one
palette (`PALETTE`): heatmaps, grouped bars, overlaid histograms, and observed scores against their nulls.

Each function returns the SVG document as a string, so the same figure can be written to a file or inlined
into an HTML report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """Every colour of the figures.  The ramps are ColorBrewer's Blues and RdBu (Brewer, colorbrewer2.org)."""

    sequential: tuple[RGB, ...]
    """Light to dark blue, for values (heatmaps)."""
    diverging: tuple[RGB, ...]
    """Blue - white - red, for signed values centred on 0 (z-scores)."""
    categorical: tuple[str, ...]
    """One colour per series (histograms, interval plots, the report's comparisons)."""
    bars: tuple[str, ...]
    """The series colours of grouped bars, in order (four of `categorical`)."""
    missing: str
    """A heatmap cell without a value."""


BLUE, GREEN, RED, PURPLE = "#2171b5", "#238b45", "#cb181d", "#6a51a3"
ORANGE, BROWN, PINK, GREY = "#ff7f00", "#8c6d31", "#e7298a", "#525252"

PALETTE = Palette(
    sequential=((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)),
    diverging=((33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43)),
    categorical=(BLUE, GREEN, RED, PURPLE, ORANGE, BROWN, PINK, GREY),
    bars=(BLUE, RED, PURPLE, GREEN),
    missing="#dddddd",
)


# ---------------------------------------------------------------- heatmaps and bars
def colour(value: float, vmin: float, vmax: float, stops=PALETTE.sequential) -> str:
    """'#rrggbb' of `value` on a linear scale from vmin to vmax through `stops`; grey for NaN."""
    if value is None or not math.isfinite(value):
        return PALETTE.missing
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
    """A heatmap of values [n_rows, n_cols] with labels, optional per-cell text [n_rows][n_cols] (default: the
    value to 2 decimals) and a colour bar; sequential blues, or blue-white-red centred on 0 if `diverging`."""
    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if diverging and vmin is None and vmax is None:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    stops = PALETTE.diverging if diverging else PALETTE.sequential
    left, top, bar = 110, 48, 16
    width, height = left + n_cols * cell + 90, top + n_rows * cell + 56
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img">'
        ),
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


def bar_chart_svg(
    categories: list[str],
    series: dict[str, list[float]],
    title: str,
    y_label: str = "",
    y_max: float | None = None,
    bar: int = 9,
) -> str:
    """Grouped bars: one group per category, one bar per series (NaN: no bar, a grey dot), y from 0.

    series: name -> one value per category ([n_categories] each), drawn in `PALETTE.bars` order.
    """
    names = list(series)
    values = np.array([series[n] for n in names], dtype=float)  # [n_series, n_categories]
    finite = values[np.isfinite(values)]
    top_value = y_max if y_max is not None else max(float(finite.max()) if finite.size else 1.0, 1e-9)
    left, top, plot_h = 56, 44, 200
    group = bar * len(names) + 6
    width, height = left + group * len(categories) + 20, top + plot_h + 40
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">'
        ),
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for s, name in enumerate(names):
        x = left + 140 * s
        out.append(
            f'<rect x="{x}" y="26" width="10" height="10" fill="{PALETTE.bars[s % len(PALETTE.bars)]}"/>'
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
                f'fill="{PALETTE.bars[s % len(PALETTE.bars)]}"><title>{escape(category)} {escape(name)}: {v:.3f}</title></rect>'
            )
        out.append(
            f'<text x="{x0 + bar * len(names) / 2}" y="{top + plot_h + 14}" text-anchor="middle">'
            f"{escape(category)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------- histograms and interval plots
def _open(width: int, height: int, title: str) -> list[str]:
    return [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">'
        ),
        f"<title>{escape(title)}</title>",
        f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _legend(names: list[str], colours: list[str], x: float, y: float, per_row: int = 3, gap: int = 170) -> list[str]:
    out = []
    for i, (name, fill) in enumerate(zip(names, colours)):
        lx, ly = x + gap * (i % per_row), y + 15 * (i // per_row)
        out.append(
            f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{fill}"/>'
            f'<text x="{lx + 14}" y="{ly}">{escape(name)}</text>'
        )
    return out


def histogram_svg(
    samples: dict[str, Sequence[float]],
    title: str,
    x_label: str = "",
    bins: int = 24,
    lo: float | None = None,
    hi: float | None = None,
    width: int = 540,
    colours: list[str] | None = None,
) -> str:
    """Overlaid step histograms of several samples (name -> [n_values] each) on shared bins, each normalised
    to a fraction of its own values (so samples of different sizes compare), with n and the mean in the
    legend.  NaNs are dropped; an empty sample is listed with n = 0 and not drawn.  colours: one per sample
    (default PALETTE.categorical)."""
    colours = list(colours or PALETTE.categorical)
    data = {name: np.asarray([v for v in values if v is not None], dtype=float) for name, values in samples.items()}
    data = {name: v[np.isfinite(v)] for name, v in data.items()}
    pooled = np.concatenate([v for v in data.values()] or [np.zeros(0)])
    lo = lo if lo is not None else (float(pooled.min()) if pooled.size else 0.0)
    hi = hi if hi is not None else (float(pooled.max()) if pooled.size else 1.0)
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fractions = {n: np.histogram(np.clip(v, lo, hi), bins=edges)[0] / max(len(v), 1) for n, v in data.items()}
    y_max = max([float(f.max()) for f in fractions.values()] + [1e-9])
    left, plot_w, plot_h = 50, width - 70, 170
    top = 38 + 15 * math.ceil(len(data) / 2)
    sx = lambda v: left + plot_w * (v - lo) / (hi - lo)
    sy = lambda f: top + plot_h - plot_h * f / y_max
    out = _open(width, top + plot_h + 42, title)
    names = [f"{n} (n={len(v)}{', mean ' + format(v.mean(), '.2f') if len(v) else ''})" for n, v in data.items()]
    out += _legend(names, colours, left, 40, per_row=2, gap=(width - left) // 2)
    out += _axes(sx, sy, (lo, hi), y_max, left, top, plot_w, plot_h, x_label, "fraction of pairs")
    for i, (name, f) in enumerate(fractions.items()):
        if len(data[name]):
            out.append(_step_polygon(edges, f, sx, sy, colours[i % len(colours)], name))
    out.append("</svg>")
    return "\n".join(out)


def _axes(
    sx,
    sy,
    x_range: tuple[float, float],
    y_max: float,
    left: float,
    top: float,
    plot_w: float,
    plot_h: float,
    x_label: str,
    y_label: str,
) -> list[str]:
    """Grid lines and ticks of both axes, the x axis line and both axis labels."""
    bottom = top + plot_h
    out = []
    for t in _ticks(0.0, y_max, 4):
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e6e6e6"/>'
            f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.2g}</text>'
        )
    for t in _ticks(*x_range, 6):
        out.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#444"/>'
            f'<text x="{sx(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:.2g}</text>'
        )
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{bottom}" y2="{bottom}" stroke="#444"/>')
    if x_label:
        out.append(f'<text x="{left + plot_w / 2}" y="{bottom + 34}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{escape(y_label)}</text>'
    )
    return out


def _step_polygon(edges: np.ndarray, heights: np.ndarray, sx, sy, colour: str, name: str) -> str:
    """A histogram's outline as a closed step polygon, lightly filled."""
    points = [(sx(edges[0]), sy(0))]
    for b in range(len(heights)):
        points += [(sx(edges[b]), sy(heights[b])), (sx(edges[b + 1]), sy(heights[b]))]
    points.append((sx(edges[-1]), sy(0)))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f'<polygon points="{path}" fill="{colour}" fill-opacity="0.12" stroke="{colour}" '
        f'stroke-width="1.6"><title>{escape(name)}</title></polygon>'
    )


def interval_plot_svg(rows: list[dict], title: str, x_label: str = "", width: int = 560) -> str:
    """Observed scores beside their nulls, one line each, grouped.

    rows: {"group", "label", "observed", "null_mean", "null_std", "note", "colour"}; the null is drawn as a
    grey bar over null mean +- 2 sd with a tick at its mean, the observed value as a dot, and `note` (e.g.
    "z 12.3 ***") at the right.  A row without an observed value shows "no pairs".
    """
    lo, hi = _interval_range(rows)
    label_w, note_w, line_h = 230, 80, 18
    groups = list(dict.fromkeys(r["group"] for r in rows))
    top = 34
    height = top + line_h * len(rows) + 22 * len(groups) + 36
    left, plot_w = label_w, width - label_w - note_w
    sx = lambda v: left + plot_w * (v - lo) / (hi - lo)
    out = _open(width, height, title)
    for t in _ticks(lo, hi, 6):
        out.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{height - 34}" stroke="#eeeeee"/>'
            f'<text x="{sx(t):.1f}" y="{height - 20}" text-anchor="middle">{t:.2g}</text>'
        )
    y = top
    for group in groups:
        y += 18
        out.append(f'<text x="8" y="{y - 4}" font-weight="bold">{escape(group)}</text>')
        for r in (r for r in rows if r["group"] == group):
            out += _interval_row(r, y + line_h / 2, sx, left + plot_w + 8)
            y += line_h
        y += 4
    if x_label:
        out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _interval_range(rows: list[dict]) -> tuple[float, float]:
    """x range of an interval plot: every observed value and null interval, and 0, with a 4% margin."""
    values = [r.get(k) for r in rows for k in ("observed", "null_mean")]
    values += [
        (r.get("null_mean") or 0) + s * 2 * (r.get("null_std") or 0)
        for r in rows
        for s in (-1, 1)
        if r.get("null_mean") is not None
    ]
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(finite + [0.0]), max(finite + [1e-9])) if finite else (0.0, 1.0)
    pad = 0.04 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _interval_row(r: dict, mid: float, sx, note_x: float) -> list[str]:
    """One line of an interval plot, centred at height `mid`."""
    colour = r.get("colour", PALETTE.categorical[0])
    out = [f'<text x="18" y="{mid + 4}">{escape(r["label"])}</text>']
    mean, std, obs = r.get("null_mean"), r.get("null_std"), r.get("observed")
    if mean is not None and math.isfinite(mean):
        spread = 2 * std if std is not None and math.isfinite(std) else 0.0
        x0, x1 = sx(mean - spread), sx(mean + spread)
        out.append(
            f'<rect x="{x0:.1f}" y="{mid - 4}" width="{max(x1 - x0, 1):.1f}" height="8" fill="#cccccc">'
            f"<title>null mean {mean:.3f} +- 2 sd</title></rect>"
            f'<line x1="{sx(mean):.1f}" x2="{sx(mean):.1f}" y1="{mid - 6}" y2="{mid + 6}" stroke="#777"/>'
        )
    if obs is not None and math.isfinite(obs):
        out.append(
            f'<circle cx="{sx(obs):.1f}" cy="{mid}" r="4.5" fill="{colour}">'
            f"<title>{escape(r['label'])}: {obs:.3f}</title></circle>"
        )
        note = r.get("note", "")
    else:
        note = "no pairs"
    out.append(f'<text x="{note_x}" y="{mid + 4}">{escape(note)}</text>')
    return out
