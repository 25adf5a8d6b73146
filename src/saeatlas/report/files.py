"""Result files of the compare, concepts and absorption stages: JSON, CSV and SVG figures.

`write_compare` writes results.json, results.csv and the layer-grid heatmaps; `write_concepts` writes
concepts.json, concepts.csv and one heatmap per measure; `write_absorption` writes absorption.json,
probes.csv and per SAE a per-letter CSV and bar chart.  Each file is written atomically.  Floats in the CSVs
have 6 significant digits; a missing number is 'nan'.  One writer at a time writes a results folder.
"""

from __future__ import annotations

import csv
import io
import math
import string
from pathlib import Path

import numpy as np

from ..fileio import json_bytes, jsonable, write_bytes_atomic
from .format import fmt, significance_stars, star_q
from .svg import bar_chart_svg, heatmap_svg

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
    "k",
    "p_controls",
    "q_controls",
]
"""Columns of results.csv and concepts.csv (for concepts, `comparison` is the concept)."""
SCORE_COLUMNS = CSV_COLUMNS[7:]
"""The columns that come from a measure's score."""

LETTER_COLUMNS = [
    "letter",
    "qualifies",
    "probe_f1",
    "probe_precision",
    "probe_recall",
    "n_test",
    "n_true_positives",
    "num_split_features",
    "main_latents",
    "k_sparse_f1",
    "absorption_fraction",
    "full_absorption_rate",
    "ablation_candidates",
    "ablation_scored",
    "ablation_absorbed",
    "ablation_absorption_rate",
]
"""Columns of an absorption SAE's per-letter CSV (those its rows have)."""
PROBE_COLUMNS = ["letter", "precision", "recall", "f1", "n_test"]
"""Columns of probes.csv."""

LETTERS = string.ascii_uppercase
"""The first-letter task's letters (absorption/task.py)."""


def _nan_fmt(x) -> str:
    """'0.612', or 'nan' when missing (the heatmaps' cell text)."""
    return fmt(x, ".3f", missing="nan")


# ---------------------------------------------------------------- rows
def result_rows(results: dict) -> list[dict]:
    """One flat row per (layer pair, comparison or concept, space, measure) of compare or concepts results."""
    if results["kind"] == "concepts":
        return [
            {
                "hook_a": e["hook_a"],
                "hook_b": e["hook_b"],
                "comparison": e["concept"],
                "space": "decoder",
                "measure": measure,
                "n_pairs": e["n_pairs"],
                "mean_max_corr": math.nan,
                **{c: s.get(c, math.nan) for c in SCORE_COLUMNS},
            }
            for e in results["entries"]
            for measure, s in e["decoder"].items()
        ]
    return [
        {
            "hook_a": e["hook_a"],
            "hook_b": e["hook_b"],
            "comparison": kind,
            "space": space,
            "measure": measure,
            "n_pairs": body["n_pairs"],
            "mean_max_corr": body["mean_max_corr"],
            **{c: s.get(c, math.nan) for c in SCORE_COLUMNS},
        }
        for e in results["pairs"] + results.get("skyline", [])
        for kind, body in e.items()
        if kind not in ("hook_a", "hook_b")
        for space in ("decoder", "activations")
        for measure, s in body[space].items()
    ]


def _result_csv(results: dict) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in result_rows(results):
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue().encode()


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    """rows as CSV: the `columns` the first row has, floats with 6 digits, lists joined by spaces."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c for c in columns if c in rows[0]], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (f"{v:.6g}" if isinstance(v, float) else " ".join(map(str, v)) if isinstance(v, list) else v)
                for k, v in row.items()
            }
        )
    return buffer.getvalue().encode()


# ---------------------------------------------------------------- figures
def grid_heatmaps(results: dict) -> dict[str, str]:
    """file name -> SVG: each decoder-space measure over the layer grid (value and BH stars, and its z), plus
    the mean max-correlation and the pair counts; each grid [n_layers_a, n_layers_b]."""
    la, lb = results["hooks_a"], results["hooks_b"]
    cell = {(e["hook_a"], e["hook_b"]): e["sae"] for e in results["pairs"]}
    axes = {"row_title": "model A", "col_title": "model B"}
    out = {}
    for measure in results["config"]["measures"]:
        scores = [[cell[(a, b)]["decoder"][measure] for b in lb] for a in la]
        values = np.array([[s["observed"] for s in row] for row in scores])
        text = [[_nan_fmt(s["observed"]) + significance_stars(star_q(s)) for s in row] for row in scores]
        test = (
            "beats random-init and shifted" if any("p_controls" in s for r in scores for s in r) else "random pairing"
        )
        title = f"{measure} of matched decoder rows ({test}: * q<.05, ** q<.01, *** q<.001)"
        out[f"heatmap-{measure}.svg"] = heatmap_svg(values, la, lb, title, text, **axes)
        zs = np.array([[s["z"] for s in row] for row in scores])
        out[f"heatmap-{measure}-z.svg"] = heatmap_svg(
            zs, la, lb, f"{measure}: z-score against the random-pairing null", **axes
        )
    mmc = np.array([[cell[(a, b)]["mean_max_corr"] for b in lb] for a in la])
    out["heatmap-mean-max-corr.svg"] = heatmap_svg(mmc, la, lb, "mean max correlation of B latents", **axes)
    n = np.array([[cell[(a, b)]["n_pairs"] for b in lb] for a in la], dtype=float)
    n_text = [[f"{int(v)}" for v in r] for r in n]
    out["heatmap-n-pairs.svg"] = heatmap_svg(n, la, lb, "matched pairs", n_text, **axes)
    return out


def concept_heatmaps(results: dict) -> dict[str, str]:
    """file name -> SVG: each measure per concept (rows) and layer pair (columns), value, BH stars and the
    pair count; each grid [n_concepts, n_layers_a * n_layers_b]."""
    concepts = list(results["concepts"])
    grid = [(a, b) for a in results["hooks_a"] for b in results["hooks_b"]]
    cell = {(e["concept"], e["hook_a"], e["hook_b"]): e for e in results["entries"]}
    columns = [f"{a} x {b}" for a, b in grid]
    out = {}
    for measure in results["config"]["measures"]:
        entries = [[cell[(c, a, b)] for a, b in grid] for c in concepts]
        values = np.array([[e["decoder"][measure]["observed"] for e in row] for row in entries])
        text = [
            [
                f"{_nan_fmt(e['decoder'][measure]['observed'])}"
                f"{significance_stars(e['decoder'][measure].get('q'))} ({e['n_pairs']})"
                for e in row
            ]
            for row in entries
        ]
        title = f"{measure} within concepts (pairs in brackets)"
        out[f"concepts-{measure}.svg"] = heatmap_svg(values, concepts, columns, title, text, cell=96)
    return out


def letter_chart(results: dict, sae: dict) -> str:
    """SVG: one SAE's absorption measures per letter (bars; a letter whose probe does not qualify: none)."""
    rows = sae["letters"]
    series = {
        key.replace("_", " "): [r[key] if r["qualifies"] else float("nan") for r in rows]
        for key in ("absorption_fraction", "full_absorption_rate", "ablation_absorption_rate")
        if key in rows[0]
    }
    title = f"Absorption per letter: {sae['name']} ({results['model']} {results['hook']})"
    return bar_chart_svg(list(LETTERS), series, title, "rate")


# ---------------------------------------------------------------- writers
def _write_all(out: str | Path, files: dict[str, bytes], what: str) -> list[Path]:
    """Write each {name: bytes} of `files` into the folder `out` (atomically, one writer at a time; a full disk
    is one line saying how much more room the files need); returns the paths in order."""
    from ..fileio import space_for
    from ..locks import writing

    out = Path(out)
    left = dict(files)
    with writing(out, what), space_for(out, f"{what} '{out}'", lambda: sum(map(len, left.values()))):
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_bytes_atomic(out / name, data)
            del left[name]
    return [out / name for name in files]


def _write_grid(results: dict, out: str | Path, prefix: str, heatmaps: dict[str, str]) -> list[Path]:
    files = {f"{prefix}.json": json_bytes(jsonable(results)), f"{prefix}.csv": _result_csv(results)}
    files.update({name: svg.encode() for name, svg in heatmaps.items()})
    return _write_all(out, files, "results folder")


def write_compare(results: dict, out: str | Path) -> list[Path]:
    """results.json, results.csv and the layer-grid heatmaps of compare results into `out`; returns the paths."""
    return _write_grid(results, out, "results", grid_heatmaps(results))


def write_concepts(results: dict, out: str | Path) -> list[Path]:
    """concepts.json, concepts.csv and one heatmap per measure of concepts results into `out`; returns the
    paths."""
    return _write_grid(results, out, "concepts", concept_heatmaps(results))


def write_absorption(results: dict, out: str | Path) -> list[Path]:
    """absorption.json, probes.csv and, per SAE, <name>.csv and <name>.svg (per-letter bars) into `out`;
    returns the paths."""
    files = {"absorption.json": json_bytes(jsonable(results)), "probes.csv": _csv(results["probes"], PROBE_COLUMNS)}
    for sae in results["saes"]:
        files[f"{sae['name']}.csv"] = _csv(sae["letters"], LETTER_COLUMNS)
        files[f"{sae['name']}.svg"] = letter_chart(results, sae).encode()
    return _write_all(out, files, "results folder")
