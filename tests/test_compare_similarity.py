"""Similarity measures of paired point sets: planted canonical correlations, invariances, references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from saeatlas.compare.similarity import (
    MEASURES,
    linear_cka,
    mutual_knn,
    procrustes,
    pwcca,
    rsa,
    rsa_sample,
    svcca,
    svcca_details,
    svcca_legacy,
)
from saeatlas.errors import SaeAtlasError

RHO = np.array([0.9, 0.6, 0.3])


def _orthonormal_centred(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k] centred columns, exactly orthonormal."""
    G = rng.normal(size=(n, k))
    return np.linalg.qr(G - G.mean(axis=0))[0]


def _planted_sources(n: int, d_a: int, d_b: int, rho=RHO, seed: int = 0):
    """Sa [n, d_a], Sb [n, d_b], orthonormal centred columns whose sample canonical correlations are exactly
    rho followed by zeros: Sa = [z, e_a], Sb = [rho z + sqrt(1 - rho^2) z', e_b], all of z, z', e_a, e_b
    orthonormal.  Exact (not merely in expectation), so the tests can ask for 1e-9."""
    m = len(rho)
    Q = _orthonormal_centred(n, 2 * m + (d_a - m) + (d_b - m), np.random.default_rng(seed))
    z, z2 = Q[:, :m], Q[:, m : 2 * m]
    e_a, e_b = Q[:, 2 * m : m + d_a], Q[:, m + d_a :]
    return np.hstack([z, e_a]), np.hstack([rho * z + np.sqrt(1 - rho**2) * z2, e_b])


def _rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


# ---------------------------------------------------------------- planted canonical correlations
def test_svcca_recovers_planted_correlations_under_invertible_mixing():
    """CCA is invariant to invertible maps: with every direction kept, the correlations are the planted ones."""
    Sa, Sb = _planted_sources(20_000, 8, 6)
    rng = np.random.default_rng(1)
    X, Y = Sa @ rng.normal(size=(8, 8)) + 3.0, Sb @ rng.normal(size=(6, 6)) - 1.0
    details = svcca_details(X, Y, k=8)
    assert (details["k_a"], details["k_b"]) == (8, 6)  # k capped at min(n - 1, d) per side
    np.testing.assert_allclose(details["correlations"], [0.9, 0.6, 0.3, 0, 0, 0], atol=1e-9)
    assert details["svcca"] == pytest.approx(1.8 / 6, abs=1e-9)


def _principal_planted(n=20_000, seed=0):
    """X, Y whose top-3 principal directions are the shared components (scales 10, 9, 8 and 7, 5, 3; own
    components at 0.1), rotated by random orthogonal maps."""
    Sa, Sb = _planted_sources(n, 8, 6, seed=seed)
    sa, sb = np.array([10, 9, 8, 0.1, 0.1, 0.1, 0.1, 0.1]), np.array([7, 5, 3, 0.1, 0.1, 0.1])
    return Sa * sa @ _rotation(8, seed + 1), Sb * sb @ _rotation(6, seed + 2), sa


@pytest.mark.parametrize("kwargs", [{"k": 3}, {}, {"variance": 0.999}])
def test_svcca_with_the_right_k_recovers_the_mean_planted_correlation(kwargs):
    X, Y, _ = _principal_planted()
    details = svcca_details(X, Y, **kwargs)
    assert (details["k_a"], details["k_b"]) == (3, 3)
    np.testing.assert_allclose(details["correlations"], RHO, atol=1e-9)
    assert svcca(X, Y, **kwargs) == pytest.approx(RHO.mean(), abs=1e-9)


def test_variance_fraction_picks_the_fewest_directions_reaching_it():
    X, Y, _ = _principal_planted()
    # X's explained variance: 100/245.05, 181/245.05, 245/245.05, ...: 0.5 needs 2, 0.74 needs 2, 0.75 needs 3
    assert svcca_details(X, Y, variance=0.5)["k_a"] == 2
    assert svcca_details(X, Y, variance=0.738)["k_a"] == 2
    assert svcca_details(X, Y, variance=0.75)["k_a"] == 3
    assert svcca_details(X, Y, variance=1.0)["k_a"] == 8


def test_pwcca_hand_value_on_planted_data():
    """Canonical directions = X's principal axes, so the weights are X's singular values 10, 9, 8."""
    X, Y, _ = _principal_planted()
    expected = (10 * 0.9 + 9 * 0.6 + 8 * 0.3) / 27
    assert pwcca(X, Y, k=3) == pytest.approx(expected, abs=1e-9)
    assert pwcca(X, Y) == pytest.approx(expected, abs=1e-9)


def test_pwcca_equal_correlations_give_that_correlation():
    Sa, Sb = _planted_sources(5000, 5, 5, rho=np.array([0.7, 0.7, 0.7]))
    X = Sa[:, :3] * [3.0, 2.0, 1.0] @ _rotation(3, 0)
    Y = Sb[:, :3] @ _rotation(3, 1)
    assert pwcca(X, Y, k=3) == pytest.approx(0.7, abs=1e-9)


def _pwcca_reference(X, Y, k):
    """Morcos et al. 2018 step by step: SVD-reduce, CCA by whitening, canonical variates, QR, sum of |projections|."""

    def reduce(A):
        Ac = A - A.mean(axis=0)
        U, s, _ = np.linalg.svd(Ac, full_matrices=False)
        return U[:, :k] * s[:k]

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S)
        return V @ np.diag(w**-0.5) @ V.T

    Xr, Yr = reduce(X), reduce(Y)
    Wx, Wy = inv_sqrt(Xr.T @ Xr), inv_sqrt(Yr.T @ Yr)
    Uc, rho, _ = np.linalg.svd(Wx @ (Xr.T @ Yr) @ Wy, full_matrices=False)
    H, _ = np.linalg.qr(Xr @ Wx @ Uc)  # canonical variates of X, orthonormalised as in the public PWCCA code
    weights = np.abs(H.T @ Xr).sum(axis=1)
    return float((weights / weights.sum()) @ rho)


@pytest.mark.parametrize("k", [2, 5, 9])
def test_pwcca_matches_a_step_by_step_reference(k):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 12)) * np.linspace(3, 0.5, 12)
    Y = X[:, :9] @ rng.normal(size=(9, 9)) + 2 * rng.normal(size=(400, 9))
    assert pwcca(X, Y, k=k) == pytest.approx(_pwcca_reference(X, Y, k), abs=1e-9)


def test_pwcca_is_defined_when_reduced_spaces_must_share_directions():
    """n = 12 points, k = 10 per side: the spaces share 9 directions (correlation 1, repeated); the value must
    not depend on which basis of that span the SVD returns (here: on the order of Y's columns)."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(12, 20)), rng.normal(size=(12, 15))
    details = svcca_details(X, Y, k=10)
    assert np.sum(details["correlations"] > 1 - 1e-9) == 9
    assert pwcca(X, Y, k=10) == pytest.approx(pwcca(X, Y[:, ::-1], k=10), abs=1e-9)


# ---------------------------------------------------------------- legacy SVCCA
def test_svcca_legacy_is_abs_pearson_of_first_pc_scores():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 10)) * np.linspace(2, 1, 10)
    Y = X[:, :7] @ rng.normal(size=(7, 8)) + rng.normal(size=(300, 8))
    pcs = []
    for A in (X, Y):
        Ac = A - A.mean(axis=0)
        pcs.append(Ac @ np.linalg.svd(Ac, full_matrices=False)[2][0])
    expected = abs(np.corrcoef(pcs[0], pcs[1])[0, 1])
    assert svcca_legacy(X, Y) == pytest.approx(expected, abs=1e-12)
    assert svcca(X, Y, k=1) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- invariances
def _embedding(d_a: int, d_b: int, kind: str, seed: int) -> np.ndarray:
    """[d_a, d_b] with orthonormal rows: a rotation, zero padding, or a random isometric embedding."""
    if kind == "pad":
        return np.eye(d_a, d_b)
    return _rotation(d_b, seed)[:d_a]


@pytest.mark.parametrize("d_b, kind", [(16, "rotation"), (24, "pad"), (24, "embed")])
def test_rotated_copy_scores_one(d_b, kind):
    X = np.random.default_rng(5).normal(size=(300, 16)) * np.linspace(3, 1, 16)
    Y = X @ _embedding(16, d_b, kind, seed=6)
    for Yv in (Y, 2.5 * Y + 7.0):  # shift and scale do not matter to these
        assert procrustes(X, Yv) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(X, Yv) == pytest.approx(1.0, abs=1e-12)
        assert svcca(X, Yv) == pytest.approx(1.0, abs=1e-12)
        assert svcca(X, Yv, k=5) == pytest.approx(1.0, abs=1e-12)
        assert pwcca(X, Yv) == pytest.approx(1.0, abs=1e-12)
    assert mutual_knn(X, Y, k=10) == 1.0  # cosine neighbours survive rotations, not shifts
    assert rsa(X, Y, inner="cosine") == pytest.approx(1.0, abs=1e-12)


def test_only_cca_forgives_a_non_orthogonal_map():
    X = np.random.default_rng(7).normal(size=(500, 10))
    Y = X @ np.diag(np.arange(1.0, 11.0))
    assert svcca(X, Y, k=10) == pytest.approx(1.0, abs=1e-12)
    assert procrustes(X, Y) < 0.95
    assert linear_cka(X, Y) < 0.95


# ---------------------------------------------------------------- references
def test_linear_cka_matches_feature_and_kernel_forms():
    rng = np.random.default_rng(8)
    X, Y = rng.normal(size=(200, 30)), rng.normal(size=(200, 20))
    Y[:, :10] += X[:, :10]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    feature = np.linalg.norm(Xc.T @ Yc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    H = np.eye(200) - 1 / 200
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    kernel = np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))
    assert linear_cka(X, Y) == pytest.approx(feature, abs=1e-12)
    assert linear_cka(X, Y) == pytest.approx(kernel, abs=1e-12)


@pytest.mark.parametrize("d_b", [12, 20])
def test_procrustes_matches_scipy(d_b):
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(100, 12)), rng.normal(size=(100, d_b))
    Y[:, :12] += X
    Xn, Yn = X - X.mean(0), Y - Y.mean(0)
    Xn, Yn = Xn / np.linalg.norm(Xn), Yn / np.linalg.norm(Yn)
    Xp = np.hstack([Xn, np.zeros((100, d_b - 12))])  # zero-pad the narrower side
    R, scale = scipy.linalg.orthogonal_procrustes(Xp, Yn)
    assert procrustes(X, Y) == pytest.approx(scale, abs=1e-12)
    assert procrustes(X, Y) == pytest.approx(np.sum((Xp @ R) * Yn), abs=1e-12)
    assert 0 < procrustes(X, Y) < 1


def _upper(S):
    return S[np.triu_indices(len(S), 1)]


def test_rsa_matches_scipy_on_the_upper_triangles():
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(60, 8)), rng.normal(size=(60, 5))
    Y[:, :3] += X[:, :3]
    ux, uy = _upper(np.corrcoef(X)), _upper(np.corrcoef(Y))
    assert rsa(X, Y) == pytest.approx(scipy.stats.spearmanr(ux, uy).statistic, abs=1e-12)
    assert rsa(X, Y, outer="pearson") == pytest.approx(scipy.stats.pearsonr(ux, uy).statistic, abs=1e-12)
    Xn, Yn = X / np.linalg.norm(X, axis=1, keepdims=True), Y / np.linalg.norm(Y, axis=1, keepdims=True)
    expected = scipy.stats.spearmanr(_upper(Xn @ Xn.T), _upper(Yn @ Yn.T)).statistic
    assert rsa(X, Y, inner="cosine") == pytest.approx(expected, abs=1e-12)


def test_rsa_ties_use_average_ranks():
    """Duplicate rows (one A latent matched by several B latents) tie whole rows of the inner matrix."""
    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    X[10:15] = X[3]
    ux, uy = np.round(_upper(np.corrcoef(X)), 12), np.round(_upper(np.corrcoef(Y)), 12)  # ties exact
    assert len(np.unique(ux)) < len(ux) - 100
    assert rsa(X, Y) == pytest.approx(scipy.stats.spearmanr(ux, uy).statistic, abs=1e-12)
    assert rsa(X, Y) == rsa(X[::-1], Y[::-1])  # the same ties whatever the row order


def test_rsa_subsample_is_seeded_and_the_same_on_both_sides():
    rng = np.random.default_rng(12)
    X, Y = rng.normal(size=(200, 6)), rng.normal(size=(200, 6))
    Y += X
    idx = rsa_sample(200, 50, seed=3)
    assert len(idx) == 50 and len(set(idx)) == 50
    assert rsa(X, Y, max_points=50, seed=3) == rsa(X[idx], Y[idx])
    assert rsa(X, Y, max_points=50, seed=3) != rsa(X, Y, max_points=50, seed=4)
    assert rsa(X, Y, max_points=200) == rsa(X, Y)


def test_mutual_knn_matches_brute_force():
    rng = np.random.default_rng(13)
    X, Y = rng.normal(size=(80, 5)), rng.normal(size=(80, 7))
    Y[:, :5] += 2 * X

    def neighbours(A, k):
        Z = A / np.linalg.norm(A, axis=1, keepdims=True)
        S = Z @ Z.T
        np.fill_diagonal(S, -np.inf)
        return [set(np.argsort(-row)[:k]) for row in S]

    for k in (1, 5, 10):
        nx, ny = neighbours(X, k), neighbours(Y, k)
        expected = np.mean([len(a & b) / k for a, b in zip(nx, ny)])
        assert mutual_knn(X, Y, k=k) == pytest.approx(expected, abs=1e-15)
    assert mutual_knn(X, X, k=5) == 1.0
    assert mutual_knn(X[:4], Y[:4], k=10) == mutual_knn(X[:4], Y[:4], k=3)  # k capped at n - 1


# ---------------------------------------------------------------- inputs
@pytest.mark.parametrize("measure", sorted(MEASURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_numpy_and_torch_inputs_agree(measure, dtype):
    rng = np.random.default_rng(14)
    Xt = torch.from_numpy(rng.normal(size=(50, 9))).to(dtype)
    Yt = torch.from_numpy(rng.normal(size=(50, 6))).to(dtype)
    Xn, Yn = Xt.to(torch.float64).numpy(), Yt.to(torch.float64).numpy()
    assert MEASURES[measure](Xt, Yt) == MEASURES[measure](Xn, Yn)
    assert isinstance(MEASURES[measure](Xt, Yt), float)


def test_all_measures_registered():
    assert set(MEASURES) == {"svcca", "svcca_legacy", "pwcca", "rsa", "linear_cka", "procrustes", "mutual_knn"}


@pytest.mark.parametrize("measure", sorted(MEASURES))
@pytest.mark.parametrize(
    "X, Y, match",
    [
        (np.zeros((10, 3)) + np.arange(3), np.ones((12, 4)), "same number of rows|pair row by row"),
        (np.full((10, 3), np.nan), np.ones((10, 4)), "NaN"),
        (np.eye(2, 3), np.eye(2, 4), "at least 3"),
        (np.ones(10), np.ones((10, 4)), "2-D"),
    ],
)
def test_bad_inputs_raise(measure, X, Y, match):
    with pytest.raises(SaeAtlasError, match=match):
        MEASURES[measure](X, Y)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X, Y: rsa(X, Y, inner="spearman"), "inner='spearman'"),
        (lambda X, Y: rsa(X, Y, outer="kendall"), "outer='kendall'"),
        (lambda X, Y: rsa(X, Y, max_points=2), "max_points"),
        (lambda X, Y: svcca(X, Y, variance=1.5), "variance"),
        (lambda X, Y: svcca(X, Y, k=0), "k=0"),
        (lambda X, Y: mutual_knn(X, Y, k=0), "k=0"),
        (lambda X, Y: svcca(np.ones_like(X), Y), "no variance"),
        (lambda X, Y: procrustes(np.full_like(X, 0.1), Y), "no variance"),  # the mean of 0.1s is not exactly 0.1
        (lambda X, Y: linear_cka(X, np.ones_like(Y)), "no variance"),
        (lambda X, Y: mutual_knn(np.zeros_like(X), Y), "all zero"),
    ],
)
def test_bad_options_raise(call, match):
    rng = np.random.default_rng(15)
    with pytest.raises(SaeAtlasError, match=match):
        call(rng.normal(size=(20, 4)), rng.normal(size=(20, 3)))
