"""At a glance: the best layer pair's similarity beside its controls and the same-model skyline, the SAEs'
quality and absorption, each in a line or a table."""

from __future__ import annotations

import math

from ..format import control_difference, fmt, fmt_int, fmt_pct, fmt_span, grid_labels, num, star_q
from ..markup import e, not_run, score, section, table
from .common import grid_comparison, model_labels, skylines

ID, TITLE = "glance", "At a glance"

HEADLINE_MEASURES = ("svcca", "rsa", "linear_cka")
"""Measures of the headline table (those the controls are scored with), when the comparison has them."""


# ---------------------------------------------------------------- data
def headline_rows(compare: dict) -> list[dict]:
    """Per measure that scored anywhere: the real pair's best layer pair (by observed value), the range and
    the number of significant cells over the grid, that pair's controls and its A layer's skyline.

    Each row: measure, layers ('3 × 5'), best / random_init / shifted / skyline (score dicts or None),
    low, high, n_significant (q < .05 in the headline test: the real pair beats its random-init and shifted
    controls; the random-pairing q where a cell has no such test), n_cells, of_skyline (best / skyline observed;
    NaN without one), matching: (comparison label, n_pairs, mean_max_corr) of the real pair and its shifted
    control (a pair count or correlation level means nothing beside no control).
    """
    skyline = skylines(compare)
    grid = [(e["hook_a"], e["hook_b"]) for e in compare["pairs"]]
    short = dict(zip(grid, grid_labels(grid)))
    rows = []
    for measure in HEADLINE_MEASURES:
        cells = [(e, (e["sae"].get("decoder") or {}).get(measure)) for e in compare["pairs"]]
        cells = [(e, sc) for e, sc in cells if sc and math.isfinite(num(sc.get("observed")))]
        if not cells:
            continue
        values = [num(sc["observed"]) for _, sc in cells]
        entry, best = max(cells, key=lambda c: num(c[1]["observed"]))
        sky = _control_score(skyline.get(entry["hook_a"]), measure)
        sky_value = num((sky or {}).get("observed"))
        ratio = num(best["observed"]) / sky_value if math.isfinite(sky_value) and sky_value > 0 else math.nan
        rows.append(
            {
                "measure": measure,
                "layers": short[entry["hook_a"], entry["hook_b"]],
                "best": best,
                "low": min(values),
                "high": max(values),
                "n_significant": sum(num(star_q(sc)) < 0.05 for _, sc in cells),
                "n_cells": len(cells),
                "random_init": _control_score(entry.get("random_init"), measure),
                "shifted": _control_score(entry.get("shifted"), measure),
                "skyline": sky,
                "of_skyline": ratio,
                "matching": [
                    (kind, (entry.get(kind) or {}).get("n_pairs"), (entry.get(kind) or {}).get("mean_max_corr"))
                    for kind in ("sae", "shifted")
                    if entry.get(kind)
                ],
            }
        )
    return rows


def _control_score(body: dict | None, measure: str) -> dict | None:
    """A control's decoder-row score of `measure`, None without the control."""
    return (body.get("decoder", {}) or {}).get(measure) if body else None


def sae_metrics(results: dict) -> dict[str, list[float]] | None:
    """Held-out L0, FVU, dead fraction and CE-loss recovered of every evaluated SAE (NaN where missing), and
    their number; None when no SAE was evaluated."""
    saes = [s for s in results.get("saes") or [] if s.get("metrics")]
    if not saes:
        return None

    def metric(key: str, part: str = "metrics") -> list[float]:
        return [num((s.get(part) or {}).get(key)) for s in saes]

    return {
        "n": len(saes),
        "l0": metric("l0"),
        "fvu": metric("fvu"),
        "dead_fraction": metric("dead_fraction"),
        "ce_loss_recovered": metric("ce_loss_recovered", "downstream"),
    }


def absorption_means(results: dict) -> list[dict]:
    """Per absorption SAE: name, k and its means over the qualifying letters."""
    absorption = results.get("absorption") or {}
    return [{"name": s.get("name"), "k": s.get("k"), **(s.get("summary") or {})} for s in absorption.get("saes") or []]


# ---------------------------------------------------------------- markup
def _matching(r: dict) -> str:
    """'1203 pairs, r 0.214 (shifted: 845, 0.163)'."""
    parts = [f"{fmt_int(n)}, r {fmt(mmc)}" for _, n, mmc in r["matching"]]
    return parts[0] + (f" (shifted: {parts[1]})" if len(parts) > 1 else "") if parts else "–"


def _headline_table(rows: list[dict], labels: tuple[str, str]) -> str:
    a, b = labels
    cells = [
        [
            r["measure"],
            r["layers"],
            score(r["best"]),
            control_difference(r["best"], "random_init"),
            control_difference(r["best"], "shifted"),
            f"{fmt(r['low'])} to {fmt(r['high'])}",
            f"{r['n_significant']} of {r['n_cells']}",
            *(score(r[k], stars=False) for k in ("random_init", "shifted", "skyline")),
            fmt(r["of_skyline"], ".0%"),
            _matching(r),
        ]
        for r in rows
    ]
    headers = [
        "measure",
        "best layers",
        f"{a} x {b}",
        "minus random-init",
        "minus shifted",
        "all layer pairs",
        "q < .05",
        "random-init B (seed 0)",
        "B shifted",
        f"skyline ({a} seeds)",
        "of skyline",
        "pairs, mean max r",
    ]
    return table(headers, cells, "headline-table")


def _sae_line(metrics: dict[str, list[float]]) -> str:
    return (
        f'<p class="glance-line"><b>SAEs</b> ({metrics["n"]} evaluated): '
        f"L0 {fmt_span(metrics['l0'], lambda v: fmt(v, '.1f'))}, "
        f"FVU {fmt_span(metrics['fvu'])}, dead {fmt_span(metrics['dead_fraction'], fmt_pct)}, "
        f"CE-loss recovered {fmt_span(metrics['ce_loss_recovered'])}.</p>"
    )


def _absorption_line(means: list[dict]) -> str:
    items = [
        f"{e(s['name'])} (k {fmt_int(s['k'])}): split features {fmt(s.get('mean_num_split_features'), '.2f')}, "
        f"absorption fraction {fmt(s.get('mean_absorption_fraction'))}, "
        f"full absorption {fmt(s.get('mean_full_absorption_rate'))}"
        for s in means
    ]
    n = {s.get("n_letters_qualified") for s in means}
    over = f"means over {fmt_int(n.pop())} letters" if len(n) == 1 else "means over letters"
    return f'<p class="glance-line"><b>Absorption</b> ({over}): {"; ".join(items)}.</p>'


INTRO = (
    "The headline figures. Similarity of the matched SAE decoder rows: the best layer pair's score; its "
    "stars and the count of layer pairs at q < .05 test whether the real pair is more alike than BOTH its "
    "controls (real minus random-init SAEs, the mean of several seeds, and real minus B shifted, each "
    "re-matched on random halves of the documents; BH across the grid), with the two differences beside it "
    "(no intervals: see the heatmaps' note). The z in brackets is against random pairings of the same "
    "matched latents: it tests only that the matching beats a random one, which an untrained SAE also does. Then the range over the grid, the controls' own scores "
    "and the same-model skyline, and the pair count and mean max correlation of the real pair beside those of "
    "the shifted control (neither means anything alone). Hover a score for its tests."
)


def render(results: dict) -> str:
    parts = []
    compare = grid_comparison(results)
    rows = headline_rows(compare) if compare else []
    if rows:
        parts.append(_headline_table(rows, model_labels(results)))
    metrics = sae_metrics(results)
    if metrics:
        parts.append(_sae_line(metrics))
    means = absorption_means(results)
    if means:
        parts.append(_absorption_line(means))
    if not parts:
        return not_run(ID, TITLE, "neither a comparison, SAEs nor absorption are in the results")
    return section(ID, TITLE, "".join(parts), INTRO)
