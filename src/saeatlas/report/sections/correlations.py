"""Matched correlations: per layer pair, histograms of the matched pairs' correlations for the real pair and
each control."""

from __future__ import annotations

import math

from ..format import fmt, num, pair_name
from ..markup import figure, not_run, section
from ..svg import histogram_svg
from .common import COMPARISONS, grid_comparison, skylines

ID, TITLE = "correlations", "Matched correlations"


# ---------------------------------------------------------------- data
def correlation_samples(entry: dict, skyline: dict | None) -> tuple[dict[str, list], list[str]]:
    """label -> matched correlations, and their colours, for one layer pair: the real pair and each control."""
    bodies = [(k, entry[k]) for k in ("sae", "random_init", "shifted", "neurons") if entry.get(k)]
    if skyline:
        bodies.insert(1, ("skyline", skyline))
    samples = {COMPARISONS[k][1]: (body.get("pairs") or {}).get("corr", []) for k, body in bodies}
    return samples, [COMPARISONS[k][2] for k, _ in bodies]


def x_low(samples: dict[str, list], threshold: float) -> float:
    """The histograms' left end: 0, or the lowest correlation or threshold below it."""
    values = [v for s in samples.values() for v in s if v is not None]
    return min([0.0] + values + ([threshold] if math.isfinite(threshold) else []))


# ---------------------------------------------------------------- markup
def _intro(threshold: float) -> str:
    return (
        "Correlation of each matched latent pair over the aligned positions, for the real SAE pair and for "
        "the controls that play the null: the random-init SAE and the shifted tokens should match weakly, "
        "the skyline (another seed of A's SAE) strongly. Each curve is a fraction of its own pairs "
        f"(n in the legend); pairs need r above the threshold ({fmt(threshold, '.2f')})."
    )


def render(results: dict) -> str:
    compare = grid_comparison(results)
    if not compare:
        return not_run(ID, TITLE, "the comparison was not part of this study")
    skyline = skylines(compare)
    threshold = num((compare.get("config") or {}).get("threshold"))
    figs = []
    for entry in compare["pairs"]:
        samples, colours = correlation_samples(entry, skyline.get(entry["hook_a"]))
        svg = histogram_svg(
            samples,
            pair_name(entry["hook_a"], entry["hook_b"]),
            "Pearson r of matched pairs",
            lo=x_low(samples, threshold),
            hi=1.0,
            colours=colours,
        )
        figs.append(figure(svg, "", "histogram", {"layer-a": entry["hook_a"], "layer-b": entry["hook_b"]}))
    return section(ID, TITLE, f'<div class="figures">{"".join(figs)}</div>', _intro(threshold))
