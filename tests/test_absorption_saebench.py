"""Absorption figures comparable with SAEBench (adamkarvonen/SAEBench, sae_bench/evals/absorption/): the
projection scores on SAEs whose decoder rows are not unit norm, the split-feature count, the probe recipe,
and a layer where few letters are readable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saeatlas.absorption.config import AbsorptionConfig
from saeatlas.absorption.probes import PROBE_RECIPES, learning_rates, probe_recipe
from saeatlas.absorption.projection import projection_absorption
from saeatlas.absorption.run import few_letters_warning
from saeatlas.cli import main
from saeatlas.config import ConfigError
from saeatlas.report.sections.absorption import render
from saeatlas.sae import SAEConfig, SparseAutoencoder, save_saelens

D_IN, D_SAE, MAIN = 24, 48, [0]


# ------------------------------------------------------------------ B.11: projection scores
def _unit_sae_and_inputs(seed: int = 0):
    """A tied relu SAE with unit decoder rows, inputs made of its latents, and a probe along latents 0, 1, 2
    (0 is the main latent; 1 and 2 can absorb it)."""
    gen = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(arch="relu", d_in=D_IN, d_sae=D_SAE), generator=gen)
    with torch.no_grad():
        sae.W_enc_T.copy_(sae.W_dec)
        sae.b_enc.fill_(-0.2)
    W = sae.W_dec.detach().double().numpy()
    rng = np.random.default_rng(seed)
    weights = rng.exponential(1.0, size=(400, D_SAE)) * (rng.random((400, D_SAE)) < 0.12)
    weights[:, 0] *= rng.random(400) < 0.5  # the main latent off on about half of the inputs
    weights[:, 1:3] += rng.exponential(1.5, size=(400, 2)) * (rng.random((400, 2)) < 0.5)
    acts = (weights @ W + 0.05 * rng.normal(size=(400, D_IN))).astype(np.float32)
    probe = W[0] + 0.8 * W[1] + 0.6 * W[2]
    return sae, acts, probe / np.linalg.norm(probe)


def _rescaled(sae: SparseAutoencoder, scale: np.ndarray) -> SparseAutoencoder:
    """The same relu SAE with latent i's encoder row and bias times scale_i and its decoder row divided by it
    (codes times scale_i, every reconstruction unchanged)."""
    out = SparseAutoencoder(sae.cfg)
    out.load_state_dict(sae.state_dict())
    s = torch.as_tensor(scale, dtype=torch.float32)
    with torch.no_grad():
        out.W_enc_T.mul_(s[:, None])
        out.b_enc.mul_(s)
        out.W_dec.div_(s[:, None])
    return out


def _codes(sae: SparseAutoencoder, acts: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return sae.encode(torch.from_numpy(acts)).double().numpy()


def _saebench_by_hand(acts, sae_acts, W_dec, probe, main):
    """SAEBench's FeatureAbsorptionCalculator.calculate_absorption, word by word (feature_absorption_calculator.py),
    on an SAE whose decoder rows it has normalised (general_utils.load_and_format_sae: fold_W_dec_norm)."""
    cos = W_dec @ probe / (np.linalg.norm(W_dec, axis=1) * np.linalg.norm(probe))
    fractions, full = [], []
    for a, z in zip(acts.astype(np.float64), sae_acts):
        act_proj = float(a @ probe)
        proj = z * cos
        main_proj = proj[main].sum()
        mask = np.ones(len(proj), bool)
        mask[main] = False
        mask &= (cos >= 0.1) & (proj > 0)
        absorbers = np.sort(proj[mask])[::-1][:3].sum()
        if main_proj >= act_proj or absorbers / act_proj < 0.4:
            fraction = 0.0
        elif main_proj <= 0:
            fraction = 1.0
        else:
            absorbed = min(absorbers, act_proj - main_proj)
            fraction = float(np.clip(absorbed / (absorbed + main_proj), 0, 1))
        top = int(np.argmax(proj))
        is_full = all(z[m] < 1e-8 for m in main) and cos[top] >= 0.025 and act_proj >= 0 and proj[top] / act_proj >= 0.4
        fractions.append(fraction)
        full.append(is_full)
    return np.array(fractions), np.array(full)


def test_projection_default_is_saebench_on_non_unit_decoder_rows_and_invariant_to_rescaling_a_latent():
    sae, acts, probe = _unit_sae_and_inputs()
    norms = np.random.default_rng(1).uniform(0.2, 3.0, D_SAE)  # decoder rows of these norms, same SAE
    folded = _rescaled(sae, 1.0 / norms)
    W = folded.W_dec.detach().double().numpy()
    assert np.allclose(np.linalg.norm(W, axis=1), norms, rtol=1e-5)
    ours = projection_absorption(acts, _codes(folded, acts), W, probe, MAIN)

    # SAEBench normalises the rows first: the unit-row SAE, scored by its calculator's rule
    expected_fraction, expected_full = _saebench_by_hand(
        acts, _codes(sae, acts), sae.W_dec.detach().double().numpy(), probe, MAIN
    )
    np.testing.assert_allclose(ours["fraction"], expected_fraction, atol=1e-5)
    assert np.array_equal(ours["full"], expected_full)
    # the case exercises every branch: no absorption, partial, complete, and full absorption
    assert (ours["fraction"] == 0).any() and (ours["fraction"] == 1).any()
    assert ((ours["fraction"] > 0.05) & (ours["fraction"] < 0.95)).sum() >= 10 and ours["full"].sum() >= 10

    # SAEBench's calculator on the rows as they are (no fold) gives other numbers: the rule is not that
    raw_fraction, _ = _saebench_by_hand(acts, _codes(folded, acts), W, probe, MAIN)
    assert (np.abs(raw_fraction - ours["fraction"]) > 0.05).sum() >= 20

    # rescaling latents (encoder row * c, decoder row / c) changes nothing
    for scale in (np.full(D_SAE, 7.3), np.random.default_rng(2).uniform(0.1, 10.0, D_SAE)):
        again_sae = _rescaled(folded, scale)
        again = projection_absorption(
            acts, _codes(again_sae, acts), again_sae.W_dec.detach().double().numpy(), probe, MAIN
        )
        np.testing.assert_allclose(again["fraction"], ours["fraction"], atol=1e-5)
        assert np.array_equal(again["full"], ours["full"])


def test_a_topk_sae_folded_by_saeatlas_scores_as_before_folding():
    """saeatlas saves an SAE trained on x * s with s folded in (W_enc * s, W_dec / s): the figures are those of
    the unfolded SAE on x * s, which SAEBench (unit rows) would report."""
    sae, acts, probe = _unit_sae_and_inputs(seed=3)
    topk = SparseAutoencoder(SAEConfig(arch="topk", d_in=D_IN, d_sae=D_SAE, k=6))
    topk.load_state_dict(sae.state_dict())
    s = 4.0
    before = projection_absorption(acts * s, _codes(topk, acts * s), topk.W_dec.detach().double().numpy(), probe, MAIN)
    topk.fold_scale(s)
    after = projection_absorption(acts, _codes(topk, acts), topk.W_dec.detach().double().numpy(), probe, MAIN)
    np.testing.assert_allclose(after["fraction"], before["fraction"], atol=1e-5)
    assert np.array_equal(after["full"], before["full"]) and 0 < before["fraction"].mean() < 1


# ------------------------------------------------------------------ B.13: the probe recipe
def test_saebench_probe_recipe_is_saebenchs():
    sparse, letters = probe_recipe("saebench", "sparse", seed=7), probe_recipe("saebench", "letters")
    # k_sparse_probing.py train_sparse_multi_probe and train_k_sparse_probes (AbsorptionEvalConfig defaults)
    assert (sparse.batch_size, sparse.weight_decay, sparse.l1, sparse.lr, sparse.end_lr, sparse.epochs) == (
        4096,
        1e-6,
        0.01,
        0.01,
        1e-5,
        50,
    )
    assert sparse.seed == 7
    # common.py train_and_save_probes(batch_size=64) -> probing.py train_linear_probe_for_task(weight_decay=1e-4)
    assert (letters.batch_size, letters.weight_decay, letters.l1, letters.epochs) == (64, 1e-4, 0.0, 50)
    # probing.py _get_exponential_decay_scheduler: gamma = exp(log(end / start) / num_epochs), stepped per epoch
    lrs = learning_rates(sparse)
    assert len(lrs) == 50 and lrs[0] == 0.01
    assert lrs[-1] == pytest.approx(0.01 * (1e-3) ** (49 / 50), rel=1e-12)
    assert learning_rates(probe_recipe("saeatlas", "sparse"))[-1] == pytest.approx(1e-5, rel=1e-12)
    saeatlas = PROBE_RECIPES["saeatlas"]["sparse"]
    assert (saeatlas.batch_size, saeatlas.weight_decay, saeatlas.l1) == (64, 1e-4, 0.01)


def test_probe_recipe_is_a_checked_setting():
    cfg = AbsorptionConfig(model="m", hook="resid_post.1", saes=["x"], probe_recipe="saebench")
    assert cfg.to_dict()["probe_recipe"] == "saebench"
    assert AbsorptionConfig(model="m", hook="resid_post.1", saes=["x"]).probe_recipe == "saeatlas"
    with pytest.raises(ConfigError, match="probe_recipe"):
        AbsorptionConfig(model="m", hook="resid_post.1", saes=["x"], probe_recipe="sae-bench")


# ------------------------------------------------------------------ B.14: few readable letters
def test_few_letters_warning():
    assert few_letters_warning(20, 20, 0.6, 0.7) is None
    assert "only 17 of 26 letters" in few_letters_warning(17, 20, 0.6, 0.55)
    assert "over these 17 letters only" in few_letters_warning(17, 20, 0.6, 0.55)
    assert few_letters_warning(0, 20, 0.6, 0.1).startswith("no letter has a probe F1 above 0.6")


@pytest.fixture(scope="module")
def topk_sae(tmp_path_factory):
    root = tmp_path_factory.mktemp("saebench-sae")
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=32, d_sae=96, k=8))
    sae.fold_scale(3.0)  # decoder rows of norm 1/3, as saeatlas saves them
    save_saelens(sae, root / "topk", metadata={"hook_name": "resid_post.1"})
    return root / "topk"


@pytest.mark.parametrize("recipe", ["saeatlas", "saebench"])
def test_a_layer_where_few_letters_qualify_is_reported_with_a_warning(
    tiny_gemma, topk_sae, tmp_path, monkeypatch, capsys, recipe
):
    """On the tiny model few letters are readable: a probe F1 bar of 0.25 leaves a handful.  The run reports them,
    says so in the output, the JSON and the report, and every mean is over those letters only."""
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["absorption", "--model", str(tiny_gemma), "--hook", "resid_post.1", "--sae", str(topk_sae)]
    args += ["--words", "300", "--min-probe-f1", "0.25", "--probe-recipe", recipe, "--out", str(out), "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "absorption.json").read_text())
    assert results["version"] == 2 and results["config"]["probe_recipe"] == recipe
    f1 = np.array([p["f1"] for p in results["probes"]])
    n = int((f1 > 0.25).sum())
    assert 1 <= n < 20 and results["n_letters_qualified"] == n
    assert f"only {n} of 26 letters" in results["warning"] and f"over these {n} letters" in results["warning"]
    sae = results["saes"][0]
    assert sae["summary"]["n_letters_qualified"] == n
    rows = [r for r in sae["letters"] if r["qualifies"]]
    assert len(rows) == n and {r["letter"] for r in rows} == {p["letter"] for p in results["probes"] if p["f1"] > 0.25}
    for r in sae["letters"]:
        assert r["num_split_features"] == len(r["main_latents"]) >= 1
    assert sae["summary"]["mean_num_split_features"] == pytest.approx(np.mean([r["num_split_features"] for r in rows]))
    fractions = [r["absorption_fraction"] for r in rows if np.isfinite(r["absorption_fraction"])]
    assert sae["summary"]["mean_absorption_fraction"] == pytest.approx(np.mean(fractions))
    printed = " ".join(capsys.readouterr().out.split())
    assert f"warning: only {n} of 26 letters" in printed and f"over {n} letters with probe F1 > 0.25" in printed
    html = render({"absorption": results})
    assert "Warning:" in html and f"only {n} of 26 letters" in html and f"{n} of 26 letters qualify" in html


def _bench(name: str):
    """A script of bench/ as a module."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_with_a_few_thousand_words_only_saeatlas_recipe_ranks_the_planted_main_latents_first():
    """bench/probe_recipe.py, small: why saeatlas's recipe is the default.  With 3200 training words SAEBench's
    batches of 4096 make one Adam step per epoch, and the L1 probe's ranking misses the planted main latents."""
    bench = _bench("probe_recipe")
    ours, saebench = (bench.one_run(r, n_train=3200, d_sae=512, seed=0) for r in ("saeatlas", "saebench"))
    assert ours["top"] >= 0.9 and ours["count"] >= 0.9
    assert saebench["top"] <= 0.5
