"""SAELens interoperability, checked against the real sae-lens package.

sae-lens has a heavy dependency tree, so it lives in its own venv
(.venv-saelens, built by `make test`); tests/saelens_side.py runs there and
exchanges .npy files with this module.  Both directions are checked:
saeatlas saves -> sae_lens loads, and sae_lens saves -> saeatlas loads; the
codes and reconstructions of both libraries must agree.  One subprocess per
direction serves all architectures.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from saeatlas.sae import SAEConfig, SparseAutoencoder, load_sae, save_saelens

pytestmark = pytest.mark.saelens

ROOT = Path(__file__).parents[1]
SIDE_PYTHON = ROOT / ".venv-saelens/bin/python"
SIDE_STAMP = ROOT / ".venv-saelens/.installed"
SIDE_SCRIPT = Path(__file__).with_name("saelens_side.py")
D_IN, D_SAE, K, N_ROWS = 16, 48, 4, 64  # as in saelens_side.py

# saeatlas arch -> the SAELens architecture it is saved as
SAVED_AS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu", "gba": "jumprelu"}
# SAELens arch -> the saeatlas arch it loads as
LOADS_AS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def _side(*args: str) -> list[dict]:
    """Run saelens_side.py in .venv-saelens; its JSON lines, one per job."""
    if not (SIDE_PYTHON.exists() and SIDE_STAMP.exists()):
        pytest.fail(
            f"{SIDE_PYTHON} (the venv with the real sae-lens) is missing or incomplete: run `make test` "
            f"(or `make .venv-saelens/.installed`) in {ROOT}",
            pytrace=False,
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [str(SIDE_PYTHON), str(SIDE_SCRIPT), *args]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode:
        pytest.fail(
            f"saelens_side.py {args[0]} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


class _Once:
    """Runs `fn` on the first call and remembers its result or its failure (one subprocess for all archs)."""

    def __init__(self, fn):
        self.fn, self.done, self.value, self.failure = fn, False, None, None

    def __call__(self):
        if not self.done:
            self.done = True
            try:
                self.value = self.fn()
            except pytest.fail.Exception as exc:
                self.failure = str(exc)
            except (AssertionError, KeyError, OSError, ValueError, subprocess.SubprocessError) as exc:  # e.g. timeout
                self.failure = f"{type(exc).__name__}: {exc}"
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)
        return self.value


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def _assert_same_outputs(codes, recon, their_codes, their_recon, label: str) -> None:
    l0, their_l0 = (codes != 0).sum(-1).tolist(), (their_codes != 0).sum(-1).tolist()
    if l0 != their_l0:
        raise AssertionError(f"{label}: nonzeros per row differ: saeatlas {l0}, sae_lens {their_l0}")
    _assert_same(codes, their_codes, f"{label} codes")
    _assert_same(recon, their_recon, f"{label} reconstruction")


def _atlas_sae(arch: str, seed: int) -> SparseAutoencoder:
    """Random saeatlas SAE whose biases, decoder norms and thresholds all matter."""
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(arch=arch, d_in=D_IN, d_sae=D_SAE, k=K), g)
    with torch.no_grad():
        sae.W_enc.add_(0.2 * torch.randn(sae.W_enc.shape, generator=g))
        sae.W_dec.mul_(0.5 + 1.5 * torch.rand(D_SAE, 1, generator=g))  # non-unit decoder rows
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=g) - 0.6)
        sae.b_dec.copy_(0.2 * torch.randn(D_IN, generator=g))
        sae.threshold.copy_(0.05 + 0.45 * torch.rand(D_SAE, generator=g))  # jumprelu: per latent
    sae.inference_threshold = 0.3  # batchtopk: global
    return sae.eval()


def _rows(g: torch.Generator) -> torch.Tensor:
    """Inputs from 0 (only the biases act: few positive pre-activations) to large (many)."""
    return torch.randn(N_ROWS, D_IN, generator=g) * torch.linspace(0.0, 3.0, N_ROWS)[:, None]


def _check_nontrivial(sae: SparseAutoencoder, x: torch.Tensor) -> None:
    """The case exercises what could go wrong: b_dec, thresholds, the top-k cut."""
    with torch.no_grad():
        pre = sae.pre_activations(x)
    assert sae.b_dec.abs().min() > 0 and sae.b_enc.abs().max() > 0
    if sae.cfg.arch in ("jumprelu", "batchtopk"):
        threshold = sae.threshold if sae.cfg.arch == "jumprelu" else sae.inference_threshold
        assert ((pre > 0) & (pre <= threshold)).any(), "no positive pre-activation is cut by a threshold"
    if sae.cfg.arch == "topk":
        assert sae.cfg.k < sae.cfg.d_sae and ((pre > 0).sum(-1) > sae.cfg.k).any(), "top-k never cuts a positive value"
        assert ((pre > 0).sum(-1) < sae.cfg.k).any(), "every row has k positive values: ReLU after top-k untested"


# ---------------------------------------------------------------- saeatlas -> sae_lens


def _export(folder: Path) -> dict:
    jobs, cases = [], {}
    for seed, arch in enumerate(SAVED_AS):
        sae = _atlas_sae(arch, seed)
        x = _rows(torch.Generator().manual_seed(100 + seed))
        save_saelens(sae, folder / arch, metadata={"model_name": "tiny", "hook_name": "resid_post.3"})
        np.save(folder / f"{arch}.x.npy", x.numpy())
        jobs += [str(folder / arch), str(folder / f"{arch}.x.npy"), str(folder / f"{arch}.out.npz")]
        cases[arch] = (sae, x)
    described = {Path(d["folder"]).name: d for d in _side("load-and-encode", *jobs)}
    out = {}
    for arch, (sae, x) in cases.items():
        with np.load(folder / f"{arch}.out.npz") as f:
            out[arch] = (sae, x, described[arch], torch.from_numpy(f["codes"]), torch.from_numpy(f["recon"]))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _Once(lambda: _export(tmp_path_factory.mktemp("to-saelens")))


@pytest.mark.parametrize("arch", list(SAVED_AS))
def test_saelens_loads_saeatlas_sae_and_encodes_identically(arch, exported):
    sae, x, described, their_codes, their_recon = exported()[arch]
    assert described["architecture"] == SAVED_AS[arch], described
    assert described["dtype"] == "torch.float32" and described["apply_b_dec_to_input"] is True, described
    if arch == "topk":
        assert described["k"] == K and described["rescale_acts_by_decoder_norm"] is False, described
    _check_nontrivial(sae, x)
    with torch.no_grad():
        codes = sae.encode(x)
        recon = sae.decode(codes)
    assert (codes != 0).any()
    _assert_same_outputs(codes, recon, their_codes, their_recon, f"saeatlas {arch} -> sae_lens {SAVED_AS[arch]}")


# ---------------------------------------------------------------- sae_lens -> saeatlas


def _import(folder: Path) -> dict:
    jobs = []
    for seed, arch in enumerate(LOADS_AS):
        jobs += [arch, str(folder / arch), str(seed)]
    described = {Path(d["folder"]).name: d for d in _side("make", *jobs)}
    assert set(described) == set(LOADS_AS), described
    return {arch: folder / arch for arch in LOADS_AS}


@pytest.fixture(scope="module")
def made_by_saelens(tmp_path_factory):
    return _Once(lambda: _import(tmp_path_factory.mktemp("from-saelens")))


@pytest.mark.parametrize("arch", list(LOADS_AS))
def test_saeatlas_loads_saelens_sae_and_encodes_identically(arch, made_by_saelens):
    folder = made_by_saelens()[arch]
    sae = load_sae(folder)
    assert sae.cfg.arch == LOADS_AS[arch] and (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, D_SAE)
    if arch == "topk":
        assert sae.cfg.k == K
    x = torch.from_numpy(np.load(folder / "x.npy"))
    _check_nontrivial(sae, x)
    with torch.no_grad():
        codes = sae.encode(x)
        recon = sae.decode(codes)
    their_codes = torch.from_numpy(np.load(folder / "codes.npy"))
    their_recon = torch.from_numpy(np.load(folder / "recon.npy"))
    assert (their_codes != 0).any()
    _assert_same_outputs(codes, recon, their_codes, their_recon, f"sae_lens {arch} -> saeatlas {LOADS_AS[arch]}")
