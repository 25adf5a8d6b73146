"""The first-letter task, probes and k-sparse splitting.

The projection metric and the parent/child toy model (the ground truth) are in test_absorption_toy.py, the ablation
variant's decision rule and integrated-gradients path in test_absorption_rules.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from saeatlas.absorption.probes import ProbeRecipe, classification_scores, one_hot, train_probes
from saeatlas.absorption.splitting import rank_latents, split_feature
from saeatlas.absorption.task import (
    LETTERS,
    alphabetic_vocabulary,
    build_prompts,
    stratified_sample,
    task_activations,
    tokenize_prompts,
)
from saeatlas.models import capture, load_model, parse_hook


@pytest.fixture(scope="module")
def tiny(tiny_gemma):
    return load_model(str(tiny_gemma), dtype="float32")


# ------------------------------------------------------------------ task
def test_vocabulary_is_alphabetic_with_at_most_one_leading_space(tiny):
    vocab = alphabetic_vocabulary(tiny.tokenizer)
    assert len(vocab) > 50
    special = set(tiny.tokenizer.all_special_ids)
    for token_id, text in vocab:
        assert re.fullmatch(r" ?[a-zA-Z]+", text) and token_id not in special
        assert tiny.tokenizer.decode([token_id]) == text
    # every alphabetic token is found: compare with a direct scan
    direct = {
        i
        for i in range(len(tiny.tokenizer))
        if i not in special and re.fullmatch(r" ?[a-zA-Z]+", tiny.tokenizer.decode([i]))
    }
    assert {i for i, _ in vocab} == direct


def test_stratified_sample_balances_letters_and_fills_from_large_ones():
    letters = np.repeat(np.arange(26), [3] + [100] * 25)  # letter A has only 3 items
    chosen = stratified_sample(letters, 260, np.random.default_rng(0))
    counts = np.bincount(letters[chosen], minlength=26)
    assert len(chosen) == 260 and counts[0] == 3 and counts[1:].min() >= 10 and counts.max() - counts[1:].min() <= 1
    again = stratified_sample(letters, 260, np.random.default_rng(0))
    assert np.array_equal(chosen, again) and len(np.unique(chosen)) == 260
    assert len(stratified_sample(letters, None, np.random.default_rng(0))) == len(letters)


def test_prompts_follow_the_template_and_the_word_position_comes_from_the_tokenization(tiny):
    vocab = alphabetic_vocabulary(tiny.tokenizer)
    prompts = build_prompts(vocab, 60, seed=3)
    assert prompts == build_prompts(vocab, 60, seed=3)  # seeded
    for p in prompts:
        lines = p.text.split("\n")
        assert len(lines) == 11 and lines[-1] == f"{p.word} has the first letter:"
        for line in lines[:-1]:
            word, answer = re.fullmatch(r"(.+) has the first letter: ([A-Z])", line).groups()
            assert answer == word.strip()[0].upper()
            assert word != p.word  # the target is never among its own examples
        assert p.text[p.word_start : p.word_end] == p.word and LETTERS[p.letter] == p.word.strip()[0].upper()
    ids, positions, single = tokenize_prompts(tiny.tokenizer, prompts)
    assert single.mean() > 0.9
    for p, row, pos, ok in zip(prompts, ids, positions, single):
        assert row[0] == tiny.tokenizer.bos_token_id
        if ok:
            assert row[pos] == p.token_id
            # after the word: " has the first letter:" in the same tokens as the template alone
            tail = tiny.tokenizer(" has the first letter:", add_special_tokens=False)["input_ids"]
            assert row[pos + 1 :] == tail


def test_task_activations_are_the_hook_activations_at_the_word_token(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path))
    task = task_activations(tiny, "resid_post.1", n_words=40, seed=1, batch_size=7)
    assert task.acts.shape == (len(task.prompts), tiny.d_model) and len(task.prompts) + task.n_dropped == 40
    ids, positions, _ = tokenize_prompts(tiny.tokenizer, task.prompts[:3])
    point = parse_hook("resid_post.1", tiny.n_layers)
    for i in range(3):
        alone = capture(tiny, [point], torch.tensor([ids[i]]), torch.ones(1, len(ids[i]), dtype=torch.long))
        np.testing.assert_allclose(task.acts[i], alone[point.name][0, positions[i]].numpy(), rtol=1e-4, atol=1e-4)
    cached = task_activations(tiny, "resid_post.1", n_words=40, seed=1)  # read back from the cache
    assert np.array_equal(cached.acts, task.acts) and cached.prompts == task.prompts


# ------------------------------------------------------------------ probes
def test_probes_separate_planted_classes_and_scores_match_sklearn():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 20)) * 3
    labels = rng.integers(0, 5, size=1500)
    x = centres[labels] + rng.normal(size=(1500, 20))
    probes = train_probes(x[:1200], one_hot(labels[:1200], 5), ProbeRecipe(epochs=30))
    predicted = probes.predict(x[1200:])
    scores = classification_scores(predicted, one_hot(labels[1200:], 5))
    assert scores["f1"].min() > 0.9
    for c in range(5):
        p, r, f, _ = precision_recall_fscore_support(labels[1200:] == c, predicted[:, c], average="binary")
        assert np.allclose([scores["precision"][c], scores["recall"][c], scores["f1"][c]], [p, r, f])
    assert np.isclose(np.linalg.norm(probes.direction(2)), 1.0)


def _scores_by_hand(predicted: np.ndarray, actual: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 = 2pr / (p + r) from the counts, 0 where a denominator is 0 (the formulas
    classification_scores used before it called scikit-learn)."""
    tp = (predicted & actual).sum(0).astype(np.float64)
    fp, fn = (predicted & ~actual).sum(0), (~predicted & actual).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


@pytest.mark.parametrize("seed", range(5))
def test_classification_scores_equal_the_counts_formulas(seed):
    """Random labels with a class lacking positives, one lacking predictions and one lacking both: precision
    and recall equal the count formulas exactly, F1 to the last bit (scikit-learn divides 2 tp by
    2 tp + fp + fn in one step, the formula above goes through p and r)."""
    rng = np.random.default_rng(seed)
    n, n_classes = int(rng.integers(20, 400)), 8
    actual = rng.random((n, n_classes)) < rng.uniform(0.05, 0.6, n_classes)
    predicted = rng.random((n, n_classes)) < rng.uniform(0.05, 0.6, n_classes)
    actual[:, 0] = False  # no positives
    predicted[:, 1] = False  # no predictions
    actual[:, 2] = predicted[:, 2] = False  # neither
    scores, expected = classification_scores(predicted, actual), _scores_by_hand(predicted, actual)
    np.testing.assert_array_equal(scores["precision"], expected["precision"])
    np.testing.assert_array_equal(scores["recall"], expected["recall"])
    np.testing.assert_allclose(scores["f1"], expected["f1"], rtol=1e-15, atol=0)
    with np.errstate(invalid="ignore"):
        exact = np.nan_to_num(2 * expected["tp"] / (2 * expected["tp"] + expected["fp"] + expected["fn"]))
    np.testing.assert_array_equal(scores["f1"], exact)
    assert (scores["f1"][:3] == 0).all() and (scores["precision"][[1, 2]] == 0).all()
    np.testing.assert_array_equal(scores["true_positives"], expected["tp"].astype(np.int64))
    np.testing.assert_array_equal(scores["positives"], actual.sum(0))
    one = classification_scores(predicted[:, 3:4], actual[:, 3:4])  # a single class, as toy.py asks
    assert {k: v.tolist() for k, v in one.items()} == {k: v[3:4].tolist() for k, v in scores.items()}


# ------------------------------------------------------------------ splitting
def _split_codes(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Latent 0 fires on all positives of class 0 (one latent); class 1 is split over latents 1 and 2."""
    labels = rng.integers(0, 3, size=n)
    codes = np.abs(rng.normal(size=(n, 40))) * (rng.random((n, 40)) < 0.1)
    codes[:, :3] = 0
    codes[labels == 0, 0] = 1 + rng.random((labels == 0).sum())
    half = rng.random(n) < 0.5
    codes[(labels == 1) & half, 1] = 1 + rng.random(((labels == 1) & half).sum())
    codes[(labels == 1) & ~half, 2] = 1 + rng.random(((labels == 1) & ~half).sum())
    return codes, labels


def test_k_sparse_probing_finds_one_main_latent_or_the_split_pair():
    rng = np.random.default_rng(1)
    codes, labels = _split_codes(3000, rng)
    train, test = np.arange(2400), np.arange(2400, 3000)
    ranked = rank_latents(codes[train], one_hot(labels[train], 3))
    whole = split_feature(ranked[0], codes[train], labels[train] == 0, codes[test], labels[test] == 0)
    assert whole.main == [0] and whole.num_split_features == 1 and whole.f1 > 0.99
    split = split_feature(ranked[1], codes[train], labels[train] == 1, codes[test], labels[test] == 1)
    assert sorted(split.main) == [1, 2] and split.num_split_features == 2 and split.f1 > 0.99
    assert split.f1_by_k[0] < 0.8  # one half alone misses half the positives
    assert np.array_equal(split.predicted_test, labels[test] == 1)


# ------------------------------------------------------------------ the real model
@pytest.mark.real
def test_gemma_word_token_is_six_from_the_end_and_layer_3_carries_the_letter():
    from saeatlas.absorption.run import probe_table, split_indices

    gemma = load_model("gemma-3-270m")
    task = task_activations(gemma, "resid_post.3", n_words=1300, seed=0, use_cache=False)
    assert task.n_dropped <= 13 and len(task.prompts) >= 1287
    ids, positions, _ = tokenize_prompts(gemma.tokenizer, task.prompts)
    assert {int(p - len(i)) for p, i in zip(positions, ids)} == {-6}  # the paper's index for Gemma, found here
    train, test = split_indices(task.letters, 0.2, 42)
    table = probe_table(train_probes(task.acts[train], one_hot(task.letters[train], 26)), task.acts, task.letters, test)
    assert table["f1"].mean() > 0.5 and (table["f1"] > 0.3).sum() >= 20
