"""The ablation variant's rules against the paper's code (lasr-spelling/sae-spelling): the decision rule on one
word (`is_absorption`) and the integrated-gradients path (`path_attribution`, `integrated_gradients`).

Each rule is pinned by hand-made cases where the paper's rule and saeatlas's earlier one disagree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeatlas.absorption.attribution import (
    integrated_gradients,
    is_absorption,
    letter_metric,
    letter_token_ids,
    path_alphas,
    path_attribution,
)
from saeatlas.absorption.task import alphabetic_vocabulary, build_prompts, tokenize_prompts
from saeatlas.models import load_model, parse_hook, patched
from saeatlas.sae import SAEConfig, SparseAutoencoder


def _earlier_rule(scores, cos, main, gap=1.0, cos_min=0.025) -> bool:
    """saeatlas's rule before it followed sae-spelling: the most negative effect, its gap to the next most
    negative one *signed* (effect[second] - effect[first]), and the top latent outside the main set."""
    effect = -np.asarray(scores, dtype=np.float64)
    first, second = np.argsort(effect, kind="stable")[:2]
    return bool(effect[first] <= 0 and effect[second] - effect[first] >= gap and cos[first] >= cos_min) and (
        int(first) not in set(main)
    )


# ------------------------------------------------------------------ the decision rule
OFF = [0.0, 0.0, 0.0, 0.0]  # activations: every latent (so every main latent) off
ALIGNED = [0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize(
    "scores, activations, cos, main, expected",
    [
        # scores are attributions; effects = -scores.  sae-spelling ranks by effect, most negative first.
        ([0.1, 3.0, 0.5, 0.0], OFF, [0.0, 0.2, 0.0, 0.5], [3], (True, 1)),  # latent 1 carries the letter
        ([0.1, 3.0, 2.5, 0.0], OFF, [0.0, 0.2, 0.0, 0.5], [3], (False, 1)),  # |top| - |second| = 0.5 < 1
        ([0.1, 3.0, 2.0, 0.0], OFF, [0.0, 0.2, 0.0, 0.5], [3], (True, 1)),  # exactly the gap: kept (>=)
        ([0.1, 3.0, 0.5, 0.0], OFF, [0.0, 0.01, 0.0, 0.5], [3], (False, 1)),  # not aligned with the probe
        ([0.1, 3.0, 0.5, 0.0], OFF, [0.0, 0.025, 0.0, 0.5], [3], (True, 1)),  # cosine exactly 0.025: kept
        ([-2.0, -0.5, -3.0, -4.0], OFF, ALIGNED, [], (False, 1)),  # the top effect is positive
        ([0.0, 0.0, 0.0, 0.0], OFF, ALIGNED, [], (False, 0)),  # nothing moves the metric
    ],
)
def test_absorption_rule(scores, activations, cos, main, expected):
    assert is_absorption(np.array(scores), np.array(activations), np.array(cos), main) == expected


@pytest.mark.parametrize(
    "scores",
    [
        [2.0, -5.0],  # effects (-2, +5): the second latent's effect outweighs the top's
        [3.0, -2.5],  # effects (-3, +2.5): |top| - |second| = 0.5
    ],
)
def test_a_large_positive_second_effect_rejects_the_word_where_the_earlier_rule_accepted(scores):
    cos, main = np.array([0.3, 0.3]), []
    assert _earlier_rule(scores, cos, main)  # gap effect[second] - effect[first] = 7 and 5.5
    assert is_absorption(np.array(scores), np.zeros(2), cos, main) == (False, 0)


def test_an_active_main_latent_rejects_the_word_even_when_another_latent_tops():
    # sae-spelling: "if any of the main features fired, this isn't absorption", whatever the top latent is
    scores, cos, main = np.array([0.2, 3.0, 0.0]), np.array([0.3, 0.3, 0.3]), [0]
    assert _earlier_rule(scores, cos, main)
    assert is_absorption(scores, np.array([0.5, 1.0, 0.0]), cos, main) == (False, 1)
    assert is_absorption(scores, np.array([0.0, 1.0, 0.0]), cos, main) == (True, 1)


def test_the_second_latent_is_the_next_by_signed_effect_not_by_magnitude():
    # effects (-2, +5, 0): the paper's final code (sae-spelling 1d3cc80) ranks by effect, so the second is the
    # inactive latent (effect 0) and the gap is 2; ranking by |effect| (its earlier commit fd88f73) would make
    # +5 the top and reject the word.
    assert is_absorption(np.array([2.0, -5.0, 0.0]), np.zeros(3), np.full(3, 0.3), []) == (True, 0)


def test_with_two_non_positive_effects_the_paper_and_the_earlier_rule_agree():
    """The rules differ only where fewer than two latents have effect <= 0; an SAE's inactive latents have
    effect 0, so on real SAEs (d_sae >> L0) the decisions are the same.  On dense heavy-tailed effects
    (Student t, 3 degrees of freedom, 2 latents) the earlier rule accepts 2.6x as many words."""
    rng = np.random.default_rng(0)
    cos = np.full(2, 0.3)
    dense = [
        (_earlier_rule(s, cos, []), is_absorption(s, np.zeros(2), cos, [])[0]) for s in rng.standard_t(3, (4000, 2))
    ]
    earlier, paper = np.mean(dense, axis=0)
    assert earlier == pytest.approx(0.48, abs=0.03) and paper == pytest.approx(0.18, abs=0.03)
    cos = np.full(200, 0.3)
    for _ in range(300):
        scores = np.zeros(200)
        scores[rng.choice(200, 10, replace=False)] = rng.standard_t(3, 10)  # 10 active latents of 200
        assert is_absorption(scores, np.zeros(200), cos, []) == (_earlier_rule(scores, cos, []), int(np.argmax(scores)))


# ------------------------------------------------------------------ the integrated-gradients path
def test_the_paper_path_steps_down_from_the_clean_end_and_error_kept_takes_midpoints():
    assert path_alphas(4, "paper").tolist() == [1.0, 0.75, 0.5, 0.25]
    assert path_alphas(4, "error_kept").tolist() == [0.125, 0.375, 0.625, 0.875]


def _hand_sae() -> SparseAutoencoder:
    """d_in = d_sae = 2: z = relu(x - b_dec + b_enc), decode(z) = z W_dec + b_dec."""
    sae = SparseAutoencoder(SAEConfig(arch="relu", d_in=2, d_sae=2, k=1))
    with torch.no_grad():
        sae.W_enc_T.copy_(torch.eye(2))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
        sae.b_dec.copy_(torch.tensor([2.0, 0.0]))
    return sae


def test_paper_path_matches_a_hand_computation_and_differs_from_error_kept():
    """a = (4, 5), b_dec = (2, 0): z = (2, 4), the latents decode to u0 = (2, 0), u1 = (0, 2), the error is
    e = (0, 3); the metric is |x|^2 (gradient 2x, linear along a straight path, so the mean gradient is the
    gradient at the mean point).

    paper: x(alpha) = b + alpha (a - b), mean alpha = (N + 1) / 2N = 7/12 at N = 6, mean point (2 + 2m, 5m):
    latent 0: u0 . 2x = 8 + 8m = 38/3, latent 1: u1 . 2x = 20m = 35/3, error: e . 2x = 30m = 35/2.
    error_kept: x(alpha) = b + e + alpha (u0 + u1), mean alpha 1/2, mean point (3, 4): 12 and 16.
    The two paths rank the latents the other way round.
    """
    sae, a = _hand_sae(), torch.tensor([4.0, 5.0])
    metric = lambda x: (x**2).sum(dim=-1)
    paper = path_attribution(metric, sae, a, steps=6, path="paper")
    assert paper.activations.tolist() == [2.0, 4.0]
    assert paper.scores == pytest.approx([38 / 3, 35 / 3], rel=1e-6)
    assert paper.error_score == pytest.approx(35 / 2, rel=1e-6)
    assert (paper.metric, paper.metric_baseline) == pytest.approx((41.0, 4.0))  # |a|^2, |b_dec|^2
    # the right Riemann sum overshoots by 29/N here: 8 + 58 m = 37 + 29/6
    assert paper.scores.sum() + paper.error_score == pytest.approx(37 + 29 / 6, rel=1e-6)
    kept = path_attribution(metric, sae, a, steps=6, path="error_kept")
    assert kept.scores == pytest.approx([12.0, 16.0], rel=1e-6)
    assert (kept.error_score, kept.metric, kept.metric_baseline) == pytest.approx((0.0, 41.0, 13.0))  # |b + e|^2
    assert np.argmax(paper.scores) == 0 and np.argmax(kept.scores) == 1
    # completeness along the paper's path as the steps grow: latents + error = metric(a) - metric(b_dec)
    fine = path_attribution(metric, sae, a, steps=2000, path="paper")
    assert fine.scores.sum() + fine.error_score == pytest.approx(37 + 29 / 2000, rel=1e-5)


@pytest.fixture(scope="module")
def tiny(tiny_gemma):
    return load_model(str(tiny_gemma), dtype="float32")


@pytest.fixture(scope="module")
def tiny_case(tiny):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(arch="relu", d_in=tiny.d_model, d_sae=64))
    with torch.no_grad():
        sae.W_enc_T.mul_(3.0)  # enough active latents to matter
        sae.b_dec.normal_(0, 0.5)
    prompt = build_prompts(alphabetic_vocabulary(tiny.tokenizer), 30, seed=0)[0]
    ids, positions, _ = tokenize_prompts(tiny.tokenizer, [prompt])
    return sae, ids[0], int(positions[0]), prompt.letter, parse_hook("resid_post.1", tiny.n_layers)


def _full_model_metric(tiny, point, ids, position, letter):
    """metric_of for `path_attribution`: the whole prompt through the model, the word token replaced by each row."""
    answers = letter_token_ids(tiny.tokenizer)

    def metric_of(spliced):  # [rows, d_model] -> [rows]
        def splice(act):  # [rows, seq, d_model]
            out = act.clone()
            out[:, position] = spliced.to(act.dtype)
            return out

        rows = torch.tensor([ids]).expand(len(spliced), -1)
        with patched(tiny, point, splice):
            hidden = tiny.base(input_ids=rows, use_cache=False).last_hidden_state[:, -1]
        logits = hidden.float() @ tiny.model.get_output_embeddings().weight[answers].T
        return letter_metric(logits, letter)

    return metric_of


def test_integrated_gradients_on_a_tiny_model_is_the_paper_path_and_complete(tiny, tiny_case):
    sae, ids, position, letter, point = tiny_case
    answers = letter_token_ids(tiny.tokenizer)
    ig = integrated_gradients(tiny, sae, point, ids, position, letter, answers, steps=6)
    assert (ig.scores != 0).sum() > 3
    # the model run with the prefix's key/value cache equals the plain path IG of the whole prompt
    plain = path_attribution(
        _full_model_metric(tiny, point, ids, position, letter), sae, _word_act(tiny, point, ids, position), 6
    )
    # (the tiny random model's metric moves little: clean 0.0110, word token at b_dec 0.0108; hence the tolerances)
    assert np.abs(ig.scores - plain.scores).max() < 1e-4 * np.abs(plain.scores).max()
    assert ig.error_score == pytest.approx(plain.error_score, rel=1e-4)
    assert (ig.metric, ig.metric_baseline) == pytest.approx((plain.metric, plain.metric_baseline), abs=1e-7)
    # the zero end is the word token at b_dec, the clean end the clean model
    clean, at_b_dec = _full_model_metric(tiny, point, ids, position, letter)(
        torch.stack([_word_act(tiny, point, ids, position), sae.b_dec.detach()])
    ).tolist()
    assert (ig.metric, ig.metric_baseline) == pytest.approx((clean, at_b_dec), abs=1e-7)
    assert abs(ig.metric - ig.metric_baseline) > 1e-4
    # completeness: latents + error sum to metric(clean) - metric(b_dec) as the steps grow (right Riemann sum: the
    # error shrinks like 1/steps)
    gap = ig.metric - ig.metric_baseline
    errors = []
    for steps in (16, 256):
        fine = integrated_gradients(tiny, sae, point, ids, position, letter, answers, steps=steps)
        errors.append(abs(fine.scores.sum() + fine.error_score - gap))
    assert errors[1] < 0.005 * abs(gap) and errors[1] < errors[0] / 4  # measured: 0.15 % and 2.8 % of the gap


def test_error_kept_path_differs_on_a_tiny_model_and_its_latents_alone_are_complete(tiny, tiny_case):
    sae, ids, position, letter, point = tiny_case
    answers = letter_token_ids(tiny.tokenizer)
    paper = integrated_gradients(tiny, sae, point, ids, position, letter, answers, steps=6)
    kept = integrated_gradients(tiny, sae, point, ids, position, letter, answers, steps=64, path="error_kept")
    assert kept.error_score == 0.0 and kept.metric == pytest.approx(paper.metric, abs=1e-7)
    assert kept.scores.sum() == pytest.approx(kept.metric - kept.metric_baseline, rel=0.002)
    kept6 = integrated_gradients(tiny, sae, point, ids, position, letter, answers, steps=6, path="error_kept")
    assert np.abs(kept6.scores - paper.scores).max() > 0.05 * np.abs(paper.scores).max()
    assert np.argmax(kept6.scores) != np.argmax(paper.scores)  # the top latent changes with the path


def _word_act(tiny, point, ids, position) -> torch.Tensor:
    """[d_model] the clean activation at `point` at the word token."""
    seen = {}

    def grab(act):
        seen["a"] = act[0, position].detach().float()
        return act

    with torch.no_grad(), patched(tiny, point, grab):
        tiny.base(input_ids=torch.tensor([ids]), use_cache=False)
    return seen["a"]
