"""Controls: the real SAE pair beside each control, scored the same way, as interval plots and a table."""

from __future__ import annotations

from ..format import fmt, fmt_int, num, pair_name, significance_stars
from ..markup import figure, not_run, score, section, table
from ..svg import interval_plot_svg
from .common import COMPARISONS, comparison_bodies, grid_comparison

ID, TITLE = "controls", "Controls"


# ---------------------------------------------------------------- data
def control_measures(compare: dict) -> list[str]:
    """The measures the controls were scored with (compare writes its whole config)."""
    return list(compare["config"]["control_measures"])


def has_controls(compare: dict) -> bool:
    """Whether any layer pair has a comparison besides the real pair."""
    return any(k != "sae" for entry in compare["pairs"] for k, _ in comparison_bodies(compare, entry))


def control_rows(compare: dict, measure: str) -> list[dict]:
    """Interval-plot rows of one measure (see `interval_plot_svg`): per layer pair, the real pair and each
    control (decoder rows), then the real pair and the raw neurons on activations."""
    rows = []
    for entry in compare["pairs"]:
        bodies = comparison_bodies(compare, entry)
        order = [(k, b, "decoder") for k, b in bodies if k != "neurons"]
        order += [(k, b, "activations") for k, b in bodies if k in ("sae", "neurons")]
        for kind, body, space in order:
            s = (body.get(space) or {}).get(measure)
            if s is None:
                continue
            rows.append(
                {
                    "group": pair_name(entry["hook_a"], entry["hook_b"]),
                    "label": COMPARISONS[kind][0] + (" (activations)" if space == "activations" else ""),
                    "observed": num(s.get("observed")),
                    "null_mean": num(s.get("null_mean")),
                    "null_std": num(s.get("null_std")),
                    "note": f"pairing z {fmt(s.get('z'), '.1f')} {significance_stars(s.get('q'))}",
                    "colour": COMPARISONS[kind][2],
                }
            )
    return rows


def comparison_rows(compare: dict, measures: list[str]) -> list[dict]:
    """One record per (layer pair, comparison): layers, comparison (its label), space (raw neurons have no
    decoder: activations), n_pairs, n_above_chance, mean_max_corr, matched_corr_mean, real (the real pair) and
    the score dict of each measure."""
    rows = []
    for entry in compare["pairs"]:
        for kind, body in comparison_bodies(compare, entry):
            space = "activations" if kind == "neurons" else "decoder"
            rows.append(
                {
                    "layers": pair_name(entry["hook_a"], entry["hook_b"]),
                    "comparison": COMPARISONS[kind][0],
                    "space": space,
                    "n_pairs": body.get("n_pairs"),
                    "mean_max_corr": body.get("mean_max_corr"),
                    "matched_corr_mean": body.get("matched_corr_mean"),
                    "scores": {m: (body.get(space) or {}).get(m) for m in measures},
                    "real": kind == "sae",
                    "n_above_chance": body.get("n_above_chance"),
                }
            )
    return rows


# ---------------------------------------------------------------- markup
def _controls_table(rows: list[dict], measures: list[str]) -> str:
    cells = [
        [
            r["layers"],
            r["comparison"],
            r["space"],
            fmt_int(r["n_pairs"]),
            fmt_int(r["n_above_chance"]),
            fmt(r["mean_max_corr"]),
            fmt(r["matched_corr_mean"]),
            *(score(r["scores"][m], stars=r["real"]) for m in measures),
        ]
        for r in rows
    ]
    headers = ["layer pair", "comparison", "space", "pairs", "above chance", "mean max r", "matched r", *measures]
    return table(headers, cells, "controls-table")


INTRO = (
    "The real SAE pair beside its controls, scored the same way: dots are observed scores, grey bars "
    "their random-pairing null (mean ± 2 sd) with the pairing z and its BH stars, which only say that a "
    "matching beats a random one (controls do too). In the table the real pair's stars are the headline test "
    "(more alike than both random-init and shifted controls); controls get none. Pairs, the latents with a "
    "partner above their chance threshold and the mean max correlation are shown for every comparison: read "
    "them against the shifted control's, never alone. Raw neurons have no decoder, so they (and the real pair "
    "beside them) are scored on activations, cross-fitted over halves of the documents."
)


def render(results: dict) -> str:
    compare = grid_comparison(results)
    if not compare:
        return not_run(ID, TITLE, "the comparison was not part of this study")
    if not has_controls(compare):
        return not_run(ID, TITLE, "no controls were asked for (compare.controls is empty)")
    measures = control_measures(compare)
    plots = [(m, control_rows(compare, m)) for m in measures]
    figs = "".join(
        figure(interval_plot_svg(rows, m, m), "", "controls-plot", {"measure": m}) for m, rows in plots if rows
    )
    table_html = _controls_table(comparison_rows(compare, measures), measures)
    return section(ID, TITLE, f'<div class="figures">{figs}</div>{table_html}', INTRO)
