"""Permutation nulls (fast path against a naive loop), p, z, Benjamini-Hochberg q."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from saeatlas.compare.similarity import MEASURES
from saeatlas.compare.stats import (
    _naive_null,
    _null_linear_cka,
    benjamini_hochberg,
    p_value,
    permutation_null,
    permutations,
    summarize,
    z_score,
)
from saeatlas.errors import SaeAtlasError


def _related(n=40, d_a=7, d_b=5, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_a)) * np.linspace(2, 0.5, d_a)
    Y = X[:, : min(d_a, d_b)] @ rng.normal(size=(min(d_a, d_b), d_b)) * 0.3 + rng.normal(size=(n, d_b))
    return X, Y


CASES = [
    ("svcca", {}),
    ("svcca", {"k": 3}),
    ("svcca", {"variance": 0.8}),
    ("pwcca", {}),
    ("pwcca", {"k": 4}),
    ("svcca_legacy", {}),
    ("rsa", {}),
    ("rsa", {"inner": "cosine", "outer": "pearson"}),
    ("rsa", {"max_points": 25}),
    ("linear_cka", {}),
    ("procrustes", {}),
    ("mutual_knn", {}),
    ("mutual_knn", {"k": 3}),
]


@pytest.mark.parametrize("measure, kwargs", CASES, ids=[f"{m}-{kw}" for m, kw in CASES])
@pytest.mark.parametrize("shape", [(40, 7, 5), (12, 20, 15)], ids=["n>d", "n<d"])
def test_fast_null_equals_naive_loop(measure, kwargs, shape):
    X, Y = _related(*shape)
    fast = permutation_null(measure, X, Y, n_permutations=20, seed=3, **kwargs)
    naive = _naive_null(measure, X, Y, n_permutations=20, seed=3, **kwargs)
    assert fast.shape == (20,)
    np.testing.assert_allclose(fast, naive, rtol=0, atol=1e-9)
    assert np.ptp(fast) > 0  # the permutations really differ


@pytest.mark.parametrize("path", ["gram", "products"])
def test_both_cka_null_paths_equal_naive(path):
    X, Y = _related(30, 6, 9)
    fast = _null_linear_cka(X, Y, 20, 5, _path=path)
    np.testing.assert_allclose(fast, _naive_null("linear_cka", X, Y, 20, seed=5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("measure, path", [("rsa", None), ("linear_cka", "gram")])
def test_large_gram_nulls_equal_naive_with_and_without_the_native_kernel(measure, path, native, monkeypatch):
    """From NATIVE_MIN_POINTS points on the RSA / CKA nulls run in the compiled kernel (float32 matrices)."""
    from saeatlas import native as native_module
    from saeatlas.compare import stats

    monkeypatch.setenv("SAEATLAS_NATIVE", native)
    native_module.library.cache_clear()
    try:
        if native == "1" and native_module.library() is None:
            pytest.skip("no C compiler: the native kernel cannot be built here")
        X, Y = _related(stats.NATIVE_MIN_POINTS + 44, 12, 9)
        fast = _null_linear_cka(X, Y, 12, 2, _path=path) if path else permutation_null(measure, X, Y, 12, seed=2)
        naive = _naive_null(measure, X, Y, 12, seed=2)
        np.testing.assert_allclose(fast, naive, rtol=1e-6 if native == "1" else 1e-12, atol=1e-9)
        assert np.ptp(fast) > 100 * np.abs(fast - naive).max()  # the permutations differ far beyond round-off
    finally:
        native_module.library.cache_clear()


def test_null_with_repeated_rows_equals_naive():
    """Many-to-1 matching repeats A latents: X has identical rows (tied inner similarities, tied PCs)."""
    X, Y = _related(30, 6, 5)
    X[10:16] = X[2]
    for measure in ("rsa", "svcca", "pwcca", "linear_cka", "procrustes"):
        np.testing.assert_allclose(
            permutation_null(measure, X, Y, 15, seed=0), _naive_null(measure, X, Y, 15, seed=0), rtol=0, atol=1e-9
        )


def test_permutations_are_seeded_and_independent_of_batching():
    a = np.concatenate(list(permutations(50, 23, seed=7, chunk=5)))
    b = np.concatenate(list(permutations(50, 23, seed=7, chunk=64)))
    assert a.shape == (23, 50)
    np.testing.assert_array_equal(a, b)
    assert (np.sort(a, axis=1) == np.arange(50)).all()
    assert not np.array_equal(a, np.concatenate(list(permutations(50, 23, seed=8, chunk=5))))


def test_same_seed_same_null_other_seed_other_null():
    X, Y = _related()
    n1 = permutation_null("svcca", X, Y, 30, seed=0)
    np.testing.assert_array_equal(n1, permutation_null("svcca", X, Y, 30, seed=0))
    assert not np.array_equal(n1, permutation_null("svcca", X, Y, 30, seed=1))


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_independent_sides_score_like_their_null(measure):
    rng = np.random.default_rng(20)
    X, Y = rng.normal(size=(150, 10)), rng.normal(size=(150, 8))
    s = summarize(MEASURES[measure](X, Y), permutation_null(measure, X, Y, 200, seed=0))
    assert abs(s["z"]) < 3
    assert s["p"] > 0.01


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_related_sides_are_far_above_their_null(measure):
    rng = np.random.default_rng(21)
    X = rng.normal(size=(150, 10))
    Y = X[:, :8] @ np.linalg.qr(rng.normal(size=(8, 8)))[0] + 0.3 * rng.normal(size=(150, 8))
    s = summarize(MEASURES[measure](X, Y), permutation_null(measure, X, Y, 200, seed=0))
    assert s["p"] == 1 / 201
    assert s["z"] > 5


# ---------------------------------------------------------------- p, z, summary
def test_p_value_and_z_score_on_a_hand_example():
    null = np.array([0.1, 0.5, 0.7, 0.2])
    assert p_value(0.5, null) == (2 + 1) / (4 + 1)  # 0.5 and 0.7 reach it
    assert p_value(0.8, null) == 1 / 5
    assert p_value(0.0, null) == 1.0
    null = np.array([1.0, 2.0, 3.0, 4.0])
    assert z_score(5.0, null) == pytest.approx(2.5 / math.sqrt(5 / 3), abs=1e-15)  # std (ddof 1) = sqrt(5/3)
    s = summarize(5.0, null)
    assert s == {
        "observed": 5.0,
        "null_mean": 2.5,
        "null_std": pytest.approx(math.sqrt(5 / 3)),
        "z": pytest.approx(2.5 / math.sqrt(5 / 3)),
        "p": 0.2,
        "n_permutations": 4,
    }


def test_p_value_counts_round_off_ties_and_z_handles_degenerate_nulls():
    assert p_value(0.3, np.array([0.3 - 1e-15, 0.1])) == 2 / 3
    assert math.isnan(z_score(1.0, np.ones(5)))
    assert z_score(2.0, np.ones(5)) == math.inf
    assert math.isnan(z_score(1.0, np.array([0.5])))
    assert math.isnan(p_value(math.nan, np.array([0.5])))
    with pytest.raises(SaeAtlasError, match="empty"):
        p_value(0.5, np.array([]))


# ---------------------------------------------------------------- Benjamini-Hochberg
@pytest.mark.parametrize("shape", [(50,), (3, 4, 5), (1,)])
def test_benjamini_hochberg_matches_scipy(shape):
    rng = np.random.default_rng(30)
    p = rng.uniform(size=shape) ** 3  # some small p-values
    q = benjamini_hochberg(p)
    assert q.shape == p.shape
    np.testing.assert_allclose(
        q, scipy.stats.false_discovery_control(p.ravel(), method="bh").reshape(shape), rtol=0, atol=1e-15
    )


def test_benjamini_hochberg_ties_and_bounds():
    p = np.array([0.01, 0.01, 0.04, 0.04, 1.0, 0.0])
    np.testing.assert_allclose(benjamini_hochberg(p), scipy.stats.false_discovery_control(p), atol=1e-15)
    assert benjamini_hochberg(p)[4] == 1.0
    with pytest.raises(SaeAtlasError, match="in \\[0, 1\\]"):
        benjamini_hochberg([0.1, np.nan])
    with pytest.raises(SaeAtlasError, match="in \\[0, 1\\]"):
        benjamini_hochberg([0.1, 1.5])


def _benjamini_hochberg_by_hand(p: np.ndarray) -> np.ndarray:
    """The step-up q-values written out (saeatlas' own implementation before it called SciPy)."""
    flat = np.asarray(p, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    m = flat.size
    scaled = flat[order] * m / np.arange(1, m + 1)
    q = np.empty(m)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q.reshape(np.shape(p))


@pytest.mark.parametrize("seed", range(8))
def test_benjamini_hochberg_equals_the_step_up_by_hand(seed):
    """Random p-values with ties and ones: the same q-values as the formula written out, up to the last bit
    (SciPy scales p by m / i, the formula by m then / i)."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 300))
    p = rng.uniform(size=m) ** rng.uniform(0.5, 4)
    p[rng.random(m) < 0.2] = 1.0
    p[: m // 3] = np.round(p[: m // 3], 2)  # ties
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, _benjamini_hochberg_by_hand(p), rtol=1e-15, atol=0)
    assert (q[p == 1.0] == 1.0).all()
    for value in np.unique(p):
        assert len(np.unique(q[p == value])) == 1  # tied p-values share their q-value
    grid = p[: (m // 6) * 6].reshape(2, 3, -1)
    np.testing.assert_array_equal(benjamini_hochberg(grid), benjamini_hochberg(grid.ravel()).reshape(grid.shape))


@pytest.mark.parametrize("p", [[0.0], [0.37], [1.0], [], [0.2, 0.2], [1.0, 1.0, 1.0], [0.05, 1.0]])
def test_benjamini_hochberg_small_cases_equal_the_step_up_by_hand(p):
    p = np.array(p, dtype=np.float64)
    q = benjamini_hochberg(p)
    assert q.shape == p.shape and q.dtype == np.float64
    np.testing.assert_array_equal(q, _benjamini_hochberg_by_hand(p))
    assert not np.shares_memory(q, p)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X, Y: permutation_null("cka", X, Y), "unknown similarity measure 'cka'"),
        (lambda X, Y: permutation_null("rsa", X, Y, inner="spearman"), "inner='spearman'"),
        (lambda X, Y: permutation_null("svcca", X, Y, inner="cosine"), "no option inner"),
        (lambda X, Y: permutation_null("svcca", X, Y, n_permutations=0), "n_permutations"),
        (lambda X, Y: permutation_null("svcca", X, Y[:-1]), "pair row by row"),
        (lambda X, Y: permutation_null("linear_cka", X[:2], Y[:2]), "at least 3"),
        (lambda X, Y: permutation_null("procrustes", np.where(X > 1, np.nan, X), Y), "NaN"),
    ],
)
def test_bad_arguments_raise(call, match):
    X, Y = _related()
    with pytest.raises(SaeAtlasError, match=match):
        call(X, Y)
