"""SAEs: encoders, folding, formats, resume, bad input (fast, small shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import kill_when_stopped, stop_after_command

from saeatlas.cli import main
from saeatlas.errors import SaeAtlasError
from saeatlas.sae import ARCHITECTURES, SAEConfig, SparseAutoencoder, TrainConfig, load_sae, save_saelens, train_sae
from saeatlas.sae.activations import batch_topk, matching_pursuit, topk
from saeatlas.sae.data_source import TensorSource
from saeatlas.sae.synthetic import planted_features
from saeatlas.sae.trainer import geometric_median


def _random_sae(arch: str, d_in=16, d_sae=48, k=4, seed=0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k), g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        sae.W_enc.add_(0.1 * torch.randn(sae.W_enc.shape, generator=g))
        sae.threshold.fill_(0.05)
    sae.inference_threshold = 0.05
    return sae.eval()


def test_topk_keeps_k_largest_and_relu():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-3.0, -2.0, -1.0, -0.5]])
    assert torch.equal(topk(pre, 2), torch.tensor([[3.0, 0, 2.0, 0], [0, 0, 0, 0]]))
    out = batch_topk(torch.tensor([[3.0, 1.0], [2.0, 0.5]]), 1)  # 2 largest of the batch
    assert torch.equal(out, torch.tensor([[3.0, 0.0], [2.0, 0.0]]))


def test_matching_pursuit_recovers_a_sparse_code_on_orthonormal_atoms():
    atoms = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))[0].T
    code = torch.zeros(8)
    code[[1, 5]] = torch.tensor([2.0, 0.7])
    codes = matching_pursuit((code @ atoms)[None], atoms, max_steps=4, tolerance=1e-6)
    assert torch.allclose(codes[0], code, atol=1e-5)


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.randn(200, 3) * 0.1, torch.full((20, 3), 100.0)])
    assert geometric_median(x).norm() < 0.5 < x.mean(0).norm()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fold_scale_keeps_codes_and_rescales_reconstruction(arch):
    sae = _random_sae(arch)
    x = torch.randn(64, 16) * 30
    scale = 0.1
    codes_before = sae.encode(x * scale)
    recon_before = sae.decode(codes_before)
    sae.fold_scale(scale)
    torch.testing.assert_close(sae.encode(x), codes_before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon_before / scale, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saelens_round_trip_encodes_identically(arch, tmp_path):
    sae = _random_sae(arch)
    x = torch.randn(32, 16)
    save_saelens(sae, tmp_path / "sae", metadata={"model_name": "tiny", "hook_name": "resid_post.3"})
    cfg = json.loads((tmp_path / "sae/cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    from safetensors import safe_open

    with safe_open(tmp_path / "sae/sae_weights.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  (safe_open, not a dict)
    expected = {"W_enc": (16, 48), "W_dec": (48, 16), "b_enc": (48,), "b_dec": (16,)}
    if arch in ("jumprelu", "batchtopk", "gba"):
        expected["threshold"] = (48,)
        assert cfg["architecture"] == "jumprelu"
    assert shapes == expected
    loaded = load_sae(tmp_path / "sae")
    assert loaded.cfg.arch == arch
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_loads_sparsify_and_dictionary_learning_layouts(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    enc, b_enc, dec, b_dec = (
        torch.randn(48, 16, generator=g),
        torch.randn(48, generator=g),
        torch.randn(48, 16, generator=g),
        torch.randn(16, generator=g),
    )
    x = torch.randn(10, 16, generator=g)
    (tmp_path / "sp").mkdir()
    save_file(
        {"encoder.weight": enc, "encoder.bias": b_enc, "W_dec": dec, "b_dec": b_dec}, tmp_path / "sp/sae.safetensors"
    )
    (tmp_path / "sp/cfg.json").write_text(json.dumps({"k": 3, "num_latents": 48}))
    sp = load_sae(tmp_path / "sp")
    expected = topk((x - b_dec) @ enc.T + b_enc, 3)
    assert torch.allclose(sp.encode(x), expected, atol=1e-5)

    (tmp_path / "dl").mkdir()
    torch.save(
        {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec.T, "bias": b_dec}, tmp_path / "dl/ae.pt"
    )
    dl = load_sae(tmp_path / "dl")
    assert dl.cfg.arch == "relu"
    assert torch.allclose(dl.encode(x), ((x - b_dec) @ enc.T + b_enc).relu(), atol=1e-5)
    assert torch.allclose(dl.decode(dl.encode(x)), dl.encode(x) @ dec + b_dec, atol=1e-5)


def test_bad_sae_files_are_clear_errors(tmp_path):
    sae = _random_sae("topk")
    save_saelens(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae/cfg.json").read_text())
    cfg["d_sae"] = 64
    cfg["saeatlas"]["sae"]["d_sae"] = 64
    (tmp_path / "sae/cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeAtlasError, match=r"'W_enc' has shape \[16, 48\], but its config says \[16, 64\]"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae/sae_weights.safetensors").write_bytes(b"\x80\x04\x95pickle-not-safetensors")
    with pytest.raises(SaeAtlasError, match="sae_weights.safetensors: not a safetensors file"):
        load_sae(tmp_path / "sae")
    (tmp_path / "dl").mkdir()
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "dl/ae.pt").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(SaeAtlasError, match="holds pickled Python objects, not only tensors: refused") as err:
        load_sae(tmp_path / "dl")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SaeAtlasError, match="not an SAE folder"):
        load_sae(tmp_path)


def test_training_resumes_to_identical_weights(tmp_path):
    x, _ = planted_features(8192, n_features=64, d=16, active=3, seed=1)
    cfg = SAEConfig(arch="topk", d_sae=64, k=3)
    train = TrainConfig(sae=cfg, steps=40, batch_size=256, lr=1e-3, warmup_steps=5, checkpoint_every=10, seed=3)
    reference, _ = train_sae(train, TensorSource(x))

    class Killed(Exception):
        pass

    def die_at_25(m):
        if m["step"] == 25:
            raise Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        train_sae(train, TensorSource(x), checkpoint=ckpt, on_step=die_at_25)
    resumed, state = train_sae(train, TensorSource(x), checkpoint=ckpt)
    assert state.step == 40
    for name, p in reference.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name


def test_cli_train_writes_saelens_folder_and_eval_reads_it(tmp_path, capsys):
    x, _ = planted_features(4096, n_features=64, d=16, active=3)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "sae"
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "x.npy"),
                "--arch",
                "topk",
                "--k",
                "3",
                "--d-sae",
                "64",
                "--steps",
                "30",
                "--batch-size",
                "256",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "L0 3.0" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert not (tmp_path / "sae.partial").exists()
    assert main(["eval", str(out), "--activations", str(tmp_path / "x.npy")]) == 0
    assert "firing frequency" in capsys.readouterr().out
    # A second run into the same folder is refused, not overwritten.
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "x.npy"),
                "--width",
                "64",
                "--k",
                "3",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda x: x, ["--k", "80", "--d-sae", "64"], "bad --k = 80: use an integer from 1 to d_sae"),
        (lambda x: x, ["--lr", "-0.001"], "bad --lr = -0.001"),
        (lambda x: x, ["--width", "0"], "bad --width = 0"),
        (lambda x: x, ["--arch", "sparse"], "bad --arch = 'sparse': use one of relu, topk"),
        (lambda x: np.where(np.arange(len(x))[:, None] == 7, np.inf, x), [], "NaN or Inf"),
        (lambda x: x[:10], ["--batch-size", "256"], "fewer than one batch"),
        (lambda x: x[:, 0], [], r"\[n_tokens, d_in\]"),
    ],
)
def test_cli_train_bad_input(tmp_path, capsys, make, args, message):
    x, _ = planted_features(1024, n_features=32, d=16, active=2)
    np.save(tmp_path / "x.npy", make(x.numpy()).astype(np.float32))
    rc = main(
        [
            "train",
            "--activations",
            str(tmp_path / "x.npy"),
            "--width",
            "64",
            "--k",
            "3",
            "--steps",
            "5",
            "--batch-size",
            "256",
            *args,
            "--out",
            str(tmp_path / "sae"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    import re

    assert re.search(message, err[0])
    assert not (tmp_path / "sae").exists()


def test_cli_refuses_pickled_npy(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["train", "--activations", str(tmp_path / "x.npy"), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "pickles are refused" in capsys.readouterr().err


def _write_saelens(folder, cfg: dict, tensors: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"dtype": "float32", "device": "cpu", **cfg}))
    save_file(tensors, folder / "sae_weights.safetensors")


def test_saelens_options_as_sae_lens_computes_them(tmp_path):
    """apply_b_dec_to_input=false, rescale_acts_by_decoder_norm, negative JumpReLU thresholds."""
    g = torch.Generator().manual_seed(5)
    W_enc, b_enc = torch.randn(16, 48, generator=g), torch.randn(48, generator=g)
    W_dec, b_dec = torch.randn(48, 16, generator=g) * 3, torch.randn(16, generator=g)
    thr = torch.randn(48, generator=g)
    x = torch.randn(20, 16, generator=g)
    base = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}

    _write_saelens(
        tmp_path / "a", {"architecture": "standard", "d_in": 16, "d_sae": 48, "apply_b_dec_to_input": False}, base
    )
    assert torch.allclose(load_sae(tmp_path / "a").encode(x), (x @ W_enc + b_enc).relu(), atol=1e-4)

    _write_saelens(
        tmp_path / "b",
        {"architecture": "topk", "d_in": 16, "d_sae": 48, "k": 5, "rescale_acts_by_decoder_norm": True},
        base,
    )
    norms = W_dec.norm(dim=1)
    codes = topk(((x - b_dec) @ W_enc + b_enc) * norms, 5)
    sae = load_sae(tmp_path / "b")
    assert torch.allclose(sae.encode(x), codes, atol=1e-4)
    assert torch.allclose(sae.decode(sae.encode(x)), (codes / norms) @ W_dec + b_dec, atol=1e-4)

    _write_saelens(tmp_path / "c", {"architecture": "jumprelu", "d_in": 16, "d_sae": 48}, {**base, "threshold": thr})
    pre = (x - b_dec) @ W_enc + b_enc
    assert torch.allclose(load_sae(tmp_path / "c").encode(x), pre.relu() * (pre > thr), atol=1e-5)


@pytest.mark.slow
def test_killed_cli_train_resumes_to_identical_sae(tmp_path):
    """kill -9 during `saeatlas train`, rerun the same command: the SAE folder is byte-identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    x, _ = planted_features(8192, n_features=64, d=16, active=3, seed=2)
    np.save(tmp_path / "x.npy", x.numpy())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }

    def args(out):
        return [
            "train",
            "--activations",
            str(tmp_path / "x.npy"),
            "--arch",
            "topk",
            "--k",
            "3",
            "--width",
            "64",
            "--steps",
            "800",
            "--batch-size",
            "256",
            "--seed",
            "5",
            "--checkpoint-every",
            "25",
            "--out",
            str(out),
            "--quiet",
        ]

    cli = [sys.executable, "-m", "saeatlas.cli"]
    subprocess.run([*cli, *args(tmp_path / "reference")], check=True, env=env)
    killed = tmp_path / "killed"
    checkpoint = tmp_path / "killed.partial" / "checkpoint.pt"
    # The child stops itself right after its 3rd checkpoint (step 75 of 800); then it gets kill -9.
    proc = subprocess.Popen(stop_after_command("checkpoints", 3, args(killed)), env=env)
    kill_when_stopped(proc)
    assert checkpoint.exists() and not killed.exists(), "the run was not killed mid-training"
    step = torch.load(checkpoint, weights_only=True)["state"]["step"]
    assert 0 < step < 800
    subprocess.run([*cli, *args(killed)], check=True, env=env)
    assert not (tmp_path / "killed.partial").exists()
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (killed / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


@pytest.mark.parametrize("fill, message", [(0.0, "all zeros"), (1e30, "reach 1e+30"), (float("nan"), "NaN")])
def test_degenerate_activations_are_refused_by_train_and_eval(tmp_path, capsys, fill, message):
    """All zeros trained a 100%-dead SAE reported at FVU 0; 1e30 saved NaN weights (issue 15)."""
    x = np.full((512, 8), fill, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32))
    args = ["--d-sae", "16", "--k", "2", "--steps", "5", "--batch-size", "64", "--quiet"]
    assert main(["train", "--activations", str(tmp_path / "x.npy"), *args, "--out", str(tmp_path / "sae")]) == 2
    assert not (tmp_path / "sae").exists() and not (tmp_path / "sae.partial").exists()
    assert main(["train", "--activations", str(tmp_path / "ok.npy"), *args, "--out", str(tmp_path / "good")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "good"), "--activations", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
