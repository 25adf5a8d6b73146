"""More self-contained SVG figures for the HTML report (beside `svg.py`): overlaid histograms of samples,
and observed scores against their null intervals.  Each returns the SVG document as a string."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

PALETTE = ["#2171b5", "#238b45", "#cb181d", "#6a51a3", "#ff7f00", "#8c6d31", "#e7298a", "#525252"]


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">',
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
    """Overlaid step histograms of several samples on shared bins, each normalised to a fraction of its own
    values (so samples of different sizes compare), with n and the mean in the legend.  NaNs are dropped;
    an empty sample is listed with n = 0 and not drawn.  colours: one per sample (default PALETTE)."""
    colours = list(colours or PALETTE)
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
    colour = r.get("colour", PALETTE[0])
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
