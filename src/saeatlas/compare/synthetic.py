"""Two synthetic "models" that share some features: the ground truth of cross-model matching.

A set of shared true features is active at each position (sparse, positive
magnitudes).  Each has an intrinsic direction in a d_shared-dimensional space,
which different random linear maps embed into model A's d_a dimensions and
model B's d_b dimensions (then scaled to unit norm): the two models represent
the same features, related by a linear map, as SVCCA assumes.  Each model also
has features of its own (random directions), active independently.  An SAE
trained on each side should recover the features; matching latents across
the sides by activation correlation should then pair the latents of the same
shared feature, and the matched decoder spaces should score far above the
random-pairing null.  `unrelated=True` draws model B's shared sources
independently of A's: nothing is shared, and nothing should be significant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TwoModelData:
    """Activations of two synthetic models at the same positions, and their true features."""

    x_a: torch.Tensor
    """[n, d_a] model A's activations."""
    x_b: torch.Tensor
    """[n, d_b] model B's activations."""
    shared_a: torch.Tensor
    """[n_shared, d_a] unit directions of the shared features in A."""
    shared_b: torch.Tensor
    """[n_shared, d_b] the same features' directions in B."""
    own_a: torch.Tensor
    """[n_own, d_a] A's own features."""
    own_b: torch.Tensor
    """[n_own, d_b] B's own features."""
    doc: np.ndarray
    """[n] document (group) id of each position, for bootstraps over documents."""


def _directions(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, d, generator=g)
    return w / w.norm(dim=1, keepdim=True)


def _sources(n: int, n_features: int, active: int, g: torch.Generator) -> torch.Tensor:
    """[n, n_features] sparse positive magnitudes: `active` features per position, magnitudes in [0.5, 2]."""
    chosen = torch.rand(n, n_features, generator=g).topk(active, dim=1).indices
    values = 0.5 + 1.5 * torch.rand(n, active, generator=g)
    return torch.zeros(n, n_features).scatter_(1, chosen, values)


def two_model_data(
    n: int = 40_000,
    n_shared: int = 128,
    n_own: int = 64,
    d_a: int = 64,
    d_b: int = 48,
    d_shared: int = 40,
    active_shared: int = 3,
    active_own: int = 2,
    noise: float = 0.01,
    doc_length: int = 200,
    unrelated: bool = False,
    seed: int = 0,
) -> TwoModelData:
    """Positions of two models reading "the same text": shared sources drive both, own sources each side.

    With `unrelated`, B's shared sources are drawn independently of A's (same
    statistics, no common cause).
    """
    g = torch.Generator().manual_seed(seed)
    intrinsic = _directions(n_shared, d_shared, g)  # [n_shared, d_shared]
    shared_a = intrinsic @ torch.randn(d_shared, d_a, generator=g)
    shared_b = intrinsic @ torch.randn(d_shared, d_b, generator=g)
    shared_a, shared_b = shared_a / shared_a.norm(dim=1, keepdim=True), shared_b / shared_b.norm(dim=1, keepdim=True)
    own_a, own_b = _directions(n_own, d_a, g), _directions(n_own, d_b, g)
    shared = _sources(n, n_shared, active_shared, g)
    shared_for_b = _sources(n, n_shared, active_shared, g) if unrelated else shared
    x_a = shared @ shared_a + _sources(n, n_own, active_own, g) @ own_a + noise * torch.randn(n, d_a, generator=g)
    x_b = shared_for_b @ shared_b + _sources(n, n_own, active_own, g) @ own_b + noise * torch.randn(n, d_b, generator=g)
    return TwoModelData(x_a, x_b, shared_a, shared_b, own_a, own_b, np.arange(n) // doc_length)


def feature_of_latent(decoder: torch.Tensor, features: torch.Tensor, min_cosine: float = 0.9) -> np.ndarray:
    """[d_sae] index of the true feature each decoder row [d_sae, d] recovers (cosine >= min_cosine), else -1."""
    rows = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = rows @ (features / features.norm(dim=1, keepdim=True)).T  # [d_sae, n_features]
    best, which = cos.max(dim=1)
    return torch.where(best >= min_cosine, which, torch.full_like(which, -1)).numpy()


def matching_precision_recall(
    idx_a: np.ndarray, idx_b: np.ndarray, truth_a: np.ndarray, truth_b: np.ndarray, n_shared: int
) -> dict:
    """How well matched pairs (idx_a[i], idx_b[i]) pair the latents of the same shared feature.

    truth_*: `feature_of_latent` against the shared features only ([d_sae], -1 for latents of no shared
    feature).  precision: share of pairs whose two latents recover the same shared feature.  recall: share
    of the shared features that both SAEs recovered (the ones a matching can find) reached by such a pair;
    recall_of_all: the same over all n_shared features.
    """
    fa, fb = truth_a[idx_a], truth_b[idx_b]
    correct = (fa >= 0) & (fa == fb)
    found = np.unique(fa[correct])
    recoverable = np.intersect1d(truth_a[truth_a >= 0], truth_b[truth_b >= 0])
    return {
        "n_pairs": len(idx_a),
        "true_pairs": int(correct.sum()),
        "precision": float(correct.mean()) if len(idx_a) else 0.0,
        "recall": float(len(found) / max(1, len(recoverable))),
        "recoverable": len(recoverable),
        "recall_of_all": float(len(found) / n_shared),
    }
