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

    batches: [n, d_in] raw activations (the SAE has its normalisation folded in), moved to the SAE's device;
    the sums stay on it (float64 where it has it) and come back to the CPU once.
    """
    from ..devices import has_float64

    sae.eval()
    device = sae.W_dec.device
    wide = torch.float64 if has_float64(device) else torch.float32
    n = 0
    sq_err = l0 = cos_sum = 0.0
    sum_x = sum_x2 = None
    fired = torch.zeros(sae.cfg.d_sae, dtype=wide, device=device)
    for x in batches:
        x = x.to(device=device, dtype=torch.float32)
        codes = sae.encode(x)
        recon = sae.decode(codes)
        n += x.shape[0]
        sq_err += float(((recon - x) ** 2).sum(dtype=wide))
        l0 += float((codes > 0).sum(dtype=wide))
        cos_sum += float(torch.nn.functional.cosine_similarity(recon, x, dim=-1).sum(dtype=wide))
        fired += (codes > 0).sum(0, dtype=wide)
        xs = x.to(wide)
        sum_x = xs.sum(0) if sum_x is None else sum_x + xs.sum(0)
        sum_x2 = (xs**2).sum() if sum_x2 is None else sum_x2 + (xs**2).sum()
    if n == 0:
        raise ValueError("no activations to evaluate")
    total_var = float(sum_x2.double().cpu() - (sum_x.double().cpu() ** 2).sum() / n)  # sum over dims of n * var
    freq = (fired.double().cpu() / n).numpy()
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


# ---------------------------------------------------------------- per-document figures and their standard errors
def mean_se(values: np.ndarray) -> tuple[float, float | None]:
    """Mean of per-document values [D] and its standard error sd / sqrt(D) (None with fewer than 2)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) >= 2 else None
    return float(v.mean()), se


def ratio_se(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float | None]:
    """mean(numerator) / mean(denominator) over documents [D] and its delta-method standard error.

    With R = mean(a) / mean(b), the linearisation a_d - R b_d has the variance of R * mean(b), so
    SE(R) = sd(a - R b) / (sqrt(D) |mean(b)|) (the ratio estimator of survey sampling: Cochran, "Sampling Techniques", 1977, ch. 6).
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (numerator, denominator))
    ratio = float(a.mean() / b.mean())
    if len(a) < 2:
        return ratio, None
    return ratio, float((a - ratio * b).std(ddof=1) / (np.sqrt(len(a)) * abs(b.mean())))


def downstream_figures(clean: np.ndarray, sae: np.ndarray, zero: np.ndarray, kl: np.ndarray) -> dict:
    """The spliced figures as means over documents, each with `<name>_se`, its standard error over documents.

    clean, sae, zero, kl: [D] per-document mean next-token CE clean / with the SAE / zero-ablated and mean
    KL(clean || spliced).  CE-loss recovered = (zero - sae) / (zero - clean) of the means, its SE by the delta
    method (`ratio_se`); delta LM loss = sae - clean, its SE from the paired differences.
    """
    clean, sae, zero, kl = (np.asarray(x, dtype=np.float64) for x in (clean, sae, zero, kl))
    figures = {
        "ce_clean": mean_se(clean),
        "ce_sae": mean_se(sae),
        "ce_zero_ablation": mean_se(zero),
        "ce_loss_recovered": ratio_se(zero - sae, zero - clean),
        "delta_lm_loss": mean_se(sae - clean),
        "kl_div": mean_se(kl),
    }
    out: dict = {}
    for name, (value, se) in figures.items():
        out[name], out[f"{name}_se"] = value, se
    return out
