"""Calibration table of the comparison's statistics on synthetic models with a known answer.

Two synthetic "models" (compare/synthetic.py: shared sparse features embedded by different linear maps, each
model's own features) read by oracle TopK "SAEs" (tilted true features as decoder rows, plus rare latents
that fire independently ~8 times each, which make unrelated codes look correlated as trained SAEs' do).
The sizes are small so that the bench runs on two CPU cores: `BENCH_DATA` positions in documents of 100,
200 random pairings per null (smallest p 0.005), the default settings otherwise (chance threshold,
half-samples, cross-fitting).

- false-positive rate at alpha 0.05 on unrelated pairs (B's shared sources independent of A's), per space
  and measure: the random-pairing test (decoder rows; activations cross-fitted, and the old circular rule
  for comparison), and the headline test against the controls (here B with its documents permuted, which
  under "unrelated" is exchangeable with the real pair); with the default chance threshold, and with the
  fixed threshold 0.1 only (column "FPR 0.1").  A cell without enough pairs to score counts as not
  significant; `scored` says how many replicates had a p-value.  Target <= 0.07.
- coverage of the 95% half-sample intervals of the real pair's decoder scores on fixed models whose true
  score comes from 10 times as many positions.  Target >= 0.90.
- power on planted shared features (the same tests, related models).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/calibration.py [--unrelated 100] [--related 20]
        [--coverage 100] [--n 2000]

Results are saved to bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from saeatlas.compare import synthetic
from saeatlas.compare.config import CompareOptions

RESULTS = Path(__file__).resolve().parent / "results" / "calibration.json"
ALPHA = 0.05
COVERAGE_MEASURES = ["svcca", "pwcca", "rsa", "linear_cka"]


def options() -> CompareOptions:
    """The default comparison settings, with the bench's 200 random pairings and the measures it tables."""
    return CompareOptions(n_permutations=200, measures=COVERAGE_MEASURES)


def rejection_table(reps: list[dict]) -> list[dict]:
    """One row per (test, space, measure): share of replicates with p < ALPHA (NaN p: not rejected), scored."""
    rows = []

    def add(test: str, space: str, measure: str, ps: list[float]) -> None:
        ps = np.array(ps, dtype=float)
        rows.append(
            {
                "test": test,
                "space": space,
                "measure": measure,
                "rate": float(np.mean(np.nan_to_num(ps, nan=1.0) < ALPHA)),
                "scored": int(np.isfinite(ps).sum()),
                "n": len(ps),
            }
        )

    first = reps[0]
    for space, scores in first["pairing"].items():
        for m in scores:
            add("random pairing", space, m, [r["pairing"][space][m] for r in reps])
    for m in first["circular"]:
        add("random pairing, old circular rule", "activations", m, [r["circular"][m] for r in reps])
    for m, versus in first["versus"].items():
        for control in versus:
            add(f"real - {control}", "decoder", m, [r["versus"][m][control] for r in reps])
        add("headline (beats both controls)", "decoder", m, [r["p_controls"][m] for r in reps])
    return rows


def coverage_table(model_seeds: list[int], n_samples: int, cfg: CompareOptions) -> list[dict]:
    """Per measure: coverage of the true score by the half-sample intervals, over samples of each model."""
    hits = {m: [] for m in COVERAGE_MEASURES}
    widths = {m: [] for m in COVERAGE_MEASURES}
    errors = {m: [] for m in COVERAGE_MEASURES}
    for model in model_seeds:
        truth = synthetic.true_scores(model, cfg, COVERAGE_MEASURES)
        for s in range(n_samples):
            ci = synthetic.coverage_replicate(model, s, cfg, COVERAGE_MEASURES)
            for m in COVERAGE_MEASURES:
                lo, hi = ci[m]["lo"], ci[m]["hi"]
                ok = math.isfinite(lo) and lo <= truth[m] <= hi
                hits[m].append(ok)
                widths[m].append(hi - lo)
                errors[m].append(ci[m]["observed"] - truth[m])
    return [
        {
            "measure": m,
            "coverage": float(np.mean(hits[m])),
            "n": len(hits[m]),
            "mean_width": float(np.nanmean(widths[m])),
            "mean_error_of_observed": float(np.nanmean(errors[m])),
        }
        for m in COVERAGE_MEASURES
    ]


def _print_rejections(title: str, rows: list[dict]) -> None:
    print(f"\n{title}", flush=True)
    print(f"{'test':36} {'space':12} {'measure':11} {'rate':>6} {'scored':>8}")
    for r in rows:
        print(f"{r['test']:36} {r['space']:12} {r['measure']:11} {r['rate']:6.3f} {r['scored']:4d}/{r['n']:<3d}")


def _save(out: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unrelated", type=int, default=100, help="replicates on unrelated pairs (FPR)")
    parser.add_argument("--related", type=int, default=20, help="replicates on planted shared features (power)")
    parser.add_argument("--coverage", type=int, default=100, help="samples per model for coverage")
    parser.add_argument("--models", default="0", help="model seeds of the coverage runs")
    parser.add_argument("--n", type=int, default=synthetic.BENCH_DATA["n"], help="positions per sample")
    args = parser.parse_args()
    synthetic.BENCH_DATA["n"] = args.n
    cfg = options()
    t0 = time.perf_counter()
    out = {"sizes": dict(synthetic.BENCH_DATA), "oracle": synthetic.BENCH_ORACLE, "config": cfg.to_dict()}
    print(f"sizes {out['sizes']}, oracle SAEs {out['oracle']}; alpha {ALPHA}", flush=True)
    if args.coverage:
        out["coverage"] = coverage_table([int(m) for m in args.models.split(",")], args.coverage, cfg)
        print("\ncoverage of the 95% half-sample intervals (truth: 10x the positions)")
        for c in out["coverage"]:
            print(
                f"  {c['measure']:11} {c['coverage']:.3f} of {c['n']} (mean width {c['mean_width']:.3f}, "
                f"observed - truth {c['mean_error_of_observed']:+.3f})",
                flush=True,
            )
        _save(out)
    related = [synthetic.calibration_replicate(1000 + s, True, cfg) for s in range(args.related)]
    out["power"] = rejection_table(related)
    _print_rejections(f"power on planted shared features ({args.related} replicates)", out["power"])
    _save(out)
    unrelated = [synthetic.calibration_replicate(s, False, cfg) for s in range(args.unrelated)]
    out["fpr"] = rejection_table(unrelated)
    out["unrelated_pairs"] = float(np.mean([r["n_pairs"] for r in unrelated]))
    out["unrelated_mean_max_corr"] = float(np.mean([r["mean_max_corr"] for r in unrelated]))
    _print_rejections(
        f"false-positive rate on unrelated pairs, default settings ({args.unrelated} replicates; "
        f"{out['unrelated_pairs']:.1f} pairs, mean max r {out['unrelated_mean_max_corr']:.3f})",
        out["fpr"],
    )
    _save(out)
    # The same without the chance threshold (the fixed 0.1 only): hundreds of chance pairs, so every test
    # is scored and the cross-fitting and the headline test carry the calibration on their own.
    fixed = dataclasses.replace(cfg, chance_shifts=0)
    unrelated_fixed = [synthetic.calibration_replicate(s, False, fixed) for s in range(args.unrelated)]
    out["fpr_fixed_threshold"] = rejection_table(unrelated_fixed)
    out["unrelated_pairs_fixed_threshold"] = float(np.mean([r["n_pairs"] for r in unrelated_fixed]))
    _print_rejections(
        f"false-positive rate on unrelated pairs, fixed threshold 0.1 only ({args.unrelated} replicates; "
        f"{out['unrelated_pairs_fixed_threshold']:.1f} pairs)",
        out["fpr_fixed_threshold"],
    )
    out["seconds"] = time.perf_counter() - t0
    _save(out)
    print(f"\n{out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
