"""Absorption and splitting: per SAE the means over letters, per letter bar charts and a table of the
probe's and each SAE's figures."""

from __future__ import annotations

import math
import string

from ..format import fmt, fmt_int, num
from ..markup import as_is, e, figure, not_run, record_table, section, table
from ..svg import bar_chart_svg

ID, TITLE = "absorption", "Absorption and splitting"

LETTERS = string.ascii_uppercase
"""The first-letter task's letters (absorption/task.py), one row or bar group each."""

CHARTS = [
    ("absorption_fraction", "absorption fraction"),
    ("full_absorption_rate", "full absorption rate"),
    ("ablation_absorption_rate", "ablation absorption rate"),
    ("num_split_features", "split features (main latents)"),
]
"""(per-letter key, chart title) of the bar charts."""


# ---------------------------------------------------------------- data
def summary_rows(absorption: dict) -> list[dict]:
    """One record per SAE: name, arch, k, d_sae, l0_on_task and its means over the qualifying letters."""
    keys = ("name", "arch", "k", "d_sae", "l0_on_task")
    return [{**(s.get("summary") or {}), **{k: s.get(k) for k in keys}} for s in absorption.get("saes") or []]


def letter_series(absorption: dict, key: str) -> dict[str, list[float]]:
    """SAE name -> `key` per letter A..Z (NaN for a letter that does not qualify or is missing)."""
    by_letter = {s["name"]: {r["letter"]: r for r in s.get("letters") or []} for s in absorption.get("saes") or []}
    return {
        name: [num(rows[c].get(key)) if c in rows and rows[c].get("qualifies", True) else math.nan for c in LETTERS]
        for name, rows in by_letter.items()
    }


def has_ablation(absorption: dict) -> bool:
    """Whether the ablation (integrated-gradients) absorption was scored."""
    return any("ablation_absorption_rate" in r for s in absorption.get("saes") or [] for r in s.get("letters") or [])


def letter_rows(absorption: dict) -> list[dict]:
    """One record per letter A..Z: letter, probe (its precision, recall, f1, n_test; {} if missing) and
    per_sae (each SAE's row for the letter, {} if missing)."""
    probes = {p["letter"]: p for p in absorption.get("probes") or []}
    saes = absorption.get("saes") or []
    return [
        {
            "letter": c,
            "probe": probes.get(c, {}),
            "per_sae": [next((r for r in s.get("letters") or [] if r["letter"] == c), {}) for s in saes],
        }
        for c in LETTERS
    ]


# ---------------------------------------------------------------- markup
SUMMARY_COLUMNS = [
    ("SAE", "name", as_is),
    ("arch", "arch", as_is),
    ("k", "k", fmt_int),
    ("d_sae", "d_sae", fmt_int),
    ("L0 on task", "l0_on_task", lambda v: fmt(v, ".1f")),
    ("letters", "n_letters_qualified", fmt_int),
    ("split features", "mean_num_split_features", lambda v: fmt(v, ".2f")),
    ("k-sparse F1", "mean_k_sparse_f1", fmt),
    ("absorption fraction", "mean_absorption_fraction", fmt),
    ("full absorption", "mean_full_absorption_rate", fmt),
    ("ablation absorption", "mean_ablation_absorption_rate", fmt),
]


def _charts(absorption: dict) -> str:
    """Per-letter bars of each measure, one bar per SAE (letters that do not qualify: no bar)."""
    bar = max(4, min(9, 13 // max(len(absorption.get("saes") or []), 1)))
    figs = []
    for key, title in CHARTS:
        series = letter_series(absorption, key)
        finite = [v for s in series.values() for v in s if math.isfinite(v)]
        if not finite:
            continue
        y_max = max(1.0, max(finite)) if key == "num_split_features" else 1.0
        figs.append(
            figure(bar_chart_svg(list(LETTERS), series, title, y_max=y_max, bar=bar), "", "bar-chart", {"measure": key})
        )
    return f'<div class="figures">{"".join(figs)}</div>'


def _letters_table(absorption: dict) -> str:
    """One row per letter: the probe, then per SAE its splitting and absorption (header grouped by SAE)."""
    saes = absorption.get("saes") or []
    ablation = has_ablation(absorption)
    per_sae = ["split features", "absorption", "full"] + (["ablation"] if ablation else []) + ["main latents"]
    headers = ["letter", "F1", "precision", "recall", "test words"] + per_sae * len(saes)
    groups = [("", 1), ("probe", 4)] + [(s["name"], len(per_sae)) for s in saes]
    rows = []
    for record in letter_rows(absorption):
        p = record["probe"]
        row = [
            record["letter"],
            fmt(p.get("f1")),
            fmt(p.get("precision")),
            fmt(p.get("recall")),
            fmt_int(p.get("n_test")),
        ]
        for r in record["per_sae"]:
            row += [
                fmt_int(r.get("num_split_features")) + ("" if r.get("qualifies", True) else " †"),
                fmt(r.get("absorption_fraction")),
                fmt(r.get("full_absorption_rate")),
            ]
            row += [fmt(r.get("ablation_absorption_rate"))] if ablation else []
            row += [" ".join(map(str, (r.get("main_latents") or [])[:5]))]
        rows.append(row)
    return table(headers, rows, "absorption-letters", groups)


def _intro(a: dict) -> str:
    return (
        f"First-letter task on {a.get('model')} {a.get('hook')}: {fmt_int(a.get('n_prompts'))} words "
        f"({fmt_int(a.get('n_dropped'))} dropped), probes trained on {fmt_int(a.get('n_train'))} and tested on "
        f"{fmt_int(a.get('n_test'))}, mean probe F1 {fmt(a.get('mean_probe_f1'))}; "
        f"{fmt_int(a.get('n_letters_qualified'))} of 26 letters qualify. "
        "Letters whose probe F1 is too low († in the table) do not count and are left out of the charts. "
        "Split features: a letter's main latents (SAEBench's num_split_features, 1 = no splitting)."
    )


def _warning(a: dict) -> str:
    """The run's warning (few letters qualify: the means are over them only), as a paragraph; '' if none."""
    return f'<p class="absorption-warning"><b>Warning:</b> {e(a["warning"])}</p>' if a.get("warning") else ""


def render(results: dict) -> str:
    absorption = results.get("absorption")
    if not absorption or not absorption.get("saes"):
        return not_run(ID, TITLE, "absorption was not part of this study")
    body = (
        f"{_warning(absorption)}<h3>Per SAE</h3>{record_table(SUMMARY_COLUMNS, summary_rows(absorption), 'absorption-summary')}"
        f"<h3>Per letter</h3>{_charts(absorption)}{_letters_table(absorption)}"
    )
    return section(ID, TITLE, body, _intro(absorption))
