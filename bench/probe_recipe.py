"""Benchmark: does the sparse probe find a letter's main latents, with saeatlas's recipe and with SAEBench's?

Setting: synthetic SAE codes of the first-letter task with planted main latents.  26 letters, equally
frequent; d_sae latents.  Each letter has 1 (60 % of letters), 2 (30 %) or 3 (10 %) main latents, which split
its words between them (each word belongs to one of them, which fires on it with probability 0.85, magnitude
1 + Exp(1)).  Every latent also fires at random (p = 20 / d_sae, magnitude Exp(1)), and 300 "confounder"
latents fire three times as often on the words of one letter each (so the ranking has something to get
wrong).  Train and test splits of n_train and n_train / 4 words.

For each recipe (`saeatlas.absorption.probes.PROBE_RECIPES`: saeatlas, the sparse probe in batches of 64 with
weight decay 1e-4; saebench, batches of 4096 and weight decay 1e-6) and each n_train, over seeds:
- `top`: the share of letters whose planted main latents are the sparse probe's top ranks (`rank_latents`);
- `count`: the share of letters whose num_split_features (`split_feature`, the F1-jump rule) is the planted
  number of main latents;
- `seconds`: the time of `rank_latents`.

n_train 3200 is the default sample (4000 words, 80 % train); 20000 is about the whole alphabetic vocabulary of
a 50k-token tokenizer.  Measured (2 cores, d_sae 2048; mean (min) over 5 seeds, 2 at 20000):

    recipe    n_train           top         count
    saeatlas     3200  1.000 (1.00)  0.992 (0.96)
    saebench     3200  0.023 (0.00)  0.508 (0.35)
    saeatlas     8000  1.000 (1.00)  1.000 (1.00)
    saebench     8000  0.954 (0.92)  0.954 (0.92)
    saeatlas    20000  1.000 (1.00)  1.000 (1.00)
    saebench    20000  1.000 (1.00)  1.000 (1.00)

    PYTHONPATH=src python bench/probe_recipe.py [--seeds 5] [--d-sae 2048]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from saeatlas.absorption.probes import one_hot, probe_recipe
from saeatlas.absorption.splitting import rank_latents, split_feature

N_LETTERS = 26


def planted_codes(n: int, d_sae: int, mains: list[list[int]], confounders: dict[int, int], rng) -> tuple:
    """([n, d_sae] float32 codes, [n] letters) of n words with the planted structure (module docstring)."""
    letters = rng.integers(0, N_LETTERS, size=n)
    codes = rng.exponential(1.0, size=(n, d_sae)) * (rng.random((n, d_sae)) < 20 / d_sae)
    for latent, letter in confounders.items():
        on = (letters == letter) & (rng.random(n) < 40 / d_sae)
        codes[on, latent] = rng.exponential(1.0, size=on.sum())
    for letter, latents in enumerate(mains):
        rows = np.flatnonzero(letters == letter)
        part = rng.integers(0, len(latents), size=len(rows))
        fire = rng.random(len(rows)) < 0.85
        for j, latent in enumerate(latents):
            chosen = rows[(part == j) & fire]
            codes[chosen, latent] = 1 + rng.exponential(1.0, size=len(chosen))
    return codes.astype(np.float32), letters


def one_run(recipe: str, n_train: int, d_sae: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3], size=N_LETTERS, p=[0.6, 0.3, 0.1])
    ids = rng.permutation(d_sae)
    mains, start = [], 0
    for s in sizes:
        mains.append([int(i) for i in ids[start : start + s]])
        start += s
    confounders = {int(i): int(rng.integers(0, N_LETTERS)) for i in ids[start : start + 300]}
    train_x, train_y = planted_codes(n_train, d_sae, mains, confounders, rng)
    test_x, test_y = planted_codes(n_train // 4, d_sae, mains, confounders, rng)
    t = time.perf_counter()
    ranked = rank_latents(train_x, one_hot(train_y, N_LETTERS), recipe=probe_recipe(recipe, "sparse", seed))
    seconds = time.perf_counter() - t
    top = [set(ranked[c, : len(m)].tolist()) == set(m) for c, m in enumerate(mains)]
    count = [
        split_feature(ranked[c], train_x, train_y == c, test_x, test_y == c, seed=seed).num_split_features == len(m)
        for c, m in enumerate(mains)
    ]
    return {"top": float(np.mean(top)), "count": float(np.mean(count)), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--n-train", type=int, nargs="+", default=[3200, 8000, 20000])
    args = parser.parse_args()
    print(f"d_sae {args.d_sae}, {args.seeds} seeds; mean (min) over seeds")
    print(f"{'recipe':<10}{'n_train':>8}{'top':>14}{'count':>14}{'seconds':>9}")
    for n_train in args.n_train:
        for recipe in ("saeatlas", "saebench"):
            runs = [one_run(recipe, n_train, args.d_sae, seed) for seed in range(args.seeds)]
            top, count = np.array([r["top"] for r in runs]), np.array([r["count"] for r in runs])
            seconds = np.mean([r["seconds"] for r in runs])
            print(
                f"{recipe:<10}{n_train:>8}{top.mean():>8.3f} ({top.min():.2f})"
                f"{count.mean():>8.3f} ({count.min():.2f}){seconds:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
