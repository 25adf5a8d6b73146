"""Similarity of two paired point sets: SVCCA, PWCCA, RSA, linear CKA, Procrustes, mutual kNN.

Every measure takes X [n, d_a] and Y [n, d_b] whose rows are paired data
points (the decoder rows of matched latent pairs, or positions for matched
activations; d_a may differ from d_b), as numpy arrays or torch tensors of any
float dtype, computes in float64 and returns a Python float.  `MEASURES` maps
each name to its function; `stats.permutation_null` scores the same measures
under random pairings (a score is only meaningful against that null: the
universality paper, Lan et al. 2024, arXiv:2410.06981, reports it as such).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from ..errors import SaeAtlasError

INNER: tuple[str, ...] = ("pearson", "cosine")
OUTER: tuple[str, ...] = ("spearman", "pearson")


# ---------------------------------------------------------------- inputs
def as_float64(A, name: str) -> np.ndarray:
    """`A` (numpy array or torch tensor, any float dtype) as a float64 numpy array [n, d], checked finite."""
    if isinstance(A, torch.Tensor):
        A = A.detach().cpu().to(torch.float64).numpy()
    try:
        A = np.asarray(A, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SaeAtlasError(f"{name} is not a numeric array ({e}); pass a numpy array or torch tensor") from None
    if A.ndim != 2:
        raise SaeAtlasError(f"{name} must be 2-D [n, d] with one row per data point, got shape {A.shape}; reshape it")
    if A.shape[1] == 0:
        raise SaeAtlasError(f"{name} has no columns (shape {A.shape}); give each data point at least one dimension")
    bad = int((~np.isfinite(A)).sum())
    if bad:
        raise SaeAtlasError(f"{name} holds {bad} NaN/Inf entries; drop or fix those rows before comparing")
    return A


def check_pair(X, Y, min_rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """X [n, d_a], Y [n, d_b] as checked float64 arrays with the same number of rows, at least `min_rows`."""
    X, Y = as_float64(X, "X"), as_float64(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise SaeAtlasError(
            f"X and Y must pair row by row, got {X.shape[0]} rows in X and {Y.shape[0]} in Y; "
            "give one row per matched pair on each side"
        )
    if X.shape[0] < min_rows:
        raise SaeAtlasError(
            f"need at least {min_rows} paired rows to compare, got {X.shape[0]}; "
            "match more pairs (e.g. lower the threshold)"
        )
    return X, Y


def _choice(value, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise SaeAtlasError(f"{option}={value!r} is not known; use one of {', '.join(allowed)}")
    return value


def _positive_int(value, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SaeAtlasError(f"{option}={value!r} must be an integer >= {minimum}")
    return int(value)


# ---------------------------------------------------------------- principal directions
def centred(A: np.ndarray, name: str) -> np.ndarray:
    """A [n, d] with each column's mean removed; raises if nothing is left (all rows equal, up to round-off)."""
    Ac = A - A.mean(axis=0)
    if np.linalg.norm(Ac) <= 1e-12 * np.linalg.norm(A):
        raise SaeAtlasError(f"{name} has no variance (all rows are identical); nothing to compare")
    return Ac


def principal_scores(A: np.ndarray, name: str, max_directions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centred A [n, d] as U [n, r] (orthonormal, centred) and singular values s [r], descending.

    r is the numerical rank of the centred data (at most min(n - 1, d)); the
    principal-component scores are U * s.  With `max_directions`, U holds only
    that many leading columns (s stays complete).
    """
    Ac = centred(A, name)
    n, d = Ac.shape
    eps = np.finfo(np.float64).eps
    if n > 2 * d:
        # Tall data (thousands of pairs of 640-wide rows): the eigenvectors of the d x d Gram matrix are
        # several times cheaper than an SVD of Ac.  Squaring the spectrum squares the round-off too, so
        # the rank tolerance is the square root of the SVD one.
        lam, V = np.linalg.eigh(Ac.T @ Ac)
        lam, V = lam[::-1].clip(min=0.0), V[:, ::-1]
        s = np.sqrt(lam)
        s = s[s > s[0] * np.sqrt(max(n, d) * eps)]
        r = len(s) if max_directions is None else min(len(s), max_directions)
        return (Ac @ V[:, :r]) / s[:r], s
    U, s, _ = np.linalg.svd(Ac, full_matrices=False)
    # Same tolerance as numpy.linalg.matrix_rank: directions below it are round-off, not data.
    s = s[s > s[0] * max(Ac.shape) * eps]
    return U[:, : len(s) if max_directions is None else min(len(s), max_directions)], s


def n_directions(s: np.ndarray, n: int, d: int, k: int | None, variance: float) -> int:
    """Directions SVCCA keeps from singular values s [r]: k if given, else the fewest whose explained
    variance reaches `variance` of the total; never more than the rank, min(n - 1, d)."""
    cap = min(len(s), n - 1, d)
    if k is not None:
        return min(_positive_int(k, "k"), cap)
    if not (isinstance(variance, (int, float, np.floating)) and 0 < variance <= 1):
        raise SaeAtlasError(f"variance={variance!r} must be a fraction in (0, 1], e.g. 0.99")
    explained = np.cumsum(s**2) / np.sum(s**2)
    # The public code compared a normalised cumulative sum (max 1) with 0.99 x total variance, so the test
    # never passed and it kept one direction; here the fraction is compared with a fraction.
    k_var = int(np.searchsorted(explained, variance - 1e-12)) + 1
    return min(k_var, cap)


def reduced_bases(X: np.ndarray, Y: np.ndarray, k: int | None, variance: float):
    """Orthonormal bases Ua [n, k_a], Ub [n, k_b] of the SVD-reduced centred sides, and their singular values."""
    cap = None if k is None else _positive_int(k, "k")
    (Ua, sa), (Ub, sb) = principal_scores(X, "X", cap), principal_scores(Y, "Y", cap)
    n = X.shape[0]
    ka, kb = n_directions(sa, n, X.shape[1], k, variance), n_directions(sb, n, Y.shape[1], k, variance)
    return Ua[:, :ka], sa[:ka], Ub[:, :kb], sb[:kb]


# ---------------------------------------------------------------- CCA family
def svcca_details(X, Y, k: int | None = None, variance: float = 0.99) -> dict:
    """SVCCA of X [n, d_a] and Y [n, d_b] with its parts.

    Returns {"svcca": mean canonical correlation, "k_a", "k_b": directions kept
    per side, "correlations": [min(k_a, k_b)] canonical correlations, descending}.
    """
    X, Y = check_pair(X, Y)
    Ua, _, Ub, _ = reduced_bases(X, Y, k, variance)
    # Canonical correlations of two centred sides are the cosines of the principal angles between their
    # column spaces: the singular values of Qa^T Qb for orthonormal bases (Bjorck & Golub 1973).
    rho = np.clip(np.linalg.svd(Ua.T @ Ub, compute_uv=False), 0.0, 1.0)
    return {"svcca": float(rho.mean()), "k_a": Ua.shape[1], "k_b": Ub.shape[1], "correlations": rho}


def svcca(X, Y, k: int | None = None, variance: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017) of X [n, d_a] and Y [n, d_b]: mean canonical correlation of the SVD-reduced sides.

    Columns are centred; each side keeps its top k principal directions (k
    given, else the fewest reaching `variance` of the total variance; at most
    min(n - 1, d)); CCA between the reduced sides.  Read it against its
    permutation null: the null grows with k, and with k_a + k_b > n - 1 the
    reduced spaces must share k_a + k_b - (n - 1) directions (correlation 1).
    """
    return svcca_details(X, Y, k=k, variance=variance)["svcca"]


def svcca_legacy(X, Y) -> float:
    """LEGACY: the paper's public SVCCA as it actually runs; use only to reproduce its figures.

    Its variance test never passes, so it keeps one direction per side and the
    score is |Pearson r| between the first principal-component scores of X
    [n, d_a] and Y [n, d_b].  Use `svcca` for the real measure.
    """
    X, Y = check_pair(X, Y)
    (Ua, _), (Ub, _) = principal_scores(X, "X", 1), principal_scores(Y, "Y", 1)
    return float(abs(Ua[:, 0] @ Ub[:, 0]))  # unit, centred score vectors: the dot is Pearson r


def pwcca_weights(A: np.ndarray, sa: np.ndarray) -> np.ndarray:
    """PWCCA weights [..., m] of canonical directions A [..., k_a, m] (coordinates in X's reduced basis).

    Morcos et al. 2018: weight_i = sum_j |<h_i, x_j>| over X's reduced columns
    x_j = u_j s_j; with h_i = Ua A[:, i] that is sum_j s_j |A[j, i]|; normalised to sum 1.
    """
    w = np.einsum("j,...ji->...i", sa, np.abs(A))
    return w / w.sum(axis=-1, keepdims=True)


TIE_TOL = 1e-9
"""Canonical correlations closer than this are one repeated correlation (see `untie_directions`)."""


def has_ties(rho: np.ndarray) -> np.ndarray:
    """[...] whether the descending correlations rho [..., m] repeat (within TIE_TOL)."""
    return (rho[..., :-1] - rho[..., 1:] <= TIE_TOL).any(axis=-1)


def untie_directions(A: np.ndarray, rho: np.ndarray, sa: np.ndarray) -> np.ndarray:
    """A [k_a, m] with the directions of each repeated correlation in rho [m] (descending) rotated onto X's
    principal axes within their span (eigenvectors of A_c^T diag(sa^2) A_c).

    A repeated correlation has no unique directions, only a unique span, and
    the L1 weights of PWCCA change with the basis of that span; the basis is
    fixed here so PWCCA has one value.  Repeats are common when k_a + k_b > n - 1:
    the reduced spaces then share k_a + k_b - (n - 1) directions, all with correlation 1.
    """
    A = A.copy()
    i = 0
    while i < len(rho):
        j = i + 1
        while j < len(rho) and rho[j - 1] - rho[j] <= TIE_TOL:
            j += 1
        if j - i > 1:
            Ac = A[:, i:j]
            _, R = np.linalg.eigh(Ac.T @ (Ac * (sa**2)[:, None]))
            A[:, i:j] = Ac @ R[:, ::-1]
        i = j
    return A


def pwcca(X, Y, k: int | None = None, variance: float = 0.99) -> float:
    """Projection-weighted CCA (Morcos et al. 2018) of X [n, d_a] and Y [n, d_b] on SVCCA's reduced spaces.

    Canonical correlations weighted by how much of X's reduced data each
    canonical direction accounts for (sum of absolute projections of X's
    reduced columns, normalised).  Not symmetric: the weights come from X.
    """
    X, Y = check_pair(X, Y)
    Ua, sa, Ub, _ = reduced_bases(X, Y, k, variance)
    A, rho, _ = np.linalg.svd(Ua.T @ Ub, full_matrices=False)  # A [k_a, m], rho [m]
    rho = np.clip(rho, 0.0, 1.0)
    return float(pwcca_weights(untie_directions(A, rho, sa), sa) @ rho)


# ---------------------------------------------------------------- RSA
def rsa_sample(n: int, max_points: int | None, seed: int) -> np.ndarray | None:
    """Sorted rows [max_points] RSA keeps when n > max_points (seeded), else None (all rows)."""
    if max_points is None:
        return None
    max_points = _positive_int(max_points, "max_points", minimum=3)
    if n <= max_points:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def inner_similarity(A: np.ndarray, inner: str, name: str) -> np.ndarray:
    """[n, n] similarity between the rows of A [n, d]: Pearson or cosine."""
    Z = A - A.mean(axis=1, keepdims=True) if inner == "pearson" else A
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    if (norms == 0).any():
        what = "constant" if inner == "pearson" else "all zero"
        raise SaeAtlasError(
            f"{int((norms == 0).sum())} rows of {name} are {what}, so inner={inner!r} is undefined "
            "for them; drop those rows" + (" or use inner='cosine'" if inner == "pearson" else "")
        )
    # Identical rows (one A latent matched by several B latents) must tie exactly, or rank-based RSA would
    # order round-off; products of the distinct rows, gathered, make every copy's similarities bitwise equal.
    Zu, inverse = np.unique(Z / norms, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return (Zu @ Zu.T)[np.ix_(inverse, inverse)]


def outer_values(S: np.ndarray, outer: str) -> np.ndarray:
    """Upper triangle [n (n - 1) / 2] of the inner matrix S [n, n], as ranks (average ties) for Spearman."""
    v = S[np.triu_indices(S.shape[0], 1)]
    return rankdata(v) if outer == "spearman" else v


def _pearson(u: np.ndarray, v: np.ndarray, what: str) -> float:
    u, v = u - u.mean(), v - v.mean()
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        raise SaeAtlasError(
            f"the {what} of one side are all equal, so their correlation is undefined; compare more varied points"
        )
    return float(u @ v / (nu * nv))


def rsa(X, Y, inner: str = "pearson", outer: str = "spearman", max_points: int | None = None, seed: int = 0) -> float:
    """Representational similarity of X [n, d_a] and Y [n, d_b] (the paper's RSA).

    Inner: similarity between every two rows on each side (Pearson as the
    paper, or cosine).  Outer: correlation of the two upper triangles
    (Spearman as the paper, or Pearson).  With n > max_points, a seeded sample
    of max_points rows (the same on both sides) bounds the n x n matrices.
    """
    X, Y = check_pair(X, Y)
    _choice(inner, INNER, "inner")
    _choice(outer, OUTER, "outer")
    idx = rsa_sample(X.shape[0], max_points, seed)
    if idx is not None:
        X, Y = X[idx], Y[idx]
    vx = outer_values(inner_similarity(X, inner, "X"), outer)
    vy = outer_values(inner_similarity(Y, inner, "Y"), outer)
    return _pearson(vx, vy, "inner similarities")


# ---------------------------------------------------------------- CKA, Procrustes
def linear_cka(X, Y) -> float:
    """Centred linear CKA (Kornblith et al. 2019) of X [n, d_a] and Y [n, d_b]:
    ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    X, Y = check_pair(X, Y)
    Xc, Yc = centred(X, "X"), centred(Y, "Y")
    return float(np.linalg.norm(Xc.T @ Yc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)))


def procrustes(X, Y) -> float:
    """Orthogonal Procrustes similarity of X [n, d_a] and Y [n, d_b], in [0, 1].

    Each side centred and scaled to unit Frobenius norm; the score is the
    nuclear norm of Xc^T Yc = max over orthogonal maps Q of <Xc Q, Yc>, and is 1
    iff Y is a rotation/reflection of X (up to shift and scale).  For d_a != d_b
    Q is a partial isometry (the same as zero-padding the narrower side).
    """
    X, Y = check_pair(X, Y)
    Xc, Yc = centred(X, "X"), centred(Y, "Y")
    nuclear = np.linalg.svd(Xc.T @ Yc, compute_uv=False).sum()
    return float(min(nuclear / (np.linalg.norm(Xc) * np.linalg.norm(Yc)), 1.0))


# ---------------------------------------------------------------- mutual kNN
def knn_cosine(A: np.ndarray, k: int, name: str, block: int = 1024) -> np.ndarray:
    """[n, k] indices of each row's k nearest other rows of A [n, d] by cosine (ties: whichever argpartition keeps)."""
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    if (norms == 0).any():
        raise SaeAtlasError(
            f"{int((norms == 0).sum())} rows of {name} are all zero, so their cosine neighbours "
            "are undefined; drop those rows"
        )
    Z = A / norms
    out = np.empty((A.shape[0], k), dtype=np.intp)
    for i0 in range(0, A.shape[0], block):
        S = Z[i0 : i0 + block] @ Z.T  # [block, n]
        S[np.arange(S.shape[0]), np.arange(i0, i0 + S.shape[0])] = -np.inf  # a point is not its own neighbour
        out[i0 : i0 + block] = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return out


def mutual_knn(X, Y, k: int = 10) -> float:
    """Mean fraction of shared neighbours of X [n, d_a] and Y [n, d_b]: for each point, the overlap of its
    k nearest neighbours (cosine) in X-space and in Y-space, divided by k (k is capped at n - 1)."""
    X, Y = check_pair(X, Y)
    k = min(_positive_int(k, "k"), X.shape[0] - 1)
    nx, ny = knn_cosine(X, k, "X"), knn_cosine(Y, k, "Y")
    shared = (nx[:, :, None] == ny[:, None, :]).sum()
    return float(shared / (X.shape[0] * k))


MEASURES: dict[str, Callable[..., float]] = {
    "svcca": svcca,
    "svcca_legacy": svcca_legacy,
    "pwcca": pwcca,
    "rsa": rsa,
    "linear_cka": linear_cka,
    "procrustes": procrustes,
    "mutual_knn": mutual_knn,
}
"""Every similarity measure by name: f(X [n, d_a], Y [n, d_b], **options) -> float."""
