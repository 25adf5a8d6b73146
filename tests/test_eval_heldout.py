"""Held-out text of the spliced metrics: windows spread over every document, the same text for every model, and
the standard errors over documents (hand computations, and a small version of bench/heldout_se.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import identity_sae

from saeatlas.data.corpus import Document, load_documents
from saeatlas.data.tokens import FLAG_SPECIAL, text_cuts
from saeatlas.models import load_model
from saeatlas.sae.metrics import downstream_figures, mean_se, ratio_se
from saeatlas.sae.splice import allocate_windows, choose_windows, document_windows, spliced_metrics


# ---------------------------------------------------------------- standard errors
def test_mean_se_and_ratio_se_match_a_hand_computation():
    mean, se = mean_se(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and se == pytest.approx(np.sqrt(5 / 3) / 2)  # sd 1.2910, / sqrt(4)
    # R = mean(a) / mean(b) = 2 / (8/3) = 0.75; a - R b = (-0.5, 0.5, 0), sd 0.5; SE = 0.5 / (sqrt(3) * 8/3)
    ratio, se = ratio_se(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 4.0]))
    assert ratio == 0.75 and se == pytest.approx(0.108253, abs=1e-6)
    naive = np.std([1.0, 2.0, 3.0], ddof=1) / np.sqrt(3) / (8 / 3)  # the numerator's error alone: 0.2165
    assert abs(se - naive) > 0.1
    assert mean_se(np.array([3.0]))[1] is None and ratio_se(np.array([1.0]), np.array([2.0]))[1] is None


def test_paired_figures_take_their_error_from_the_differences():
    """Documents differ in difficulty, but the SAE costs each one exactly 0.2 nats of the 1.0 that ablation costs:
    CE clean has a large SE, delta loss and CE-loss recovered have none."""
    clean = np.array([2.0, 3.0, 4.0])
    f = downstream_figures(clean, clean + 0.2, clean + 1.0, np.array([0.01, 0.02, 0.03]))
    assert f["ce_clean"] == pytest.approx(3.0) and f["ce_clean_se"] == pytest.approx(1 / np.sqrt(3))
    assert f["ce_sae_se"] == pytest.approx(1 / np.sqrt(3))
    assert f["delta_lm_loss"] == pytest.approx(0.2) and f["delta_lm_loss_se"] == pytest.approx(0.0, abs=1e-12)
    assert f["ce_loss_recovered"] == pytest.approx(0.8) and f["ce_loss_recovered_se"] == pytest.approx(0.0, abs=1e-12)
    assert f["kl_div"] == pytest.approx(0.02) and f["kl_div_se"] == pytest.approx(0.01 / np.sqrt(3))


def test_standard_errors_cover_the_truth_on_synthetic_documents():
    """bench/heldout_se.py's `normal` case, small: 20 documents, 400 replicates; the bench measures 0.93-0.95."""
    rng = np.random.default_rng(0)
    true = {"ce_clean": 3.0, "ce_sae": 3.25, "ce_zero_ablation": 5.5, "ce_loss_recovered": 0.9, "kl_div": 0.05}
    hits = dict.fromkeys(true, 0)
    for _ in range(400):
        clean, gap = 3.0 + 0.6 * rng.standard_normal(20), 2.5 + 0.5 * rng.standard_normal(20)
        sae = clean + 0.25 + 0.05 * rng.standard_normal(20)  # the SAE costs 0.25 of the mean gap 2.5
        kl = 0.05 + 0.02 * rng.standard_normal(20)
        f = downstream_figures(clean, sae, clean + gap, kl)
        for name, value in true.items():
            hits[name] += abs(f[name] - value) <= 1.96 * f[f"{name}_se"]
    coverage = {name: h / 400 for name, h in hits.items()}
    assert all(0.88 <= c <= 0.99 for c in coverage.values()), coverage


# ---------------------------------------------------------------- which text
def test_allocate_windows_deals_one_per_document_in_turn():
    assert allocate_windows([3, 1, 5], 6) == [3, 1, 2]
    assert allocate_windows([3, 1, 5], 20) == [3, 1, 5]
    assert allocate_windows([2, 2, 2], 2) == [1, 1, 0]
    assert allocate_windows([], 4) == []


def _documents(n: int = 6) -> list[Document]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    return [Document(f"doc:{i}", " ".join(words[(i + j) % 10] for j in range(150 + 40 * i))) for i in range(n)]


def test_choose_windows_reads_every_document_whatever_their_order():
    docs = _documents()
    # the old rule read the first 4096 tokens in order: here the first document alone holds 150 words (~1000
    # characters), so a budget of 1000 characters read one document; now it reads all six
    chosen = choose_windows(docs, n_chars=1000, window_chars=60, seed=0)
    assert sorted(chosen) == [d.key for d in docs]
    assert choose_windows(docs[::-1], 1000, 60, seed=0) == chosen
    for d in docs:
        cuts = text_cuts(d.text, 60)
        assert set(chosen[d.key]) <= set(cuts) and chosen[d.key] == sorted(chosen[d.key])
    held = sum(
        np.diff([*text_cuts(d.text, 60), len(d.text)])[[text_cuts(d.text, 60).index(s) for s in chosen[d.key]]].sum()
        for d in docs
    )
    assert held >= 1000 and held < 1000 + 2 * 70  # stops once the budget is held
    other = choose_windows(docs, 1000, 60, seed=1)
    assert sorted(other) == sorted(chosen) and other != chosen  # the seed moves the windows, not the documents
    few = choose_windows(docs, 60, 60, seed=0)  # one window's worth: a seeded choice of one document
    more = choose_windows(docs, 200, 60, seed=0)  # a few windows: the first documents of the same seeded order
    assert len(few) == 1 and 1 < len(more) < len(docs) and set(few) < set(more)


@pytest.fixture(scope="module")
def handles(tiny_gemma, tiny_other):
    return [load_model(str(m), dtype="float32") for m in (tiny_gemma, tiny_other)]


def test_two_tokenizers_read_the_same_text_from_every_document(handles, long_corpus):
    """tiny-gemma (byte-level BPE with <bos>) and tiny-other (Metaspace, no BOS) read the same windows of all 8
    documents; a perfect SAE recovers all the loss on every document, so its SE is 0 while CE clean's is not."""
    results = [
        spliced_metrics(
            h, identity_sae(h.d_model), "resid_post.1", corpus=str(long_corpus), split="all", n_tokens=600, context=32
        )
        for h in handles
    ]
    assert [r["n_documents"] for r in results] == [8, 8] and results[0]["documents_available"] == 8
    assert results[0]["documents"] == results[1]["documents"] and results[0]["n_windows"] == results[1]["n_windows"]
    for r in results:
        assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
        assert r["ce_loss_recovered_se"] == pytest.approx(0.0, abs=1e-4) and r["ce_clean_se"] > 1e-3

    docs = load_documents(str(long_corpus), split="all")
    chosen = choose_windows(docs, 600 * 4, 96)
    for d in docs:
        firsts = []
        for h in handles:
            windows = document_windows(d.text, chosen[d.key], 96, h.tokenizer, 32, *h.special_tokens)
            assert len(windows) == len(chosen[d.key])
            firsts.append([int(w.char_spans[(w.flags & FLAG_SPECIAL) == 0][0, 0]) for w in windows])
        for start, a, b in zip(chosen[d.key], *firsts, strict=True):
            assert 0 <= a - start <= 1 and 0 <= b - start <= 1  # Metaspace offsets may skip the space


def test_eval_verb_prints_each_spliced_figure_with_its_standard_error(tiny_gemma, tmp_path, capsys):
    from saeatlas.cli import main
    from saeatlas.sae.formats import save_saelens

    sae = identity_sae(32)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)  # half the activation: some loss, a nonzero error
    folder = save_saelens(sae, tmp_path / "sae", metadata={"hook_name": "resid_post.1"})
    args = ["eval", str(folder), "--model", str(tiny_gemma), "--corpus", "news", "--ce-tokens", "300"]
    assert main([*args, "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "documents (mean over documents ± standard error)" in out
    for phrase in ("CE clean", "with SAE", "zero-ablated", "CE-loss recovered", "delta LM loss", "KL"):
        assert re.search(rf"{phrase} -?\d+\.\d+ ± \d+\.\d+", out), phrase


def test_the_report_shows_the_spliced_figures_with_their_standard_errors():
    from saeatlas.report.sections.saes import render

    downstream = {"ce_loss_recovered": 0.91234, "ce_loss_recovered_se": 0.00412, "kl_div": 0.01, "n_documents": 9}
    old = {"ce_loss_recovered": 0.8, "delta_lm_loss": 0.1}  # a results.json of version 2: no errors
    html = render({"saes": [{"label": "a", "hook": "h", "downstream": downstream}, {"label": "b", "downstream": old}]})
    assert "0.912 ± 0.004" in html and "0.0100<" in html and ">9<" in html
    assert "0.800<" in html and "0.800 ±" not in html
