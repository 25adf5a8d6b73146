"""The side-venv half of tests/test_pretrained_hub.py, run with .venv-saelens/bin/python (sae-lens and saeatlas
both installed, saeatlas from this tree through PYTHONPATH), offline, on the Hugging Face cache the test built.

  encode RELEASE SAE_ID NAME HOOK X.npy OUT.npz
      sae-lens's SAE.from_pretrained(RELEASE, SAE_ID) and saeatlas's load_sae(sae_folder(NAME, HOOK)) encode
      x; OUT.npz holds both codes.  Prints one JSON line: the folder saeatlas resolved, sae-lens's architecture.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def encode(release: str, sae_id: str, name: str, hook: str, x_path: str, out_path: str) -> dict:
    from sae_lens import SAE

    from saeatlas.sae import load_sae
    from saeatlas.sae.formats import sae_folder

    x = torch.from_numpy(np.load(x_path))
    theirs = SAE.from_pretrained(release, sae_id, device="cpu")
    folder = sae_folder(name, hook)
    ours = load_sae(folder)
    with torch.no_grad():
        np.savez(out_path, theirs=theirs.encode(x).numpy(), ours=ours.encode(x).numpy())
    return {"folder": str(folder), "architecture": theirs.cfg.architecture()}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command != "encode":
        raise SystemExit(f"unknown command {command!r}: use encode")
    print(json.dumps(encode(*args)))
