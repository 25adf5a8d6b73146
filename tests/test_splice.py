"""SAE spliced into a (tiny) model: CE-loss recovered, delta loss, KL."""

from __future__ import annotations

import pytest
import torch
from helpers import identity_sae

from saeatlas.models import load_model, parse_hook, patched
from saeatlas.sae.splice import spliced_metrics


@pytest.fixture(scope="module")
def handle(tiny_gemma):
    return load_model(str(tiny_gemma), dtype="float32")


def test_perfect_sae_recovers_all_loss_and_zero_sae_none(handle, text_corpus):
    perfect = spliced_metrics(
        handle, identity_sae(32), "resid_post.1", corpus=str(text_corpus), split="all", n_tokens=400, context=32
    )
    assert perfect["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert abs(perfect["delta_lm_loss"]) < 1e-5 and abs(perfect["kl_div"]) < 1e-6
    assert abs(perfect["ce_zero_ablation"] - perfect["ce_clean"]) > 1e-3  # ablation changes the loss
    useless = identity_sae(32)
    with torch.no_grad():
        useless.W_dec.zero_()
    zero = spliced_metrics(
        handle, useless, "resid_post.1", corpus=str(text_corpus), split="all", n_tokens=400, context=32
    )
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5) and zero["kl_div"] > 0


def test_patch_replaces_only_inside_the_context(handle):
    ids = handle.tokenizer(["Sparse autoencoders find features"], return_tensors="pt")["input_ids"]
    point = parse_hook("resid_post.0", handle.n_layers)
    with torch.no_grad():
        clean = handle.model(input_ids=ids).logits
        with patched(handle, point, lambda a: a * 0):
            changed = handle.model(input_ids=ids).logits
        again = handle.model(input_ids=ids).logits
    assert not torch.allclose(clean, changed) and torch.equal(clean, again)
