"""Two synthetic "models" that share some features: the ground truth of cross-model matching.

A set of shared true features is active at each position (sparse, positive
magnitudes).  Each has an intrinsic direction in a d_shared-dimensional space,
which different random linear maps embed into model A's d_a dimensions and
model B's d_b dimensions (then scaled to unit norm): the two models represent
the same features, related by a linear map, as SVCCA assumes.  Each model also
has features of its own (random directions), active independently.  An SAE
trained on each side should recover the features; matching latents across
the sides by activation correlation should then pair the latents of the same
shared feature, and the matched decoder spaces should score far above the
random-pairing null.  `unrelated=True` draws model B's shared sources
independently of A's: nothing is shared, and nothing should be significant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class TwoModelData:
    """Activations of two synthetic models at the same positions, and their true features."""

    x_a: torch.Tensor
    """[n, d_a] model A's activations."""
    x_b: torch.Tensor
    """[n, d_b] model B's activations."""
    shared_a: torch.Tensor
    """[n_shared, d_a] unit directions of the shared features in A."""
    shared_b: torch.Tensor
    """[n_shared, d_b] the same features' directions in B."""
    own_a: torch.Tensor
    """[n_own, d_a] A's own features."""
    own_b: torch.Tensor
    """[n_own, d_b] B's own features."""
    doc: np.ndarray
    """[n] document (group) id of each position, for bootstraps over documents."""


def _directions(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(n, d, generator=g)
    return w / w.norm(dim=1, keepdim=True)


def _sources(n: int, n_features: int, active: int, g: torch.Generator) -> torch.Tensor:
    """[n, n_features] sparse positive magnitudes: `active` features per position, magnitudes in [0.5, 2]."""
    chosen = torch.rand(n, n_features, generator=g).topk(active, dim=1).indices
    values = 0.5 + 1.5 * torch.rand(n, active, generator=g)
    return torch.zeros(n, n_features).scatter_(1, chosen, values)


def two_model_data(
    n: int = 40_000,
    n_shared: int = 128,
    n_own: int = 64,
    d_a: int = 64,
    d_b: int = 48,
    d_shared: int = 40,
    active_shared: int = 3,
    active_own: int = 2,
    noise: float = 0.01,
    doc_length: int = 200,
    unrelated: bool = False,
    seed: int = 0,
    sample_seed: int | None = None,
) -> TwoModelData:
    """Positions of two models reading "the same text": shared sources drive both, own sources each side.

    With `unrelated`, B's shared sources are drawn independently of A's (same
    statistics, no common cause).  `seed` draws the models (feature directions) and, without
    `sample_seed`, the positions too; with it, the positions come from `sample_seed`: the same two models on
    another sample of text.
    """
    g = torch.Generator().manual_seed(seed)
    intrinsic = _directions(n_shared, d_shared, g)  # [n_shared, d_shared]
    shared_a = intrinsic @ torch.randn(d_shared, d_a, generator=g)
    shared_b = intrinsic @ torch.randn(d_shared, d_b, generator=g)
    shared_a, shared_b = shared_a / shared_a.norm(dim=1, keepdim=True), shared_b / shared_b.norm(dim=1, keepdim=True)
    own_a, own_b = _directions(n_own, d_a, g), _directions(n_own, d_b, g)
    if sample_seed is not None:
        g = torch.Generator().manual_seed(10**6 + sample_seed)
    shared = _sources(n, n_shared, active_shared, g)
    shared_for_b = _sources(n, n_shared, active_shared, g) if unrelated else shared
    x_a = shared @ shared_a + _sources(n, n_own, active_own, g) @ own_a + noise * torch.randn(n, d_a, generator=g)
    x_b = shared_for_b @ shared_b + _sources(n, n_own, active_own, g) @ own_b + noise * torch.randn(n, d_b, generator=g)
    return TwoModelData(x_a, x_b, shared_a, shared_b, own_a, own_b, np.arange(n) // doc_length)


def feature_of_latent(decoder: torch.Tensor, features: torch.Tensor, min_cosine: float = 0.9) -> np.ndarray:
    """[d_sae] index of the true feature each decoder row [d_sae, d] recovers (cosine >= min_cosine), else -1."""
    rows = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = rows @ (features / features.norm(dim=1, keepdim=True)).T  # [d_sae, n_features]
    best, which = cos.max(dim=1)
    return torch.where(best >= min_cosine, which, torch.full_like(which, -1)).numpy()


def matching_precision_recall(
    idx_a: np.ndarray, idx_b: np.ndarray, truth_a: np.ndarray, truth_b: np.ndarray, n_shared: int
) -> dict:
    """How well matched pairs (idx_a[i], idx_b[i]) pair the latents of the same shared feature.

    truth_*: `feature_of_latent` against the shared features only ([d_sae], -1 for latents of no shared
    feature).  precision: share of pairs whose two latents recover the same shared feature.  recall: share
    of the shared features that both SAEs recovered (the ones a matching can find) reached by such a pair;
    recall_of_all: the same over all n_shared features.
    """
    fa, fb = truth_a[idx_a], truth_b[idx_b]
    correct = (fa >= 0) & (fa == fb)
    found = np.unique(fa[correct])
    recoverable = np.intersect1d(truth_a[truth_a >= 0], truth_b[truth_b >= 0])
    return {
        "n_pairs": len(idx_a),
        "true_pairs": int(correct.sum()),
        "precision": float(correct.mean()) if len(idx_a) else 0.0,
        "recall": float(len(found) / max(1, len(recoverable))),
        "recoverable": len(recoverable),
        "recall_of_all": float(len(found) / n_shared),
    }


def oracle_sae(
    x: torch.Tensor,
    features: torch.Tensor,
    n_extra: int = 32,
    k: int = 6,
    cosine: float = 0.9,
    n_rare: int = 0,
    rare_rate: float = 1e-3,
    seed: int = 0,
    sample_seed: int | None = None,
) -> tuple[sp.csr_array, np.ndarray]:
    """A TopK "SAE" without training: decoder rows are the true features [n_features, d] tilted to about
    `cosine` with their feature, plus `n_extra` random unit rows; the encoder is the decoder (tied).  Codes
    [n, n_features + n_extra] = the top-k of relu(x dec^T) per position (sparse), then `n_rare` latents that
    fire independently at a `rare_rate` of the positions (random directions): the long tail of rare latents
    of a real SAE, whose chance coincidences give large correlations (one shared firing of two latents that
    fire 8 times each is r ~ 0.12).  A cheap stand-in for a trained SAE with imperfect recovery, for
    calibration benches (seconds instead of minutes).  `seed` draws the decoder, `sample_seed` (default: seed)
    the rare latents' firings."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    rows = features / features.norm(dim=1, keepdim=True)
    tilt = _directions(len(rows), d, g)
    tilt = tilt - (tilt * rows).sum(1, keepdim=True) * rows  # orthogonal to the feature
    tilt = tilt / tilt.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dec = torch.cat([cosine * rows + (1 - cosine**2) ** 0.5 * tilt, _directions(n_extra, d, g)])
    pre = torch.relu(x @ dec.T)
    top = pre.topk(k, dim=1)
    codes = torch.zeros_like(pre).scatter_(1, top.indices, top.values)
    if n_rare:
        dec = torch.cat([dec, _directions(n_rare, d, g)])
        key = [seed, 0 if sample_seed is None else sample_seed + 1]
        gs = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        fire = torch.rand(len(x), n_rare, generator=gs) < rare_rate
        codes = torch.cat([codes, fire * (0.5 + 1.5 * torch.rand(len(x), n_rare, generator=gs))], dim=1)
    return sp.csr_array(codes.numpy()), dec.numpy()


# ---------------------------------------------------------------- calibration of the comparison's statistics
BENCH_DATA = {"n": 2000, "n_shared": 64, "n_own": 16, "doc_length": 50}
"""Sizes of the calibration benches (small, so that hundreds of replicates run on two CPU cores): 2000
positions in 40 documents, 64 shared and 16 own features per model."""
BENCH_ORACLE = {"n_extra": 0, "k": 6, "n_rare": 200, "rare_rate": 4e-3}
"""The oracle SAEs of the benches: 80 feature latents plus 200 rare latents firing ~8 times each (which make
unrelated codes look correlated, as trained SAEs' do: mean max correlation ~0.2)."""


def bench_sides(data: TwoModelData, seed: int, sample_seed: int | None = None):
    """The two oracle-SAE `Side`s of `data` (decoders drawn from `seed`)."""
    from .sides import Side

    ca, da = oracle_sae(
        data.x_a, torch.cat([data.shared_a, data.own_a]), seed=seed, sample_seed=sample_seed, **BENCH_ORACLE
    )
    cb, db = oracle_sae(
        data.x_b, torch.cat([data.shared_b, data.own_b]), seed=seed + 1, sample_seed=sample_seed, **BENCH_ORACLE
    )
    return Side("A", ca, da), Side("B", cb, db)


def permute_documents(side, doc: np.ndarray, seed: int):
    """`side` with its positions moved document by document to other documents (seeded; documents of equal
    length): a partner with the same statistics and no event shared with any other side."""
    from .sides import Side

    n_docs = int(doc.max()) + 1
    length = len(doc) // n_docs
    order = np.random.default_rng(seed).permutation(n_docs)
    rows = (order[:, None] * length + np.arange(length)).ravel()
    return Side(side.label + " (documents permuted)", side.codes[rows], side.decoder, side.junk)


def _circular_activation_p(a, b, cfg, measures: list[str]) -> dict[str, float]:
    """The old activation-space rule: pairs selected on all positions, scored on a sample of the same ones."""
    from .scoring import _activation_sample, score_spaces, select_pairs

    pairs = select_pairs(a, b, cfg).pairs
    n = a.codes.shape[0]
    sample = np.sort(np.random.default_rng(cfg.seed).choice(n, size=min(cfg.activation_positions, n), replace=False))
    X, Y = _activation_sample(a, sample, pairs.idx_a), _activation_sample(b, sample, pairs.idx_b)
    return {m: s["p"] for m, s in score_spaces(X, Y, measures, cfg).items()}


def calibration_replicate(seed: int, related: bool, cfg) -> dict:
    """One replicate of the calibration bench: two oracle-SAE sides of `BENCH_DATA` that share features
    (`related`) or not, scored as `compare` scores a layer pair; the controls are B with its documents permuted
    (two seeds, standing for random_init and shifted: under "unrelated" they are exchangeable with the real
    pair, so the headline test's null holds exactly); with `related`, random_init is B's activations read by a
    TopK "SAE" of random directions (an untrained SAE), and shifted is B with its documents permuted.  As in
    `compare`, random_init has `cfg.random_init_seeds` draws (other permutations, other random directions),
    the test is against their mean, and the half-samples use the first.

    Returns {"pairing": {space: {measure: p}}, "circular": {measure: p} (the old activation rule), "versus":
    {measure: {control: p}}, "p_controls": {measure: p}, "n_pairs", "mean_max_corr"}."""
    from .scoring import headline_scores, matched_decoder_values, score_pair
    from .sides import Side

    data = two_model_data(**BENCH_DATA, unrelated=not related, seed=seed)
    a, b = bench_sides(data, seed)
    n_groups = int(data.doc.max()) + 1
    row = score_pair(a, b, cfg, data.doc, n_groups)
    out = {
        "pairing": {space: {m: s["p"] for m, s in row[space].items()} for space in ("decoder", "activations")},
        "circular": _circular_activation_p(a, b, cfg, cfg.activation_measures),
        "n_pairs": row["n_pairs"],
        "mean_max_corr": row["mean_max_corr"],
    }

    def random_init(draw: int):
        if not related:  # exchangeable with the real pair: B with its documents permuted
            return permute_documents(b, data.doc, seed * 7919 + 1 + 1000 * draw)
        # B's activations read by a TopK "SAE" with random directions, like an untrained SAE
        g = torch.Generator().manual_seed(seed + 555 + 1000 * draw)
        random_rows = _directions(len(data.shared_b) + len(data.own_b), data.x_b.shape[1], g)
        codes, dec = oracle_sae(data.x_b, random_rows, seed=seed + 2 + 1000 * draw, **BENCH_ORACLE)
        return Side("B random-init", codes, dec)

    comps = {"sae": (a, b, data.doc), "random_init": (a, random_init(0), data.doc)}
    comps["shifted"] = (a, permute_documents(b, data.doc, seed * 7919 + 2), data.doc)
    measures = [m for m in cfg.bootstrap_measures if m in cfg.measures]

    observed = {
        kind: matched_decoder_values(sa, sb, cfg, measures) for kind, (sa, sb, _) in comps.items() if kind != "sae"
    }
    observed["sae"] = {m: row["decoder"][m]["observed"] for m in measures}  # selected and scored by score_pair
    more = range(1, cfg.random_init_seeds)
    draws = [observed["random_init"], *(matched_decoder_values(a, random_init(d), cfg, measures) for d in more)]
    seeds = {"random_init": {m: [s[m] for s in draws] for m in measures}} if len(draws) > 1 else {}
    heads = headline_scores(comps, observed, n_groups, cfg, measures, seeds)
    out["versus"] = {m: {k: v["p"] for k, v in h["versus"].items()} for m, h in heads.items()}
    out["p_controls"] = {m: h["p"] for m, h in heads.items()}
    return out


def true_scores(model_seed: int, cfg, measures: list[str], scale: int = 10) -> dict[str, float]:
    """The planted pair's scores on `scale` times BENCH_DATA's positions (the "true" score the intervals of
    smaller samples should cover; the bias of a matched score falls like 1 / n)."""
    from .scoring import matched_decoder_values

    sizes = {**BENCH_DATA, "n": BENCH_DATA["n"] * scale}
    data = two_model_data(**sizes, seed=model_seed, sample_seed=10**5)
    a, b = bench_sides(data, model_seed, sample_seed=10**5)
    return matched_decoder_values(a, b, cfg, measures)


def coverage_replicate(model_seed: int, sample_seed: int, cfg, measures: list[str]) -> dict[str, dict]:
    """measure -> the half-sample interval (`half_sample_interval`) of the planted pair on one sample of
    BENCH_DATA's size from the fixed models of `model_seed`."""
    from .scoring import half_sample_interval, half_sample_replicates, matched_decoder_values

    data = two_model_data(**BENCH_DATA, seed=model_seed, sample_seed=sample_seed)
    a, b = bench_sides(data, model_seed, sample_seed=sample_seed)
    observed = matched_decoder_values(a, b, cfg, measures)
    n_groups = int(data.doc.max()) + 1
    reps = half_sample_replicates({"sae": (a, b, data.doc)}, n_groups, cfg, measures)["sae"]
    return {
        m: {**half_sample_interval(reps[:, i], observed[m]), "observed": observed[m]} for i, m in enumerate(measures)
    }
