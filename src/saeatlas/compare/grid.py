"""The comparison jobs: `run_compare` (a layer grid of model A's SAEs against model B's, every score against its
null, with controls) and `run_concepts` (the same within keyword concepts).  Each returns its results document
(`RESULTS_VERSION`, schema in the README); `saeatlas.report.files` writes it."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from .. import distributed
from ..data.store import ActivationStore
from ..devices import resolve_device
from ..errors import SaeAtlasError
from ..memory import reuse_freed_memory
from ..report.format import fmt
from ..sae.formats import sae_folder
from .align import align_stores, tokenizer_for_store
from .codes import top_positions
from .concepts import concept_membership, load_concept_sources
from .config import CompareConfig, ConceptsConfig
from .scoring import (
    HEADLINE_CONTROLS,
    _safe_value,
    add_q,
    add_q_values,
    grid_svcca_k,
    headline_scores,
    matched_decoder_values,
    score_pair,
    score_spaces,
    select_pairs,
)
from .sides import Side, SideCache, control_pair, limit_positions

log = logging.getLogger("saeatlas")

RESULTS_VERSION = 4
"""Version of the results.json schema (README, "Comparison results"); 2: hooks named `hooks_a`, `hook_a`;
3: activation scores cross-fitted over halves of the documents, the headline test against the controls
(versus_random_init / versus_shifted / p_controls / q_controls), half-sample intervals (ci_lo, ci_hi, estimate,
se), SVCCA's k fixed per grid and reported ("k", "svcca_k"), n_above_chance; 4: no interval of a difference
(versus_<control> without lo / hi, with the control's score), the random_init control's seed_scores and the test
against their mean (n_seeds, seed_sd), concept cells with n_above_chance and mean_max_corr."""


def n_comparisons(cfg: CompareConfig) -> int:
    """How many sides pairs `compare_grid` scores: each layer pair and its controls, and A's skyline layers."""
    controls = [c for c in cfg.controls if c != "skyline"]
    return len(cfg.hooks_a) * len(cfg.hooks_b) * (1 + len(controls)) + ("skyline" in cfg.controls) * len(cfg.hooks_a)


def _open_inputs(cfg: CompareConfig) -> tuple[ActivationStore, ActivationStore]:
    """Both stores, once every input is checked: the stores hold the hooks, and every SAE folder exists."""
    store_a, store_b = ActivationStore(cfg.store_a), ActivationStore(cfg.store_b)
    for store, hooks in ((store_a, cfg.hooks_a), (store_b, cfg.hooks_b)):
        missing = [h for h in hooks if h not in store.hooks]
        if missing:
            raise SaeAtlasError(
                f"store '{store.path}' has no hook {', '.join(missing)}: it holds {', '.join(store.hooks)}"
            )
    templates = [(cfg.saes_a, cfg.hooks_a), (cfg.saes_b, cfg.hooks_b)]
    if "skyline" in cfg.controls:
        templates.append((cfg.skyline_saes_a, cfg.hooks_a))
    for template, hooks in templates:
        for hook in hooks:
            sae_folder(template, hook)
    return store_a, store_b


def run_compare(cfg: CompareConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Score every (layer of A, layer of B) pair and its controls; the results document (see RESULTS_VERSION).
    `progress(n)` is called with 0 once the inputs are checked and aligned, then with 1 after each of the
    `n_comparisons(cfg)` comparisons."""
    progress = progress or (lambda n: None)
    resolve_device(cfg.device)  # a device that is not here: one line, before any work
    reuse_freed_memory()
    t0 = time.perf_counter()
    store_a, store_b = _open_inputs(cfg)
    hooks_a, hooks_b = cfg.hooks_a, cfg.hooks_b
    align = limit_positions(align_stores(store_a, store_b), cfg.max_positions)  # refuses stores of other texts
    progress(0)
    log.info("aligned %d positions of %s and %s (%s)", len(align.rows_a), store_a.path, store_b.path, align.counts)
    sides = SideCache(cfg, store_a, store_b, align)
    kinds = ["sae", *(k for k in cfg.controls if k != "skyline")]

    def comparison(kind: str, hook_a: str, hook_b: str) -> tuple[Side, Side, np.ndarray]:
        if kind == "sae":
            a, b = sides.get("sae", "a", hook_a), sides.get("sae", "b", hook_b)
        else:
            a, b = control_pair(kind, sides, hook_a, hook_b)
        return a, b, sides.shifted().doc if kind == "shifted" else align.doc

    # Pairs first, for every cell: SVCCA's number of directions is then fixed for the whole grid.  Under
    # torchrun the cells (and then the layer pairs) are spread over the ranks; each is seeded by itself.
    cells = [(hook_a, hook_b, kind) for hook_a in hooks_a for hook_b in hooks_b for kind in kinds]
    selected = distributed.spread(cells, lambda c: select_pairs(*comparison(c[2], c[0], c[1])[:2], cfg))
    selections = dict(zip(cells, selected, strict=True))
    sky_hooks = hooks_a if "skyline" in cfg.controls else []
    sky_selected = distributed.spread(
        sky_hooks, lambda h: select_pairs(sides.get("sae", "a", h), sides.get("skyline", "a", h), cfg)
    )
    sky_selections = dict(zip(sky_hooks, sky_selected, strict=True))
    scfg = grid_svcca_k(cfg, [len(s.pairs.idx_a) for s in [*selections.values(), *sky_selections.values()]])

    def score_layer_pair(hooks: tuple[str, str]) -> dict:
        hook_a, hook_b = hooks
        entry = {"hook_a": hook_a, "hook_b": hook_b}
        comps = {kind: comparison(kind, hook_a, hook_b) for kind in kinds}
        for kind, (a, b, groups) in comps.items():
            sel = selections[hook_a, hook_b, kind]
            entry[kind] = score_pair(a, b, scfg, groups, align.n_groups, control=kind != "sae", selection=sel)
            progress(1)
        more_random_init = functools.partial(_more_random_init_scores, sides, hook_a, hook_b, scfg)
        _add_headline(entry, comps, align.n_groups, scfg, more_random_init)
        log.info(
            "%s x %s: %d pairs, SVCCA %s",
            hook_a,
            hook_b,
            entry["sae"]["n_pairs"],
            fmt(entry["sae"]["decoder"].get("svcca", {}).get("observed"), missing="nan"),
        )
        return entry

    def score_skyline(hook_a: str) -> dict:
        a, b = sides.get("sae", "a", hook_a), sides.get("skyline", "a", hook_a)
        sel = sky_selections[hook_a]
        entry = {"hook_a": hook_a, "hook_b": hook_a}
        entry["skyline"] = score_pair(a, b, scfg, align.doc, align.n_groups, control=True, selection=sel)
        progress(1)
        return entry

    layer_pairs = [(hook_a, hook_b) for hook_a in hooks_a for hook_b in hooks_b]
    pairs = distributed.spread(layer_pairs, score_layer_pair)
    skyline = distributed.spread(sky_hooks, score_skyline)
    elsewhere = distributed.elsewhere(len(layer_pairs)) * len(kinds) + distributed.elsewhere(len(sky_hooks))
    if elsewhere:  # the other ranks' comparisons, counted when they arrive
        progress(elsewhere)
    add_q_values(pairs)
    add_q_values(skyline)
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
        "svcca_k": scfg.svcca_k,
        "legacy": {"method": cfg.method == "legacy_first", "svcca_legacy_reported": "svcca_legacy" in cfg.measures},
        "hooks_a": hooks_a,
        "hooks_b": hooks_b,
        "pairs": pairs,
        "skyline": skyline,
        "seconds": time.perf_counter() - t0,
    }


def _more_random_init_scores(sides: SideCache, hook_a: str, hook_b: str, cfg: CompareConfig) -> dict:
    """measure -> [random_init_seeds - 1] full-sample decoder scores of the random_init control with the random
    SAEs of seeds 1, 2, ... (seed 0 is the one scored beside the real pair), each selected from scratch."""
    measures = [m for m in cfg.bootstrap_measures if m in cfg.measures]
    out = {m: [] for m in measures}
    a = sides.get("sae", "a", hook_a)
    for seed in range(1, cfg.random_init_seeds):
        values = matched_decoder_values(a, sides.get("random_init", "b", hook_b, seed), cfg, measures)
        for m in measures:
            out[m].append(values[m])
    return out


def _add_headline(
    entry: dict, comps: dict, n_groups: int, cfg: CompareConfig, more_random_init: Callable[[], dict]
) -> None:
    """The headline test of one layer pair: the real pair against its random-init and shifted controls on
    half-samples of the documents (`headline_scores`), into the real pair's decoder scores: ci_lo / ci_hi /
    estimate / se (calibrated measures only), versus_<control> {observed, control, se, p, ...}, p_controls;
    with the random_init control, `more_random_init()` (measure -> scores of its other seeds, called only when
    the test runs: each seed is a selection) gives its "seed_scores" (measure -> every seed's score) and the
    test is against their mean."""
    measures = [m for m in cfg.bootstrap_measures if m in cfg.measures]
    real = entry["sae"]["decoder"]
    if not cfg.n_bootstrap or not measures or not math.isfinite(real.get(measures[0], {}).get("observed", math.nan)):
        return
    comps = {kind: c for kind, c in comps.items() if kind == "sae" or kind in HEADLINE_CONTROLS}
    observed = {kind: {m: s.get("observed", math.nan) for m, s in entry[kind]["decoder"].items()} for kind in comps}
    for kind, (a, b, _) in comps.items():  # a control scored without one of the tested measures: score it now
        missing = [m for m in measures if m not in observed[kind]]
        idx = entry[kind]["pairs"]
        X, Y = a.decoder[idx["idx_a"]], b.decoder[idx["idx_b"]]
        observed[kind].update({m: _safe_value(cfg, m, X, Y) for m in missing})
    seeds = {}
    more = more_random_init() if "random_init" in comps else {}
    if any(more.values()):
        seeds["random_init"] = {m: [observed["random_init"][m], *v] for m, v in more.items()}
        entry["random_init"]["seed_scores"] = seeds["random_init"]
    for m, body in headline_scores(comps, observed, n_groups, cfg, measures, seeds).items():
        score = real[m]
        if "interval" in body:
            ci = body["interval"]
            score.update(ci_lo=ci["lo"], ci_hi=ci["hi"], estimate=ci["estimate"], se=ci["se"])
            score["n_resamples"] = ci["n_resamples"]
        for kind, test in body["versus"].items():
            score[f"versus_{kind}"] = test
        if body["versus"]:
            score["p_controls"] = body["p"]


def _store_tokens(store: ActivationStore) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and window positions of every stored token, [n_tokens] each (shards concatenated)."""
    index = [store.index(s) for s in range(store.n_shards)]
    return np.concatenate([i["token_id"] for i in index]), np.concatenate([i["position"] for i in index])


def n_concept_cells(cfg: ConceptsConfig) -> int:
    """How many (layer pair, concept) cells `run_concepts` scores."""
    return len(cfg.hooks_a) * len(cfg.hooks_b) * len(load_concept_sources(cfg.concepts))


def run_concepts(cfg: ConceptsConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Per layer pair and concept: the latents whose top activating tokens are the concept's keywords, matched
    within the concept on both sides, scored against the random-pairing null.  `progress(n)` is called with 0
    once the inputs are checked and aligned, then with 1 after each (layer pair, concept) cell."""
    progress = progress or (lambda n: None)
    resolve_device(cfg.device)  # a device that is not here: one line, before any work
    reuse_freed_memory()
    t0 = time.perf_counter()
    concepts = load_concept_sources(cfg.concepts)
    store_a, store_b = _open_inputs(cfg)
    hooks_a, hooks_b = cfg.hooks_a, cfg.hooks_b
    align = limit_positions(align_stores(store_a, store_b), cfg.max_positions)  # refuses stores of other texts
    progress(0)
    sides = SideCache(cfg, store_a, store_b, align)
    tokenizers = {"a": tokenizer_for_store(store_a), "b": tokenizer_for_store(store_b)}
    tokens = {"a": _store_tokens(store_a), "b": _store_tokens(store_b)}
    rows = {"a": align.rows_a, "b": align.rows_b}

    def membership(which: str, side: Side) -> dict[str, np.ndarray]:
        top = top_positions(side.codes, 5)  # [n_latents, 5] aligned positions, -1 padded
        store_rows = np.where(top >= 0, rows[which][np.maximum(top, 0)], -1)
        return concept_membership(*tokens[which], store_rows, tokenizers[which], concepts)

    entries, matched = [], []
    for hook_a in hooks_a:
        for hook_b in hooks_b:
            a, b = sides.get("sae", "a", hook_a), sides.get("sae", "b", hook_b)
            member_a, member_b = membership("a", a), membership("b", b)
            for concept in concepts:
                ia, ib = np.flatnonzero(member_a[concept]), np.flatnonzero(member_b[concept])
                entry = {
                    "hook_a": hook_a,
                    "hook_b": hook_b,
                    "concept": concept,
                    "n_latents_a": len(ia),
                    "n_latents_b": len(ib),
                    "n_pairs": 0,
                }
                if len(ia) and len(ib):
                    found, X, Y = concept_pairs(a, b, ia, ib, cfg)
                    entry.update(found)
                    matched.append((X, Y))
                else:
                    matched.append((np.zeros((0, 1)), np.zeros((0, 1))))
                entries.append(entry)
            log.info(
                "concepts %s x %s: %s",
                hook_a,
                hook_b,
                ", ".join(f"{e['concept']} {e['n_pairs']}" for e in entries[-len(concepts) :]),
            )
    # Scored once every cell is matched: SVCCA's number of directions is fixed for the whole grid (concept cells
    # have few pairs, and min(50, n / 10) would otherwise differ between them).
    scfg = grid_svcca_k(cfg, [len(X) for X, _ in matched])
    for entry, (X, Y) in zip(entries, matched, strict=True):
        entry["decoder"] = score_spaces(X, Y, cfg.measures, scfg)
        progress(1)
    for measure in cfg.measures:
        add_q([e["decoder"][measure] for e in entries])
    return {
        "version": RESULTS_VERSION,
        "kind": "concepts",
        "config": cfg.to_dict(),
        "svcca_k": scfg.svcca_k,
        "concepts": concepts,
        "store_a": _store_facts(store_a),
        "store_b": _store_facts(store_b),
        "alignment": {"n_positions": len(align.rows_a), **align.counts},
        "hooks_a": hooks_a,
        "hooks_b": hooks_b,
        "entries": entries,
        "seconds": time.perf_counter() - t0,
    }


def concept_pairs(
    a: Side, b: Side, ia: np.ndarray, ib: np.ndarray, cfg: ConceptsConfig
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Match a concept's latents ia [m_a] of a with ib [m_b] of b by the layer's rules, within the concept
    (correlation, chance threshold among the concept's latents, matching, junk and top-token overlap filters).
    Returns (the cell's pair facts: n_pairs, n_above_chance, mean_max_corr, latents_a / _b, matched_corr_mean;
    X [n_pairs, d_a] and Y [n_pairs, d_b], the matched decoder rows)."""
    sel = select_pairs(_subset(a, ia), _subset(b, ib), cfg)
    pairs = sel.pairs
    facts = {
        "n_pairs": len(pairs.idx_a),
        "n_above_chance": sel.n_above_chance,
        "mean_max_corr": sel.mean_max_corr,
        "latents_a": ia[pairs.idx_a].tolist(),
        "latents_b": ib[pairs.idx_b].tolist(),
        "matched_corr_mean": float(pairs.corr.mean()) if len(pairs.corr) else math.nan,
    }
    return facts, a.decoder[ia[pairs.idx_a]], b.decoder[ib[pairs.idx_b]]


def _subset(side: Side, latents: np.ndarray) -> Side:
    """`side` restricted to `latents` [m] (codes, decoder rows, junk mask and top tokens)."""

    def pick(x):
        return None if x is None else x[latents]

    return Side(side.label, side.codes[:, latents], side.decoder[latents], pick(side.junk), pick(side.top_tokens))


def _store_facts(store: ActivationStore) -> dict:
    m = store.manifest
    return {
        "path": str(store.path),
        "model": m["model"]["spec"],
        "d_model": store.d_model,
        "corpus": m["corpus"]["spec"],
        "n_tokens": store.n_tokens,
    }
