"""Matched latent pairs as cards: each latent's top activating contexts in its own model, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import read_json
from ..schema import checked_results


def strongest_pairs(comparison: dict, n: int) -> list[tuple[int, int, float]]:
    """The n matched pairs (idx_a, idx_b, corr) with the highest correlation of one comparison, no latent
    shown twice (many-to-one matching pairs one A latent with many B latents: only its strongest pair)."""
    pairs = comparison.get("pairs") or {}
    corr = np.asarray(pairs.get("corr", []), dtype=float)
    chosen, seen_a, seen_b = [], set(), set()
    for i in np.argsort(-corr, kind="stable"):
        a, b = int(pairs["idx_a"][i]), int(pairs["idx_b"][i])
        if a in seen_a or b in seen_b:
            continue
        chosen.append((a, b, float(corr[i])))
        seen_a.add(a)
        seen_b.add(b)
        if len(chosen) == n:
            break
    return chosen


def pair_cards(results_path: Path, per_layer_pair: int, n_contexts: int = 3) -> list[dict]:
    """Cards for the strongest pairs of every layer pair of a compare results file."""
    from ..compare.contexts import top_contexts
    from ..data.store import ActivationStore
    from ..sae.formats import load_sae, sae_folder

    results = read_json(
        results_path, f"no comparison results at {results_path}: run the comparison first", "run the comparison again"
    )
    checked_results(results, "compare", results_path, "run the comparison again")
    cfg = results["config"]
    stores = {"a": ActivationStore(cfg["store_a"]), "b": ActivationStore(cfg["store_b"])}
    chosen = [(entry, strongest_pairs(entry["sae"], per_layer_pair)) for entry in results["pairs"]]
    # every latent a (side, hook) needs, so each store hook is encoded once however many layer pairs use it
    wanted: dict[tuple[str, str], set[int]] = {}
    for entry, pairs in chosen:
        for idx_a, idx_b, _ in pairs:
            wanted.setdefault(("a", entry["hook_a"]), set()).add(idx_a)
            wanted.setdefault(("b", entry["hook_b"]), set()).add(idx_b)
    contexts = {
        (side, hook): top_contexts(
            stores[side], load_sae(sae_folder(cfg[f"saes_{side}"], hook)), hook, sorted(latents), n=n_contexts
        )
        for (side, hook), latents in wanted.items()
    }
    return [
        {
            "hook_a": entry["hook_a"],
            "hook_b": entry["hook_b"],
            "idx_a": idx_a,
            "idx_b": idx_b,
            "corr": corr,
            "a": contexts["a", entry["hook_a"]].get(idx_a, []),
            "b": contexts["b", entry["hook_b"]].get(idx_b, []),
        }
        for entry, pairs in chosen
        for idx_a, idx_b, corr in pairs
    ]
