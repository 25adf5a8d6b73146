"""Ground truth for absorption: the projection formula by hand, and the parent/child toy model end to end.

The toy (after Chanin et al. 2024, arXiv:2409.14507, section on toy models; `saeatlas.absorption.toy`): four orthonormal features in
50 dimensions, the parent f0 fires on 25 % of inputs, the child f1 on 1 %, f2 and f3 on 5 %.  When the child
only fires with the parent, a ReLU SAE merges them into one latent with decoder (f0 + f1) / sqrt(2) and the
parent's latent goes silent on the child's inputs; saeatlas, measuring as it measures a real model, must
report absorption of about 1 there.  With the same marginals but independent firing it must report about 0.
Measured (seeds 0-5, both cases): fraction and full rate 1.0 on the child's inputs with co-occurrence, 0.0
without, 0.0 on parent-only inputs in both; the absorbing latent's decoder cosine with f0 0.704.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from saeatlas.absorption.projection import projection_absorption
from saeatlas.absorption.toy import CHILD, PARENT, toy_absorption, toy_data, toy_features

# ---------------------------------------------------------------- the formula, by hand
# d_in 2, probe e0.  Latent 0 is the main latent (decoder e0), latent 1 an absorber at 45 degrees
# (cos 1/sqrt(2)), latent 2 nearly orthogonal to the probe (cos 0.05).
SQRT_HALF = math.sqrt(0.5)
W_DEC = np.array([[1.0, 0.0], [SQRT_HALF, SQRT_HALF], [0.05, math.sqrt(1 - 0.05**2)]])
PROBE = np.array([3.0, 0.0])  # not unit: the function normalises it
ACT = np.array([[1.0, 0.0]])  # act_proj 1


def absorption(codes, W_dec=W_DEC, main=(0,), acts=ACT):
    return projection_absorption(acts, np.array([codes], dtype=float), W_dec, PROBE, list(main))


def test_main_latent_carrying_the_probe_is_no_absorption():
    out = absorption([1.0, 0.0, 0.0])
    assert out["main_proj"][0] == pytest.approx(1.0)
    assert out["fraction"][0] == 0.0
    assert not out["full"][0]


def test_silent_main_latent_and_one_aligned_absorber_is_full_absorption():
    out = absorption([0.0, math.sqrt(2), 0.0])  # absorber contributes sqrt(2) * cos 1/sqrt(2) = 1
    assert out["absorber_proj"][0] == pytest.approx(1.0)
    assert out["fraction"][0] == 1.0
    assert out["full"][0]
    assert out["top_latent"][0] == 1


def test_partial_absorption_is_absorbed_over_absorbed_plus_main():
    # main 0.3, absorber 0.6 (>= 0.4 of act_proj 1): min(0.6, 1 - 0.3) / (0.6 + 0.3) = 2/3; the main latent fires
    out = absorption([0.3, 0.6 / SQRT_HALF, 0.0])
    assert out["fraction"][0] == pytest.approx(2 / 3)
    assert not out["full"][0]
    # the absorbed part is capped at what the main latent leaves: main 0.3, absorber 0.9 -> 0.7 / 1.0
    assert absorption([0.3, 0.9 / SQRT_HALF, 0.0])["fraction"][0] == pytest.approx(0.7)


def test_absorbers_below_the_thresholds_do_not_count():
    # absorber carries 0.3 < 0.4 of act_proj: no absorption although the main latent is silent
    assert absorption([0.0, 0.3 / SQRT_HALF, 0.0])["fraction"][0] == 0.0
    # latent 2 (cos 0.05) carries all of act_proj: below the absorbers' 0.1, so the fraction is 0, but above the
    # full-absorption 0.025, so it is full absorption
    out = absorption([0.0, 0.0, 1.0 / 0.05])
    assert out["absorber_proj"][0] == 0.0 and out["fraction"][0] == 0.0
    assert out["full"][0]
    # full absorption needs the top latent's cosine >= 0.025: cos 0.02 fails
    W = W_DEC.copy()
    W[2] = [0.02, math.sqrt(1 - 0.02**2)]
    assert not absorption([0.0, 0.0, 1.0 / 0.02], W_dec=W)["full"][0]
    # a main latent that fires at all (>= 1e-8) rules out full absorption
    assert not absorption([1e-6, math.sqrt(2), 0.0])["full"][0]


def test_only_the_top_three_absorbers_count():
    # four identical absorbers at 0.15 each, main 0.2: top three 0.45 -> 0.45 / (0.45 + 0.2)
    W = np.array([[1.0, 0.0]] + [[SQRT_HALF, SQRT_HALF]] * 4)
    out = absorption([0.2] + [0.15 / SQRT_HALF] * 4, W_dec=W)
    assert out["absorber_proj"][0] == pytest.approx(0.45)
    assert out["fraction"][0] == pytest.approx(0.45 / 0.65)


def test_folded_decoder_norms_scale_contributions_not_cosines():
    # a decoder row 4x longer with a code 4x smaller is the same reconstruction: same answer
    W = W_DEC.copy()
    W[1] *= 4.0
    plain = absorption([0.3, 0.6 / SQRT_HALF, 0.0])
    folded = absorption([0.3, 0.6 / SQRT_HALF / 4.0, 0.0], W_dec=W)
    assert folded["fraction"][0] == pytest.approx(plain["fraction"][0]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- the toy data
def test_toy_data_marginals_and_co_occurrence():
    features = toy_features(seed=3)
    assert features.shape == (4, 50)
    np.testing.assert_allclose(features @ features.T, np.eye(4), atol=1e-12)
    for co_occur in (True, False):
        x, active = toy_data(200_000, co_occur, seed=3)
        assert x.dtype == np.float32 and x.shape == (200_000, 50)
        np.testing.assert_allclose(active.mean(0), [0.25, 0.01, 0.05, 0.05], atol=0.003)
        np.testing.assert_allclose(x, active @ features, atol=1e-6)  # magnitude 1, no noise by default
        child_alone = (active[:, CHILD] & ~active[:, PARENT]).mean()
        if co_occur:
            assert child_alone == 0.0
        else:
            assert child_alone == pytest.approx(0.01 * 0.75, abs=0.001)
    again, _ = toy_data(1000, True, seed=3)
    assert again.tobytes() == toy_data(1000, True, seed=3)[0].tobytes()


# ---------------------------------------------------------------- the toy, end to end
@functools.cache
def toy(co_occur: bool, seed: int, p_child: float = 0.01) -> dict:
    result = toy_absorption(co_occur, seed=seed, p_child=p_child)
    shown = {k: v for k, v in result.items() if k != "decoder_cos_features"}
    print(f"\ntoy co_occur={co_occur} seed={seed} p_child={p_child}: {shown}")
    return result


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_toy_with_co_occurrence_reports_the_parent_absorbed_on_the_childs_inputs(seed):
    r = toy(True, seed)
    assert r["probe_f1"] >= 0.99
    assert len(r["main_latents"]) == 1  # the absorber lifts the k-sparse F1 by only ~0.02 < 0.03: not a split
    assert r["n_child"] >= 40
    assert r["main_firing_on_child"] == 0.0  # the parent's latent is silent where the child fires
    assert r["child_fraction"] >= 0.95  # measured 1.0
    assert r["child_full_rate"] >= 0.95  # measured 1.0
    assert r["parent_only_fraction"] <= 0.01 and r["parent_only_full_rate"] <= 0.01  # measured 0.0
    # the absorbing latent is the child's, and its decoder took the parent's direction: (f0 + f1) / sqrt(2)
    assert r["absorber"] == r["child_latent"]
    assert r["absorber_cos_f0"] == pytest.approx(SQRT_HALF, abs=0.05)  # measured 0.704
    assert r["absorber_cos_f1"] == pytest.approx(SQRT_HALF, abs=0.05)  # measured 0.710
    assert r["absorber_share"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_toy_without_co_occurrence_reports_no_absorption(seed):
    r = toy(False, seed)
    assert r["probe_f1"] >= 0.99
    assert r["n_child"] >= 5  # the child meets the parent only by chance here (0.25 %)
    assert r["main_firing_on_child"] == 1.0
    assert r["child_fraction"] <= 0.05 and r["child_full_rate"] <= 0.05  # measured 0.0
    assert r["parent_only_fraction"] <= 0.01 and r["parent_only_full_rate"] <= 0.01
    assert abs(r["child_latent_cos_f0"]) <= 0.1  # the child's latent is the child alone (cosine with f1 ~1)
    assert r["decoder_cos_features"][r["child_latent"], CHILD] >= 0.95
    # the contrast, same seed
    assert toy(True, seed)["child_fraction"] - r["child_fraction"] >= 0.9


@pytest.mark.slow
def test_a_frequent_child_is_reported_as_a_split_not_an_absorber():
    # At the toy's other setting (f1 marginal 0.05, a fifth of the parent) the SAE still merges the child into the
    # parent, but the merged latent lifts the k-sparse F1 from ~0.88 to 1.0 (> 0.03): the F1-jump rule makes it
    # a main latent of the parent, and projection absorption is then 0 by definition.
    r = toy(True, 0, p_child=0.05)
    assert r["child_latent_cos_f0"] == pytest.approx(SQRT_HALF, abs=0.05)
    assert r["child_latent"] in r["main_latents"] and len(r["main_latents"]) == 2
    assert r["f1_by_k"][0] < 0.9 and r["f1_by_k"][1] >= 0.99
    assert r["child_fraction"] == 0.0
