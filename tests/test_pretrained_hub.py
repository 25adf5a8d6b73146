"""A study that names its models by hub id and its SAEs by SAELens release name, run offline from a local
Hugging Face cache, with the real sae-lens (side venv .venv-saelens) reading its own directory.

The cache is built in the hub's own layout with huggingface_hub's helpers (helpers.hub_cache_put): a tiny
random GPT-NeoX as `EleutherAI/pythia-70m-deduped` and tiny SAELens-format SAEs (cfg.json as the old Pythia
releases ship it) at the repo and paths sae-lens's directory gives release `pythia-70m-deduped-res-sm`; a second
tiny GPT-NeoX as `EleutherAI/pythia-160m` with SAEs in a hub repo named directly (`hf:`).  sae-lens's own
SAE.from_pretrained on the same cache must encode as saeatlas does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXTS, build_tiny_neox, folder_files, hub_cache_put, random_saelens_sae

pytestmark = [pytest.mark.saelens, pytest.mark.slow]

ROOT = Path(__file__).parents[1]
SIDE_PYTHON = ROOT / ".venv-saelens/bin/python"
SIDE_STAMP = ROOT / ".venv-saelens/.installed"
RELEASE, RELEASE_REPO = "pythia-70m-deduped-res-sm", "ctigges/pythia-70m-deduped__res-sm_processed"
SAELENS_NAME = f"saelens:{RELEASE}/blocks.{{layer}}.hook_resid_post"
HF_NAME = "hf:EleutherAI/sae-pythia-160m-32k/layers.{layer}"


def _side(cache: Path, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    if not (SIDE_PYTHON.exists() and SIDE_STAMP.exists()):
        pytest.fail(f"{SIDE_PYTHON} is missing or incomplete: run `make .venv-saelens/.installed`", pytrace=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV", "HF_HOME")}
    env.update(
        PYTHONPATH=str(ROOT / "src"),  # this tree's saeatlas, whatever the side venv has installed
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        SAEATLAS_CACHE=str(cache.parent / "saeatlas-cache"),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [str(SIDE_PYTHON), *command], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )
    if proc.returncode:
        pytest.fail(
            f"{command} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}", pytrace=False
        )
    return proc


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from huggingface_hub import scan_cache_dir

    root = tmp_path_factory.mktemp("hub")
    cache = root / "hf-cache"
    cache.mkdir()
    for repo, seed, width in (("EleutherAI/pythia-70m-deduped", 2, 32), ("EleutherAI/pythia-160m", 3, 48)):
        model = build_tiny_neox(root / repo.replace("/", "--"), seed=seed, hidden_size=width)
        hub_cache_put(cache, repo, folder_files(model))
    release = root / "release"
    for layer in (1, 2):
        random_saelens_sae(release / f"{layer}-res-sm", 32, 64, f"resid_post.{layer}", seed=layer, old_cfg=True)
        random_saelens_sae(root / "sparsify" / f"layers.{layer}", 48, 64, f"resid_post.{layer}", seed=10 + layer)
    hub_cache_put(cache, RELEASE_REPO, folder_files(release))
    hub_cache_put(cache, "EleutherAI/sae-pythia-160m-32k", folder_files(root / "sparsify"))
    assert len(scan_cache_dir(cache).repos) == 4  # huggingface_hub sees every repo it would have downloaded
    return cache


def test_sae_lens_from_pretrained_and_saeatlas_read_the_cached_release_alike(cache, tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    proc = _side(
        cache,
        str(Path(__file__).with_name("pretrained_side.py")),
        "encode",
        RELEASE,
        "blocks.2.hook_resid_post",
        SAELENS_NAME,
        "resid_post.2",
        str(tmp_path / "x.npy"),
        str(tmp_path / "out.npz"),
    )
    described = json.loads(proc.stdout.strip().splitlines()[-1])
    assert described["architecture"] == "topk"
    assert (
        described["folder"].endswith("2-res-sm")
        and "models--ctigges--pythia-70m-deduped__res-sm_processed" in described["folder"]
    )
    with np.load(tmp_path / "out.npz") as f:
        assert (f["theirs"] != 0).sum() > 0
        np.testing.assert_allclose(f["ours"], f["theirs"], atol=1e-5, rtol=1e-5)


def test_a_study_naming_hub_models_and_pretrained_saes_runs_offline(cache, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(2 + i % 4)))
    study = tmp_path / "study.toml"
    study.write_text(f"""
name = "by-name"
[data]
corpus = "{corpus}"
tokens = 2000
window_chars = 60
context = 32
heldout_tokens = 400
[[models]]
label = "a"
model = "EleutherAI/pythia-70m-deduped"
hooks = [1, 2]
saes = "{SAELENS_NAME}"
[[models]]
label = "b"
model = "EleutherAI/pythia-160m"
hooks = [2]
saes = "{HF_NAME}"
[sae]
ce_tokens = 128
[compare]
label_a = "a"
label_b = "b"
threshold = 0.0
n_permutations = 20
n_bootstrap = 0
controls = []
concepts = []
pair_cards = 1
""")
    out = tmp_path / "out"
    _side(cache, "-m", "saeatlas", "run", str(study), "--out", str(out), cwd=tmp_path)
    results = json.loads((out / "results.json").read_text())
    names = [t["name"] for t in results["stages"]]
    assert {"pretrained a resid_post.1", "pretrained a resid_post.2", "pretrained b resid_post.2"} <= set(names)
    assert all(t["state"] == "ran" for t in results["stages"])
    assert [(p["hook_a"], p["hook_b"]) for p in results["compare"]["pairs"]] == [
        ("resid_post.1", "resid_post.2"),
        ("resid_post.2", "resid_post.2"),
    ]
    mains = [s for s in results["saes"] if s["role"] == "pretrained" or s["role"] == "main"]
    assert len(mains) == 3 and all(s["metrics"]["l0"] > 0 for s in mains)

    # the explorer over that study, in this venv (no sae-lens, no hub): the SAE folders come from results.json
    from saeatlas.explore.study import StudyIndex
    from saeatlas.explore.views import Explorer

    explorer = Explorer(StudyIndex(out))
    spec_a, spec_b = explorer.study.sides(0)
    assert "models--ctigges--pythia-70m-deduped__res-sm_processed" in str(spec_a.sae)
    assert "models--EleutherAI--sae-pythia-160m-32k" in str(spec_b.sae)
    pair = explorer.study.pairs(0)[0]
    view = explorer.pair(0, pair["idx_a"], pair["idx_b"])
    assert view["a"]["n_fire"] > 0 and view["b"]["n_fire"] > 0 and view["corr"] == pair["corr"]
