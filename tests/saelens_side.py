"""The sae_lens side of tests/test_saelens_compat.py, run with .venv-saelens/bin/python.

It imports sae_lens (never saeatlas) and exchanges arrays with the test as .npy files.
Each command takes one or more jobs, so one process (sae_lens imports in ~7 s)
serves every architecture:

  load-and-encode FOLDER X.npy OUT.npz [FOLDER X.npy OUT.npz ...]
      SAE.load_from_disk(FOLDER); writes OUT.npz with codes = encode(x) and
      recon = decode(encode(x)).
  make ARCH FOLDER SEED [ARCH FOLDER SEED ...]
      ARCH: standard, topk or jumprelu.  Builds a sae_lens SAE with random
      weights (non-zero biases, non-unit decoder rows, thresholds in
      [0.05, 0.5]), save_model(FOLDER), and writes x.npy, codes.npy and
      recon.npy (encode / decode of a fixed x) into FOLDER.

Prints one JSON line per job describing what sae_lens built or loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

D_IN, D_SAE, K, N_ROWS = 16, 48, 4, 64


def _describe(sae, folder: str) -> dict:
    return {
        "folder": folder,
        "class": type(sae).__name__,
        "architecture": sae.cfg.architecture(),
        "k": getattr(sae.cfg, "k", None),
        "dtype": str(sae.W_enc.dtype),
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
        "rescale_acts_by_decoder_norm": getattr(sae.cfg, "rescale_acts_by_decoder_norm", None),
    }


@torch.no_grad()
def _run(sae, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    codes = sae.encode(x)
    return codes.numpy(), sae.decode(codes).numpy()


def load_and_encode(folder: str, x_path: str, out_path: str) -> dict:
    from sae_lens import SAE

    sae = SAE.load_from_disk(folder, device="cpu")
    codes, recon = _run(sae, torch.from_numpy(np.load(x_path)))
    np.savez(out_path, codes=codes, recon=recon)
    return _describe(sae, folder)


def make(arch: str, folder: str, seed: str) -> dict:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    builders = {
        "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
    }
    if arch not in builders:
        raise SystemExit(f"unknown sae_lens architecture {arch!r}: use {', '.join(builders)}")
    g = torch.Generator().manual_seed(int(seed))
    sae = builders[arch]()
    with torch.no_grad():
        w_dec = torch.randn(D_SAE, D_IN, generator=g)
        w_dec *= (0.5 + 1.5 * torch.rand(D_SAE, 1, generator=g)) / w_dec.norm(dim=1, keepdim=True)  # row norms 0.5..2
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T / w_dec.norm(dim=1) ** 2 + 0.2 * torch.randn(D_IN, D_SAE, generator=g))
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=g) - 0.6)
        sae.b_dec.copy_(0.2 * torch.randn(D_IN, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.05 + 0.45 * torch.rand(D_SAE, generator=g))
    x = torch.randn(N_ROWS, D_IN, generator=g) * torch.linspace(0.0, 3.0, N_ROWS)[:, None]  # rows of norm 0 .. ~12
    sae.save_model(folder)
    codes, recon = _run(sae, x)
    np.save(Path(folder) / "x.npy", x.numpy())
    np.save(Path(folder) / "codes.npy", codes)
    np.save(Path(folder) / "recon.npy", recon)
    return _describe(sae, folder)


COMMANDS = {"load-and-encode": load_and_encode, "make": make}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: saelens_side.py {{{'|'.join(COMMANDS)}}} ARGS... (see the docstring)")
    command, args = COMMANDS[argv[0]], argv[1:]
    if not args or len(args) % 3:
        raise SystemExit(f"{argv[0]} takes its arguments in groups of 3, got {len(args)}")
    torch.set_num_threads(1)
    for i in range(0, len(args), 3):
        print(json.dumps(command(*args[i : i + 3])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
