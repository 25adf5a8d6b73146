"""What several sections read from the results: the models' labels, the comparisons and their colours,
each layer pair's real pair and controls."""

from __future__ import annotations

from ..svg import BLUE, GREEN, ORANGE, PURPLE, RED

COMPARISONS = {  # comparison kind -> (label in the report, short label for legends, colour)
    "sae": ("real pair: SAE A x SAE B", "real pair", BLUE),
    "skyline": ("skyline: SAE A x SAE A, other seed", "skyline (A, other seed)", GREEN),
    "random_init": ("random-init SAE for B", "random-init SAE B", RED),
    "shifted": ("B shifted one token", "B shifted", ORANGE),
    "neurons": ("raw neurons", "raw neurons", PURPLE),
}


def model_labels(results: dict) -> tuple[str, str]:
    """The study's labels of model A and model B of the comparison."""
    cmp = (results.get("study") or {}).get("compare") or {}
    return cmp.get("label_a") or "A", cmp.get("label_b") or "B"


def grid_comparison(results: dict) -> dict | None:
    """The layer-grid comparison of the results, or None when it did not run (or matched no layer pair)."""
    compare = results.get("compare")
    return compare if compare and compare.get("pairs") else None


def skylines(compare: dict) -> dict[str, dict]:
    """layer_a -> the skyline comparison of that layer of A (A's SAE against another seed's)."""
    return {e["hook_a"]: e["skyline"] for e in compare.get("skyline") or []}


def comparison_bodies(compare: dict, entry: dict) -> list[tuple[str, dict]]:
    """(kind, comparison) of one layer pair: the real pair, the skyline of its A layer, the other controls."""
    skyline = skylines(compare)
    bodies = [(k, entry[k]) for k in ("sae", "random_init", "shifted", "neurons") if entry.get(k)]
    if entry["hook_a"] in skyline:
        bodies.insert(1, ("skyline", skyline[entry["hook_a"]]))
    return bodies
