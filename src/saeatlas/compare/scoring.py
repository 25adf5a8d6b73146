"""Scoring one pair of sides: select matched pairs, score each similarity measure of the matched latents against
its random-pairing null (activations cross-fitted over halves of the documents), and test the real pair against
its controls with intervals from half-samples of documents; q-values across a grid."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.stats
import torch

from ..devices import resolve_device
from ..errors import SaeAtlasError
from ..threads import parallel_map
from .config import CompareOptions
from .correlate import CorrelationResult, pearson_dense, pearson_sparse
from .match import Matches
from .sides import Side, match_sides
from .similarity import MEASURES
from .stats import benjamini_hochberg, permutation_null, summarize

MIN_PAIRS = 5
"""Fewer matched pairs than this: no similarity scores (NaN), the pair count says why."""
MIN_RESAMPLES = 5
"""Fewer finite half-sample replicates than this: no interval and no test against the controls."""
INTERVAL_MEASURES: tuple[str, ...] = ()
"""Measures whose half-sample interval reached >= 90 % coverage at nominal 95 % on a planted ground truth
(bench/calibration.py); the others get no interval.  None did: 38-53 % for SVCCA, PWCCA, RSA and CKA (40
samples of 2000 positions, truth from 20 000).  The matched pairs, and so the score, change with the number of
positions (more true but weak pairs pass the chance threshold on more data), and the spread between samples is
about twice what any resampling of one sample showed (half-samples 0.7x, complementary split halves 0.5x)."""


def svcca_k_for(cfg: CompareOptions, n: int) -> int | None:
    """SVCCA / PWCCA directions per side on n data points: `cfg.svcca_k`, at most n // 10 (CCA wants n >= 10 k);
    None for "variance"."""
    return None if cfg.svcca_k == "variance" else max(1, min(cfg.svcca_k, n // 10))


def grid_svcca_k(cfg: CompareOptions, n_pairs: list[int]) -> CompareOptions:
    """`cfg` with svcca_k fixed for a whole grid: the largest k that every cell with >= MIN_PAIRS pairs allows
    (n // 10), so SVCCA / PWCCA values of different cells are on the same number of directions."""
    ns = [n for n in n_pairs if n >= MIN_PAIRS]
    if cfg.svcca_k == "variance" or not ns:
        return cfg
    return dataclasses.replace(cfg, svcca_k=max(1, min(cfg.svcca_k, min(ns) // 10)))


def _measure_kwargs(cfg: CompareOptions, measure: str, n: int) -> dict:
    """Options of `measure` on n data points (the null draws its own seed)."""
    if measure in ("svcca", "pwcca"):
        return {"k": svcca_k_for(cfg, n), "variance": cfg.svcca_variance}
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


def _with_k(cfg: CompareOptions, measure: str, n: int, score: dict) -> dict:
    """`score` with the number of SVCCA / PWCCA directions it used ("k") for those measures."""
    if measure in ("svcca", "pwcca") and n >= MIN_PAIRS:
        score["k"] = svcca_k_for(cfg, n)
    return score


def _null(cfg: CompareOptions, measure: str, X: np.ndarray, Y: np.ndarray, seed: int) -> np.ndarray:
    Xs, Ys = _sample_rows(X, Y, measure, cfg)
    kwargs = _measure_kwargs(cfg, measure, len(Xs))
    device = resolve_device(cfg.device)
    return permutation_null(measure, Xs, Ys, n_permutations=cfg.n_permutations, seed=seed, device=device, **kwargs)


def score_spaces(X: np.ndarray, Y: np.ndarray, measures: list[str], cfg: CompareOptions) -> dict:
    """Each measure of X [n, d_a] vs Y [n, d_b] with its random-pairing null: observed, null mean/std, z, p
    (and k for SVCCA / PWCCA)."""
    out = {}
    for measure in measures:
        if len(X) < MIN_PAIRS:
            out[measure] = {**_no_score(0), "note": f"{len(X)} pairs, fewer than {MIN_PAIRS}"}
            continue
        try:
            observed = measure_value(cfg, measure, X, Y)
            null = _null(cfg, measure, X, Y, cfg.seed)
        except (SaeAtlasError, np.linalg.LinAlgError) as exc:  # degenerate pairs: no score, say why
            out[measure] = {**_no_score(0), "note": str(exc)}
            continue
        out[measure] = _with_k(cfg, measure, len(X), summarize(observed, null))
    return out


# ---------------------------------------------------------------- selection
def _codes_rows(codes: sp.csr_array | np.ndarray, rows: np.ndarray | None):
    return codes if rows is None else codes[rows]


def correlate_codes(codes_a, codes_b, top_m: int, device: torch.device | None = None) -> CorrelationResult:
    """Correlations of codes_a [n, d_a] and codes_b [n, d_b]: sparse SAE codes, or dense neurons; the cross
    sums on `device` (None: the CPU)."""
    if isinstance(codes_a, np.ndarray):
        return pearson_dense(codes_a, codes_b, top_m=top_m, device=device)
    return pearson_sparse(codes_a, codes_b, top_m=top_m, device=device)


def chance_thresholds(
    codes_a, codes_b, n_shifts: int, seed: int, device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """([d_a], [d_b]) per latent, the largest of its best correlations with any latent of the other side over
    `n_shifts` circular shifts of A's positions (seeded offsets between a quarter and three quarters of n).

    A shifted partner keeps each latent's firing rate and burstiness but shares no event with it, so a latent
    with no partner beats its threshold with chance 1 / (n_shifts + 1).  Rare latents need this: two latents
    that fire 8 times each and once at the same position correlate at r ~ 0.12, above any fixed threshold
    that keeps real pairs."""
    n = codes_a.shape[0]
    rng = np.random.default_rng(seed)
    offsets = rng.choice(np.arange(n // 4, max(n // 4 + 1, 3 * n // 4)), size=n_shifts, replace=n < 2 * n_shifts)
    thr_a, thr_b = np.full(codes_a.shape[1], -np.inf), np.full(codes_b.shape[1], -np.inf)
    for off in offsets:  # one shift at a time: a copy of the codes each (stacking them all costs 19 copies)
        res = correlate_codes(codes_a[np.roll(np.arange(n), int(off))], codes_b, 1, device)
        thr_a = np.fmax(thr_a, np.where(np.isfinite(res.best_corr_for_a), res.best_corr_for_a, -np.inf))
        thr_b = np.fmax(thr_b, np.where(np.isfinite(res.best_corr_for_b), res.best_corr_for_b, -np.inf))
    return thr_a, thr_b


def _apply_thresholds(result: CorrelationResult, thr_a: np.ndarray, thr_b: np.ndarray) -> CorrelationResult:
    """`result` with every candidate edge (i, j) of correlation <= max(thr_a[i], thr_b[j]) removed (bests
    re-picked among the candidates left)."""

    def keep(cands: np.ndarray, corr: np.ndarray, thr_own: np.ndarray, thr_other: np.ndarray) -> np.ndarray:
        other = np.where(cands >= 0, thr_other[np.maximum(cands, 0)], np.inf)
        return np.where(corr > np.maximum(thr_own[:, None], other), corr, np.nan)

    return _rematch(
        result,
        keep(result.cand_a_for_b, result.cand_corr_a_for_b, thr_b, thr_a),
        keep(result.cand_b_for_a, result.cand_corr_b_for_a, thr_a, thr_b),
    )


@dataclass
class Selection:
    """Matched pairs of two sides on a set of positions."""

    result: CorrelationResult
    pairs: Matches
    n_above_chance: int | None
    """B latents with a candidate partner above both latents' chance thresholds (None without them)."""
    mean_max_corr: float
    """Mean over alive B latents of their best correlation with any A latent (before any threshold)."""


def select_pairs(a: Side, b: Side, cfg: CompareOptions, rows: np.ndarray | None = None) -> Selection:
    """Correlate the codes of a and b at `rows` (all positions for None), apply the chance threshold
    (`cfg.chance_shifts`), then match and filter (`cfg.method`, `cfg.threshold`, junk, top-token overlap: `match_sides`)."""
    ca, cb = _codes_rows(a.codes, rows), _codes_rows(b.codes, rows)
    device = resolve_device(cfg.device)
    result = correlate_codes(ca, cb, cfg.top_m, device)
    alive_b = ~result.dead_b
    mean_max = float(np.nanmean(result.best_corr_for_b[alive_b])) if alive_b.any() else math.nan
    n_above = None
    if cfg.chance_shifts and cfg.method != "legacy_first":  # the paper's rule has the fixed threshold only
        thr_a, thr_b = chance_thresholds(ca, cb, cfg.chance_shifts, cfg.seed + 101, device)
        result = _apply_thresholds(result, thr_a, thr_b)
        n_above = int(np.isfinite(result.best_corr_for_b).sum())
    return Selection(result, match_sides(result, a, b, cfg), n_above, mean_max)


def _activation_sample(side: Side, positions: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """[n_sample, n_pairs] activations of the matched latents at the sampled positions."""
    rows = side.codes[positions]
    return (rows[:, latents].toarray() if sp.issparse(rows) else rows[:, latents]).astype(np.float64)


def _rematch(result: CorrelationResult, corr_a_for_b: np.ndarray, corr_b_for_a: np.ndarray) -> CorrelationResult:
    """`result` with the candidates' correlations replaced; bests re-picked from the candidates (NaN: none)."""

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


def _half_of_documents(n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """[n_groups] bool: a random half of the documents (floor(n_groups / 2) of them), drawn from `rng`."""
    inside = np.zeros(n_groups, dtype=bool)
    inside[rng.permutation(n_groups)[: n_groups // 2]] = True
    return inside


def document_halves(groups: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """[n] bool: whether each position's document (groups [n], ids < n_groups) is in a seeded half of the
    documents (floor(n_groups / 2) of them)."""
    return _half_of_documents(n_groups, np.random.default_rng(seed))[groups]


def crossfit_scores(
    a: Side, b: Side, cfg: CompareOptions, groups: np.ndarray, n_groups: int, measures: list[str]
) -> dict:
    """Activation-space scores, cross-fitted: pairs selected on one half of the documents are scored on
    `activation_positions / 2` sampled positions of the other half, and the reverse; the score is the mean of
    the two folds and its null the mean of the two folds' random-pairing nulls.

    Selecting pairs for high correlation on the positions that are then scored makes any two codes look
    alike (unrelated sparse codes: CKA p ~ 0.005), and shuffling positions without redoing the selection
    cannot see it; on held-out documents the selected pairs are a fixed set, and the null is exact."""
    first = document_halves(groups, n_groups, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    folds = []
    for select in (first, ~first):
        chosen = select_pairs(a, b, cfg, np.flatnonzero(select)).pairs
        held = np.flatnonzero(~select)
        sample = np.sort(rng.choice(held, size=min(cfg.activation_positions // 2, len(held)), replace=False))
        folds.append(
            (_activation_sample(a, sample, chosen.idx_a), _activation_sample(b, sample, chosen.idx_b), len(sample))
        )
    out = {}
    n_fold_pairs = [X.shape[1] for X, _, _ in folds]
    for measure in measures:
        if min(n_fold_pairs) < MIN_PAIRS:
            note = f"{min(n_fold_pairs)} pairs in a fold, fewer than {MIN_PAIRS}"
            out[measure] = {**_no_score(0), "note": note, "n_pairs_folds": n_fold_pairs}
            continue
        try:
            observed = float(np.mean([measure_value(cfg, measure, X, Y) for X, Y, _ in folds]))
            null = np.mean([_null(cfg, measure, X, Y, cfg.seed + f) for f, (X, Y, _) in enumerate(folds)], axis=0)
        except (SaeAtlasError, np.linalg.LinAlgError) as exc:
            out[measure] = {**_no_score(0), "note": str(exc), "n_pairs_folds": n_fold_pairs}
            continue
        out[measure] = _with_k(cfg, measure, min(n for _, _, n in folds), summarize(observed, null))
        out[measure]["n_pairs_folds"] = n_fold_pairs
    return out


def score_pair(
    a: Side,
    b: Side,
    cfg: CompareOptions,
    groups: np.ndarray,
    n_groups: int,
    control: bool = False,
    selection: Selection | None = None,
) -> dict:
    """Select (unless `selection` is given) and score one pair of sides.  The main comparison gets every
    measure on decoder rows and `activation_measures` on activations (cross-fitted, `crossfit_scores`); a
    control gets `cfg.control_measures` on decoder rows (and on activations for neurons, whose decoder rows are
    just the identity)."""
    t0 = time.perf_counter()
    sel = selection or select_pairs(a, b, cfg)
    result, pairs = sel.result, sel.pairs
    X, Y = a.decoder[pairs.idx_a], b.decoder[pairs.idx_b]
    row = {
        "a": a.label,
        "b": b.label,
        "n_positions": int(result.n_positions),
        "n_latents_a": int(a.decoder.shape[0]),
        "n_latents_b": int(b.decoder.shape[0]),
        "dead_a": int(result.dead_a.sum()),
        "dead_b": int(result.dead_b.sum()),
        "mean_max_corr": sel.mean_max_corr,
        "n_above_chance": sel.n_above_chance,
        "n_pairs": len(pairs.idx_a),
        "matched_corr_mean": float(pairs.corr.mean()) if len(pairs.corr) else math.nan,
        "match_counts": {k: int(v) for k, v in pairs.counts.items()},
    }
    # Neurons have no decoder (their "rows" are the identity, which no measure can tell apart): their
    # scores are on activations only.
    neurons = isinstance(a.codes, np.ndarray)
    row["decoder"] = score_spaces(X, Y, [] if neurons else cfg.control_measures if control else cfg.measures, cfg)
    measures = [] if control and not neurons else cfg.control_measures if control else cfg.activation_measures
    row["activations"] = crossfit_scores(a, b, cfg, groups, n_groups, measures) if measures else {}
    row["activations_n_positions"] = min(cfg.activation_positions // 2 * 2, int(result.n_positions))
    row["pairs"] = {"idx_a": pairs.idx_a.tolist(), "idx_b": pairs.idx_b.tolist(), "corr": pairs.corr.tolist()}
    row["seconds"] = time.perf_counter() - t0
    return row


# ---------------------------------------------------------------- half-samples: intervals, tests vs controls
def half_sample_replicates(
    comparisons: dict[str, tuple[Side, Side, np.ndarray]], n_groups: int, cfg: CompareOptions, measures: list[str]
) -> dict[str, np.ndarray]:
    """kind -> [n_bootstrap, len(measures)] decoder-row scores of each comparison (its sides and the document
    of each position) re-selected from scratch (correlation, chance threshold, matching) on seeded halves of
    the documents; every comparison sees the same halves, so differences are paired.  NaN where a half has
    fewer than MIN_PAIRS pairs or a measure fails."""
    rng = np.random.default_rng(cfg.seed + 202)
    halves = [_half_of_documents(n_groups, rng) for _ in range(cfg.n_bootstrap)]

    def replicate(inside: np.ndarray) -> dict[str, list[float]]:
        out = {}
        for kind, (a, b, groups) in comparisons.items():
            values = matched_decoder_values(a, b, cfg, measures, np.flatnonzero(inside[groups]))
            out[kind] = [values[m] for m in measures]
        return out

    # Replicates are independent: side by side on the cores.
    reps = parallel_map(replicate, halves)
    return {
        kind: np.array([r[kind] for r in reps], dtype=np.float64).reshape(len(reps), len(measures))
        for kind in comparisons
    }


def _safe_value(cfg: CompareOptions, measure: str, X: np.ndarray, Y: np.ndarray) -> float:
    if len(X) < MIN_PAIRS:
        return math.nan
    try:
        return measure_value(cfg, measure, X, Y)
    except (SaeAtlasError, np.linalg.LinAlgError):
        return math.nan


def matched_decoder_values(
    a: Side, b: Side, cfg: CompareOptions, measures: list[str], rows: np.ndarray | None = None
) -> dict[str, float]:
    """measure -> score of the decoder rows of the pairs of a and b selected from scratch at `rows` (all
    positions for None; `select_pairs`); NaN where there are fewer than MIN_PAIRS pairs or the measure fails."""
    pairs = select_pairs(a, b, cfg, rows).pairs
    X, Y = a.decoder[pairs.idx_a], b.decoder[pairs.idx_b]
    return {m: _safe_value(cfg, m, X, Y) for m in measures}


def _half_sample_se(values: np.ndarray) -> float:
    """Standard error from R finite half-sample values [R]: sd(values) sqrt(1 + 1 / R)."""
    return float(values.std(ddof=1)) * math.sqrt(1 + 1 / len(values))


def half_sample_interval(replicates, observed: float, level: float = 0.95) -> dict:
    """Interval of a score from its replicates [R] on random halves of the documents (each re-running the
    whole selection).

    Half-sampling (McCarthy 1969; Politis & Romano 1994 subsampling with b = n / 2): the spread of the
    half-sample estimates around the full-sample one estimates the full-sample standard error (without
    replacement, the variance of a half-sample mean is exactly that of the full mean), and since the bias of
    a matched score falls like 1 / n, the half-samples' mean shift from the full score estimates the full
    score's own bias, which is removed: estimate = 2 observed - mean(replicates), se = sd(replicates)
    sqrt(1 + 1 / R), interval estimate +- t_{R-1} se.  Returns {estimate, lo, hi, se, bias, n_resamples}."""
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    R = len(reps)
    if R < MIN_RESAMPLES or not math.isfinite(observed):
        nan = math.nan
        return {"estimate": nan, "lo": nan, "hi": nan, "se": nan, "bias": nan, "n_resamples": R}
    estimate = 2 * observed - float(reps.mean())
    se = _half_sample_se(reps)
    half = float(scipy.stats.t.ppf((1 + level) / 2, R - 1)) * se
    return {
        "estimate": estimate,
        "lo": estimate - half,
        "hi": estimate + half,
        "se": se,
        "bias": float(reps.mean()) - observed,
        "n_resamples": R,
    }


def difference_test(real_reps, control_reps, real: float, control: float, seed_scores=None) -> dict:
    """real minus control score: {observed, control, se, p, n_resamples, bias, and with seed_scores: n_seeds,
    seed_sd}.  se is the standard deviation of the paired differences on the half-samples (real_reps -
    control_reps [R]) times sqrt(1 + 1 / R), and p the one-sided p-value of "the real pair is no more alike
    than the control", T upper tail of observed / se on R - 1 degrees of freedom.

    seed_scores [S]: full-sample scores of S draws of a random control (random-init SAEs of other seeds,
    `control` first).  The control's score is then their mean, and the test counts their spread: se^2 =
    (half-sample se)^2 + var(seed_scores) / S, on Welch-Satterthwaite degrees of freedom.  The null is then
    "no more alike than a random-init SAE", not "than this one".

    Unlike `half_sample_interval` no bias is removed: when nothing is shared the scores are all selection
    noise, a half-sample selects other chance pairs than the full sample, and 2 observed - mean(replicates)
    then has about twice the spread the replicates show (unrelated synthetic codes came out at p 0.005).
    Without the correction the test is calibrated there and conservative where the real pair's score is
    biased low (noisier matching on fewer positions).  No interval of the difference is given: its target,
    the difference at this many positions, moves with the number of positions as each score does (see
    INTERVAL_MEASURES), and its coverage is not measured."""
    d = np.asarray(real_reps, dtype=np.float64) - np.asarray(control_reps, dtype=np.float64)
    d = d[np.isfinite(d)]
    seeds = np.asarray([] if seed_scores is None else seed_scores, dtype=np.float64)
    seeds = seeds[np.isfinite(seeds)]
    if len(seeds) >= 2:
        control = float(seeds.mean())
    R, observed = len(d), real - control
    nan = math.nan
    out = {"observed": observed, "control": control, "se": nan, "p": nan, "n_resamples": R, "bias": nan}
    if len(seeds) >= 2:
        out.update(n_seeds=len(seeds), seed_sd=float(seeds.std(ddof=1)))
    if R < MIN_RESAMPLES or not math.isfinite(observed):
        return out
    var_half, var_seeds, df = _half_sample_se(d) ** 2, 0.0, R - 1
    if len(seeds) >= 2:
        var_seeds = float(seeds.var(ddof=1)) / len(seeds)
        denom = var_half**2 / (R - 1) + var_seeds**2 / (len(seeds) - 1)
        df = (var_half + var_seeds) ** 2 / denom if denom > 0 else R - 1
    se = math.sqrt(var_half + var_seeds)
    p = float(scipy.stats.t.sf(observed / se, df)) if se > 0 else (0.0 if observed > 0 else 1.0)
    out.update(se=se, p=p, bias=float(d.mean()) - observed)
    return out


HEADLINE_CONTROLS = ("random_init", "shifted")
"""Controls the real pair is tested against (the headline test)."""


def headline_scores(
    comparisons: dict[str, tuple[Side, Side, np.ndarray]],
    observed: dict[str, dict[str, float]],
    n_groups: int,
    cfg: CompareOptions,
    measures: list[str],
    seed_scores: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, dict]:
    """measure -> {"interval": the real pair's half-sample interval (INTERVAL_MEASURES only), "versus": control
    -> `difference_test`, "p": the largest p over the controls that could be scored (the real pair beats every
    control: an intersection-union test, valid at its level without correction; a control with fewer than
    MIN_PAIRS pairs has no score and no test, and its pair count says why)}.  observed: kind -> measure -> full-sample
    score of each comparison ("sae" is the real pair); seed_scores: kind -> measure -> [S] full-sample scores of
    the control's random draws (random_init seeds, the one in `comparisons` first), see `difference_test`."""
    reps = half_sample_replicates(comparisons, n_groups, cfg, measures)
    out = {}
    for i, m in enumerate(measures):
        real = observed["sae"].get(m, math.nan)
        body = {}
        if m in INTERVAL_MEASURES:
            body["interval"] = half_sample_interval(reps["sae"][:, i], real)
        versus = {
            kind: difference_test(
                reps["sae"][:, i],
                reps[kind][:, i],
                real,
                observed[kind].get(m, math.nan),
                ((seed_scores or {}).get(kind) or {}).get(m),
            )
            for kind in comparisons
            if kind in HEADLINE_CONTROLS
        }
        body["versus"] = versus
        ps = [v["p"] for v in versus.values() if math.isfinite(v["p"])]
        body["p"] = max(ps) if ps else math.nan
        out[m] = body
    return out


def add_q(cells: list[dict], p_key: str = "p", q_key: str = "q") -> None:
    """Benjamini-Hochberg q-values across `cells` (dicts with a `p_key`), into each cell's `q_key`; cells without
    a p-value get NaN."""
    p = np.array([c.get(p_key, math.nan) for c in cells], dtype=float)
    ok = np.isfinite(p)
    q = np.full(len(p), np.nan)
    if ok.any():
        q[ok] = benjamini_hochberg(p[ok])
    for c, qv in zip(cells, q, strict=True):
        c[q_key] = float(qv)


def add_q_values(pairs: list[dict]) -> None:
    """Benjamini-Hochberg across the layer grid, separately for each (comparison kind, space, measure) for the
    random-pairing p, and for each measure for the headline test against the controls ("p_controls")."""
    kinds = {k for e in pairs for k in e if k not in ("hook_a", "hook_b")}
    for kind in kinds:
        for space in ("decoder", "activations"):
            measures = {m for e in pairs if kind in e for m in e[kind][space]}
            for measure in measures:
                add_q([e[kind][space][measure] for e in pairs if kind in e and measure in e[kind][space]])
    measures = {m for e in pairs if "sae" in e for m, s in e["sae"]["decoder"].items() if "p_controls" in s}
    for measure in measures:
        cells = [e["sae"]["decoder"][measure] for e in pairs if "p_controls" in e["sae"]["decoder"].get(measure, {})]
        add_q(cells, "p_controls", "q_controls")
