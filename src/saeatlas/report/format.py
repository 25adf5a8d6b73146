"""Numbers and labels as text: the one set of formatters behind the HTML report, the terminal tables and the
figures in the result files.

Every formatter takes whatever a results.json holds (a float, an int, None, a string, NaN) and never
raises on a missing value: it returns `missing` instead (an en dash by default; the terminal tables pass
"-", compare's heatmap files "nan").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

DASH = "–"
"""What a missing number shows as in the report (an en dash)."""


def num(x) -> float:
    """x as a float; NaN when it is None or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def fmt(x, spec: str = ".3f", missing: str = DASH) -> str:
    """x formatted with `spec` ('0.612'); `missing` for None, NaN, infinities and non-numbers."""
    v = num(x)
    return format(v, spec) if math.isfinite(v) else missing


def fmt_int(x, missing: str = DASH) -> str:
    """x as a whole number with thousands separators ('100,000')."""
    v = num(x)
    return f"{int(v):,}" if math.isfinite(v) else missing


def fmt_pct(x, missing: str = DASH) -> str:
    """A fraction as a percentage with one decimal ('12.5%')."""
    v = num(x)
    return fmt(v * 100, ".1f") + "%" if math.isfinite(v) else missing


def fmt_span(values: Iterable[float], formatter: Callable[[float], str] = fmt, missing: str = DASH) -> str:
    """The range of the finite values: 'lo to hi', one value when they are all equal, `missing` if none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return missing
    lo, hi = min(finite), max(finite)
    return formatter(lo) if lo == hi else f"{formatter(lo)} to {formatter(hi)}"


def fmt_size(n_bytes: float) -> str:
    """A byte count in binary units ('1.5 MiB')."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def significance_stars(q) -> str:
    """'***' q < 0.001, '**' < 0.01, '*' < 0.05, '' otherwise or when q is missing (q-values after
    Benjamini-Hochberg)."""
    q = num(q)
    if not math.isfinite(q):
        return ""
    return "***" if q < 0.001 else "**" if q < 0.01 else "*" if q < 0.05 else ""


def star_q(score: dict | None):
    """The q-value that sets a score's stars: the headline test's (the real pair beats its random-init and
    shifted controls, "q_controls") where the score has one, else the random-pairing test's ("q"), the only
    test of controls, activations and concepts."""
    if not score:
        return None
    return score.get("q_controls") if "p_controls" in score else score.get("q")


def control_difference(score: dict | None, control: str) -> str:
    """'+0.094': the real pair's `score` minus `control`'s (its "versus_<control>" test), '–' without the test.
    The test's own p is not shown: the tested claim is beating both controls (q_controls), and the shifted
    control's p alone rejects unrelated pairs up to 8% of the time at 0.05 (bench/calibration.py)."""
    v = (score or {}).get(f"versus_{control}")
    if not v or not math.isfinite(num(v.get("observed"))):
        return DASH
    return fmt(v["observed"], "+.3f")


def score_text(stats: dict | None, missing: str = "-", width: int = 0) -> str:
    """One measure's score in a line of text: '0.612 (z 41, q<.001)' (q: the BH q-value, else p); the
    observed value right-aligned in `width` characters."""
    stats = stats or {}
    obs = num(stats.get("observed"))
    if not math.isfinite(obs):
        return missing
    return (
        f"{obs:{width}.3f} (z {fmt(stats.get('z'), '.0f', missing)}, {q_text(stats.get('q', stats.get('p')), missing)})"
    )


def q_text(q, missing: str = "-") -> str:
    """'q<.001', 'q 0.012' or 'q -'."""
    q = num(q)
    return "q<.001" if q < 0.001 else f"q {q:.3f}" if math.isfinite(q) else f"q {missing}"


def short_hooks(hooks: list[str]) -> tuple[list[str], str]:
    """Hook names shortened to their layer numbers when they share one kind ('resid_post'), and that kind."""
    kinds = {h.rsplit(".", 1)[0] for h in hooks if "." in h}
    if len(kinds) == 1 and all("." in h for h in hooks):
        return [h.rsplit(".", 1)[1] for h in hooks], kinds.pop()
    return list(hooks), ""


def grid_labels(grid: list[tuple[str, str]], sep: str = " × ") -> list[str]:
    """'3 × 5' for each (layer_a, layer_b) of a grid: A's hooks and B's hooks each shortened by
    `short_hooks` (the kinds are dropped: the report names them elsewhere)."""
    short_a, _ = short_hooks([a for a, _ in grid])
    short_b, _ = short_hooks([b for _, b in grid])
    return [f"{x}{sep}{y}" for x, y in zip(short_a, short_b)]


def pair_label(layer_a: str, layer_b: str, sep: str = " x ") -> str:
    """'3 x 5' for resid_post.3 x resid_post.5 (one kind: just the layers), else the full names."""
    return sep.join(short_hooks([layer_a, layer_b])[0])


def pair_name(layer_a: str, layer_b: str) -> str:
    """'resid_post.3 x resid_post.5': a layer pair by its full hook names."""
    return f"{layer_a} x {layer_b}"


def shorten(text: str, width: int) -> str:
    """text cut to at most `width` characters by an ellipsis in the middle (both ends say the most:
    'gemma-k16-resid_post.3' -> 'gemma-k…d_post.3')."""
    text = str(text)
    if len(text) <= width:
        return text
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")
