"""The other tools' side of bench/train.py, run with the side venv's python (never imports saeatlas).

    python bench/train_side.py sparsify|sparsify-bf16|saelens X.npy BATCH STEPS WIDTH K

X.npy holds the activations [n_tokens, d_in] float32; step i trains on rows
[i * BATCH, (i + 1) * BATCH).  Step 0 is a warm-up.  Each step is timed from
the forward pass to the end of the optimizer step, as each tool's own trainer
runs it (data already in memory).  Prints one JSON line: per-step seconds and
the FVU of the last step.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    return float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def sparsify_steps(
    x: torch.Tensor, batch: int, steps: int, width: int, k: int, bf16: bool = False
) -> tuple[list[float], float]:
    """eai-sparsify's SparseCoder, step as sparsify.Trainer runs it with optimizer='adam', loss 'fvu';
    with `bf16` the forward pass and loss run under bfloat16 autocast (float32 master weights), as
    sparsify.Trainer does on devices with bf16."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=width, k=k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (width / 2**14) ** 0.5)
    with torch.no_grad():
        sae.b_dec.copy_(x[:batch].mean(0))  # the Trainer's init from the first batch
    times, last = [], 0.0
    for step in range(steps):
        xb = x[step * batch : (step + 1) * batch]
        t0 = time.perf_counter()
        sae.set_decoder_norm_to_unit_norm()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = sae(xb, dead_mask=torch.zeros(width, dtype=torch.bool))
            loss = out.fvu + out.auxk_loss / 32 + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        last = float(out.fvu)
    return times, last


def saelens_steps(x: torch.Tensor, batch: int, steps: int, width: int, k: int) -> tuple[list[float], float]:
    """sae_lens' TopKTrainingSAE, step as sae_lens.SAETrainer._train_step runs it (Adam, grad clip 1)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=width, k=k, dtype="float32", device="cpu")
    sae = TopKTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (width / 2**14) ** 0.5, betas=(0.9, 0.999))
    dead = torch.zeros(width, dtype=torch.bool)
    times, last = [], 0.0
    for step in range(steps):
        xb = x[step * batch : (step + 1) * batch]
        t0 = time.perf_counter()
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=xb, coefficients={}, dead_neuron_mask=dead, n_training_steps=step, is_logging_step=False
            )
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        last = fvu(xb, out.sae_out.detach())
    return times, last


def main() -> None:
    tool, path, batch, steps, width, k = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    x = torch.from_numpy(np.load(path))
    run = {
        "sparsify": sparsify_steps,
        "sparsify-bf16": lambda *a: sparsify_steps(*a, bf16=True),
        "saelens": saelens_steps,
    }[tool]
    times, last_fvu = run(x, batch, steps, width, k)
    print(
        json.dumps(
            {
                "tool": tool,
                "times": times,
                "fvu": last_fvu,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
