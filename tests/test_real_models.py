"""The real packaged models (installed from PyPI): loading, tokenization, hooks, extraction.

The first run converts each GGUF to a bf16 safetensors folder in the cache
(about 30 s for SmolLM2, 100 s for Gemma-3); later runs load in seconds.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from saeatlas.cli import main
from saeatlas.data import ActivationStore
from saeatlas.models import cache_dir, capture, load_model, parse_hooks
from saeatlas.models.loading import CACHE_MARKER

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m")


def test_smollm2_shape_tokenization_and_paris(smol):
    assert (smol.n_layers, smol.d_model, smol.dtype) == (30, 576, torch.bfloat16)
    assert smol.special_tokens == ((), ())  # SmolLM2 adds no BOS
    enc = smol.tokenizer("The capital of France is", return_tensors="pt")
    assert enc["input_ids"].tolist() == [[504, 3575, 282, 4649, 314]]
    with torch.inference_mode():
        logits = smol.model(**enc).logits[0, -1]
    assert smol.tokenizer.decode([int(logits.argmax())]) == " Paris"


def test_gemma_shape_and_tokenization_adds_bos(gemma):
    assert (gemma.n_layers, gemma.d_model, gemma.model.config.model_type) == (18, 640, "gemma3_text")
    bos = gemma.tokenizer.bos_token_id
    assert gemma.tokenizer.convert_ids_to_tokens(bos) == "<bos>"
    assert gemma.special_tokens == ((bos,), ())
    enc = gemma.tokenizer("The capital of France is", return_offsets_mapping=True)
    assert enc["input_ids"] == [bos, 818, 5279, 529, 7001, 563]
    assert enc["offset_mapping"] == [(0, 0), (0, 3), (3, 11), (11, 14), (14, 21), (21, 24)]


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_resid_post_equals_hidden_states_of_a_plain_forward(which, request):
    handle = request.getfixturevalue(which)
    enc = handle.tokenizer(
        ["The capital of France is", "Sparse autoencoders split features."], return_tensors="pt", padding=True
    )
    layers = [0, handle.n_layers // 2, handle.n_layers - 2]
    acts = capture(
        handle,
        parse_hooks([f"resid_post.{l}" for l in layers], handle.n_layers),
        enc["input_ids"],
        enc["attention_mask"],
    )
    with torch.inference_mode():
        hidden = handle.base(**enc, output_hidden_states=True).hidden_states
    keep = enc["attention_mask"].bool()
    for layer in layers:
        assert torch.equal(acts[f"resid_post.{layer}"][keep], hidden[layer + 1][keep])


def test_conversion_cache_records_hashes(smol, gemma):
    for handle in (smol, gemma):
        folders = list((cache_dir() / "models").glob(f"{handle.spec}-*"))
        marker = json.loads((folders[0] / CACHE_MARKER).read_text())
        assert handle.identity.endswith(marker["source_sha256"])
        assert "model.safetensors" in marker["files"] and "tokenizer.json" in marker["files"]


@pytest.mark.parametrize(
    "which, hooks", [("smol", "resid_post.3,resid_post.9"), ("gemma", "resid_post.2,resid_post.6")]
)
def test_extract_and_info_on_real_models(which, hooks, request, tmp_path, capsys):
    handle = request.getfixturevalue(which)
    out = tmp_path / which
    args = [
        "extract",
        "--model",
        handle.spec,
        "--hooks",
        hooks,
        "--corpus",
        "news",
        "--tokens",
        "1000",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    assert main(["info", str(out)]) == 0
    assert hooks.split(",")[1] in capsys.readouterr().out
    store = ActivationStore(out)
    assert store.n_tokens == 1000 and store.d_model == handle.d_model
    # Rebuild the writer's first batch (8 windows, right-padded) and run a plain forward on it.
    index = store.index(0)
    starts = list(np.flatnonzero(index["position"] == 0)[:9])
    windows = [index["token_id"][a:b].astype(np.int64) for a, b in itertools.pairwise(starts)]
    ids = torch.zeros((8, max(map(len, windows))), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, w in enumerate(windows):
        ids[row, : len(w)], mask[row, : len(w)] = torch.from_numpy(w), 1
    if which == "gemma":
        assert (ids[:, 0] == handle.tokenizer.bos_token_id).all() and index["flags"][0] == 3
    with torch.inference_mode():
        hidden = handle.base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for hook in hooks.split(","):
        layer = int(hook.split(".")[1])
        stored = store.activations(hook, 0)[: starts[8]]
        assert torch.equal(stored, hidden[layer + 1][mask.bool()])


def test_minilm_encoder_windows_flag_cls_and_sep(tmp_path):
    handle = load_model("minilm-l6")
    assert handle.kind == "encoder" and (handle.n_layers, handle.d_model) == (6, 384)
    cls, sep = handle.tokenizer.cls_token_id, handle.tokenizer.sep_token_id
    assert handle.special_tokens == ((cls,), (sep,))
    assert (
        main(
            [
                "extract",
                "--model",
                "minilm-l6",
                "--hooks",
                "resid_post.5",
                "--corpus",
                "news",
                "--tokens",
                "500",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
            ]
        )
        == 0
    )
    index = ActivationStore(tmp_path / "m").index(0)
    full = index[: np.flatnonzero(index["position"] == 0)[1]]  # first complete window
    assert full["token_id"][0] == cls and full["token_id"][-1] == sep
    assert list(full["flags"][[0, -1]]) == [3, 1] and (full["flags"][1:-1] == 0).all()
