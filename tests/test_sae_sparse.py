"""The sparse TopK training path gives the same losses and gradients as dense autograd."""

from __future__ import annotations

import pytest
import torch

from saeatlas import native
from saeatlas.sae import SAEConfig, SparseAutoencoder, TrainConfig
from saeatlas.sae.activations import batch_topk, topk
from saeatlas.sae.sparse import SparseCodes, decode_sparse, fast_topk
from saeatlas.sae.trainer import aux_k_loss, sparse_losses


@pytest.fixture(params=["native", "torch"])
def kernels(request, monkeypatch):
    """Run a test with the compiled kernels and again with their torch fallbacks."""
    if request.param == "torch":
        monkeypatch.setattr(native, "library", lambda: None)
    elif native.library() is None:
        pytest.skip("no working C compiler: the native kernels are not built")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width,k", [(16384, 32), (5000, 16), (4096, 32), (1024, 8), (100, 5), (48, 40)])
def test_fast_topk_matches_torch_topk(width, k, dtype, kernels):
    g = torch.Generator().manual_seed(width + k)
    pre = torch.randn(64, width, generator=g).to(dtype)
    pre[:4] = pre[:4].round()  # many ties
    bias = torch.randn(width, generator=g) * 0.1
    biased = pre.float() + bias
    values, indices = fast_topk(pre, k, bias)
    expected = biased.topk(k, dim=-1).values
    assert torch.equal(values.float().sort(-1, descending=True).values, expected)
    assert torch.equal(biased.gather(1, indices), values.float())
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # distinct latents per row


def _sae(arch: str, d_in=24, d_sae=256, k=6) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k), g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=g)
        sae.b_dec.normal_(0, 0.2, generator=g)
        sae.W_enc.add_(0.2 * torch.randn(sae.W_enc.shape, generator=g))
    return sae.train()


def _grads(sae) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_step_equals_dense_autograd(arch, with_dead, kernels):
    sae = _sae(arch)
    x = torch.randn(128, 24, generator=torch.Generator().manual_seed(4)) * 2
    train = TrainConfig(compute_dtype="float32", aux_k_coefficient=0.5)
    dead = torch.zeros(256, dtype=torch.bool)
    if with_dead:
        dead[::3] = True

    result = sparse_losses(sae, x, train, dead)
    result.loss.backward()
    sparse_grads = _grads(sae)
    sae.zero_grad(set_to_none=True)

    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    codes = topk(pre, sae.cfg.k) if arch == "topk" else batch_topk(pre, sae.cfg.k)
    recon = codes @ sae.W_dec + sae.b_dec
    mse = ((recon - x) ** 2).sum(-1).mean()
    loss = mse
    if with_dead:
        aux_codes = topk(pre.masked_fill(~dead, -torch.inf), min(24 // 2, int(dead.sum())))
        loss = loss + 0.5 * aux_k_loss(x, recon, aux_codes @ sae.W_dec)
    loss.backward()
    dense_grads = _grads(sae)

    torch.testing.assert_close(result.mse, mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.loss, loss, rtol=1e-5, atol=1e-6)
    assert result.l0 == pytest.approx(float((codes > 0).sum(-1).float().mean()))
    assert torch.equal(result.fired, (codes > 0).any(0))
    assert sparse_grads.keys() == dense_grads.keys() == {"W_enc_T", "b_enc", "b_dec", "W_dec"}
    for name in dense_grads:
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sparse_decode_equals_dense_product(kernels):
    sae = _sae("topk")
    x = torch.randn(32, 24)
    result_codes = sae.encode(x)
    rows, cols = result_codes.nonzero(as_tuple=True)
    codes = SparseCodes(cols, result_codes[rows, cols], torch.searchsorted(rows, torch.arange(32)), 256)
    torch.testing.assert_close(codes.to_dense(), result_codes)
    torch.testing.assert_close(
        decode_sparse(codes, sae.W_dec, sae.b_dec), sae.decode(result_codes), rtol=1e-5, atol=1e-5
    )
