"""Reconstruction and sparsity metrics of an SAE on held-out activations.

All sums are accumulated in float64 over batches, so the figures do not depend
on the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .model import SparseAutoencoder

DENSE_FREQUENCY = 0.1
"""A latent firing on more than this fraction of tokens counts as dense."""
HISTOGRAM_EDGES = np.arange(-8.0, 0.5, 0.5)
"""log10 firing-frequency bin edges of the density histogram (dead latents counted apart)."""


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, batches: Iterable[torch.Tensor]) -> dict:
    """L0, MSE, FVU, explained variance, cosine, dead / dense fractions, density histogram.

    batches: [n, d_in] raw activations (the SAE has its normalisation folded in).
    """
    sae.eval()
    n = 0
    sq_err = l0 = cos_sum = 0.0
    sum_x = sum_x2 = None
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for x in batches:
        x = x.float()
        codes = sae.encode(x)
        recon = sae.decode(codes)
        n += x.shape[0]
        sq_err += float(((recon - x) ** 2).sum(dtype=torch.float64))
        l0 += float((codes > 0).sum(dtype=torch.float64))
        cos_sum += float(torch.nn.functional.cosine_similarity(recon, x, dim=-1).sum(dtype=torch.float64))
        fired += (codes > 0).sum(0, dtype=torch.float64)
        xs = x.double()
        sum_x = xs.sum(0) if sum_x is None else sum_x + xs.sum(0)
        sum_x2 = (xs**2).sum() if sum_x2 is None else sum_x2 + (xs**2).sum()
    if n == 0:
        raise ValueError("no activations to evaluate")
    total_var = float(sum_x2 - (sum_x**2).sum() / n)  # sum over dims of n * variance
    freq = (fired / n).numpy()
    alive = freq[freq > 0]
    hist, _ = (
        np.histogram(np.log10(alive), bins=HISTOGRAM_EDGES)
        if len(alive)
        else (np.zeros(len(HISTOGRAM_EDGES) - 1), None)
    )
    fvu = sq_err / max(total_var, 1e-30)
    return {
        "n_tokens": n,
        "l0": l0 / n,
        "mse": sq_err / n,
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "cosine": cos_sum / n,
        "dead_fraction": float((freq == 0).mean()),
        "dense_fraction": float((freq > DENSE_FREQUENCY).mean()),
        "density_histogram": {
            "log10_edges": HISTOGRAM_EDGES.tolist(),
            "counts": hist.astype(int).tolist(),
            "dead": int((freq == 0).sum()),
        },
    }
