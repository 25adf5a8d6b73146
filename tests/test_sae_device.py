"""SAE training off the CPU's native kernels: the torch path (what CUDA and MPS run) against the native CPU
path, `--device` on `train`, device-independent checkpoints, and (marked gpu) CUDA against the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeatlas import native
from saeatlas.cli import main
from saeatlas.sae import SAEConfig, TrainConfig, train_sae
from saeatlas.sae.data_source import TensorSource
from saeatlas.sae.synthetic import planted_features

DENSE_ARCHS = ("relu", "jumprelu", "gba")
TORCH_PATH_TOLERANCE = 1e-4
"""Largest relative weight difference allowed between the torch and native paths after 60 float32 steps: they
sum the sparse products in other orders (measured: below 1e-6)."""


def _data(seed: int = 1) -> torch.Tensor:
    x, _ = planted_features(4096, n_features=64, d=16, active=3, seed=seed)
    return x


def _train(arch: str, device: str = "auto", steps: int = 60, **overrides):
    cfg = SAEConfig(arch=arch, d_sae=64, k=3)
    train = TrainConfig(
        sae=cfg,
        steps=steps,
        batch_size=256,
        lr=1e-3,
        warmup_steps=5,
        seed=3,
        compute_dtype="float32",
        dead_after_tokens=2048,  # some latents die, so AuxK runs too
        device=device,
        **overrides,
    )
    return train_sae(train, TensorSource(_data()))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", *DENSE_ARCHS])
def test_torch_path_trains_as_the_native_path(arch, monkeypatch):
    if native.library() is None:
        pytest.skip("no working C compiler: the native kernels are not built")
    with_native, _ = _train(arch)
    monkeypatch.setattr(native, "library", lambda: None)
    without, _ = _train(arch)
    for name, p in with_native.state_dict().items():
        if arch in DENSE_ARCHS:  # the dense path never calls a native kernel
            assert torch.equal(p, without.state_dict()[name]), name
        else:
            assert _relative(p, without.state_dict()[name]) < TORCH_PATH_TOLERANCE, name


def test_device_cpu_is_what_train_does_without_the_flag(tmp_path):
    np.save(tmp_path / "x.npy", _data().numpy())
    common = ["train", "--activations", str(tmp_path / "x.npy"), "--k", "3", "--width", "64", "--steps", "30"]
    common += ["--batch-size", "256", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "cpu" / name).read_bytes(), name


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_train_on_a_missing_device_is_one_line(device, tmp_path, capsys):
    here = torch.cuda.is_available() if device.startswith("cuda") else torch.backends.mps.is_available()
    if here:
        pytest.skip(f"{device} is here")
    np.save(tmp_path / "x.npy", _data().numpy())
    args = ["train", "--activations", str(tmp_path / "x.npy"), "--device", device, "--out", str(tmp_path / "s")]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saeatlas: error: device") and "not available" in err and "\n" not in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_checkpoint_holds_cpu_tensors_only(tmp_path):
    train_sae(
        TrainConfig(sae=SAEConfig(arch="gba", d_sae=64, k=3), steps=20, batch_size=256, checkpoint_every=10),
        TensorSource(_data()),
        checkpoint=tmp_path / "c.pt",
    )
    data = torch.load(tmp_path / "c.pt", weights_only=True)
    tensors = [*data["sae"].values(), *data["optimizer"]["state"][0].values(), data["state"]["tokens_since_fired"]]
    tensors += [data["state"]["gba_fired"], data["state"]["gba_peak"]]
    assert all(t.device.type == "cpu" for t in tensors)
    assert data["state"]["step"] == 20


# ---------------------------------------------------------------- on a CUDA GPU (pytest -m gpu)
@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["topk", "batchtopk", *DENSE_ARCHS])
def test_cuda_trains_as_the_cpu(arch):
    """float32 on both: cuBLAS and the CPU sum in other orders, and the torch path replaces the native one."""
    on_cpu, _ = _train(arch, device="cpu")
    on_cuda, _ = _train(arch, device="cuda")
    for name, p in on_cpu.state_dict().items():
        q = on_cuda.state_dict()[name]
        assert q.device.type == "cpu", name  # the trained SAE comes back on the CPU
        assert _relative(p, q) < 1e-3, name


class Killed(Exception):
    pass


def _die_at_25(metrics: dict) -> None:
    if metrics["step"] == 25:
        raise Killed


@pytest.mark.gpu
@pytest.mark.parametrize("first, second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_device(first, second, tmp_path):
    """Killed at step 25 on `first` (checkpoint at 20), resumed on `second`: close to the run on `second` alone."""
    ckpt = tmp_path / "c.pt"
    settings = {
        "sae": SAEConfig(arch="topk", d_sae=64, k=3),
        "steps": 40,
        "batch_size": 256,
        "lr": 1e-3,
        "warmup_steps": 5,
    }
    settings |= {"seed": 3, "compute_dtype": "float32", "checkpoint_every": 10}
    with pytest.raises(Killed):
        train_sae(TrainConfig(device=first, **settings), TensorSource(_data()), ckpt, on_step=_die_at_25)
    resumed, state = train_sae(TrainConfig(device=second, **settings), TensorSource(_data()), ckpt)
    reference, _ = train_sae(TrainConfig(device=second, **settings), TensorSource(_data()))
    assert state.step == 40
    for name, p in reference.state_dict().items():
        assert _relative(p, resumed.state_dict()[name]) < 1e-3, name
