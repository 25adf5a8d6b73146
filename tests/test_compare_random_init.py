"""The random_init control fires like the real SAE: same L0 and code scale on the same activations."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from saeatlas.compare.codes import random_like
from saeatlas.sae.config import SAEConfig
from saeatlas.sae.model import SparseAutoencoder
from saeatlas.sae.synthetic import planted_features

D_SAE = 512


@cache
def activations() -> torch.Tensor:
    """[6000, 32] planted sparse features, scaled and offset like a residual stream (a mean far from 0)."""
    x, _ = planted_features(6000, n_features=256, d=32, active=5, noise=0.01, seed=0)
    return 7 * x + 3 * torch.randn(32, generator=torch.Generator().manual_seed(5))


def real_sae(arch: str, x: torch.Tensor) -> SparseAutoencoder:
    """A sparse SAE standing in for a trained one: decoder rows on the data's features (two noisy copies
    each), b_dec the data mean, and each latent's threshold (relu: bias) at its own 98th percentile, so that
    it fires about 10 latents per token with latent-specific thresholds."""
    _, features = planted_features(1, n_features=256, d=32, active=5, noise=0.01, seed=0)
    cfg = SAEConfig(arch=arch, d_sae=D_SAE, k=10, d_in=32)
    sae = SparseAutoencoder(cfg, torch.Generator().manual_seed(3)).eval()
    with torch.no_grad():
        rows = torch.cat([features, features]) + 0.1 * torch.randn(D_SAE, 32, generator=torch.Generator())
        sae.W_dec.copy_(rows / rows.norm(dim=1, keepdim=True))
        sae.W_enc_T.copy_(sae.W_dec)
        sae.b_dec.copy_(x.mean(0))
        threshold = torch.quantile(sae.pre_activations(x), 0.98, dim=0)  # [d_sae]
        if arch == "relu":
            sae.b_enc.copy_(-threshold)
        elif arch in ("jumprelu", "gba"):
            sae.threshold.copy_(threshold)
    return sae


def l0_and_scale(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        codes = sae.encode(x)
    fired = codes != 0
    return float(fired.sum(1).float().mean()), float(codes[fired].abs().mean())


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gba", "topk", "batchtopk"])
def test_random_init_control_has_the_real_saes_l0_and_code_scale(arch):
    x = activations()
    real = real_sae(arch, x)
    l0, scale = l0_and_scale(real, x)
    assert 5 <= l0 <= 12  # sparse, as trained SAEs are
    # A plain random SAE of the same architecture (the old control) fires far more for the ReLU-like ones.
    plain_l0 = l0_and_scale(SparseAutoencoder(real.cfg, torch.Generator().manual_seed(1)).eval(), x)[0]
    if arch in ("relu", "jumprelu", "gba"):
        assert plain_l0 > 0.3 * D_SAE and plain_l0 > 20 * l0
    # Calibrated on a sample of 1000 of the 6000 rows, judged on all of them.
    control = random_like(real.cfg, x[:1000], l0, scale, torch.Generator().manual_seed(1))
    control_l0, control_scale = l0_and_scale(control, x)
    assert control_l0 == pytest.approx(l0, rel=0.1)
    assert control_scale == pytest.approx(scale, rel=0.1)
    assert not torch.allclose(control.W_dec, real.W_dec)  # still random: nothing of the real SAE but its figures


def test_random_init_control_keeps_its_latents_alive_and_varied():
    """One threshold for all latents, on inputs centred at their median: most latents fire somewhere, and no
    latent fires on most tokens (which would happen with the raw, offset inputs)."""
    x = activations()
    real = real_sae("jumprelu", x)
    l0, scale = l0_and_scale(real, x)
    control = random_like(real.cfg, x, l0, scale, torch.Generator().manual_seed(1))
    with torch.no_grad():
        rate = (control.encode(x) != 0).float().mean(0)  # [d_sae] firing rate of each latent
    assert (rate > 0).float().mean() > 0.5
    assert rate.max() < 0.5


# ---------------------------------------------------------------- the control as `compare` builds it
@pytest.fixture(scope="module")
def relu_setup(tiny_llama, long_corpus, tmp_path_factory):
    """One tiny store and a ReLU SAE trained a little on it (sparse: a few latents per token)."""
    from helpers import HOOK, tiny_store

    from saeatlas.cli import main

    root = tmp_path_factory.mktemp("random-init")
    tiny_store(tiny_llama, long_corpus, root / "store", tokens=30_000, context=32, batch_size=8)
    args = ["train", "--store", str(root / "store"), "--hook", HOOK, "--arch", "relu", "--width", "256"]
    args += ["--steps", "300", "--batch-size", "128", "--quiet", "--out", str(root / f"sae-{HOOK}")]
    assert main(args) == 0
    return root, HOOK


def test_compare_builds_the_random_init_control_with_the_real_l0(relu_setup):
    from saeatlas.compare.align import align_stores
    from saeatlas.compare.config import CompareConfig
    from saeatlas.compare.sides import SideCache
    from saeatlas.data.store import ActivationStore

    root, hook = relu_setup
    store = ActivationStore(root / "store")
    cfg = CompareConfig(
        store_a=str(root / "store"),
        store_b=str(root / "store"),
        saes_a=str(root / "sae-{hook}"),
        saes_b=str(root / "sae-{hook}"),
        hooks_a=[hook],
        hooks_b=[hook],
    )
    sides = SideCache(cfg, store, store, align_stores(store, store))
    real, control = sides.get("sae", "b", cfg.hooks_b[0]), sides.get("random_init", "b", cfg.hooks_b[0])
    l0_real = real.codes.nnz / real.codes.shape[0]
    l0_control = control.codes.nnz / control.codes.shape[0]
    assert l0_real < 0.25 * 256  # the trained SAE is sparse
    assert l0_control == pytest.approx(l0_real, rel=0.1)
    assert float(control.codes.data.mean()) == pytest.approx(float(real.codes.data.mean()), rel=0.1)
