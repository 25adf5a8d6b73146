"""Scoring one pair of sides: correlate, match, and each similarity measure of the matched latents against
its random-pairing null, with bootstrap intervals over documents; q-values across a grid."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import scipy.sparse as sp

from ..errors import SaeAtlasError
from ..threads import parallel_map
from .config import CompareOptions
from .correlate import CorrelationResult, group_sums, weighted_correlations
from .sides import Side, correlate, match_sides
from .similarity import MEASURES
from .stats import basic_interval, benjamini_hochberg, bootstrap_counts, permutation_null, summarize

MIN_PAIRS = 5
"""Fewer matched pairs than this: no similarity scores (NaN), the pair count says why."""


def _measure_kwargs(cfg: CompareOptions, measure: str, n: int) -> dict:
    """Options of `measure` on n data points (the null draws its own seed)."""
    if measure in ("svcca", "pwcca"):
        k = None if cfg.svcca_k == "variance" else max(1, min(cfg.svcca_k, n // 10))  # CCA wants n >= 10 k
        return {"k": k, "variance": cfg.svcca_variance}
    if measure == "rsa":
        return {"max_points": cfg.max_points}
    return {}


QUADRATIC = ("linear_cka", "mutual_knn")
"""Measures whose null costs n^2 per permutation, scored on at most `max_points` sampled rows (RSA samples
its own rows, with the same rule)."""


def _sample_rows(X: np.ndarray, Y: np.ndarray, measure: str, cfg: CompareOptions) -> tuple[np.ndarray, np.ndarray]:
    if measure not in QUADRATIC or len(X) <= cfg.max_points:
        return X, Y
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(X), size=cfg.max_points, replace=False))
    return X[rows], Y[rows]


def measure_value(cfg: CompareOptions, measure: str, X: np.ndarray, Y: np.ndarray) -> float:
    """One measure of X [n, d_a] vs Y [n, d_b] with the configured options."""
    extra = {"seed": cfg.seed} if measure == "rsa" else {}
    X, Y = _sample_rows(X, Y, measure, cfg)
    return MEASURES[measure](X, Y, **_measure_kwargs(cfg, measure, len(X)), **extra)


def _no_score(n_permutations: int) -> dict:
    return {
        "observed": math.nan,
        "null_mean": math.nan,
        "null_std": math.nan,
        "z": math.nan,
        "p": math.nan,
        "n_permutations": n_permutations,
    }


def score_spaces(X: np.ndarray, Y: np.ndarray, measures: list[str], cfg: CompareOptions) -> dict:
    """Each measure of X [n, d_a] vs Y [n, d_b] with its random-pairing null: observed, null mean/std, z, p."""
    out = {}
    for measure in measures:
        if len(X) < MIN_PAIRS:
            out[measure] = {**_no_score(0), "note": f"{len(X)} pairs, fewer than {MIN_PAIRS}"}
            continue
        try:
            observed = measure_value(cfg, measure, X, Y)
            Xs, Ys = _sample_rows(X, Y, measure, cfg)
            null = permutation_null(
                measure,
                Xs,
                Ys,
                n_permutations=cfg.n_permutations,
                seed=cfg.seed,
                **_measure_kwargs(cfg, measure, len(Xs)),
            )
        except SaeAtlasError as exc:  # degenerate pairs (e.g. every pair on one latent): no score, say why
            out[measure] = {**_no_score(0), "note": str(exc)}
            continue
        out[measure] = summarize(observed, null)
    return out


def _activation_sample(side: Side, positions: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """[n_sample, n_pairs] activations of the matched latents at the sampled positions."""
    rows = side.codes[positions]
    return (rows[:, latents].toarray() if sp.issparse(rows) else rows[:, latents]).astype(np.float64)


def _rematch(result: CorrelationResult, corr_a_for_b: np.ndarray, corr_b_for_a: np.ndarray) -> CorrelationResult:
    """`result` with the candidates' correlations replaced (a bootstrap replicate); bests from the candidates."""

    def best(cands, corr):
        safe = np.where(np.isfinite(corr), corr, -np.inf)
        pick = safe.argmax(1)
        idx = cands[np.arange(len(cands)), pick]
        val = safe[np.arange(len(cands)), pick]
        dead = ~np.isfinite(val)
        return np.where(dead, -1, idx), np.where(dead, np.nan, val)

    best_a_for_b, best_corr_for_b = best(result.cand_a_for_b, corr_a_for_b)
    best_b_for_a, best_corr_for_a = best(result.cand_b_for_a, corr_b_for_a)
    return dataclasses.replace(
        result,
        cand_corr_a_for_b=corr_a_for_b,
        cand_corr_b_for_a=corr_b_for_a,
        best_a_for_b=best_a_for_b,
        best_corr_for_b=best_corr_for_b,
        best_b_for_a=best_b_for_a,
        best_corr_for_a=best_corr_for_a,
        matrix=None,
    )


def bootstrap_scores(
    a: Side,
    b: Side,
    result: CorrelationResult,
    groups: np.ndarray,
    n_groups: int,
    cfg: CompareOptions,
    observed: dict[str, float],
) -> dict:
    """Confidence intervals over documents: resample documents, recompute the candidates' correlations from
    per-document sums, re-match, re-score the matched decoder rows; measure -> `basic_interval` around its
    `observed` score."""
    d_a, d_b = a.decoder.shape[0], b.decoder.shape[0]
    m = result.cand_a_for_b.shape[1]
    pairs_a = np.concatenate([result.cand_a_for_b.reshape(-1), np.repeat(np.arange(d_a), result.cand_b_for_a.shape[1])])
    pairs_b = np.concatenate([np.repeat(np.arange(d_b), m), result.cand_b_for_a.reshape(-1)])
    valid = (pairs_a >= 0) & (pairs_b >= 0)
    sums = group_sums(
        a.codes, b.codes, groups, np.where(valid, pairs_a, 0), np.where(valid, pairs_b, 0), n_groups=n_groups
    )
    n_first = d_b * m
    measures = [mm for mm in cfg.bootstrap_measures if mm in cfg.measures]

    def replicate(counts: np.ndarray) -> list[float]:
        corr = np.where(valid, weighted_correlations(sums, counts), np.nan)
        rematched = _rematch(result, corr[:n_first].reshape(d_b, m), corr[n_first:].reshape(d_a, -1))
        pairs = match_sides(rematched, a, b, cfg)
        X, Y = a.decoder[pairs.idx_a], b.decoder[pairs.idx_b]
        return [measure_value(cfg, mm, X, Y) if len(X) >= MIN_PAIRS else math.nan for mm in measures]

    # Replicates are independent and mostly small LAPACK calls: side by side on the cores.
    values = np.array(parallel_map(replicate, bootstrap_counts(n_groups, cfg.n_bootstrap, cfg.seed)))
    return {mm: basic_interval(values[:, i], observed[mm]) for i, mm in enumerate(measures)}


def score_pair(a: Side, b: Side, cfg: CompareOptions, groups: np.ndarray, n_groups: int, control: bool = False) -> dict:
    """Correlate, match and score one pair of sides.  The main comparison gets every measure on decoder rows
    and on activations, and bootstrap intervals; a control gets `cfg.control_measures` on decoder rows (and
    on activations for neurons, whose decoder rows are just the identity)."""
    t0 = time.perf_counter()
    result = correlate(a, b, cfg.top_m)
    pairs = match_sides(result, a, b, cfg)
    X, Y = a.decoder[pairs.idx_a], b.decoder[pairs.idx_b]
    alive_b = ~result.dead_b
    row = {
        "a": a.label,
        "b": b.label,
        "n_positions": int(result.n_positions),
        "n_latents_a": int(a.decoder.shape[0]),
        "n_latents_b": int(b.decoder.shape[0]),
        "dead_a": int(result.dead_a.sum()),
        "dead_b": int(result.dead_b.sum()),
        "mean_max_corr": float(np.nanmean(result.best_corr_for_b[alive_b])) if alive_b.any() else math.nan,
        "n_pairs": len(pairs.idx_a),
        "matched_corr_mean": float(pairs.corr.mean()) if len(pairs.corr) else math.nan,
        "match_counts": {k: int(v) for k, v in pairs.counts.items()},
    }
    # Neurons have no decoder (their "rows" are the identity, which no measure can tell apart): their
    # scores are on activations only.
    neurons = isinstance(a.codes, np.ndarray)
    row["decoder"] = score_spaces(X, Y, [] if neurons else cfg.control_measures if control else cfg.measures, cfg)
    measures = [] if control and not neurons else cfg.control_measures if control else cfg.activation_measures
    rng = np.random.default_rng(cfg.seed)
    n_pos = result.n_positions
    sample = np.sort(rng.choice(n_pos, size=min(cfg.activation_positions, n_pos), replace=False))
    row["activations"] = score_spaces(
        _activation_sample(a, sample, pairs.idx_a), _activation_sample(b, sample, pairs.idx_b), measures, cfg
    )
    row["activations_n_positions"] = len(sample)
    if not control and cfg.n_bootstrap and len(X) >= MIN_PAIRS and not neurons:
        observed = {m: s["observed"] for m, s in row["decoder"].items()}
        for measure, ci in bootstrap_scores(a, b, result, groups, n_groups, cfg, observed).items():
            row["decoder"][measure].update(ci_lo=ci["lo"], ci_hi=ci["hi"], bootstrap_bias=ci["bias"])
    row["pairs"] = {"idx_a": pairs.idx_a.tolist(), "idx_b": pairs.idx_b.tolist(), "corr": pairs.corr.tolist()}
    row["seconds"] = time.perf_counter() - t0
    return row


def add_q(cells: list[dict]) -> None:
    """Benjamini-Hochberg q-values across `cells` (SCOREs of one measure), into each cell's "q"; cells without
    a p-value get NaN."""
    p = np.array([c["p"] for c in cells], dtype=float)
    ok = np.isfinite(p)
    q = np.full(len(p), np.nan)
    if ok.any():
        q[ok] = benjamini_hochberg(p[ok])
    for c, qv in zip(cells, q, strict=True):
        c["q"] = float(qv)


def add_q_values(pairs: list[dict]) -> None:
    """Benjamini-Hochberg across the layer grid, separately for each (comparison kind, space, measure)."""
    kinds = {k for e in pairs for k in e if k not in ("hook_a", "hook_b")}
    for kind in kinds:
        for space in ("decoder", "activations"):
            measures = {m for e in pairs if kind in e for m in e[kind][space]}
            for measure in measures:
                add_q([e[kind][space][measure] for e in pairs if kind in e and measure in e[kind][space]])
