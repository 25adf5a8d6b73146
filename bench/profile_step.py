"""Profile: where the time of one saeatlas TopK training step goes, at bench/train.py's size.

One step of `saeatlas.sae.trainer.train_step` on the sparse path (d_in 640,
width 16384, k 32, batch 4096 tokens, bf16 encoder matmul where the CPU has it)
is replayed part by part, each part timed with `time.perf_counter` (the CPU
runs every op synchronously, so a timer around a part times that part):

* centre + casts: x - b_dec, and the bfloat16 copies of the centred batch and of W_enc;
* encoder GEMM: the one dense matmul, [4096, 640] x [640, 16384] in bf16;
* top-k: the native per-row top-k of product + b_enc;
* forward rest: select, the sparse decode (embedding_bag), the MSE, the fired-latent bookkeeping;
* AuxK: the dead latents' top-k and decode (only with --dead > 0: the bench has no dead latents);
* backward, split by wrapping the native kernels it calls: latent_order, decode_backward (the
  decoder's), scatter_by_latent (the encoder's), and the rest of autograd (W_enc @ colsum, ...);
* remove_parallel_gradient, clip_grad_norm_, Adam (fused), decoder renorm, after-step bookkeeping.

The replay must be the step, so before timing it checks that a replayed step
leaves weights, Adam state and metrics bit-identical to `train_step` on a copy.
Each part's median over `--steps` steps is printed with its share of the step,
with the bf16 GEMM peak (torch.mm into a preallocated output, as bench/train.py
measures it) and the step's executed GFLOP/s against it.

    PYTHONPATH=src .venv/bin/python bench/profile_step.py [--steps 12] [--dead 0] [--store runs/study/stores/gemma]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import saeatlas  # noqa: F401 - before torch, as the CLI loads it: torch's threads then wait passively (saeatlas.threads)

# isort: split
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import BATCH, D_IN, ROOT, WIDTH, K, activations, gemm_peak

from saeatlas import native
from saeatlas.memory import reuse_freed_memory
from saeatlas.sae import sparse
from saeatlas.sae.config import SAEConfig, TrainConfig
from saeatlas.sae.data_source import TensorSource
from saeatlas.sae.trainer import (
    StepResult,
    _after_step,
    aux_k_loss,
    dead_topk,
    default_lr,
    init_sae,
    lr_at,
    make_optimizer,
    matmul_dtype,
    train_step,
)

KERNELS = ("latent_order", "decode_backward", "scatter_by_latent", "code_dots")
"""The native kernels the backward calls (code_dots: the decoder's backward before decode_backward fused it)."""


class Timer:
    """Wall time of consecutive parts of one step: `lap(name)` closes the part that ran since the last lap."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] += now - self.last
        self.last = now


def timed_kernels(timer: Timer) -> dict:
    """Wrap the native kernels the backward calls so their time is booked apart; returns the originals."""
    originals = {name: getattr(native, name) for name in KERNELS if hasattr(native, name)}

    def wrap(name, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            timer.parts[f"backward: {name}"] += time.perf_counter() - t0
            return out

        return run

    for name, fn in originals.items():
        setattr(native, name, wrap(name, fn))
    return originals


def replay_step(sae, optimizer, x, train: TrainConfig, state, base_lr: float, timer: Timer) -> dict:
    """`train_step` + `sparse_losses` for arch topk, written out part by part with a lap after each."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.step, train, base_lr)
    dead = state.tokens_since_fired >= train.dead_after_tokens
    dtype = matmul_dtype(train, sae.cfg.arch)
    centred = x - sae.b_dec.detach()
    with torch.no_grad():
        a, b = centred.to(dtype), sae.W_enc.to(dtype)
    timer.lap("centre + bf16 casts")
    with torch.no_grad():
        product = torch.mm(a, b)
    timer.lap("encoder GEMM")
    chosen = sparse.choose(sae.cfg.arch, product, sae.b_enc, sae.cfg.k)
    timer.lap("top-k")
    codes = sparse.select(sae, centred, *chosen)
    recon = sparse.decode_sparse(codes, sae.W_dec, sae.b_dec)
    mse = ((recon - x) ** 2).sum(-1).mean()
    loss = mse
    timer.lap("forward rest (select, decode, MSE)")
    n_dead = int(dead.sum())
    if train.aux_k_coefficient > 0 and n_dead:
        dead_ids = dead.nonzero().squeeze(1)
        values, pick = dead_topk(product[:, dead_ids].float() + sae.b_enc.detach()[dead_ids], sae.cfg.d_in)
        offsets = torch.arange(0, values.numel(), values.shape[1])
        aux = sparse.select(sae, centred, dead_ids[pick].reshape(-1), values.reshape(-1), offsets)
        loss = loss + train.aux_k_coefficient * aux_k_loss(x, recon, sparse.decode_sparse(aux, sae.W_dec))
        timer.lap("AuxK forward")
    with torch.no_grad():
        positive = codes.values > 0
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
        fired[codes.indices[positive]] = True
        kept = codes.values[positive]
    result = StepResult(
        loss, mse, fired, float(positive.sum()) / x.shape[0], float(kept.min()) if kept.numel() else None, None
    )
    timer.lap("forward rest (select, decode, MSE)")
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    timer.lap("backward: autograd rest")
    sae.remove_parallel_gradient()
    timer.lap("remove_parallel_gradient")
    torch.nn.utils.clip_grad_norm_(sae.parameters(), train.grad_clip)
    timer.lap("clip_grad_norm_")
    optimizer.step()
    timer.lap("Adam step")
    sae.normalize_decoder()
    timer.lap("decoder renorm")
    _after_step(sae, state, x.shape[0], result)
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
    metrics = {
        "step": state.step,
        "loss": float(result.loss.detach()),
        "mse": float(result.mse.detach()),
        "fvu": float(result.mse.detach() / total_var.clamp_min(1e-12)),
        "l0": result.l0,
        "dead": float(dead.float().mean()),
    }
    timer.lap("bookkeeping (fired, metrics)")
    return metrics


def setup(x: torch.Tensor, dead: float):
    cfg = SAEConfig(arch="topk", d_in=D_IN, d_sae=WIDTH, k=K)
    train = TrainConfig(sae=cfg, steps=1000, batch_size=BATCH, warmup_steps=1)
    sae, state = init_sae(cfg, TensorSource(x[:8192]), train)
    # Latents [0, dead * width) count as dead, so AuxK runs; they stay dead unless they fire.
    state.tokens_since_fired[: int(dead * WIDTH)] = train.dead_after_tokens
    optimizer = make_optimizer(sae, default_lr(cfg))
    sae.train()
    return sae, state, optimizer, train


def check_replay(x: torch.Tensor, dead: float) -> None:
    """The replay is the step: two steps of each from the same start leave identical weights, Adam state
    and metrics."""
    runs = []
    for replay in (False, True):
        torch.manual_seed(0)
        sae, state, optimizer, train = setup(x, dead)
        lr = default_lr(sae.cfg)
        metrics = []
        for step in range(2):
            xb = x[step * BATCH : (step + 1) * BATCH] * state.scale
            run = replay_step(sae, optimizer, xb, train, state, lr, Timer()) if replay else None
            metrics.append(run or train_step(sae, optimizer, xb, train, state, lr))
            state.step += 1
        runs.append((sae, optimizer, state, metrics))
    (sae_a, opt_a, state_a, met_a), (sae_b, opt_b, state_b, met_b) = runs
    same = met_a == met_b and torch.equal(state_a.tokens_since_fired, state_b.tokens_since_fired)
    same &= all(torch.equal(p, q) for p, q in zip(sae_a.parameters(), sae_b.parameters()))
    for p, q in zip(sae_a.parameters(), sae_b.parameters()):
        sa, sb = opt_a.state.get(p, {}), opt_b.state.get(q, {})
        same &= sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)
    if not same:
        sys.exit("profile_step: the replayed step differs from train_step: update replay_step to match the trainer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="activation store as in bench/train.py (default: runs/study/stores/gemma)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--dead", type=float, default=0.0, help="fraction of latents dead at the start (AuxK)")
    args = parser.parse_args()
    reuse_freed_memory()  # as train_sae does
    store = args.store or (
        str(ROOT / "runs/study/stores/gemma") if (ROOT / "runs/study/stores/gemma/manifest.json").is_file() else None
    )
    n_steps = args.steps + 2
    with tempfile.TemporaryDirectory(prefix="saeatlas-profile-") as tmp:
        x_np, source = activations(store, n_steps * BATCH, Path(tmp))
    x = torch.from_numpy(x_np)
    check_replay(x, args.dead)
    peak = gemm_peak(torch.bfloat16)

    sae, state, optimizer, train = setup(x, args.dead)
    lr = default_lr(sae.cfg)
    timer = Timer()
    originals = timed_kernels(timer)
    per_step: list[dict[str, float]] = []
    totals: list[float] = []
    try:
        for step in range(n_steps):
            xb = x[step * BATCH : (step + 1) * BATCH] * state.scale
            timer.parts.clear()
            t0 = timer.last = time.perf_counter()
            replay_step(sae, optimizer, xb, train, state, lr, timer)
            total = time.perf_counter() - t0
            state.step += 1
            if step >= 2:
                parts = dict(timer.parts)
                kernels = sum(v for name, v in parts.items() if name.startswith("backward: ") and "rest" not in name)
                parts["backward: autograd rest"] -= kernels  # the kernels ran inside the backward's lap
                per_step.append(parts)
                totals.append(total)
    finally:
        for name, fn in originals.items():
            setattr(native, name, fn)

    names = list(dict.fromkeys(name for parts in per_step for name in parts))
    median = {name: statistics.median(parts.get(name, 0.0) for parts in per_step) for name in names}
    step_time = statistics.median(totals)
    executed = 2 * BATCH * D_IN * WIDTH + 8 * BATCH * K * D_IN
    print(f"one TopK step, d_in {D_IN}, width {WIDTH}, k {K}, batch {BATCH}, data {source}, dead {args.dead:.0%}")
    print(f"{torch.get_num_threads()} threads, {args.steps} timed steps, medians (parts' medians need not add up)")
    print(f"{'part':40s} {'ms':>8s} {'share':>7s}")
    for name in sorted(names, key=lambda n: -median[n]):
        print(f"{name:40s} {median[name] * 1e3:8.1f} {median[name] / step_time:7.1%}")
    gemm = median["encoder GEMM"]
    print(f"{'step (median of totals)':40s} {step_time * 1e3:8.1f} {1:7.0%}")
    print(
        f"\nbf16 GEMM peak {peak:.0f} GFLOP/s; encoder GEMM in the step {2 * BATCH * D_IN * WIDTH / gemm / 1e9:.0f} "
        f"GFLOP/s; step executed {executed / step_time / 1e9:.0f} GFLOP/s = {executed / step_time / 1e9 / peak:.0%} "
        f"of peak; {BATCH / step_time:.0f} tok/s"
    )
    # The GEMM's work is fixed, so the step in units of its own GEMM compares runs on a machine whose speed drifts.
    print(f"step / encoder GEMM: {step_time / gemm:.3f}")
    biggest = max((n for n in names if n != "encoder GEMM"), key=lambda n: median[n])
    print(f"biggest non-GEMM part: {biggest} ({median[biggest] / step_time:.0%} of the step)")


if __name__ == "__main__":
    main()
