"""Sparse codes and streaming Pearson correlation against naive dense references.

The reference is numpy's corrcoef on dense float64 copies.  Inputs include the
cases the paper's code got wrong: latents that never fire, a latent that is
constant, and all-zero rows (positions where no latent fires).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from saeatlas.compare.codes import encode_sparse, top_positions
from saeatlas.compare.correlate import (
    _RowGather,
    pearson_dense,
    pearson_sparse,
)
from saeatlas.errors import SaeAtlasError
from saeatlas.sae import SAEConfig, SparseAutoencoder


def reference(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """[d_a, d_b] float64 Pearson correlations (NaN for zero-variance columns), by np.corrcoef."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = np.corrcoef(xa.T.astype(np.float64), xb.T.astype(np.float64))
    return full[: xa.shape[1], xa.shape[1] :]


def topk_codes(rng, n: int, d: int, k: int) -> np.ndarray:
    """[n, d] float32 with exactly k positive entries per row (TopK-style)."""
    x = np.zeros((n, d), dtype=np.float32)
    cols = np.argsort(rng.random((n, d)), axis=1)[:, :k]
    np.put_along_axis(x, cols, rng.lognormal(size=(n, k)).astype(np.float32), axis=1)
    return x


def planted_pair(seed: int = 0, n: int = 600, d_a: int = 24, d_b: int = 17, regular: bool = False):
    """Codes of A and B [n, d] float32: B latents 0-5 follow A latents 0-5 (noisily); A latent 3 and B
    latent 4 never fire; B latent 7 is constant (ragged case); rows 10-19 are all zero (B: but for the
    constant latent)."""
    rng = np.random.default_rng(seed)
    if regular:
        xa, xb = topk_codes(rng, n, d_a, 4), topk_codes(rng, n, d_b, 3)
    else:
        xa = ((rng.random((n, d_a)) < 0.15) * rng.lognormal(size=(n, d_a))).astype(np.float32)
        xb = ((rng.random((n, d_b)) < 0.2) * rng.lognormal(size=(n, d_b))).astype(np.float32)
        xb[:, :6] = np.where(rng.random((n, 6)) < 0.7, xa[:, :6] * 1.5, xb[:, :6])  # needs d_a, d_b >= 8
        xa[::7] = 0.0  # irregular row lengths
    xa[:, 3] = 0.0
    xb[:, 4] = 0.0
    xa[10:20] = 0.0
    xb[10:20] = 0.0
    if not regular:
        xb[:, 7] = 0.75
    return xa, xb


def all_correlations(result) -> np.ndarray:
    """[d_a, d_b] float64 from the candidates of each A latent (top_m = d_b), NaN where missing."""
    d_a, d_b = len(result.dead_a), len(result.dead_b)
    out = np.full((d_a, d_b), np.nan)
    rows = np.repeat(np.arange(d_a), result.cand_b_for_a.shape[1])
    cols = result.cand_b_for_a.reshape(-1)
    ok = cols >= 0
    out[rows[ok], cols[ok]] = result.cand_corr_b_for_a.reshape(-1)[ok]
    return out


def masked_argmax(c: np.ndarray, axis: int) -> np.ndarray:
    safe = np.where(np.isnan(c), -np.inf, c)
    best = safe.argmax(axis)
    return np.where(np.isfinite(safe.max(axis)), best, -1)


# ---------------------------------------------------------------- pearson_sparse
@pytest.mark.parametrize("regular", [False, True], ids=["ragged-rows", "topk-rows"])
@pytest.mark.parametrize("block", [None, 5])
def test_pearson_sparse_equals_dense_reference(regular, block):
    xa, xb = planted_pair(regular=regular)
    a, b = sp.csr_array(xa), sp.csr_array(xb)
    assert _RowGather(b).padded == regular  # both ways of gathering B rows are exercised
    d_a, d_b = xa.shape[1], xb.shape[1]
    result = pearson_sparse(a, b, top_m=max(d_a, d_b), dense=True, block=block)
    ref = reference(xa, xb)

    ours = all_correlations(result)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    diff = np.nanmax(np.abs(ours - ref))
    print(f"max |pearson_sparse - corrcoef| (float64): {diff:.2e}")
    assert diff <= 1e-9
    assert np.array_equal(np.isnan(result.matrix), np.isnan(ref))
    assert np.nanmax(np.abs(result.matrix - ref)) <= 1e-6  # float32 matrix

    assert np.array_equal(result.dead_a, np.isnan(ref).all(1))
    assert np.array_equal(result.dead_b, np.isnan(ref).all(0))
    assert result.dead_a[3] and result.dead_b[4] and (regular or result.dead_b[7])
    assert np.array_equal(result.best_b_for_a, masked_argmax(ref, 1))
    assert np.array_equal(result.best_a_for_b, masked_argmax(ref, 0))
    alive_b = ~result.dead_b
    best = np.where(np.isnan(ref), -np.inf, ref).max(0)
    np.testing.assert_allclose(result.best_corr_for_b[alive_b], best[alive_b], atol=1e-9, rtol=0)
    assert np.isnan(result.best_corr_for_b[result.dead_b]).all()
    assert (result.best_a_for_b[result.dead_b] == -1).all()
    assert result.n_positions == xa.shape[0]


def test_candidates_are_the_top_m_partners_on_both_sides():
    xa, xb = planted_pair(seed=1)
    ref = reference(xa, xb)
    result = pearson_sparse(sp.csr_array(xa), sp.csr_array(xb), top_m=3, block=4)
    assert result.matrix is None
    for cands, corr, table in (
        (result.cand_b_for_a, result.cand_corr_b_for_a, ref),
        (result.cand_a_for_b, result.cand_corr_a_for_b, ref.T),
    ):
        assert cands.shape == (table.shape[0], 3) and cands.dtype == np.int64
        for i, row in enumerate(table):
            if np.isnan(row).all():
                assert (cands[i] == -1).all() and np.isnan(corr[i]).all()
                continue
            expected = np.argsort(-np.where(np.isnan(row), -np.inf, row), kind="stable")[:3]
            assert list(cands[i]) == list(expected)
            np.testing.assert_allclose(corr[i], row[expected], atol=1e-9, rtol=0)
    assert np.array_equal(result.best_a_for_b, result.cand_a_for_b[:, 0])


def test_top_m_larger_than_the_other_side_is_padded():
    xa, xb = planted_pair(d_a=9, d_b=8)
    result = pearson_sparse(sp.csr_array(xa), sp.csr_array(xb), top_m=11)
    assert result.cand_a_for_b.shape == (8, 11) and result.cand_b_for_a.shape == (9, 11)
    alive_a = int((~result.dead_a).sum())
    alive_b_rows = ~result.dead_b
    assert (result.cand_a_for_b[alive_b_rows, alive_a:] == -1).all()
    assert np.isnan(result.cand_corr_a_for_b[alive_b_rows, alive_a:]).all()
    assert (result.cand_a_for_b[alive_b_rows, :alive_a] >= 0).all()


def test_no_positions_means_every_latent_is_dead():
    result = pearson_sparse(sp.csr_array((0, 4), dtype=np.float32), sp.csr_array((0, 3), dtype=np.float32), top_m=2)
    assert result.dead_a.all() and result.dead_b.all() and result.n_positions == 0
    assert (result.best_a_for_b == -1).all() and np.isnan(result.best_corr_for_a).all()


def test_pearson_sparse_rejects_bad_inputs():
    xa, xb = planted_pair()
    with pytest.raises(SaeAtlasError, match="positions"):
        pearson_sparse(sp.csr_array(xa), sp.csr_array(xb[:-1]))
    with pytest.raises(SaeAtlasError, match="top_m"):
        pearson_sparse(sp.csr_array(xa), sp.csr_array(xb), top_m=0)
    with pytest.raises(SaeAtlasError, match="pearson_dense"):
        pearson_sparse(xa, sp.csr_array(xb))


# ---------------------------------------------------------------- pearson_dense (neurons)
def test_pearson_dense_equals_reference_with_large_means():
    rng = np.random.default_rng(3)
    n = 700
    xa = rng.standard_normal((n, 9)) + np.linspace(0, 300, 9)  # residual streams have huge-mean neurons
    xb = 0.6 * xa[:, :5] @ rng.standard_normal((5, 6)) + rng.standard_normal((n, 6)) - 50
    xa[:, 2] = 4.0  # constant neuron: dead
    xa, xb = xa.astype(np.float32), xb.astype(np.float32)
    result = pearson_dense(torch.from_numpy(xa), xb, top_m=6, chunk=128)
    ref = reference(xa, xb)
    diff = np.nanmax(np.abs(all_correlations(result) - ref))
    print(f"max |pearson_dense - corrcoef| (float64): {diff:.2e}")
    assert diff <= 1e-9
    assert result.dead_a[2] and result.dead_a.sum() == 1
    assert result.matrix.shape == (9, 6) and np.isnan(result.matrix[2]).all()
    assert np.array_equal(result.best_a_for_b, masked_argmax(ref, 0))


# ---------------------------------------------------------------- codes
@pytest.mark.parametrize("arch", ["topk", "relu"])  # topk: straight to CSR via the top-k kernel; relu: dense chunks
def test_encode_sparse_keeps_exactly_the_nonzeros_of_encode(arch):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(arch=arch, d_in=12, d_sae=40, k=5), torch.Generator().manual_seed(0)).eval()
    x = torch.randn(70, 12)
    codes = encode_sparse(sae, x.split(16))
    assert isinstance(codes, sp.csr_array) and codes.dtype == np.float32 and codes.shape == (70, 40)
    with torch.no_grad():
        dense = torch.cat([sae.encode(chunk) for chunk in x.split(16)]).numpy()  # same matmul shapes
    assert codes.nnz == np.count_nonzero(dense)
    assert np.array_equal(codes.toarray(), dense)
    assert encode_sparse(sae, []).shape == (0, 40)
    with pytest.raises(SaeAtlasError, match="d_in 12"):
        encode_sparse(sae, [torch.randn(3, 11)])


def test_top_positions_matches_a_naive_sort():
    rng = np.random.default_rng(5)
    x = ((rng.random((50, 9)) < 0.2) * rng.integers(1, 6, size=(50, 9))).astype(np.float32)  # many ties
    x[:, 4] = 0.0
    x[:, 6] = 0.0
    x[[3, 8], 6] = [2.0, 7.0]  # fires twice
    top = top_positions(sp.csr_array(x), k=5)
    assert top.shape == (9, 5) and top.dtype == np.int64
    for j in range(9):
        fired = np.flatnonzero(x[:, j])
        expected = fired[np.argsort(-x[fired, j], kind="stable")][:5]  # largest first, ties by row
        assert list(top[j]) == list(expected) + [-1] * (5 - len(expected))
    assert (top[4] == -1).all() and list(top[6]) == [8, 3, -1, -1, -1]
