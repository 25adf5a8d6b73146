"""Similarity across layers: per measure a heatmap of the score (with BH stars) and of its z over the layer
grid, and the numbers; first the matching's pair counts and mean max correlation."""

from __future__ import annotations

import math

import numpy as np

from ..format import control_difference, fmt, fmt_int, grid_labels, num, short_hooks, significance_stars, star_q
from ..markup import e, figure, not_run, section, table
from ..svg import heatmap_svg
from .common import grid_comparison, model_labels

ID, TITLE = "heatmaps", "Similarity across layers"

SPACES = (("decoder", "Decoder rows of the matched latents"), ("activations", "Activations of the matched latents"))


# ---------------------------------------------------------------- data
def layer_grid(compare: dict, get) -> np.ndarray:
    """[n_layers_a, n_layers_b] of get(entry) over the layer grid (NaN where a layer pair is missing)."""
    cells = {(e["hook_a"], e["hook_b"]): e for e in compare.get("pairs") or []}
    values = [
        [num(get(cells[(a, b)])) if (a, b) in cells else math.nan for b in compare["hooks_b"]]
        for a in compare["hooks_a"]
    ]
    return np.array(values, dtype=float).reshape(len(compare["hooks_a"]), len(compare["hooks_b"]))


def measure_score(space: str, measure: str):
    """entry -> the real pair's score dict of `measure` in `space` ({} when it has none)."""
    return lambda entry: ((entry.get("sae") or {}).get(space) or {}).get(measure) or {}


def measure_grids(compare: dict, space: str, measure: str) -> dict[str, np.ndarray]:
    """observed, q (of the stars: `star_q`) and z (random pairing) of one measure over the layer grid, each
    [n_layers_a, n_layers_b] (NaN: no score)."""
    score = measure_score(space, measure)
    return {
        "observed": layer_grid(compare, lambda entry: score(entry).get("observed")),
        "q": layer_grid(compare, lambda entry: star_q(score(entry))),
        "z": layer_grid(compare, lambda entry: score(entry).get("z")),
    }


def measure_rows(compare: dict, space: str, measure: str) -> list[dict]:
    """Per layer pair ('3 × 5'): the score dict of one measure."""
    score = measure_score(space, measure)
    labels = grid_labels([(e["hook_a"], e["hook_b"]) for e in compare["pairs"]])
    return [{"layers": label, **score(entry)} for entry, label in zip(compare["pairs"], labels)]


def present(compare: dict) -> np.ndarray:
    """[n_layers_a, n_layers_b] True where the comparison has the layer pair."""
    pairs = {(e["hook_a"], e["hook_b"]) for e in compare.get("pairs") or []}
    here = [[(a, b) in pairs for b in compare["hooks_b"]] for a in compare["hooks_a"]]
    return np.array(here, dtype=bool).reshape(len(compare["hooks_a"]), len(compare["hooks_b"]))


# ---------------------------------------------------------------- markup
def _heatmap(compare: dict, labels: tuple[str, str], values: np.ndarray, title: str, text=None, diverging=False) -> str:
    """A layer-grid heatmap of values [n_layers_a, n_layers_b]: A's layers as rows, B's as columns."""
    rows, kind_a = short_hooks(compare["hooks_a"])
    cols, kind_b = short_hooks(compare["hooks_b"])
    cell = max(48, min(72, 400 // max(len(cols), len(rows), 1)))
    return heatmap_svg(
        values,
        rows,
        cols,
        title,
        text,
        row_title=f"{labels[0]} {kind_a}".strip(),
        col_title=f"{labels[1]} {kind_b}".strip(),
        diverging=diverging,
        cell=cell,
    )


def _measure_numbers(rows: list[dict]) -> str:
    """One measure, one row per layer pair: observed (and SVCCA's k), the headline test (minus each control, q of
    beating both), the random-pairing null, z, p, q, and the 95% interval where the measure
    has a calibrated one."""
    cells = [
        [
            s["layers"],
            fmt(s.get("observed")) + (f" (k {s['k']})" if s.get("k") is not None else ""),
            control_difference(s, "random_init"),
            control_difference(s, "shifted"),
            fmt(s.get("q_controls"), ".3g") if "p_controls" in s else "–",
            f"{fmt(s.get('null_mean'))} ± {fmt(s.get('null_std'))}",
            fmt(s.get("z"), ".1f"),
            fmt(s.get("p"), ".3g"),
            fmt(s.get("q"), ".3g"),
            f"{fmt(s.get('ci_lo'))}–{fmt(s.get('ci_hi'))}" if s.get("ci_lo") is not None else "–",
        ]
        for s in rows
    ]
    headers = [
        "layers",
        "observed",
        "minus random-init",
        "minus shifted",
        "q beats both",
        "random-pairing null",
        "pairing z",
        "pairing p",
        "pairing q",
        "95% CI",
    ]
    return table(headers, cells, "measure-table")


def _measure_figures(compare: dict, labels: tuple[str, str], space: str, measure: str) -> str:
    grids, here = measure_grids(compare, space, measure), present(compare)
    text = [
        [fmt(v) + significance_stars(q) if ok else "" for v, q, ok in zip(*row)]
        for row in zip(grids["observed"], grids["q"], here)
    ]
    z_text = [[fmt(v, ".1f", missing="") for v in row] for row in grids["z"]]
    data = {"measure": measure, "space": space}
    value_fig = figure(
        _heatmap(compare, labels, grids["observed"], measure, text), "", "heatmap", {**data, "stat": "value"}
    )
    z_fig = figure(
        _heatmap(compare, labels, grids["z"], f"{measure}: z vs random pairing", z_text, diverging=True),
        "",
        "heatmap",
        {**data, "stat": "z"},
    )
    return value_fig + z_fig + _measure_numbers(measure_rows(compare, space, measure))


def _matching_figures(compare: dict, labels: tuple[str, str]) -> str:
    n_pairs = layer_grid(compare, lambda entry: entry["sae"].get("n_pairs"))
    mmc = layer_grid(compare, lambda entry: entry["sae"].get("mean_max_corr"))
    return figure(
        _heatmap(compare, labels, n_pairs, "matched pairs", [[fmt_int(v) for v in r] for r in n_pairs]),
        "",
        "heatmap",
        {"measure": "n_pairs", "stat": "value"},
    ) + figure(
        _heatmap(compare, labels, mmc, "mean max correlation"),
        "",
        "heatmap",
        {"measure": "mean_max_corr", "stat": "value"},
    )


def _intro(results: dict, labels: tuple[str, str], cfg: dict) -> str:
    intro = (
        f"Each cell is one layer of {labels[0]} (rows) against one layer of {labels[1]} (columns). Per measure: "
        "the score with Benjamini-Hochberg stars across the grid (* q<.05, ** q<.01, *** q<.001). On decoder "
        "rows the stars test whether the real pair is more alike than both its random-init and shifted "
        f"controls ({fmt_int(cfg.get('n_bootstrap'))} random halves of the documents, each re-matched from "
        "scratch; the differences are in the table). On activations (cross-fitted: "
        "latents matched on one half of the documents, scored on the other) and in the z heatmap the test is "
        f"against {fmt_int(cfg.get('n_permutations'))} random pairings of the same latents, which only says "
        "that the matching beats a random one. SVCCA and PWCCA use the same number of directions k in every "
        "cell. Intervals (of a score, or of its difference from a control): printed only for measures whose "
        "intervals covered a planted true score in at least 90% of samples (bench/calibration.py), and at "
        "present none does (38-53% at nominal 95%): the matched pairs, and so the score, change with the "
        "number of positions, and the scores of independent samples spread about twice as much as any resampling of one sample shows. Read a score as the score of this "
        "many positions, and compare cells through the test against the controls."
    )
    if results.get("legacy"):
        intro += " LEGACY MODE: matched with legacy_first (see the banner)."
    return intro


def render(results: dict) -> str:
    compare = grid_comparison(results)
    if not compare:
        return not_run(ID, TITLE, "the comparison was not part of this study")
    labels, cfg = model_labels(results), compare.get("config") or {}
    first = compare["pairs"][0]["sae"]
    html = [
        (
            f"<h3>Matching ({e(cfg.get('method'))}, r above {fmt(cfg.get('threshold'), '.2f')})</h3>"
            f'<div class="figures">{_matching_figures(compare, labels)}</div>'
        )
    ]
    for space, heading in SPACES:
        figs = "".join(
            f'<div class="figures measure">{_measure_figures(compare, labels, space, m)}</div>'
            for m in (first.get(space) or {})
        )
        html.append(f"<h3>{e(heading)}</h3>{figs}" if figs else "")
    return section(ID, TITLE, "".join(html), _intro(results, labels, cfg))
