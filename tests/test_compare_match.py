"""Matching rules and filters, against hand-made cases, brute force and dense linear_sum_assignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import train_other_tokenizer, train_tokenizer
from scipy.optimize import linear_sum_assignment

from saeatlas.compare.codes import top_positions
from saeatlas.compare.correlate import CorrelationResult, pearson_sparse
from saeatlas.compare.match import junk_latents, junk_token_ids, match, max_weight_matching
from saeatlas.errors import SaeAtlasError


def result_from_matrix(corr: np.ndarray, top_m: int) -> CorrelationResult:
    """A CorrelationResult built naively from a full [d_a, d_b] matrix (NaN rows / columns = dead)."""
    dead_a, dead_b = np.isnan(corr).all(1), np.isnan(corr).all(0)
    safe = np.where(np.isnan(corr), -np.inf, corr)

    def top(table):  # [d, other] -> ([d, top_m] idx, [d, top_m] corr), best first, -1 / NaN padded
        order = np.argsort(-table, axis=1, kind="stable")[:, :top_m]
        val = np.take_along_axis(table, order, 1)
        idx = np.where(np.isfinite(val), order, -1)
        pad = top_m - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        val = np.pad(np.where(np.isfinite(val), val, np.nan), ((0, 0), (0, pad)), constant_values=np.nan)
        return idx, val

    cb, vb = top(safe.T)
    ca, va = top(safe)
    return CorrelationResult(
        len(corr), dead_a, dead_b, cb[:, 0], vb[:, 0], ca[:, 0], va[:, 0], cb, vb, ca, va, corr.astype(np.float32)
    )


def pairs(m) -> list[tuple[int, int]]:
    return list(zip(m.idx_a.tolist(), m.idx_b.tolist()))


# rows: A latents 0..4; columns: B latents 0..5.  A 4 and B 5 are dead.
TABLE = np.array(
    [
        [0.90, 0.05, 0.30, 0.20, 0.00, np.nan],
        [0.10, 0.02, 0.60, 0.55, 0.10, np.nan],
        [0.00, 0.01, 0.10, 0.50, 0.40, np.nan],
        [0.20, 0.03, 0.00, 0.10, 0.35, np.nan],
        [np.nan] * 6,
    ]
)


# ---------------------------------------------------------------- rules
def test_many_to_one_pairs_each_alive_b_latent_with_its_best_a_latent():
    result = result_from_matrix(TABLE, top_m=3)
    m = match(result, "many_to_one", threshold=0.1)
    # B 1's best (A 0 at 0.05) is below the threshold; B 5 is dead.
    assert pairs(m) == [(0, 0), (1, 2), (1, 3), (2, 4)]
    np.testing.assert_allclose(m.corr, [0.9, 0.6, 0.55, 0.4])
    assert m.counts == {"candidates": 6, "after_dead": 5, "after_threshold": 4, "after_junk": 4, "final": 4}
    assert m.idx_a.dtype == np.int64 and m.method == "many_to_one"


def test_junk_filter_drops_pairs_with_a_junk_latent_on_either_side():
    result = result_from_matrix(TABLE, top_m=3)
    junk_a = np.array([False, True, False, False, False])
    junk_b = np.array([False, False, False, False, True, False])
    m = match(result, "many_to_one", threshold=0.1, junk_a=junk_a, junk_b=junk_b)
    assert pairs(m) == [(0, 0)]
    assert m.counts["after_threshold"] == 4 and m.counts["after_junk"] == 1
    with pytest.raises(SaeAtlasError, match="junk_a"):
        match(result, junk_a=np.zeros(3, dtype=bool))


def test_legacy_first_keeps_the_first_pair_of_each_a_latent_not_the_best():
    table = np.array(
        [
            [0.30, 0.90, 0.05, 0.00],  # A 0: best of B 0 (0.30), then of B 1 (0.90, better, but second)
            [0.00, 0.10, 0.08, 0.75],  # A 1: best of B 2 (0.08 < threshold) first, then of B 3 (0.75)
            [0.00, 0.00, 0.06, 0.70],
            [0.00, 0.00, 0.07, 0.20],
        ]
    )
    result = result_from_matrix(table, top_m=2)
    assert list(result.best_a_for_b) == [0, 0, 1, 1]
    m = match(result, "legacy_first", threshold=0.1)
    assert pairs(m) == [(0, 0)]
    assert m.counts == {
        "candidates": 4,
        "after_dead": 4,
        "after_junk": 4,
        "after_first": 2,
        "after_threshold": 1,
        "final": 1,
    }
    # Junk is filtered before the first occurrence (the paper's order): with B 0 junk, A 0 keeps B 1.
    junk_b = np.array([True, False, False, False])
    assert pairs(match(result, "legacy_first", threshold=0.1, junk_b=junk_b)) == [(0, 1)]
    # many_to_one keeps all three pairs above the threshold; legacy_first lost (0, 1) and (1, 3).
    assert pairs(match(result, "many_to_one", threshold=0.1)) == [(0, 0), (0, 1), (1, 3)]


def test_mutual_keeps_only_mutual_nearest_neighbours():
    result = result_from_matrix(TABLE, top_m=3)
    m = match(result, "mutual", threshold=0.1)
    # A 1's best B is B 2 (0.60): (1, 3) is not mutual; A 2's best B is B 3 (0.50): (2, 4) is not mutual.
    assert pairs(m) == [(0, 0), (1, 2)]
    assert m.counts["after_mutual"] == 2


def test_dead_latents_are_never_matched_even_with_no_threshold():
    rng = np.random.default_rng(0)
    x = ((rng.random((300, 12)) < 0.3) * rng.random((300, 12))).astype(np.float32)
    x[:, 0] = 0.0  # dead in A: the paper's code matched dead latents to latent 0
    y = x[:, ::-1].copy()  # B latent 11 = A latent 0: dead too
    result = pearson_sparse(sp.csr_array(x), sp.csr_array(y), top_m=4)
    for method in ("many_to_one", "legacy_first", "mutual", "assignment"):
        m = match(result, method, threshold=-1.0)
        assert 0 not in m.idx_a and 11 not in m.idx_b
        assert len(m.idx_a) == 11
        assert np.array_equal(m.idx_b, 11 - m.idx_a)


def test_unknown_method_is_a_user_error():
    with pytest.raises(SaeAtlasError, match="mutual"):
        match(result_from_matrix(TABLE, 2), "hungarian")


# ---------------------------------------------------------------- optimal assignment
def dense_assignment(table: np.ndarray, threshold: float) -> tuple[set, float]:
    """Max-weight matching by scipy.optimize.linear_sum_assignment on the dense matrix (non-edges weigh 0)."""
    w = np.where(np.isnan(table) | (table <= threshold), 0.0, table)
    rows, cols = linear_sum_assignment(w, maximize=True)
    chosen = {(int(r), int(c)) for r, c in zip(rows, cols) if w[r, c] > 0}
    return chosen, float(sum(w[r, c] for r, c in chosen))


def brute_force(table: np.ndarray) -> float:
    """Largest total weight over all matchings (NaN = no edge), by enumeration."""
    d_a, d_b = table.shape
    best = 0.0
    for size in range(1, min(d_a, d_b) + 1):
        for rows in itertools.combinations(range(d_a), size):
            for cols in itertools.permutations(range(d_b), size):
                values = table[list(rows), list(cols)]
                if not np.isnan(values).any():
                    best = max(best, float(values.sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_assignment_equals_dense_linear_sum_assignment(seed):
    rng = np.random.default_rng(seed)
    d_a, d_b = rng.integers(5, 30, size=2)
    table = rng.uniform(-0.3, 0.9, size=(d_a, d_b))
    table[rng.random(d_a) < 0.1] = np.nan  # dead A latents
    table[:, rng.random(d_b) < 0.1] = np.nan
    m = match(result_from_matrix(table, top_m=max(d_a, d_b)), "assignment", threshold=0.1)
    expected, total = dense_assignment(table, 0.1)
    assert set(pairs(m)) == expected
    assert abs(m.corr.sum() - total) <= 1e-12
    assert len(set(m.idx_a)) == len(m.idx_a) and len(set(m.idx_b)) == len(m.idx_b)
    assert np.all(m.corr > 0.1)


@pytest.mark.parametrize("seed", range(8))
def test_assignment_on_the_candidate_graph_equals_brute_force(seed):
    """With top-2 candidates only, the optimum over the candidate graph (union of both directions)."""
    rng = np.random.default_rng(100 + seed)
    table = rng.uniform(0.0, 1.0, size=(5, 4))
    result = result_from_matrix(table, top_m=2)
    graph = np.full(table.shape, np.nan)
    for j in range(4):
        graph[result.cand_a_for_b[j], j] = table[result.cand_a_for_b[j], j]
    for i in range(5):
        graph[i, result.cand_b_for_a[i]] = table[i, result.cand_b_for_a[i]]
    n_edges = int((~np.isnan(graph)).sum())
    graph[graph <= 0.1] = np.nan
    m = match(result, "assignment", threshold=0.1)
    assert abs(m.corr.sum() - brute_force(graph)) <= 1e-12
    assert all(not np.isnan(graph[a, b]) for a, b in pairs(m))
    assert m.counts["candidates"] == n_edges
    assert m.counts["after_threshold"] == int((~np.isnan(graph)).sum())


def test_assignment_gives_the_partner_of_a_junk_latent_its_next_best():
    table = np.array([[0.9, 0.2], [0.8, 0.3]])
    result = result_from_matrix(table, top_m=2)
    assert pairs(match(result, "assignment")) == [(0, 0), (1, 1)]
    m = match(result, "assignment", junk_a=np.array([True, False]))
    assert pairs(m) == [(1, 0)]
    assert m.counts == {"candidates": 4, "after_dead": 4, "after_threshold": 4, "after_junk": 2, "final": 1}


def test_max_weight_matching_leaves_vertices_unmatched_when_that_is_better():
    # A path a0 - b0 - a1 - b1: 0.5 + 0.5 beats 0.9 alone only if 1.0 > 0.9.
    rows, cols = np.array([0, 1, 1]), np.array([0, 0, 1])
    assert list(max_weight_matching(rows, cols, np.array([0.5, 0.9, 0.5]))) == [True, False, True]
    assert list(max_weight_matching(rows, cols, np.array([0.4, 0.9, 0.4]))) == [False, True, False]
    assert not max_weight_matching(np.array([], dtype=int), np.array([], dtype=int), np.array([])).any()
    with pytest.raises(ValueError, match="distinct"):
        max_weight_matching(np.array([0, 0]), np.array([1, 1]), np.array([0.5, 0.5]))


# ---------------------------------------------------------------- junk tokens
JUNK_TEXT = {".", "\n", " ", "-", ",", "!", "?"}


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_junk_token_ids_are_the_papers_junk_tokens(kind):
    tok = train_tokenizer(add_bos=True) if kind == "byte-level" else train_other_tokenizer()
    ids = junk_token_ids(tok)
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert special <= set(ids.tolist()) and tok.unk_token_id not in ids
    for i in ids.tolist():  # sound: every id is a junk token
        text = tok.decode([i])
        assert i in special or text in JUNK_TEXT or text.lstrip(" ") in JUNK_TEXT | {""}, (i, text)
    # complete: every vocabulary token that reads as a junk text, with or without a leading space
    for token, i in tok.get_vocab().items():
        text = tok.convert_tokens_to_string([token])
        if text in JUNK_TEXT or (text.startswith(" ") and text[1:] in JUNK_TEXT):
            assert i in ids, (token, text)
    for text in (".", ",", "-", "!", "?"):
        assert tok.convert_tokens_to_ids(text) in ids
    assert tok.convert_tokens_to_ids("Ġ" if kind == "byte-level" else "▁") in ids


def test_junk_latents_flag_latents_with_a_junk_token_among_their_top_rows():
    tok = train_tokenizer(add_bos=True)
    junk = junk_token_ids(tok)
    dot, word = tok.convert_tokens_to_ids("."), tok.encode("fox", add_special_tokens=False)[0]
    token_at_row = np.array([word, word, dot, word, word, tok.bos_token_id])
    codes = np.zeros((6, 4), dtype=np.float32)
    codes[[0, 1, 3], 0] = [3, 2, 1]  # only words
    codes[[0, 2], 1] = [5, 0.1]  # a '.' among its top rows
    codes[5, 2] = 1.0  # fires on <bos>
    # latent 3 never fires: -1 rows are not junk
    top = top_positions(sp.csr_array(codes), k=3)
    assert list(junk_latents(top, token_at_row, junk)) == [False, True, True, False]
    assert list(junk_latents(top_positions(sp.csr_array(codes), k=1), token_at_row, junk)) == [
        False,
        False,
        True,
        False,
    ]
    with pytest.raises(SaeAtlasError, match="token ids"):
        junk_latents(top, token_at_row[:3], junk)
