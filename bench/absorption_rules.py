"""Ablation variant: how often three decision rules call a word an absorption on random heavy-tailed effects.

The rules, on one word's per-latent attributions (effect = -attribution), with every main latent off and every
latent aligned with the probe, so that only the ranking and the gap decide (gap 1.0):
- earlier: saeatlas before it followed sae-spelling: the most negative effect, gap to the next most negative one
  taken signed (effect[second] - effect[first] >= gap).
- paper: `saeatlas.absorption.attribution.is_absorption`, sae-spelling's final code (1d3cc80,
  sae_spelling/feature_absorption_calculator.py): ranked by effect, most negative first; top effect not
  positive; |top| - |second| >= gap.
- by |effect|: the same file at its earlier commit fd88f73: ranked by |effect|, the rest as above.

Effects: `active` latents draw Student-t (3 degrees of freedom) or Cauchy values; the other d_sae - active latents
are off (effect 0), as an SAE's inactive latents are.  With two or more latents at effect <= 0, "earlier" and
"paper" decide alike; they differ only on dense effect vectors.

    .venv/bin/python bench/absorption_rules.py [--draws 20000] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from saeatlas.absorption.attribution import is_absorption

GAP = 1.0


def earlier(effect: np.ndarray) -> bool:
    first, second = np.argsort(effect, kind="stable")[:2]
    return bool(effect[first] <= 0 and effect[second] - effect[first] >= GAP)


def paper(effect: np.ndarray) -> bool:
    n = len(effect)
    return is_absorption(-effect, np.zeros(n), np.ones(n), [], gap=GAP)[0]


def by_magnitude(effect: np.ndarray) -> bool:
    first, second = np.argsort(-np.abs(effect), kind="stable")[:2]
    return bool(not effect[first] > 0 and abs(effect[first]) - abs(effect[second]) >= GAP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=20000, help="random effect vectors per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{'effects':<8} {'active':>6} {'d_sae':>6}  {'earlier':>8} {'paper':>8} {'by |effect|':>12}")
    for name in ("t3", "cauchy"):
        for active, d_sae in [(2, 2), (3, 3), (10, 10), (2, 1000), (10, 1000), (50, 1000)]:
            counts = np.zeros(3)
            for _ in range(args.draws):
                effect = np.zeros(d_sae)
                effect[:active] = rng.standard_t(3, active) if name == "t3" else rng.standard_cauchy(active)
                counts += [earlier(effect), paper(effect), by_magnitude(effect)]
            rates = counts / args.draws
            print(f"{name:<8} {active:>6} {d_sae:>6}  {rates[0]:>8.3f} {rates[1]:>8.3f} {rates[2]:>12.3f}")


if __name__ == "__main__":
    main()
