"""Ground truth for the standard errors of the spliced figures (CE clean / SAE / zero, CE-loss recovered,
delta LM loss, KL): coverage of value +- 1.96 SE and of value +- t(D-1) SE over D documents.

Per-document values are drawn from known distributions.  `normal`: every per-document figure is normal.
`skewed`: a document's clean CE is Student-t (4 df) around 3, zero-ablation adds a lognormal gap g, the SAE
keeps a Beta(2, 18) fraction f of it, KL is lognormal (sigma 0.8).  `correlated`: as skewed, but f grows with
g (documents that ablation hurts more are reconstructed worse), which makes delta LM loss very skewed.  Every
per-document mean carries token noise of sd 1 / sqrt(n_tokens).  The true population figures come from
2,000,000 simulated documents; each replicate draws D documents, computes
`saeatlas.sae.metrics.downstream_figures`, and counts whether the interval covers the truth.  The study's wiki
eval split has 9 documents, so D = 9 is the case that matters most.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/heldout_se.py [--replicates 4000] [--documents 5,9,20,50]

Results are saved to bench/results/heldout_se.json.  Target: coverage >= 0.90 at nominal 0.95.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.stats

from saeatlas.sae.metrics import downstream_figures

RESULTS = Path(__file__).resolve().parent / "results" / "heldout_se.json"
FIGURES = ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_loss_recovered", "delta_lm_loss", "kl_div")
SCENARIOS = ("normal", "skewed", "correlated")


def documents(rng: np.random.Generator, n: int, scenario: str) -> dict[str, np.ndarray]:
    """Per-document mean CE clean / SAE / zero-ablated and KL, each [n]."""
    tokens = rng.integers(150, 700, n)
    noise = 1.0 / np.sqrt(tokens)
    if scenario == "normal":
        clean, gap, kept = 3.0 + 0.6 * rng.standard_normal(n), 2.5 + 0.5 * rng.standard_normal(n), 0.1
        kl = 0.05 + 0.02 * rng.standard_normal(n)
        return {
            "clean": clean + noise * rng.standard_normal(n),
            "sae": clean + kept * gap + 0.05 * rng.standard_normal(n),
            "zero": clean + gap + noise * rng.standard_normal(n),
            "kl": kl,
        }
    clean = 3.0 + 0.6 * rng.standard_t(4, n)
    gap = np.exp(rng.normal(np.log(2.5), 0.5, n))
    if scenario == "skewed":
        kept = rng.beta(2, 18, n)
    else:  # documents that zero-ablation hurts more are also reconstructed worse
        kept = np.clip(rng.beta(2, 18, n) * gap / 2.5, 0.0, 1.0)
    return {
        "clean": clean + noise * rng.standard_normal(n),
        "sae": clean + kept * gap + noise * rng.standard_normal(n),
        "zero": clean + gap + noise * rng.standard_normal(n),
        "kl": np.exp(rng.normal(np.log(0.05), 0.8, n)),
    }


def truth(scenario: str, n: int = 2_000_000) -> dict[str, float]:
    """The population figures: `downstream_figures` of a very large sample (its SE is negligible)."""
    d = documents(np.random.default_rng(12345), n, scenario)
    figures = downstream_figures(d["clean"], d["sae"], d["zero"], d["kl"])
    return {name: figures[name] for name in FIGURES}


def coverage(scenario: str, n_documents: int, replicates: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Share of replicates whose value +- 1.96 SE ("z") and value +- t(D-1, 0.975) SE ("t") cover the truth,
    per figure."""
    true = truth(scenario)
    rng = np.random.default_rng(seed)
    multipliers = {"z": 1.96, "t": float(scipy.stats.t.ppf(0.975, n_documents - 1))}
    hits = {rule: dict.fromkeys(FIGURES, 0) for rule in multipliers}
    for _ in range(replicates):
        d = documents(rng, n_documents, scenario)
        figures = downstream_figures(d["clean"], d["sae"], d["zero"], d["kl"])
        for rule, m in multipliers.items():
            for name in FIGURES:
                hits[rule][name] += abs(figures[name] - true[name]) <= m * figures[f"{name}_se"]
    return {rule: {name: h / replicates for name, h in per.items()} for rule, per in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=4000)
    parser.add_argument("--documents", default="5,9,20,50", help="documents per replicate (D)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.documents.split(",")]
    rows = []
    print(f"{'scenario':11s} {'D':>3s} rule " + " ".join(f"{f:>17s}" for f in FIGURES))
    for scenario in SCENARIOS:
        for n in sizes:
            cov = coverage(scenario, n, args.replicates)
            rows.append({"scenario": scenario, "documents": n, "replicates": args.replicates, "coverage": cov})
            for rule, per in cov.items():
                print(f"{scenario:11s} {n:3d} {rule:4s} " + " ".join(f"{per[f]:17.3f}" for f in FIGURES), flush=True)
    for rule in ("z", "t"):
        for scenario in SCENARIOS:
            low = {r["documents"]: min(r["coverage"][rule].values()) for r in rows if r["scenario"] == scenario}
            reached = [n for n, c in sorted(low.items()) if c >= 0.90]
            print(f"{rule} {scenario:11s}: lowest coverage per D {low}; >= 0.90 from D = {reached[:1] or 'none'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
