"""Concept subspaces: per concept and layer pair, the matched latents' pair count and scores, as heatmaps
(concept rows, layer-pair columns) and a table."""

from __future__ import annotations

import numpy as np

from ..format import fmt, fmt_int, grid_labels, num, significance_stars
from ..markup import figure, not_run, score, section, table
from ..svg import heatmap_svg

ID, TITLE = "concepts", "Concept subspaces"


# ---------------------------------------------------------------- data
def concept_names(concepts: dict) -> list[str]:
    """The concepts, in the results' order."""
    return list(concepts.get("concepts") or dict.fromkeys(e["concept"] for e in concepts["entries"]))


def concept_layer_pairs(concepts: dict) -> list[tuple[str, str]]:
    """The layer pairs (layer_a, layer_b) the concepts were scored on, in order."""
    return list(dict.fromkeys((e["hook_a"], e["hook_b"]) for e in concepts["entries"]))


def concept_grid(concepts: dict, get) -> np.ndarray:
    """[n_concepts, n_layer_pairs] of get(entry) (NaN where an entry is missing)."""
    cell = {(e["concept"], e["hook_a"], e["hook_b"]): e for e in concepts["entries"]}
    grid = concept_layer_pairs(concepts)
    values = [[num(get(cell.get((c, a, b)) or {})) for a, b in grid] for c in concept_names(concepts)]
    return np.array(values, dtype=float)


def concept_score(measure: str, stat: str):
    """entry -> one statistic of its decoder-row score of `measure`."""
    return lambda entry: ((entry.get("decoder") or {}).get(measure) or {}).get(stat)


def concept_rows(concepts: dict) -> list[dict]:
    """One record per (concept, layer pair), in the results' order, its layers shortened ('3 × 5')."""
    grid = concept_layer_pairs(concepts)
    short = dict(zip(grid, grid_labels(grid)))
    return [{**e, "layers": short[(e["hook_a"], e["hook_b"])]} for e in concepts["entries"]]


# ---------------------------------------------------------------- markup
def _concept_heatmaps(concepts: dict, measures: list[str]) -> list[str]:
    """A matched-pairs heatmap, then one per measure that scored anywhere (concept rows, layer-pair columns)."""
    names, grid = concept_names(concepts), concept_layer_pairs(concepts)
    columns = grid_labels(grid)
    size = 48 if len(grid) <= 6 else 44
    n = concept_grid(concepts, lambda entry: entry.get("n_pairs"))
    n_text = [[fmt_int(v) for v in r] for r in n]
    figs = [
        figure(
            heatmap_svg(n, names, columns, "matched pairs", n_text, col_title="layer A × layer B", cell=size),
            "",
            "heatmap concept-heatmap",
            {"measure": "n_pairs"},
        )
    ]
    for m in measures:
        values = concept_grid(concepts, concept_score(m, "observed"))
        if not np.isfinite(values).any():
            continue
        q = concept_grid(concepts, concept_score(m, "q"))
        text = [[fmt(v, ".2f") + significance_stars(qv) for v, qv in zip(*row)] for row in zip(values, q)]
        figs.append(
            figure(
                heatmap_svg(values, names, columns, m, text, col_title="layer A × layer B", cell=size),
                "",
                "heatmap concept-heatmap",
                {"measure": m},
            )
        )
    return figs


def _concepts_table(rows: list[dict], measures: list[str]) -> str:
    cells = [
        [
            r["concept"],
            r["layers"],
            fmt_int(r.get("n_latents_a")),
            fmt_int(r.get("n_latents_b")),
            fmt_int(r.get("n_pairs")),
            fmt(r.get("matched_corr_mean")),
            *(score((r.get("decoder") or {}).get(m)) for m in measures),
        ]
        for r in rows
    ]
    headers = ["concept", "layers", "latents A", "latents B", "pairs", "matched r", *measures]
    return table(headers, cells, "concepts-table")


INTRO = (
    "A latent belongs to a concept when one of its top activating tokens is one of the concept's keywords "
    "(in its own model's tokenizer); within each concept the latents are matched and scored against "
    "random pairings of the same latents (stars: BH q-values; – : too few pairs to score)."
)


def render(results: dict) -> str:
    concepts = results.get("concepts")
    if not concepts or not concepts.get("entries"):
        return not_run(ID, TITLE, "concept subspaces were not part of this study")
    measures = list((concepts.get("config") or {}).get("measures") or [])
    figs = _concept_heatmaps(concepts, measures)
    table_html = _concepts_table(concept_rows(concepts), measures)
    return section(ID, TITLE, f'<div class="figures concepts">{"".join(figs)}</div>{table_html}', INTRO)
