"""The comparison job: a layer grid of model A's SAEs against model B's, every score against its null.

For each layer pair: sparse SAE codes at the aligned positions, latent-latent
Pearson correlations, a matching, the similarity of the matched decoder rows
(and of the matched latents' activations) with a random-pairing null, a
bootstrap interval over documents, and the controls beside it.  `write_results`
puts everything in results.json (versioned) and results.csv, with one heatmap
per measure (SVG).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..data.store import ActivationStore
from ..errors import SaeAtlasError
from ..fileio import jsonable, write_bytes_atomic, write_json_atomic
from ..memory import reuse_freed_memory
from ..sae.formats import load_sae
from ..sae.model import SparseAutoencoder
from ..threads import parallel_map
from .align import Alignment, align_stores, gather_rows
from .codes import encode_sparse, top_positions
from .config import CompareConfig
from .correlate import CorrelationResult, group_sums, pearson_dense, pearson_sparse, weighted_correlations
from .match import junk_latents, junk_token_ids, match
from .similarity import MEASURES
from .stats import basic_interval, benjamini_hochberg, bootstrap_counts, permutation_null, summarize

log = logging.getLogger("saeatlas")

RESULTS_VERSION = 1
"""Version of the results.json schema (README, "Comparison results")."""
MIN_PAIRS = 5
"""Fewer matched pairs than this: no similarity scores (NaN), the pair count says why."""


# ---------------------------------------------------------------- inputs
def hook_name(layer: str) -> str:
    """'3' -> 'resid_post.3'; a full hook name stays as it is."""
    layer = layer.strip()
    return f"resid_post.{layer}" if layer.isdigit() else layer


def sae_folder(template: str, hook: str) -> Path:
    """The SAE folder for `hook`: a template with {hook} / {layer}, or a folder with one subfolder per hook."""
    layer = hook.rsplit(".", 1)[-1]
    path = (
        Path(template.format(hook=hook, layer=layer))
        if ("{hook}" in template or "{layer}" in template)
        else Path(template) / hook
    )
    if not path.is_dir():
        raise SaeAtlasError(
            f"no SAE for {hook}: '{path}' does not exist (give a template with {{hook}} or a folder "
            "holding one SAE folder per hook)"
        )
    return path


@dataclass
class Side:
    """One model's latents (or neurons) at the aligned positions."""

    label: str
    codes: sp.csr_array | np.ndarray
    """[n_positions, n_latents]: sparse SAE codes, or dense activations for neurons."""
    decoder: np.ndarray
    """[n_latents, d_model] decoder rows (the identity for neurons)."""
    junk: np.ndarray | None = None
    """[n_latents] bool: a top activating token is a junk token."""


def sae_side(
    label: str,
    store: ActivationStore,
    hook: str,
    sae: SparseAutoencoder,
    rows: np.ndarray,
    token_ids: np.ndarray,
    junk_ids: np.ndarray | None,
    chunk: int = 8192,
) -> Side:
    """Encode the activations at `rows` of `store` with `sae` (sparse), with the junk mask of its latents."""
    if sae.cfg.d_in != store.d_model:
        raise SaeAtlasError(f"{label}: the SAE has d_in {sae.cfg.d_in} but {store.path} holds d_model {store.d_model}")
    codes = encode_sparse(sae, gather_rows(store, hook, rows, chunk))
    junk = None
    if junk_ids is not None:
        junk = junk_latents(top_positions(codes, 5), token_ids, junk_ids)
    return Side(label, codes, sae.W_dec.detach().float().numpy(), junk)


def neuron_side(label: str, store: ActivationStore, hook: str, rows: np.ndarray) -> Side:
    """The raw activations (neurons) at `rows` as dense codes, with identity decoder rows."""
    acts = torch.cat(list(gather_rows(store, hook, rows))).numpy()
    return Side(label, acts, np.eye(acts.shape[1], dtype=np.float32))


def correlate(a: Side, b: Side, top_m: int) -> CorrelationResult:
    if isinstance(a.codes, np.ndarray):
        return pearson_dense(a.codes, b.codes, top_m=top_m)
    return pearson_sparse(a.codes, b.codes, top_m=top_m)


# ---------------------------------------------------------------- scoring
def _measure_kwargs(cfg: CompareConfig, measure: str, n: int) -> dict:
    """Options of `measure` on n data points (the null draws its own seed)."""
    if measure in ("svcca", "pwcca"):
        k = None if cfg.svcca_k is None else max(1, min(cfg.svcca_k, n // 10))  # CCA wants n >= 10 k
        return {"k": k, "variance": cfg.svcca_variance}
    if measure == "rsa":
        return {"max_points": cfg.max_points}
    return {}


QUADRATIC = ("linear_cka", "mutual_knn")
"""Measures whose null costs n^2 per permutation, scored on at most `max_points` sampled rows (RSA samples
its own rows, with the same rule)."""


def _sample_rows(X: np.ndarray, Y: np.ndarray, measure: str, cfg: CompareConfig) -> tuple[np.ndarray, np.ndarray]:
    if measure not in QUADRATIC or len(X) <= cfg.max_points:
        return X, Y
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(X), size=cfg.max_points, replace=False))
    return X[rows], Y[rows]


def measure_value(cfg: CompareConfig, measure: str, X: np.ndarray, Y: np.ndarray) -> float:
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


def score_spaces(X: np.ndarray, Y: np.ndarray, measures: list[str], cfg: CompareConfig) -> dict:
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
    import dataclasses

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
    cfg: CompareConfig,
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
        pairs = match(rematched, cfg.method, cfg.threshold, a.junk, b.junk)
        X, Y = a.decoder[pairs.idx_a], b.decoder[pairs.idx_b]
        return [measure_value(cfg, mm, X, Y) if len(X) >= MIN_PAIRS else math.nan for mm in measures]

    # Replicates are independent and mostly small LAPACK calls: side by side on the cores.
    values = np.array(parallel_map(replicate, bootstrap_counts(n_groups, cfg.n_bootstrap, cfg.seed)))
    return {mm: basic_interval(values[:, i], observed[mm]) for i, mm in enumerate(measures)}


def score_pair(a: Side, b: Side, cfg: CompareConfig, groups: np.ndarray, n_groups: int, control: bool = False) -> dict:
    """Correlate, match and score one pair of sides.  The main comparison gets every measure on decoder rows
    and on activations, and bootstrap intervals; a control gets `cfg.control_measures` on decoder rows (and
    on activations for neurons, whose decoder rows are just the identity)."""
    t0 = time.perf_counter()
    result = correlate(a, b, cfg.top_m)
    use_junk = cfg.junk_filter and a.junk is not None and b.junk is not None
    pairs = match(result, cfg.method, cfg.threshold, a.junk if use_junk else None, b.junk if use_junk else None)
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


# ---------------------------------------------------------------- the grid
class _Sides:
    """Sides built once and reused across the grid (codes are the expensive part)."""

    def __init__(self, cfg: CompareConfig, store_a: ActivationStore, store_b: ActivationStore, align: Alignment):
        self.cfg, self.store_a, self.store_b, self.align = cfg, store_a, store_b, align
        from .align import tokenizer_for_store

        self.junk_a = junk_token_ids(tokenizer_for_store(store_a)) if cfg.junk_filter else None
        self.junk_b = junk_token_ids(tokenizer_for_store(store_b)) if cfg.junk_filter else None
        self._cache: dict[tuple, Side] = {}
        self._shifted: Alignment | None = None

    def shifted(self) -> Alignment:
        if self._shifted is None:
            self._shifted = _limit(align_stores(self.store_a, self.store_b, shift=1), self.cfg.max_positions)
        return self._shifted

    def get(self, kind: str, which: str, hook: str) -> Side:
        key = (kind, which, hook)
        if key in self._cache:
            return self._cache[key]
        cfg, align = self.cfg, self.shifted() if kind == "shifted" else self.align
        store = self.store_a if which == "a" else self.store_b
        rows, tokens = (align.rows_a, align.token_a) if which == "a" else (align.rows_b, align.token_b)
        junk = self.junk_a if which == "a" else self.junk_b
        name = "A" if which == "a" else "B"
        if kind == "neurons":
            side = neuron_side(f"{name} {hook} neurons", store, hook, rows)
        else:
            template = cfg.sae_a if which == "a" else cfg.sae_b
            if kind == "skyline":
                template = cfg.skyline_sae_a
            sae = load_sae(sae_folder(template, hook))
            label = f"{name} {hook}"
            if kind == "random_init":
                sae = SparseAutoencoder(sae.cfg, torch.Generator().manual_seed(cfg.seed + 1)).eval()
                label += " random-init SAE"
            elif kind == "skyline":
                label = f"A {hook} SAE of another seed"
            side = sae_side(label, store, hook, sae, rows, tokens, junk)
        self._cache[key] = side
        return side


def _limit(align: Alignment, max_positions: int | None) -> Alignment:
    if max_positions is None or len(align.rows_a) <= max_positions:
        return align
    import dataclasses

    n = max_positions
    return dataclasses.replace(
        align,
        rows_a=align.rows_a[:n],
        rows_b=align.rows_b[:n],
        doc=align.doc[:n],
        token_a=align.token_a[:n],
        token_b=align.token_b[:n],
    )


def _control_pair(kind: str, sides: _Sides, hook_a: str, hook_b: str) -> tuple[Side, Side]:
    if kind == "random_init":
        return sides.get("sae", "a", hook_a), sides.get("random_init", "b", hook_b)
    if kind == "neurons":
        return sides.get("neurons", "a", hook_a), sides.get("neurons", "b", hook_b)
    if kind == "shifted":
        return sides.get("shifted", "a", hook_a), sides.get("shifted", "b", hook_b)
    raise ValueError(kind)


def n_comparisons(cfg: CompareConfig) -> int:
    """How many sides pairs `compare_grid` scores: each layer pair and its controls, and A's skyline layers."""
    controls = [c for c in cfg.controls if c != "skyline"]
    return len(cfg.layers_a) * len(cfg.layers_b) * (1 + len(controls)) + ("skyline" in cfg.controls) * len(cfg.layers_a)


def compare_grid(cfg: CompareConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Score every (layer of A, layer of B) pair and its controls; the results document (see RESULTS_VERSION).
    `progress(1)` is called after each of the `n_comparisons(cfg)` comparisons."""
    cfg.validate()
    progress = progress or (lambda n: None)
    reuse_freed_memory()
    t0 = time.perf_counter()
    store_a, store_b = ActivationStore(cfg.store_a), ActivationStore(cfg.store_b)
    hooks_a, hooks_b = [hook_name(h) for h in cfg.layers_a], [hook_name(h) for h in cfg.layers_b]
    for store, hooks in ((store_a, hooks_a), (store_b, hooks_b)):
        missing = [h for h in hooks if h not in store.hooks]
        if missing:
            raise SaeAtlasError(
                f"store '{store.path}' has no hook {', '.join(missing)}: it holds {', '.join(store.hooks)}"
            )
    align = _limit(align_stores(store_a, store_b), cfg.max_positions)
    log.info("aligned %d positions of %s and %s (%s)", len(align.rows_a), store_a.path, store_b.path, align.counts)
    sides = _Sides(cfg, store_a, store_b, align)
    pairs = []
    for hook_a in hooks_a:
        for hook_b in hooks_b:
            entry = {"layer_a": hook_a, "layer_b": hook_b}
            entry["sae"] = score_pair(
                sides.get("sae", "a", hook_a), sides.get("sae", "b", hook_b), cfg, align.doc, align.n_groups
            )
            progress(1)
            for kind in cfg.controls:
                if kind == "skyline":
                    continue
                a, b = _control_pair(kind, sides, hook_a, hook_b)
                groups = sides.shifted().doc if kind == "shifted" else align.doc
                entry[kind] = score_pair(a, b, cfg, groups, align.n_groups, control=True)
                progress(1)
            log.info(
                "%s x %s: %d pairs, SVCCA %s",
                hook_a,
                hook_b,
                entry["sae"]["n_pairs"],
                _fmt(entry["sae"]["decoder"].get("svcca", {}).get("observed")),
            )
            pairs.append(entry)
    skyline = []
    if "skyline" in cfg.controls:
        for hook_a in hooks_a:
            a, b = sides.get("sae", "a", hook_a), sides.get("skyline", "a", hook_a)
            skyline.append(
                {
                    "layer_a": hook_a,
                    "layer_b": hook_a,
                    "skyline": score_pair(a, b, cfg, align.doc, align.n_groups, control=True),
                }
            )
            progress(1)
    _add_q_values(pairs)
    _add_q_values(skyline)
    return {
        "version": RESULTS_VERSION,
        "kind": "compare",
        "config": cfg.to_dict(),
        "store_a": _store_facts(store_a),
        "store_b": _store_facts(store_b),
        "alignment": {
            "n_positions": len(align.rows_a),
            "n_documents": int(align.n_groups),
            **{k: v for k, v in align.counts.items()},
        },
        "legacy": {"method": cfg.method == "legacy_first", "svcca_legacy_reported": "svcca_legacy" in cfg.measures},
        "layers_a": hooks_a,
        "layers_b": hooks_b,
        "pairs": pairs,
        "skyline": skyline,
        "seconds": time.perf_counter() - t0,
    }


def _store_tokens(store: ActivationStore) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and window positions of every stored token, [n_tokens] each (shards concatenated)."""
    index = [store.index(s) for s in range(store.n_shards)]
    return np.concatenate([i["token_id"] for i in index]), np.concatenate([i["position"] for i in index])


def concept_grid(
    cfg: CompareConfig, concepts: dict[str, list[str]], progress: Callable[[int], None] | None = None
) -> dict:
    """Per layer pair and concept: the latents whose top activating tokens are the concept's keywords, matched
    within the concept on both sides, scored against the random-pairing null.  `progress(1)` is called after
    each (layer pair, concept) cell."""
    progress = progress or (lambda n: None)
    from .align import tokenizer_for_store
    from .concepts import concept_membership

    cfg.validate()
    reuse_freed_memory()
    t0 = time.perf_counter()
    store_a, store_b = ActivationStore(cfg.store_a), ActivationStore(cfg.store_b)
    hooks_a, hooks_b = [hook_name(h) for h in cfg.layers_a], [hook_name(h) for h in cfg.layers_b]
    align = _limit(align_stores(store_a, store_b), cfg.max_positions)
    sides = _Sides(cfg, store_a, store_b, align)
    tokenizers = {"a": tokenizer_for_store(store_a), "b": tokenizer_for_store(store_b)}
    tokens = {"a": _store_tokens(store_a), "b": _store_tokens(store_b)}
    rows = {"a": align.rows_a, "b": align.rows_b}

    def membership(which: str, side: Side) -> dict[str, np.ndarray]:
        top = top_positions(side.codes, 5)  # [n_latents, 5] aligned positions, -1 padded
        store_rows = np.where(top >= 0, rows[which][np.maximum(top, 0)], -1)
        return concept_membership(*tokens[which], store_rows, tokenizers[which], concepts)

    entries = []
    for hook_a in hooks_a:
        for hook_b in hooks_b:
            a, b = sides.get("sae", "a", hook_a), sides.get("sae", "b", hook_b)
            member_a, member_b = membership("a", a), membership("b", b)
            for concept in concepts:
                ia, ib = np.flatnonzero(member_a[concept]), np.flatnonzero(member_b[concept])
                entry = {
                    "layer_a": hook_a,
                    "layer_b": hook_b,
                    "concept": concept,
                    "n_latents_a": len(ia),
                    "n_latents_b": len(ib),
                    "n_pairs": 0,
                }
                if len(ia) and len(ib):
                    sub_a = Side(a.label, a.codes[:, ia], a.decoder[ia], None if a.junk is None else a.junk[ia])
                    sub_b = Side(b.label, b.codes[:, ib], b.decoder[ib], None if b.junk is None else b.junk[ib])
                    result = correlate(sub_a, sub_b, min(cfg.top_m, len(ia), len(ib)))
                    pairs = match(result, cfg.method, cfg.threshold)
                    X, Y = sub_a.decoder[pairs.idx_a], sub_b.decoder[pairs.idx_b]
                    entry.update(
                        n_pairs=len(X),
                        latents_a=ia[pairs.idx_a].tolist(),
                        latents_b=ib[pairs.idx_b].tolist(),
                        matched_corr_mean=float(pairs.corr.mean()) if len(X) else math.nan,
                    )
                    entry["decoder"] = score_spaces(X, Y, cfg.measures, cfg)
                else:
                    entry["decoder"] = score_spaces(np.zeros((0, 1)), np.zeros((0, 1)), cfg.measures, cfg)
                entries.append(entry)
                progress(1)
            log.info(
                "concepts %s x %s: %s",
                hook_a,
                hook_b,
                ", ".join(f"{e['concept']} {e['n_pairs']}" for e in entries[-len(concepts) :]),
            )
    for measure in cfg.measures:
        cells = [e["decoder"][measure] for e in entries]
        p = np.array([c["p"] for c in cells], dtype=float)
        q = np.full(len(p), np.nan)
        if np.isfinite(p).any():
            q[np.isfinite(p)] = benjamini_hochberg(p[np.isfinite(p)])
        for c, qv in zip(cells, q):
            c["q"] = float(qv)
    return {
        "version": RESULTS_VERSION,
        "kind": "concepts",
        "config": cfg.to_dict(),
        "concepts": concepts,
        "store_a": _store_facts(store_a),
        "store_b": _store_facts(store_b),
        "alignment": {"n_positions": len(align.rows_a), **align.counts},
        "layers_a": hooks_a,
        "layers_b": hooks_b,
        "entries": entries,
        "seconds": time.perf_counter() - t0,
    }


def _store_facts(store: ActivationStore) -> dict:
    m = store.manifest
    return {
        "path": str(store.path),
        "model": m["model"]["spec"],
        "d_model": store.d_model,
        "corpus": m["corpus"]["spec"],
        "n_tokens": store.n_tokens,
    }


def _fmt(x) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _add_q_values(pairs: list[dict]) -> None:
    """Benjamini-Hochberg across the layer grid, separately for each (comparison kind, space, measure)."""
    kinds = {k for e in pairs for k in e if k not in ("layer_a", "layer_b")}
    for kind in kinds:
        for space in ("decoder", "activations"):
            measures = {m for e in pairs if kind in e for m in e[kind][space]}
            for measure in measures:
                cells = [e[kind][space][measure] for e in pairs if kind in e and measure in e[kind][space]]
                p = np.array([c["p"] for c in cells], dtype=float)
                ok = np.isfinite(p)
                q = np.full(len(p), np.nan)
                if ok.any():
                    q[ok] = benjamini_hochberg(p[ok])
                for c, qv in zip(cells, q):
                    c["q"] = float(qv)


# ---------------------------------------------------------------- output
CSV_COLUMNS = [
    "layer_a",
    "layer_b",
    "comparison",
    "space",
    "measure",
    "n_pairs",
    "mean_max_corr",
    "observed",
    "null_mean",
    "null_std",
    "z",
    "p",
    "q",
    "ci_lo",
    "ci_hi",
]


def result_rows(results: dict) -> list[dict]:
    """One flat row per (layer pair, comparison or concept, space, measure)."""
    rows = []
    if results["kind"] == "concepts":
        for e in results["entries"]:
            for measure, s in e["decoder"].items():
                rows.append(
                    {
                        "layer_a": e["layer_a"],
                        "layer_b": e["layer_b"],
                        "comparison": e["concept"],
                        "space": "decoder",
                        "measure": measure,
                        "n_pairs": e["n_pairs"],
                        "mean_max_corr": math.nan,
                        **{c: s.get(c, math.nan) for c in CSV_COLUMNS[7:]},
                    }
                )
        return rows
    entries = results["pairs"] + results.get("skyline", [])
    for e in entries:
        for kind, body in e.items():
            if kind in ("layer_a", "layer_b"):
                continue
            for space in ("decoder", "activations"):
                for measure, s in body[space].items():
                    rows.append(
                        {
                            "layer_a": e["layer_a"],
                            "layer_b": e["layer_b"],
                            "comparison": kind,
                            "space": space,
                            "measure": measure,
                            "n_pairs": body["n_pairs"],
                            "mean_max_corr": body["mean_max_corr"],
                            **{c: s.get(c, math.nan) for c in CSV_COLUMNS[7:]},
                        }
                    )
    return rows


def grid_heatmaps(results: dict) -> dict[str, str]:
    """file name -> SVG: each decoder-space measure over the layer grid (value and BH stars), plus the mean
    max-correlation and the pair counts."""
    from ..report.svg import heatmap_svg, significance_stars

    la, lb = results["layers_a"], results["layers_b"]
    cell = {(e["layer_a"], e["layer_b"]): e["sae"] for e in results["pairs"]}
    out = {}
    measures = results["config"]["measures"]
    for measure in measures:
        values = np.array([[cell[(a, b)]["decoder"][measure]["observed"] for b in lb] for a in la])
        text = [
            [
                _fmt(cell[(a, b)]["decoder"][measure]["observed"])
                + significance_stars(cell[(a, b)]["decoder"][measure].get("q"))
                for b in lb
            ]
            for a in la
        ]
        out[f"heatmap-{measure}.svg"] = heatmap_svg(
            values,
            la,
            lb,
            f"{measure} of matched decoder rows (* q<.05, ** q<.01, *** q<.001)",
            text,
            row_title="model A",
            col_title="model B",
        )
        zs = np.array([[cell[(a, b)]["decoder"][measure]["z"] for b in lb] for a in la])
        out[f"heatmap-{measure}-z.svg"] = heatmap_svg(
            zs, la, lb, f"{measure}: z-score against the random-pairing null", row_title="model A", col_title="model B"
        )
    mmc = np.array([[cell[(a, b)]["mean_max_corr"] for b in lb] for a in la])
    out["heatmap-mean-max-corr.svg"] = heatmap_svg(
        mmc, la, lb, "mean max correlation of B latents", row_title="model A", col_title="model B"
    )
    n = np.array([[cell[(a, b)]["n_pairs"] for b in lb] for a in la], dtype=float)
    out["heatmap-n-pairs.svg"] = heatmap_svg(
        n, la, lb, "matched pairs", [[f"{int(v)}" for v in r] for r in n], row_title="model A", col_title="model B"
    )
    return out


def concept_heatmaps(results: dict) -> dict[str, str]:
    """file name -> SVG: each measure per concept (rows) and layer pair (columns), value and BH stars."""
    from ..report.svg import heatmap_svg, significance_stars

    concepts = list(results["concepts"])
    grid = [(a, b) for a in results["layers_a"] for b in results["layers_b"]]
    cell = {(e["concept"], e["layer_a"], e["layer_b"]): e for e in results["entries"]}
    out = {}
    for measure in results["config"]["measures"]:
        values = np.array([[cell[(c, a, b)]["decoder"][measure]["observed"] for a, b in grid] for c in concepts])
        text = [
            [
                f"{_fmt(cell[(c, a, b)]['decoder'][measure]['observed'])}"
                f"{significance_stars(cell[(c, a, b)]['decoder'][measure].get('q'))} ({cell[(c, a, b)]['n_pairs']})"
                for a, b in grid
            ]
            for c in concepts
        ]
        out[f"concepts-{measure}.svg"] = heatmap_svg(
            values,
            concepts,
            [f"{a} x {b}" for a, b in grid],
            f"{measure} within concepts (pairs in brackets)",
            text,
            cell=96,
        )
    return out


def write_results(results: dict, out: str | Path, prefix: str = "results") -> list[Path]:
    """results.json, results.csv and the heatmaps into `out` (each file written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{prefix}.json"]
    write_json_atomic(written[0], jsonable(results))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in result_rows(results):
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    written.append(out / f"{prefix}.csv")
    write_bytes_atomic(written[-1], buffer.getvalue().encode())
    heatmaps = grid_heatmaps(results) if results["kind"] == "compare" else concept_heatmaps(results)
    if heatmaps:
        for name, svg in heatmaps.items():
            written.append(out / name)
            write_bytes_atomic(written[-1], svg.encode())
    return written
