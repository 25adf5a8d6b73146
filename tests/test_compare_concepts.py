"""Concept keyword lists and which latents belong to a concept (multi-token keywords, window boundaries)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEXTS, train_tokenizer

from saeatlas.compare.concepts import concept_membership, keyword_sequences, load_concepts
from saeatlas.data.tokens import pack_windows, tokenize_text
from saeatlas.errors import SaeAtlasError

PAPER = ["Time", "Calendar", "People/Roles", "Nature", "Emotions", "MonthNames", "Countries", "Biology"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(add_bos=True)


def _store_arrays(tok, text: str, context: int = 64):
    """token_ids, positions [n_rows] of `text` cut into windows as a store holds them (<bos> first)."""
    windows = list(pack_windows([(0, text)], tok, context, prefix=(tok.bos_token_id,)))
    return np.concatenate([w.token_ids for w in windows]), np.concatenate([np.arange(len(w)) for w in windows])


def _row_of(token_ids, tok, piece: str, occurrence: int = 0) -> int:
    """Row of the LAST token of the `occurrence`-th `piece` (its running-text tokens) in `token_ids`."""
    seq = tok(piece, add_special_tokens=False)["input_ids"]
    n = len(seq)
    hits = [i + n - 1 for i in range(len(token_ids) - n + 1) if token_ids[i : i + n].tolist() == seq]
    return hits[occurrence]


# ---------------------------------------------------------------- keyword lists
def test_builtin_concepts_are_the_papers_eight_categories():
    concepts = load_concepts()
    assert list(concepts) == PAPER
    assert concepts["MonthNames"] == [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ]
    assert len(concepts["Time"]) == 83 and concepts["Time"][:3] == ["day", "night", "week"]
    assert concepts["Time"][-1] == "timeframe" and concepts["Biology"][-1] == "cytoplasm"
    assert {len(v) for v in concepts.values()} == {83, 35, 27, 46, 49, 12, 19, 29}
    assert "DNA" in concepts["Biology"] and "USA" in concepts["Countries"] and "kind" in concepts["Emotions"]


def test_user_toml_and_json_files(tmp_path):
    (tmp_path / "c.toml").write_text('Animals = ["fox", "dog"]\n"Deep Time" = ["eon"]\n')
    (tmp_path / "c.json").write_text(json.dumps({"Animals": ["fox", " dog "]}))
    assert load_concepts(tmp_path / "c.toml") == {"Animals": ["fox", "dog"], "Deep Time": ["eon"]}
    assert load_concepts(str(tmp_path / "c.json")) == {"Animals": ["fox", "dog"]}


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.toml", None, "does not exist"),
        ("c.yaml", "a: [b]", "neither .toml nor .json"),
        ("c.toml", "Animals = [fox", "cannot be parsed"),
        ("c.json", '{"a": ["b"]', "cannot be parsed"),
        ("c.json", '["fox", "dog"]', r"the whole file = \['fox', 'dog'\]: expected a table"),
        ("c.json", "{}", "the whole file = {}: expected a non-empty table"),
        ("c.toml", 'Animals = "fox"', "field 'Animals' = 'fox': expected a list"),
        ("c.toml", "Animals = []", r"field 'Animals' = \[\]: expected a non-empty list"),
        ("c.json", '{"Animals": ["fox", 3]}', r"field 'Animals\[1\]' = 3: expected a string"),
        ("c.json", '{"Animals": ["fox", "  "]}', r"field 'Animals\[1\]' = '  ': expected a word"),
        ("c.json", b'{"Animals": ["fo\xffx"]}', "is not valid JSON|cannot be parsed"),
    ],
)
def test_bad_concept_files_name_the_file_and_the_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SaeAtlasError, match=problem) as err:
        load_concepts(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_keyword_sequences_cover_spacing_and_case_without_specials(tok):
    seqs = keyword_sequences(tok, ["fox"])
    expected = {tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in ("fox", " fox", "Fox", " Fox")}
    assert set(seqs) == expected and len(seqs) == len(expected)
    assert all(tok.bos_token_id not in s for s in seqs)  # this tokenizer adds <bos> by default
    assert len(keyword_sequences(tok, ["bacteria"])[1]) > 1  # " bacteria" is several tokens


# ---------------------------------------------------------------- membership
def test_single_and_multi_token_keywords(tok):
    text = "The fox saw bacteria and the criteria of the earth on a summer day. " + TEXTS[0]
    ids, pos = _store_arrays(tok, text)
    fox, bacteria, criteria = _row_of(ids, tok, " fox"), _row_of(ids, tok, " bacteria"), _row_of(ids, tok, " criteria")
    earth, summer = _row_of(ids, tok, " earth"), _row_of(ids, tok, " summer")
    assert len(tok(" bacteria", add_special_tokens=False)["input_ids"]) > 3
    assert ids[criteria] == ids[bacteria]  # same last token ("a"), different word
    top = np.array(
        [
            [fox, -1],  # 0: single-token keyword
            [bacteria, -1],  # 1: last token of a multi-token keyword
            [bacteria - 1, -1],  # 2: inside the keyword, not its last token
            [criteria, -1],  # 3: same last token, other preceding tokens
            [-1, -1],  # 4: padding only
            [criteria, earth],  # 5: the second top row counts
            [summer, 0],  # 6: row 0 is <bos>
        ]
    )
    concepts = {"Animals": ["fox", "dog"], "Germs": ["bacteria"], "Nature": ["earth", "sun"], "Time": ["summer"]}
    member = concept_membership(ids, pos, top, tok, concepts)
    assert list(member) == list(concepts) and all(m.dtype == bool and m.shape == (7,) for m in member.values())
    assert member["Animals"].tolist() == [True, False, False, False, False, False, False]
    assert member["Germs"].tolist() == [False, True, False, False, False, False, False]
    assert member["Nature"].tolist() == [False, False, False, False, False, True, False]
    assert member["Time"].tolist() == [False, False, False, False, False, False, True]
    builtin = concept_membership(ids, pos, top, tok, load_concepts())
    assert builtin["Nature"][5] and builtin["Time"][6] and builtin["Calendar"][6] and not builtin["Nature"][6]
    assert builtin["Biology"][1] and not builtin["Biology"][3]  # "bacteria" is a Biology keyword, "criteria" not


def test_a_keyword_across_a_window_boundary_does_not_count(tok):
    text = "Now bacteria."
    ids, _ = tokenize_text(tok, text)
    n = len(tok(" bacteria", add_special_tokens=False)["input_ids"])
    last = _row_of(ids, tok, " bacteria")
    # One window: the keyword counts.  Then a window boundary two tokens before its last token: it does not.
    whole = np.arange(len(ids))
    split = np.where(np.arange(len(ids)) >= last - 1, np.arange(len(ids)) - (last - 1), np.arange(len(ids)))
    assert n > 2 and split[last] == 1
    top = np.array([[last]])
    assert concept_membership(ids, whole, top, tok, {"Germs": ["bacteria"]})["Germs"].tolist() == [True]
    assert concept_membership(ids, split, top, tok, {"Germs": ["bacteria"]})["Germs"].tolist() == [False]
    # The same through real windows: contexts that cut the word, and contexts that do not.
    outcomes = set()
    for context in range(3, 12):
        wids, wpos = _store_arrays(tok, text, context)
        rows = [i for i in range(len(wids)) if wids[i] == ids[last]]
        row = max(rows)
        expected = wpos[row] >= n - 1
        got = concept_membership(wids, wpos, np.array([[row]]), tok, {"Germs": ["bacteria"]})["Germs"][0]
        assert got == expected
        outcomes.add(bool(got))
    assert outcomes == {True, False}


def _naive(ids, pos, top, tok, concepts):
    out = {}
    for name, words in concepts.items():
        seqs = keyword_sequences(tok, words)
        hits = []
        for rows in top:
            hit = False
            for r in rows:
                if r < 0:
                    continue
                for s in seqs:
                    if pos[r] >= len(s) - 1 and ids[r - len(s) + 1 : r + 1].tolist() == list(s):
                        hit = True
            hits.append(hit)
        out[name] = np.array(hits)
    return out


def test_membership_equals_a_naive_loop_on_random_top_rows(tok):
    text = " ".join(TEXTS * 3) + " The earth, a summer day, a fox and a dog with bacteria in the brain."
    ids, pos = _store_arrays(tok, text, context=40)
    rng = np.random.default_rng(0)
    top = rng.integers(-1, len(ids), size=(300, 5))
    concepts = {**load_concepts(), "Animals": ["fox", "dog", "lazy dog"], "Words": ["the", "and", "of"]}
    fast, slow = concept_membership(ids, pos, top, tok, concepts), _naive(ids, pos, top, tok, concepts)
    for name in concepts:
        assert np.array_equal(fast[name], slow[name]), name
    assert sum(int(v.sum()) for v in fast.values()) > 50


def test_membership_input_errors(tok):
    ids, pos = np.arange(10), np.arange(10)
    with pytest.raises(SaeAtlasError, match="row 12 but the store has 10 rows"):
        concept_membership(ids, pos, np.array([[12]]), tok, {"a": ["fox"]})
    with pytest.raises(SaeAtlasError, match=r"top_rows must be \[d_sae, k\]"):
        concept_membership(ids, pos, np.array([1, 2]), tok, {"a": ["fox"]})
    with pytest.raises(SaeAtlasError, match="positions"):
        concept_membership(ids, pos[:5], np.array([[1]]), tok, {"a": ["fox"]})
    empty = concept_membership(ids, pos, np.zeros((0, 5), dtype=np.int64), tok, {"a": ["fox"]})
    assert empty["a"].shape == (0,)


# ---------------------------------------------------------------- matching within a concept
def test_concept_cells_use_the_layers_chance_threshold():
    """A concept of rare latents on both sides of unrelated codes: the fixed 0.1 threshold matches most of
    them by chance, the chance threshold (among the concept's latents) almost none; on codes that share
    features the concept's shared latents still find their partners."""
    import dataclasses

    from saeatlas.compare import synthetic
    from saeatlas.compare.config import ConceptsConfig
    from saeatlas.compare.grid import concept_pairs

    cfg = ConceptsConfig(store_a="a", store_b="b", saes_a="a", saes_b="b", hooks_a=["0"], hooks_b=["0"])
    fixed = dataclasses.replace(cfg, chance_shifts=0)
    data = synthetic.two_model_data(**synthetic.BENCH_DATA, unrelated=True, seed=5)
    a, b = synthetic.bench_sides(data, 5)
    rare = np.arange(80, 280)  # the oracle SAEs' rare latents (after 64 shared + 16 own features)
    by_chance, X, Y = concept_pairs(a, b, rare, rare, fixed)
    assert by_chance["n_pairs"] > 60 and X.shape == (by_chance["n_pairs"], a.decoder.shape[1]) and len(Y) == len(X)
    thresholded, _, _ = concept_pairs(a, b, rare, rare, cfg)
    assert thresholded["n_pairs"] < 0.05 * len(rare) and thresholded["n_above_chance"] < 0.05 * len(rare)
    assert thresholded["mean_max_corr"] == pytest.approx(by_chance["mean_max_corr"])  # before any threshold

    data = synthetic.two_model_data(**synthetic.BENCH_DATA, seed=6)
    a, b = synthetic.bench_sides(data, 6)
    concept = np.concatenate([np.arange(0, 32), rare])  # 32 shared features and the rare latents
    found, _, _ = concept_pairs(a, b, concept, concept, cfg)
    la, lb = np.array(found["latents_a"]), np.array(found["latents_b"])
    true = np.sum((la == lb) & (lb < 32))  # oracle latent i is feature i on both sides
    assert true >= 0.8 * 32 and true >= 0.8 * len(la)
