"""Pretrained SAEs and models by name (`hf:` and `saelens:` names), from a real local Hugging Face cache.

The cache is written in the hub's own layout with huggingface_hub's helpers (tests/helpers.py hub_cache_put),
and huggingface_hub itself is asked to find it (scan_cache_dir, snapshot_download with local_files_only), so
nothing of saeatlas is mocked.  The `saelens:` names against the real sae-lens directory are in
test_pretrained_hub.py (side venv).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from helpers import folder_files, hub_cache_put, random_saelens_sae

from saeatlas.cli import main
from saeatlas.errors import HubUnavailableError, MissingPackageError, SaeAtlasError
from saeatlas.sae import load_sae
from saeatlas.sae import pretrained as pretrained_module
from saeatlas.sae.formats import read_metadata, sae_folder
from saeatlas.study.config import load_study, paper_study_text, parse_study

REPO = "EleutherAI/sae-pythia-70m-32k"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache that huggingface_hub uses, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "saeatlas-cache"))
    return cache


@pytest.fixture
def sparsify_repo(tmp_path, hub_cache):
    """Repo REPO in the cache with SAEs at layers.1 and layers.2 (sparsify's folder names)."""
    local = tmp_path / "repo"
    for layer in (1, 2):
        random_saelens_sae(local / f"layers.{layer}", 16, 40, f"resid_post.{layer}", seed=layer)
    (local / "README.md").write_text("tiny SAEs\n")
    hub_cache_put(hub_cache, REPO, folder_files(local))
    return local


def _codes(sae, seed=0):
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        return sae.encode(x)


def test_hf_names_resolve_in_the_local_hub_cache(sparsify_repo, hub_cache):
    from huggingface_hub import scan_cache_dir, snapshot_download

    # huggingface_hub itself sees the repo and its snapshot
    info = scan_cache_dir(hub_cache)
    assert [r.repo_id for r in info.repos] == [REPO] and not info.warnings
    snapshot = snapshot_download(REPO, local_files_only=True)
    for name in (f"hf:{REPO}/layers.{{layer}}", f"hf:{REPO}/{{hook}}", f"hf:{REPO}"):
        folder = sae_folder(name, "blocks.2.hook_resid_post")
        assert folder == type(folder)(snapshot) / "layers.2" and folder.parent.parent.name == "snapshots"
    ours, original = load_sae(sae_folder(f"hf:{REPO}", "resid_post.1")), load_sae(sparsify_repo / "layers.1")
    assert torch.equal(_codes(ours), _codes(original)) and (_codes(ours) != 0).any()
    assert read_metadata(sae_folder(f"hf:{REPO}", "resid_post.1"))["hook_name"] == "resid_post.1"


def test_an_old_saelens_cfg_reads_as_sae_lens_reads_it(tmp_path):
    """cfg.json from before SAELens 6 (as the Pythia releases ship it): hook_point, activation_fn_str topk with
    its k in activation_fn_kwargs, normalize_activations false, no architecture."""
    folder = random_saelens_sae(tmp_path / "old", 16, 40, "resid_post.3", seed=5, old_cfg=True)
    sae = load_sae(folder)
    assert (sae.cfg.arch, sae.cfg.k) == ("topk", 4)
    assert read_metadata(folder)["hook_name"] == "resid_post.3"
    raw = json.loads((folder / "cfg.json").read_text())
    del raw["activation_fn_str"]  # no activation named: SAELens's default, a standard (ReLU) SAE
    (folder / "cfg.json").write_text(json.dumps(raw))
    assert load_sae(folder).cfg.arch == "relu"


@pytest.mark.parametrize(
    "name, message",
    [
        ("hf:", "names nothing"),
        ("hf:justone", "names no hub repo"),
        ("hf:owner/repo/{depth}", "is not a field it can fill"),
        (f"hf:{REPO}/layers.{{layer}}", "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
    ],
)
def test_bad_or_uncached_names_are_one_line(name, message, hub_cache):
    with pytest.raises(SaeAtlasError, match=message) as info:
        sae_folder(name, "resid_post.3")
    assert "\n" not in str(info.value)


def test_a_missing_folder_in_a_cached_repo_is_one_line(sparsify_repo):
    with pytest.raises(HubUnavailableError, match=r"SAE 'EleutherAI/sae-pythia-70m-32k/layers.5' .* not in the local"):
        sae_folder(f"hf:{REPO}/layers.{{layer}}", "resid_post.5")


def test_saelens_names_without_sae_lens_say_how_to_install_it(monkeypatch, hub_cache):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sae_lens" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"install sae-lens: pip install 'saeatlas\[pretrained\]'$"):
        sae_folder("saelens:pythia-70m-deduped-res-sm/blocks.{layer}.hook_resid_post", "resid_post.1")


DIRECTORY = """
pythia-70m-deduped-res-sm:
  conversion_func: null
  model: pythia-70m-deduped
  repo_id: ctigges/pythia-70m-deduped__res-sm_processed
  saes:
  - id: blocks.0.hook_resid_pre
    path: e-res-sm
  - id: blocks.1.hook_resid_post
    path: 1-res-sm
  - id: blocks.2.hook_resid_post
    path: 2-res-sm
gemma-scope-2b-pt-res:
  conversion_func: gemma_2
  model: gemma-2-2b
  repo_id: google/gemma-scope-2b-pt-res
  saes:
  - id: layer_1/width_16k/average_l0_10
    path: layer_1/width_16k/average_l0_10
mistral-7b-res-wg:
  conversion_func: null
  config_overrides:
    normalize_activations: constant_norm_rescale
  model: mistral-7b
  repo_id: JoshEngels/Mistral-7B-Residual-Stream-SAEs
  saes:
  - id: blocks.1.hook_resid_pre
    path: mistral_7b_layer_1
"""


@pytest.fixture
def directory(tmp_path, monkeypatch):
    """A directory in sae-lens's pretrained_saes.yaml format (entries copied from sae-lens 6.54.12's)."""
    path = tmp_path / "pretrained_saes.yaml"
    path.write_text(DIRECTORY)
    monkeypatch.setattr(pretrained_module, "saelens_directory_file", lambda: path)
    return path


@pytest.mark.parametrize(
    "name, hook, message",
    [
        ("saelens:pythia-70m-deduped-res-s/blocks.{layer}.hook_resid_post", "1", "close: pythia-70m-deduped-res-sm"),
        ("saelens:pythia-70m-deduped-res-sm/blocks.{layer}.hook_resid_post", "5", "its ids include"),
        ("saelens:pythia-70m-deduped-res-sm/{hook}", "mlp_out.1", "has no SAE 'mlp_out.1' for mlp_out.1"),
        ("saelens:gemma-scope-2b-pt-res/layer_{layer}/width_16k/average_l0_10", "1", "needs sae-lens's 'gemma_2'"),
    ],
)
def test_saelens_names_that_cannot_work_are_one_line(directory, hub_cache, name, hook, message):
    with pytest.raises(SaeAtlasError, match=message) as info:
        sae_folder(name, hook)
    assert "\n" not in str(info.value)


def test_a_saelens_release_resolves_to_its_repo_and_path_with_its_overrides(directory, hub_cache, tmp_path):
    local = tmp_path / "release"
    for layer in (1, 2):
        random_saelens_sae(local / f"{layer}-res-sm", 16, 40, f"resid_post.{layer}", seed=layer, old_cfg=True)
    snapshot = hub_cache_put(hub_cache, "ctigges/pythia-70m-deduped__res-sm_processed", folder_files(local))
    for name in (
        "saelens:pythia-70m-deduped-res-sm/blocks.{layer}.hook_resid_post",
        "saelens:pythia-70m-deduped-res-sm",
    ):
        assert sae_folder(name, "resid_post.2") == snapshot / "2-res-sm"
    # not in the directory: sae-lens's rule takes the release as a hub repo and the sae_id as its folder
    assert (
        sae_folder("saelens:ctigges/pythia-70m-deduped__res-sm_processed/{layer}-res-sm", "1") == snapshot / "1-res-sm"
    )
    # config_overrides apply as sae-lens applies them: here a normalisation saeatlas refuses, in one line
    random_saelens_sae(tmp_path / "m" / "mistral_7b_layer_1", 16, 40, "resid_pre.1", seed=3)
    hub_cache_put(hub_cache, "JoshEngels/Mistral-7B-Residual-Stream-SAEs", folder_files(tmp_path / "m"))
    folder = sae_folder("saelens:mistral-7b-res-wg/blocks.{layer}.hook_resid_pre", "resid_pre.1")
    assert json.loads((folder / "cfg.json").read_text())["normalize_activations"] == "constant_norm_rescale"
    with pytest.raises(SaeAtlasError, match="normalize_activations='constant_norm_rescale' is not supported"):
        load_sae(folder)


def test_init_paper_writes_a_study_that_validates(tmp_path, hub_cache, capsys):
    path = tmp_path / "paper.toml"
    assert main(["init", "--paper", str(path)]) == 0
    assert "universality paper" in capsys.readouterr().out
    study = load_study(path)
    assert study == parse_study(paper_study_text())
    a, b = study.models
    assert (a.model, b.model) == ("EleutherAI/pythia-70m", "EleutherAI/pythia-160m")
    assert len(a.hooks) == 6 and len(b.hooks) == 12 and a.saes.startswith("hf:EleutherAI/sae-pythia-70m-32k/")
    assert {"svcca_legacy", "svcca", "rsa"} <= set(study.compare.measures)
    # without the hub: one line, exit 2
    assert main(["status", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "EleutherAI/" in err and "not in the local Hugging Face cache" in err and "\n" not in err


def test_eval_and_absorption_take_pretrained_names(sparsify_repo, hub_cache, tmp_path, tiny_gemma, capsys):
    import numpy as np

    from saeatlas.sae.config import EvalConfig
    from saeatlas.sae.run import run_eval

    x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    local = run_eval(EvalConfig(), sparsify_repo / "layers.1", torch.from_numpy(x)).metrics
    for name, hook in ((f"hf:{REPO}/layers.1", None), (f"hf:{REPO}/layers.{{layer}}", "resid_post.1")):
        assert run_eval(EvalConfig(hook=hook), name, torch.from_numpy(x)).metrics == local
        flags = ["--hook", hook] if hook else []
        assert main(["eval", name, "--activations", str(tmp_path / "x.npy"), *flags, "--quiet"]) == 0
    assert f"FVU {local['fvu']:.3f}" in capsys.readouterr().out
    # a name with fields needs the hook it is for: one line
    assert main(["eval", f"hf:{REPO}/layers.{{layer}}", "--activations", str(tmp_path / "x.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "give the hook it is for (--hook)" in err and "\n" not in err

    # absorption reads SAEs by name too (here SAEs of the tiny Gemma's width, in a second cached repo)
    wide = tmp_path / "wide"
    random_saelens_sae(wide / "resid_post.1", 32, 96, "resid_post.1", seed=4)
    hub_cache_put(hub_cache, "someone/tiny-gemma-saes", folder_files(wide))
    out = tmp_path / "absorption"
    args = ["absorption", "--model", str(tiny_gemma), "--hook", "resid_post.1", "--sae", "hf:someone/tiny-gemma-saes"]
    args += ["--words", "300", "--min-letters", "5", "--min-probe-f1", "0.0", "--out", str(out), "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "absorption.json").read_text())
    assert [s["folder"] for s in results["saes"]] == ["hf:someone/tiny-gemma-saes"]
