"""Pairing the latents of SAE A with those of SAE B from their correlations, and the paper's filters.

Methods (`match(result, method=...)`):
- many_to_one: each alive B latent -> its most correlated A latent (the paper's default).  An A
  latent can be the partner of many B latents.
- legacy_first: the paper's "1-1": the many_to_one pairs in B order, keeping for each A latent only
  the FIRST pair that survived the junk and top-token overlap filters, then the threshold.  It is not an assignment: the pair
  kept is whichever B latent comes first, not the best one, and an A latent whose first pair is below
  the threshold loses all its pairs.  Kept only to reproduce the paper.
- mutual: mutual nearest neighbours: B's best A is i and i's best B is j.
- assignment: the 1-1 matching with the largest total correlation on the candidate graph (the top-m
  partners of every latent in both directions), latents allowed to stay unmatched.

Filters: dead latents never match; pairs need correlation > threshold; junk pairs (a latent whose top
activating tokens include a junk token, masks from `junk_latents` or `paper_junk_latents`) are dropped;
with top-token keys (`shared_token_keys`), pairs whose two latents' top activating tokens share no token
are dropped (the paper's overlap filter).  `Matches.counts` says how many pairs were left after each
stage, in the order the stages ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from ..errors import SaeAtlasError
from .correlate import CorrelationResult

Method = Literal["many_to_one", "legacy_first", "mutual", "assignment"]
METHODS: tuple[str, ...] = get_args(Method)
JUNK_TEXTS: tuple[str, ...] = (".", "\n", " ", "-", ",", "!", "?")
"""The paper's junk tokens that are text (`. \\n space - , ! ?`)."""
JUNK_SPECIAL: tuple[str, ...] = ("<bos>", "<|endoftext|>", "<pad>", "<s>", "</s>", "<eos>")
"""The paper's special junk tokens (<bos> <|endoftext|> <pad>) and their usual spellings elsewhere."""
PAPER_JUNK: tuple[str, ...] = (
    ".",
    "\\n",
    "\n",
    "",
    " ",
    "-",
    ",",
    "!",
    "?",
    "<|endoftext|>",
    "<bos>",
    "|bos|",
    "<pad>",
)
"""The paper's junk list, verbatim: wlg1/univ_feat_geom run_pipeline/run_expm_fns.py `nonconc_words` (the union
of the `junk_words` of _old_code/nbs_as_py/_main_results/getScores_pythia.py and getScores_gemma.py).  It is
compared with each token decoded on its own (`tokenizer.decode(id)`), as is: no leading-space variants
(whatever the tokenizer's own decode clean-up does to " ." stays), "\\n" is backslash-n."""
_SPACE_MARKERS = ("\u2581", "\u0120")  # SentencePiece "▁" and byte-level BPE "Ġ" spellings of a leading space
_BYTE_TOKENS = {"\n": "<0x0A>", " ": "<0x20>"}  # SentencePiece byte-fallback spellings


@dataclass
class Matches:
    """Matched pairs (idx_a[q], idx_b[q]) with their correlations."""

    idx_a: np.ndarray
    """[p] int64 A latents."""
    idx_b: np.ndarray
    """[p] int64 B latents."""
    corr: np.ndarray
    """[p] float64 correlations of the pairs."""
    method: str
    counts: dict = field(default_factory=dict)
    """Pairs left after each stage, in order: candidates, after_dead, ..., final."""


def match(
    result: CorrelationResult,
    method: str = "many_to_one",
    threshold: float = 0.1,
    junk_a: np.ndarray | None = None,
    junk_b: np.ndarray | None = None,
    tokens_a: np.ndarray | None = None,
    tokens_b: np.ndarray | None = None,
) -> Matches:
    """Pair A and B latents by `method` (see the module docstring), then filter: dead, threshold, junk,
    top-token overlap.

    junk_a [d_a] / junk_b [d_b] bool: latents to drop (None: no junk filter).  tokens_a [d_a, k] /
    tokens_b [d_b, k] int64: keys of each latent's top activating tokens, -1 for none (`shared_token_keys`);
    given both, a pair whose latents share no key is dropped.  Pairs come in B order (assignment: in A order).
    """
    if method not in METHODS:
        raise SaeAtlasError(f"unknown matching method '{method}': use one of {', '.join(METHODS)}")
    d_a, d_b = len(result.dead_a), len(result.dead_b)
    junk_a = _mask(junk_a, d_a, "junk_a")
    junk_b = _mask(junk_b, d_b, "junk_b")
    overlap = _overlap_filter(tokens_a, tokens_b, d_a, d_b)
    if method == "assignment":
        return _assignment(result, threshold, junk_a, junk_b, overlap)
    b = np.arange(d_b, dtype=np.int64)
    a = np.asarray(result.best_a_for_b, dtype=np.int64)
    corr = np.asarray(result.best_corr_for_b, dtype=np.float64)
    stages = _Stages(d_b)
    keep = stages.cut("after_dead", (a >= 0) & ~result.dead_b & ~result.dead_a[np.maximum(a, 0)] & np.isfinite(corr))
    junk = junk_a[np.maximum(a, 0)] | junk_b
    if method == "legacy_first":
        # The paper's order (wlg1/univ_feat_geom _old_code/nbs_as_py/_main_results/getScores_pythia.py
        # run_expm): junk and overlap filters in one pass over B, then first occurrence, then the threshold.
        keep = stages.cut("after_junk", keep & ~junk)
        if overlap is not None:
            keep = stages.cut("after_overlap", keep & overlap(np.maximum(a, 0), b))
        keep = stages.cut("after_first", keep & _first_occurrence(a, keep))
        # The paper's correlations are (n-1)/n of Pearson's r (unbiased std, then / n: correlation_fns.py
        # batched_correlation), which decides pairs just above the threshold.
        n = result.n_positions
        keep = stages.cut("after_threshold", keep & (corr * ((n - 1) / n if n > 1 else 1.0) > threshold))
    else:
        if method == "mutual":
            partner = np.asarray(result.best_b_for_a, dtype=np.int64)[np.maximum(a, 0)]
            keep = stages.cut("after_mutual", keep & (partner == b))
        keep = stages.cut("after_threshold", keep & (corr > threshold))
        keep = stages.cut("after_junk", keep & ~junk)
        if overlap is not None:
            keep = stages.cut("after_overlap", keep & overlap(np.maximum(a, 0), b))
    stages.cut("final", keep)
    return Matches(a[keep], b[keep], corr[keep], method, stages.counts)


class _Stages:
    """Counts of the pairs kept after each stage."""

    def __init__(self, n_candidates: int):
        self.counts = {"candidates": int(n_candidates)}

    def cut(self, name: str, keep: np.ndarray) -> np.ndarray:
        self.counts[name] = int(keep.sum())
        return keep


def _mask(mask: np.ndarray | None, d: int, name: str) -> np.ndarray:
    if mask is None:
        return np.zeros(d, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != (d,) or mask.dtype != bool:
        raise SaeAtlasError(
            f"{name} must be a bool mask of shape ({d},), got {mask.dtype} {mask.shape}: "
            "compute it with junk_latents for the same SAE"
        )
    return mask


def _overlap_filter(tokens_a: np.ndarray | None, tokens_b: np.ndarray | None, d_a: int, d_b: int):
    """None (no overlap filter) or a function (ia [p], ib [p]) -> [p] bool: the pair's latents share a
    top-token key (keys -1 never match)."""
    if tokens_a is None and tokens_b is None:
        return None
    if tokens_a is None or tokens_b is None:
        raise SaeAtlasError("the top-token overlap filter needs the top-token keys of both sides (tokens_a, tokens_b)")
    tokens_a, tokens_b = np.asarray(tokens_a), np.asarray(tokens_b)
    for name, keys, d in (("tokens_a", tokens_a, d_a), ("tokens_b", tokens_b, d_b)):
        if keys.ndim != 2 or keys.shape[0] != d or not np.issubdtype(keys.dtype, np.integer):
            raise SaeAtlasError(
                f"{name} must be integer keys of shape ({d}, k), got {keys.dtype} {keys.shape}: "
                "compute them with shared_token_keys for the same SAEs"
            )

    def shares_a_token(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        ka, kb = tokens_a[ia], tokens_b[ib]  # [p, k_a], [p, k_b]
        return ((ka[:, :, None] == kb[:, None, :]) & (ka[:, :, None] >= 0)).any(axis=(1, 2))

    return shares_a_token


def shared_token_keys(texts_a: np.ndarray, texts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer keys of two sides' top-token strings (texts_a [d_a, k] / texts_b [d_b, k] object arrays of
    str, None where a latent has fewer top positions): equal strings get equal keys on both sides, None -1.

    The paper compares decoded token strings (wlg1/univ_feat_geom run_pipeline/interpret_fns.py
    `store_top_toks`), which also lets two tokenizers be compared: each side decodes its own token ids."""
    texts_a, texts_b = np.asarray(texts_a, dtype=object), np.asarray(texts_b, dtype=object)
    flat = np.concatenate([texts_a.reshape(-1), texts_b.reshape(-1)])
    present = np.array([t is not None for t in flat], dtype=bool)
    keys = np.full(len(flat), -1, dtype=np.int64)
    if present.any():
        _, keys[present] = np.unique(flat[present].astype(str), return_inverse=True)
    return keys[: texts_a.size].reshape(texts_a.shape), keys[texts_a.size :].reshape(texts_b.shape)


def _first_occurrence(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[d_b] bool: position q is the first kept position holding its value a[q]."""
    kept = np.flatnonzero(keep)
    _, first = np.unique(a[kept], return_index=True)
    out = np.zeros(len(a), dtype=bool)
    out[kept[first]] = True
    return out


# ---------------------------------------------------------------- optimal assignment
def _assignment(
    result: CorrelationResult, threshold: float, junk_a: np.ndarray, junk_b: np.ndarray, overlap
) -> Matches:
    """Max-weight 1-1 matching on the union of both directions' top-m candidates (after the filters)."""
    ia, ib, corr = _candidate_edges(result)
    stages = _Stages(len(ia))
    keep = stages.cut("after_dead", ~result.dead_a[ia] & ~result.dead_b[ib])
    # An edge of correlation <= 0 never raises the total, so it is never part of an optimal matching.
    keep = stages.cut("after_threshold", keep & (corr > max(threshold, 0.0)))
    keep = stages.cut("after_junk", keep & ~junk_a[ia] & ~junk_b[ib])
    if overlap is not None:
        keep = stages.cut("after_overlap", keep & overlap(ia, ib))
    ia, ib, corr = ia[keep], ib[keep], corr[keep]
    chosen = max_weight_matching(ia, ib, corr)
    stages.cut("final", chosen)
    order = np.argsort(ia[chosen], kind="stable")
    return Matches(ia[chosen][order], ib[chosen][order], corr[chosen][order], "assignment", stages.counts)


def _candidate_edges(result: CorrelationResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct edges (i, j, corr) of the top-m candidates in both directions (padding dropped)."""
    d_a, d_b = len(result.dead_a), len(result.dead_b)
    m_b, m_a = result.cand_a_for_b.shape[1], result.cand_b_for_a.shape[1]
    ia = np.concatenate([result.cand_a_for_b.reshape(-1), np.repeat(np.arange(d_a), m_a)])
    ib = np.concatenate([np.repeat(np.arange(d_b), m_b), result.cand_b_for_a.reshape(-1)])
    corr = np.concatenate([result.cand_corr_a_for_b.reshape(-1), result.cand_corr_b_for_a.reshape(-1)])
    ok = (ia >= 0) & (ib >= 0) & np.isfinite(corr)
    ia, ib, corr = ia[ok].astype(np.int64), ib[ok].astype(np.int64), corr[ok]
    _, first = np.unique(ia * d_b + ib, return_index=True)
    return ia[first], ib[first], corr[first]


def max_weight_matching(rows: np.ndarray, cols: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """[E] bool: the edges of a matching of largest total weight of the bipartite graph with edges
    (rows[e], cols[e]) of weight > 0 (no edge twice), vertices allowed to stay unmatched.

    Reduced to a min-weight FULL matching (LAPJVsp, scipy.sparse.csgraph) of the R rows into the C cols
    plus one dummy col per row ("unmatched"): with s = 1 + max weight, real edges cost s - w and dummy
    edges s (all > 0: a zero would be no edge), so every full matching costs s R - (its real weight).
    """
    chosen = np.zeros(len(rows), dtype=bool)
    if len(rows) == 0:
        return chosen
    if np.any(weight <= 0):
        raise ValueError("max_weight_matching needs weights > 0")
    rv, r = np.unique(rows, return_inverse=True)
    cv, c = np.unique(cols, return_inverse=True)
    R, C = len(rv), len(cv)
    edge_key = r.astype(np.int64) * C + c
    if len(np.unique(edge_key)) != len(rows):
        raise ValueError("max_weight_matching needs distinct edges")
    shift = 1.0 + float(weight.max())
    left = np.concatenate([r, np.arange(R)])
    right = np.concatenate([c, C + np.arange(R)])
    cost = np.concatenate([shift - weight, np.full(R, shift)])
    left_match, right_match = min_weight_full_bipartite_matching(sp.csr_array((cost, (left, right)), shape=(R, C + R)))
    real = right_match < C
    chosen[np.isin(edge_key, left_match[real].astype(np.int64) * C + right_match[real])] = True
    return chosen


# ---------------------------------------------------------------- junk tokens
def junk_token_ids(tokenizer) -> np.ndarray:
    """Sorted int64 ids, in a Hugging Face `tokenizer`, of the paper's junk tokens
    `. \\n space - <bos> , ! ? <|endoftext|> <pad>`: each as a single token with and without a leading
    space (plain, SentencePiece or byte-level spelling), plus the tokenizer's own bos/eos/pad ids."""
    vocab = tokenizer.get_vocab()
    unk = getattr(tokenizer, "unk_token_id", None)
    ids: set[int] = set()
    for text in JUNK_TEXTS:
        for variant in (text, " " + text):
            encoded = tokenizer.encode(variant, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
        spellings = [text, *(marker + text for marker in _SPACE_MARKERS), _BYTE_TOKENS.get(text, text)]
        ids.update(int(vocab[s]) for s in spellings if s in vocab)
    ids.update(int(vocab[s]) for s in JUNK_SPECIAL if s in vocab)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    ids.discard(unk)
    return np.array(sorted(ids), dtype=np.int64)


def junk_latents(top_rows: np.ndarray, token_ids_at_rows: np.ndarray, junk_ids: np.ndarray) -> np.ndarray:
    """[d_sae] bool: a latent is junk if any of its top activating rows (top_rows [d_sae, k], -1 padded,
    from `top_positions`) holds a junk token (token_ids_at_rows [n_positions]: token id of each row)."""
    top_rows = np.asarray(top_rows, dtype=np.int64)
    tokens = np.asarray(token_ids_at_rows)
    if top_rows.ndim != 2:
        raise SaeAtlasError(f"top_rows must be [d_sae, k], got shape {top_rows.shape}")
    if top_rows.size and top_rows.max() >= len(tokens):
        raise SaeAtlasError(
            f"top_rows point at row {top_rows.max()} but only {len(tokens)} token ids were given: "
            "give the token id of every row the codes were computed on"
        )
    valid = top_rows >= 0
    is_junk = np.isin(tokens[np.where(valid, top_rows, 0)], np.asarray(junk_ids)) & valid
    return is_junk.any(axis=1)


def top_token_texts(top_rows: np.ndarray, token_ids_at_rows: np.ndarray, decode) -> np.ndarray:
    """[d_sae, k] object: the decoded string of the token at each of a latent's top rows (top_rows [d_sae, k],
    -1 padded, from `top_positions`; token_ids_at_rows [n_positions]), None where padded.  `decode(id)` gives
    one token's string (the paper's `tokenizer.decode(id)`); each distinct id is decoded once."""
    top_rows = np.asarray(top_rows, dtype=np.int64)
    tokens = np.asarray(token_ids_at_rows)
    valid = top_rows >= 0
    ids = tokens[np.where(valid, top_rows, 0)]
    unique, inverse = np.unique(ids[valid], return_inverse=True)
    texts = np.array([decode(int(i)) for i in unique] + [None], dtype=object)  # the trailing None: padding
    index = np.full(top_rows.shape, len(unique), dtype=np.int64)
    index[valid] = inverse
    return texts[index]


def paper_junk_latents(texts: np.ndarray) -> np.ndarray:
    """[d_sae] bool: a latent is junk if one of its top tokens' strings (texts [d_sae, k] from
    `top_token_texts`) is in the paper's list `PAPER_JUNK`, compared as is."""
    junk = set(PAPER_JUNK)
    return np.array([any(t in junk for t in row if t is not None) for row in np.asarray(texts, dtype=object)], bool)
