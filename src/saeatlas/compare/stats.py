"""Statistics of similarity scores: random-pairing nulls, p, z, Benjamini-Hochberg q.

The null of a score shuffles the pairing: the rows of Y are permuted, X stays.
`permutation_null` computes it per measure without re-running the measure:
everything the pairing does not change (centring, SVD reductions, orthonormal
bases, rank transforms, inner similarity matrices, neighbour lists) is
computed once, then the permutations are scored in batches.  `_naive_null`
is the reference it is tested against (a loop calling the measure).

On an accelerator (`permutation_null(..., device=)`) the batched kernels, the
permuted products of SVCCA / PWCCA / CKA / Procrustes and the permuted Gram
overlaps of RSA / CKA, run there (float64 where the device has it, else
float32); the permutations are drawn on the CPU as before, so the same seed
gives the same pairings on every device, and the small per-permutation
eigenproblems stay on the CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
from collections.abc import Callable, Iterator

import numpy as np
import scipy.stats
import torch

from ..errors import SaeAtlasError
from .similarity import (
    INNER,
    MEASURES,
    OUTER,
    _choice,
    _positive_int,
    check_pair,
    has_ties,
    inner_similarity,
    knn_cosine,
    outer_values,
    principal_scores,
    pwcca_weights,
    reduced_bases,
    rsa_sample,
    untie_directions,
)

_CHUNK_BYTES = 128 * 2**20
"""Bound on the memory of one batch of permuted products (the gathered rows of Y)."""
NATIVE_MIN_POINTS = 256
"""RSA and CKA nulls on at least this many points run in the native kernel (see `_gram_null`)."""
_GRAM_COST = 40
"""Cost of one element of `_permuted_gram_dot` relative to one multiply-add of a float64 matrix product
(measured on 2 CPU cores: 17 ms per n = 5000 permutation vs 31 ms for a 5000 x 626 x 564 product); decides
whether CKA's null runs on n x n Gram matrices or on [r_a, r_b] cross products."""


_DEVICE: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("null_device", default=None)
"""Where the batched kernels of the null being computed in this thread run (None: numpy on the CPU)."""
_DEVICE_GATHER_BYTES = 1 << 28
"""Bound on one batch of permuted Gram matrices gathered on an accelerator."""


@contextlib.contextmanager
def _kernels_on(device: torch.device | None) -> Iterator[None]:
    """Within the block, this thread's batched null kernels run on `device` (None: the CPU path)."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


def _device_dtype(device: torch.device) -> torch.dtype:
    from ..devices import has_float64

    return torch.float64 if has_float64(device) else torch.float32


# ---------------------------------------------------------------- permutations
def permutations(n: int, n_permutations: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Batches [<= chunk, n] of random permutations of range(n); the sequence depends on (n, seed) only, not
    on `chunk`, so every measure sees the same pairings for the same seed."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_permutations, chunk):
        yield np.stack([rng.permutation(n) for _ in range(min(chunk, n_permutations - start))])


def _chunk(n: int, width: int) -> int:
    """Permutations per batch when each one gathers an [n, width] float64 array."""
    return max(1, min(256, _CHUNK_BYTES // (8 * n * max(width, 1))))


# ---------------------------------------------------------------- batched kernels
def _permuted_products(Fa: np.ndarray, Fb: np.ndarray, P: np.ndarray) -> np.ndarray:
    """[c, r_a, r_b] products Fa^T Fb[p] for each permutation p of P [c, n]; Fa [n, r_a], Fb [n, r_b]."""
    c, n = P.shape
    if (device := _DEVICE.get()) is not None:
        dtype = _device_dtype(device)
        fa, fb = (torch.as_tensor(F, dtype=dtype).to(device) for F in (Fa, Fb))
        permuted = fb[torch.as_tensor(P).to(device)]  # [c, n, r_b]
        return torch.matmul(fa.T, permuted).cpu().to(torch.float64).numpy()
    G = Fb[P.T]  # [n, c, r_b]: the permuted copies side by side, so one large matrix product serves them all
    return (Fa.T @ G.reshape(n, -1)).reshape(Fa.shape[1], c, Fb.shape[1]).transpose(1, 0, 2)


def _singular_values(C: np.ndarray) -> np.ndarray:
    """[c, m] singular values of C [c, r_a, r_b], m = min(r_a, r_b), descending; via the smaller Gram matrix
    (its eigenvalues are the squared singular values), about twice as fast as an SVD."""
    G = C @ C.transpose(0, 2, 1) if C.shape[1] <= C.shape[2] else C.transpose(0, 2, 1) @ C
    return np.sqrt(np.clip(np.linalg.eigvalsh(G), 0.0, None))[:, ::-1]


class _UpperBlocks:
    """A symmetric A [n, n] cut into row blocks, each kept as its diagonal block and the part right of it
    (contiguous copies: half of A), for `_permuted_gram_dot`."""

    def __init__(self, A: np.ndarray, block: int = 128):
        self.n = len(A)
        self.bounds = [(i0, min(i0 + block, self.n)) for i0 in range(0, self.n, block)]
        self.diag = [np.ascontiguousarray(A[i0:i1, i0:i1]) for i0, i1 in self.bounds]
        self.right = [np.ascontiguousarray(A[i0:i1, i1:]) for i0, i1 in self.bounds]


def _permuted_gram_dot(A: _UpperBlocks, B: np.ndarray, p: np.ndarray) -> float:
    """sum_ij A[i, j] B[p_i, p_j] for symmetric A, B [n, n]: the overlap of two n x n matrices under a
    relabelling.  By symmetry only the upper half is visited (twice the part right of the diagonal blocks),
    a block of rows at a time so the gather stays in cache."""
    total = 0.0
    for (i0, i1), diag, right in zip(A.bounds, A.diag, A.right):
        rows = B[p[i0:i1]]  # [block, n]
        total += float(np.vdot(diag, np.take(rows, p[i0:i1], axis=1)))
        total += 2.0 * float(np.vdot(right, np.take(rows, p[i1:], axis=1)))
    return total


def _gram_null(A: np.ndarray, B: np.ndarray, M: int, seed: int) -> np.ndarray:
    """[M] sum_ij A[i, j] B[p_i, p_j] for the seeded permutations p of range(n); A, B [n, n] symmetric.

    From NATIVE_MIN_POINTS points on, and where the native kernels load, the compiled loop runs it on
    float32 copies (2 x 16 MB at n = 2000, which stay in the CPU's cache; about 1e-7 relative off float64).
    Below that the float64 path runs: it is cheap there, and it keeps the exact ties that permutations
    among repeated rows produce in small sets (e.g. a concept's few pairs)."""
    from .. import native

    n = len(A)
    if (device := _DEVICE.get()) is not None:
        return _gram_null_on(device, A, B, M, seed)
    if n >= NATIVE_MIN_POINTS and native.library() is not None:
        A32, B32 = np.ascontiguousarray(A, dtype=np.float32), np.ascontiguousarray(B, dtype=np.float32)
        nulls = [native.permuted_gram_dots(A32, B32, P.astype(np.int32)) for P in permutations(n, M, seed, 64)]
        return np.concatenate(nulls)
    blocks = _UpperBlocks(A)
    return np.array([_permuted_gram_dot(blocks, B, p) for P in permutations(n, M, seed, 64) for p in P])


def _gram_null_on(device: torch.device, A: np.ndarray, B: np.ndarray, M: int, seed: int) -> np.ndarray:
    """`_gram_null` on an accelerator: a batch of permuted copies B[p][:, p] [c, n, n] at a time, each
    multiplied with A and summed."""
    dtype = _device_dtype(device)
    a, b = (torch.as_tensor(X, dtype=dtype).to(device) for X in (A, B))
    n = len(A)
    chunk = max(1, min(64, _DEVICE_GATHER_BYTES // (torch.finfo(dtype).bits // 8 * max(n * n, 1))))
    out = []
    for P in permutations(n, M, seed, chunk):
        p = torch.as_tensor(P).to(device)  # [c, n]
        permuted = b[p[:, :, None], p[:, None, :]]  # [c, n, n]
        out.append((permuted * a).sum(dim=(1, 2)).cpu().to(torch.float64).numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------- nulls per measure
def _null_svcca(X, Y, M, seed, k=None, variance=0.99):
    Ua, _, Ub, _ = reduced_bases(X, Y, k, variance)
    out = [
        np.clip(_singular_values(_permuted_products(Ua, Ub, P)), 0.0, 1.0).mean(axis=1)
        for P in permutations(len(X), M, seed, _chunk(len(X), Ub.shape[1]))
    ]
    return np.concatenate(out)


def _null_pwcca(X, Y, M, seed, k=None, variance=0.99):
    Ua, sa, Ub, _ = reduced_bases(X, Y, k, variance)
    m = min(Ua.shape[1], Ub.shape[1])
    out = []
    for P in permutations(len(X), M, seed, _chunk(len(X), Ub.shape[1])):
        C = _permuted_products(Ua, Ub, P)  # [c, k_a, k_b]
        lam, V = np.linalg.eigh(C @ C.transpose(0, 2, 1))  # left singular vectors of C, ascending
        rho = np.clip(np.sqrt(np.clip(lam[:, ::-1][:, :m], 0.0, None)), 0.0, 1.0)  # [c, m] descending
        A = V[:, :, ::-1][:, :, :m]  # [c, k_a, m]
        for i in np.flatnonzero(has_ties(rho)):
            A[i] = untie_directions(A[i], rho[i], sa)
        out.append((pwcca_weights(A, sa) * rho).sum(axis=1))
    return np.concatenate(out)


def _null_svcca_legacy(X, Y, M, seed):
    (Ua, _), (Ub, _) = principal_scores(X, "X", 1), principal_scores(Y, "Y", 1)
    ua, ub = Ua[:, 0], Ub[:, 0]
    return np.concatenate([np.abs(ub[P] @ ua) for P in permutations(len(X), M, seed, _chunk(len(X), 1))])


def _null_linear_cka(X, Y, M, seed, _path=None):
    (Ua, sa), (Ub, sb) = principal_scores(X, "X"), principal_scores(Y, "Y")
    Fa, Fb = Ua * sa, Ub * sb
    n, denom = len(X), np.linalg.norm(sa**2) * np.linalg.norm(sb**2)
    # ||Fa^T P Fb||_F^2 = sum_ij Ka_ij Kb_{p_i p_j} with Ka = Fa Fa^T: n^2 work per permutation instead of
    # n r_a r_b, the better deal when the sides are wide (activations of thousands of latents).
    if _path == "gram" or (_path is None and _GRAM_COST * n < Fa.shape[1] * Fb.shape[1]):
        return _gram_null(Fa @ Fa.T, Fb @ Fb.T, M, seed) / denom
    out = [
        (_permuted_products(Fa, Fb, P) ** 2).sum(axis=(1, 2)) for P in permutations(n, M, seed, _chunk(n, Fb.shape[1]))
    ]
    return np.concatenate(out) / denom


def _null_procrustes(X, Y, M, seed):
    (Ua, sa), (Ub, sb) = principal_scores(X, "X"), principal_scores(Y, "Y")
    Fa, Fb = Ua * (sa / np.linalg.norm(sa)), Ub * (sb / np.linalg.norm(sb))
    out = [
        np.minimum(_singular_values(_permuted_products(Fa, Fb, P)).sum(axis=1), 1.0)
        for P in permutations(len(X), M, seed, _chunk(len(X), Fb.shape[1]))
    ]
    return np.concatenate(out)


def _rsa_matrix(A: np.ndarray, inner: str, outer: str, name: str) -> np.ndarray:
    """[n, n] symmetric matrix of the centred, unit-norm outer values (ranks or similarities), zero diagonal."""
    S = inner_similarity(A, inner, name)
    v = outer_values(S, outer)
    v = v - v.mean()
    norm = np.linalg.norm(v)
    if norm == 0:
        raise SaeAtlasError(
            f"the inner similarities of {name} are all equal, so their correlation is undefined; "
            "compare more varied points"
        )
    S[:] = 0.0
    S[np.triu_indices(len(S), 1)] = v / norm
    return S + S.T


def _null_rsa(X, Y, M, seed, inner="pearson", outer="spearman", max_points=None):
    _choice(inner, INNER, "inner")
    _choice(outer, OUTER, "outer")
    idx = rsa_sample(len(X), max_points, seed)
    if idx is not None:  # the measure's own sample; the pairing is shuffled among the sampled pairs
        X, Y = X[idx], Y[idx]
    # Permuting Y's rows permutes its inner matrix symmetrically; the multiset of its upper-triangle values
    # (hence their ranks, mean and norm) is unchanged, so ranks are computed once and only gathered.
    return _gram_null(_rsa_matrix(X, inner, outer, "X"), _rsa_matrix(Y, inner, outer, "Y"), M, seed) / 2


def _null_mutual_knn(X, Y, M, seed, k=10):
    n = len(X)
    k = min(_positive_int(k, "k"), n - 1)
    nx, ny = knn_cosine(X, k, "X"), knn_cosine(Y, k, "Y")
    # Point i of Y[p] is Y's point p_i, and its neighbours are the j with p_j in ny[p_i]; so the overlap
    # at i counts the j in nx[i] whose pair key (p_i, p_j) is a neighbour pair of Y.
    keys = np.sort((np.arange(n)[:, None] * n + ny).ravel())
    out = []
    for P in permutations(n, M, seed, _chunk(n, 2 * k)):
        q = (P[:, :, None] * n + P[:, nx]).reshape(len(P), -1)  # [c, n k]
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        out.append((keys[pos] == q).sum(axis=1) / (n * k))
    return np.concatenate(out)


_FAST_NULLS: dict[str, Callable[..., np.ndarray]] = {
    "svcca": _null_svcca,
    "svcca_legacy": _null_svcca_legacy,
    "pwcca": _null_pwcca,
    "rsa": _null_rsa,
    "linear_cka": _null_linear_cka,
    "procrustes": _null_procrustes,
    "mutual_knn": _null_mutual_knn,
}


# ---------------------------------------------------------------- public
def _check_null_args(measure: str, n_permutations, measure_kwargs: dict) -> None:
    if measure not in MEASURES:
        raise SaeAtlasError(f"unknown similarity measure {measure!r}; use one of {', '.join(MEASURES)}")
    _positive_int(n_permutations, "n_permutations")
    options = [p for p in inspect.signature(MEASURES[measure]).parameters if p not in ("X", "Y", "seed")]
    unknown = sorted(set(measure_kwargs) - set(options))
    if unknown:
        raise SaeAtlasError(
            f"measure {measure!r} has no option {', '.join(unknown)}; its options are: {', '.join(options) or 'none'}"
        )


def permutation_null(
    measure: str,
    X,
    Y,
    n_permutations: int = 1000,
    seed: int = 0,
    device: torch.device | None = None,
    **measure_kwargs,
) -> np.ndarray:
    """[n_permutations] scores of `measure` on X [n, d_a] and Y [n, d_b] with the pairing shuffled.

    Each score is MEASURES[measure](X, Y[p], **measure_kwargs) for a seeded
    random permutation p of the rows (X fixed); the same seed gives every
    measure the same permutations.  `seed` is also the seed of the measures
    that take one (RSA's row sample, whose pairs are then shuffled among
    themselves), so pass it here and not in measure_kwargs.  Memory: RSA holds
    two [m, m] float64 matrices (m = n or max_points); CKA on wide sides two [n, n].
    device: where the batched kernels run (None or the CPU: numpy and the native kernels).
    """
    _check_null_args(measure, n_permutations, measure_kwargs)
    X, Y = check_pair(X, Y)
    with _kernels_on(device if device is not None and device.type != "cpu" else None):
        return _FAST_NULLS[measure](X, Y, int(n_permutations), seed, **measure_kwargs)


def _naive_null(measure: str, X, Y, n_permutations: int = 1000, seed: int = 0, **measure_kwargs) -> np.ndarray:
    """Reference for `permutation_null`: a loop calling the measure on each permuted pairing."""
    _check_null_args(measure, n_permutations, measure_kwargs)
    X, Y = check_pair(X, Y)
    f = MEASURES[measure]
    if measure == "rsa":
        idx = rsa_sample(len(X), measure_kwargs.get("max_points"), seed)
        if idx is not None:
            X, Y = X[idx], Y[idx]
        measure_kwargs = {**measure_kwargs, "max_points": None}
    return np.array([f(X, Y[p], **measure_kwargs) for P in permutations(len(X), n_permutations, seed, 1) for p in P])


def _check_null(null) -> np.ndarray:
    null = np.asarray(null, dtype=np.float64).ravel()
    if null.size == 0:
        raise SaeAtlasError("the null distribution is empty; run at least 1 permutation (1000 for p-values)")
    return null


def p_value(observed: float, null) -> float:
    """(b + 1) / (M + 1), b = null scores [M] >= observed (ties within 1e-12 relative count as reaching it)."""
    null = _check_null(null)
    if not math.isfinite(observed):
        return math.nan
    b = int((null >= observed - 1e-12 * max(1.0, abs(observed))).sum())
    return (b + 1) / (null.size + 1)


def z_score(observed: float, null) -> float:
    """(observed - mean(null)) / std(null, ddof=1); NaN with fewer than 2 null scores."""
    null = _check_null(null)
    if null.size < 2 or not math.isfinite(observed):
        return math.nan
    mean, std = float(null.mean()), float(null.std(ddof=1))
    if std == 0:
        return math.nan if observed == mean else math.copysign(math.inf, observed - mean)
    return (observed - mean) / std


def summarize(observed: float, null) -> dict:
    """{observed, null_mean, null_std, z, p, n_permutations} of a score against its null [M]."""
    null = _check_null(null)
    return {
        "observed": float(observed),
        "null_mean": float(null.mean()),
        "null_std": float(null.std(ddof=1)) if null.size > 1 else math.nan,
        "z": z_score(observed, null),
        "p": p_value(observed, null),
        "n_permutations": int(null.size),
    }


def benjamini_hochberg(p_values) -> np.ndarray:
    """q-values of p-values (any shape; the same shape back): Benjamini & Hochberg 1995 step-up,
    q_(i) = min over j >= i of m p_(j) / j, capped at 1 (scipy.stats.false_discovery_control)."""
    p = np.asarray(p_values, dtype=np.float64)
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        raise SaeAtlasError("p-values must be finite numbers in [0, 1]; drop the NaN cells before correcting")
    return np.array(scipy.stats.false_discovery_control(p.ravel(), method="bh"), dtype=np.float64).reshape(p.shape)
