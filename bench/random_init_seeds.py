"""How much the `random_init` control's score moves with the random SAE's seed, against the standard error the
headline test already carries (real minus random_init over half-samples of the documents).

With one random-init SAE of B, the test against random_init is conditional on that draw.  If another seed
gives a control score that differs by about the half-sample standard error, the test must average several
seeds and count their spread (`--random-init-seeds`, which this bench motivated).  It re-scores the control
of a finished comparison (the demo's, by default) with `--seeds` seeds (the comparison's first), each a
random SAE calibrated to the real SAE's L0 and code scale, matched from scratch (correlation, chance
threshold, matching), and prints per layer pair and measure the spread of the control's score over seeds
beside the se of real minus random_init in the comparison's results (the half-sample se when that comparison
was made with --random-init-seeds 1; with more seeds that se already counts their spread).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/random_init_seeds.py [--compare runs/study/compare] [--seeds 5]

Results are saved to bench/results/random_init_seeds.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from saeatlas.compare.align import align_stores
from saeatlas.compare.config import CompareConfig
from saeatlas.compare.scoring import matched_decoder_values
from saeatlas.compare.sides import SideCache, limit_positions
from saeatlas.data.store import ActivationStore

RESULTS = Path(__file__).resolve().parent / "results" / "random_init_seeds.json"


def control_scores(cfg: CompareConfig, hook_a: str, hook_b: str, seeds: list[int], measures: list[str]) -> dict:
    """measure -> [len(seeds)] the random_init control's decoder score with the random SAE of each seed."""
    store_a, store_b = ActivationStore(cfg.store_a), ActivationStore(cfg.store_b)
    align = limit_positions(align_stores(store_a, store_b), cfg.max_positions)
    out = {m: [] for m in measures}
    sides = SideCache(cfg, store_a, store_b, align)
    a = sides.get("sae", "a", hook_a)
    for seed in seeds:
        values = matched_decoder_values(a, sides.get("random_init", "b", hook_b, seed), cfg, measures)
        for m in measures:
            out[m].append(values[m])
        print(f"  {hook_a} x {hook_b} seed {seed}: " + ", ".join(f"{m} {values[m]:.4f}" for m in measures))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", default="runs/study/compare", help="a finished comparison's folder")
    parser.add_argument("--seeds", type=int, default=5, help="random-init seeds (the comparison's own first)")
    args = parser.parse_args()
    results = json.loads((Path(args.compare) / "results.json").read_text())
    config = {k: v for k, v in results["config"].items() if k in {f.name for f in dataclasses.fields(CompareConfig)}}
    cfg = dataclasses.replace(CompareConfig(**config), svcca_k=results["svcca_k"])  # the grid's k
    measures = [m for m in cfg.bootstrap_measures if m in cfg.measures]
    seeds = list(range(args.seeds))  # random SAE of seed s: weights from compare.seed + 1 + s, as in compare
    rows = []
    for entry in results["pairs"]:
        scores = control_scores(cfg, entry["hook_a"], entry["hook_b"], seeds, measures)
        for m in measures:
            v = np.array(scores[m])
            versus = entry["sae"]["decoder"][m].get("versus_random_init") or {}
            se = versus.get("se") or math.nan
            rows.append(
                {
                    "hook_a": entry["hook_a"],
                    "hook_b": entry["hook_b"],
                    "measure": m,
                    "scores": v.tolist(),
                    "sd_over_seeds": float(v.std(ddof=1)),
                    "half_sample_se": se,
                    "ratio": float(v.std(ddof=1)) / se if se else math.nan,
                    "real_minus_control": versus.get("observed"),
                }
            )
    print(f"\n{'layers':<30} {'measure':<11} {'sd seeds':>9} {'se test':>9} {'ratio':>6} {'real-ctrl':>9}")
    for r in rows:
        print(
            f"{r['hook_a'] + ' x ' + r['hook_b']:<30} {r['measure']:<11} {r['sd_over_seeds']:>9.4f} "
            f"{r['half_sample_se']:>9.4f} {r['ratio']:>6.2f} {r['real_minus_control'] or math.nan:>+9.3f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=1) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
