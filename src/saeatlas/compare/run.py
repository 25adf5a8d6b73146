"""Files of a comparison: results.json / concepts.json, CSV and SVG heatmaps (moving to saeatlas.report)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..fileio import jsonable, write_bytes_atomic, write_json_atomic


def _fmt(x) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.3f}"

CSV_COLUMNS = [
    "hook_a",
    "hook_b",
    "comparison",
    "space",
    "measure",
    "n_pairs",
    "mean_max_corr",
    "observed",
    "null_mean",
    "null_std",
    "z",
    "p",
    "q",
    "ci_lo",
    "ci_hi",
]

def result_rows(results: dict) -> list[dict]:
    """One flat row per (layer pair, comparison or concept, space, measure)."""
    rows = []
    if results["kind"] == "concepts":
        for e in results["entries"]:
            for measure, s in e["decoder"].items():
                rows.append(
                    {
                        "hook_a": e["hook_a"],
                        "hook_b": e["hook_b"],
                        "comparison": e["concept"],
                        "space": "decoder",
                        "measure": measure,
                        "n_pairs": e["n_pairs"],
                        "mean_max_corr": math.nan,
                        **{c: s.get(c, math.nan) for c in CSV_COLUMNS[7:]},
                    }
                )
        return rows
    entries = results["pairs"] + results.get("skyline", [])
    for e in entries:
        for kind, body in e.items():
            if kind in ("hook_a", "hook_b"):
                continue
            for space in ("decoder", "activations"):
                for measure, s in body[space].items():
                    rows.append(
                        {
                            "hook_a": e["hook_a"],
                            "hook_b": e["hook_b"],
                            "comparison": kind,
                            "space": space,
                            "measure": measure,
                            "n_pairs": body["n_pairs"],
                            "mean_max_corr": body["mean_max_corr"],
                            **{c: s.get(c, math.nan) for c in CSV_COLUMNS[7:]},
                        }
                    )
    return rows

def grid_heatmaps(results: dict) -> dict[str, str]:
    """file name -> SVG: each decoder-space measure over the layer grid (value and BH stars), plus the mean
    max-correlation and the pair counts."""
    from ..report.svg import heatmap_svg, significance_stars

    la, lb = results["hooks_a"], results["hooks_b"]
    cell = {(e["hook_a"], e["hook_b"]): e["sae"] for e in results["pairs"]}
    out = {}
    measures = results["config"]["measures"]
    for measure in measures:
        values = np.array([[cell[(a, b)]["decoder"][measure]["observed"] for b in lb] for a in la])
        text = [
            [
                _fmt(cell[(a, b)]["decoder"][measure]["observed"])
                + significance_stars(cell[(a, b)]["decoder"][measure].get("q"))
                for b in lb
            ]
            for a in la
        ]
        out[f"heatmap-{measure}.svg"] = heatmap_svg(
            values,
            la,
            lb,
            f"{measure} of matched decoder rows (* q<.05, ** q<.01, *** q<.001)",
            text,
            row_title="model A",
            col_title="model B",
        )
        zs = np.array([[cell[(a, b)]["decoder"][measure]["z"] for b in lb] for a in la])
        out[f"heatmap-{measure}-z.svg"] = heatmap_svg(
            zs, la, lb, f"{measure}: z-score against the random-pairing null", row_title="model A", col_title="model B"
        )
    mmc = np.array([[cell[(a, b)]["mean_max_corr"] for b in lb] for a in la])
    out["heatmap-mean-max-corr.svg"] = heatmap_svg(
        mmc, la, lb, "mean max correlation of B latents", row_title="model A", col_title="model B"
    )
    n = np.array([[cell[(a, b)]["n_pairs"] for b in lb] for a in la], dtype=float)
    out["heatmap-n-pairs.svg"] = heatmap_svg(
        n, la, lb, "matched pairs", [[f"{int(v)}" for v in r] for r in n], row_title="model A", col_title="model B"
    )
    return out

def concept_heatmaps(results: dict) -> dict[str, str]:
    """file name -> SVG: each measure per concept (rows) and layer pair (columns), value and BH stars."""
    from ..report.svg import heatmap_svg, significance_stars

    concepts = list(results["concepts"])
    grid = [(a, b) for a in results["hooks_a"] for b in results["hooks_b"]]
    cell = {(e["concept"], e["hook_a"], e["hook_b"]): e for e in results["entries"]}
    out = {}
    for measure in results["config"]["measures"]:
        values = np.array([[cell[(c, a, b)]["decoder"][measure]["observed"] for a, b in grid] for c in concepts])
        text = [
            [
                f"{_fmt(cell[(c, a, b)]['decoder'][measure]['observed'])}"
                f"{significance_stars(cell[(c, a, b)]['decoder'][measure].get('q'))} ({cell[(c, a, b)]['n_pairs']})"
                for a, b in grid
            ]
            for c in concepts
        ]
        out[f"concepts-{measure}.svg"] = heatmap_svg(
            values,
            concepts,
            [f"{a} x {b}" for a, b in grid],
            f"{measure} within concepts (pairs in brackets)",
            text,
            cell=96,
        )
    return out

def write_results(results: dict, out: str | Path, prefix: str = "results") -> list[Path]:
    """results.json, results.csv and the heatmaps into `out` (each file written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{prefix}.json"]
    write_json_atomic(written[0], jsonable(results))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in result_rows(results):
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    written.append(out / f"{prefix}.csv")
    write_bytes_atomic(written[-1], buffer.getvalue().encode())
    heatmaps = grid_heatmaps(results) if results["kind"] == "compare" else concept_heatmaps(results)
    if heatmaps:
        for name, svg in heatmaps.items():
            written.append(out / name)
            write_bytes_atomic(written[-1], svg.encode())
    return written
