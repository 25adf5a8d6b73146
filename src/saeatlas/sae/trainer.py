"""Train a `SparseAutoencoder`: init, one step, GBA bias updates, checkpoints, the loop.

Inputs are scaled so their mean norm is sqrt(d_in) (folded into the weights at
the end); b_dec starts at the geometric median; Adam with warm-up and a linear
decay at the end; gradient clipping; decoder rows kept at unit norm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from .. import distributed
from ..devices import has_float64
from ..errors import SaeAtlasError
from ..fileio import write_bytes_atomic
from ..memory import reuse_freed_memory
from .activations import step as step_fn
from .config import SAEConfig, TrainConfig
from .model import SparseAutoencoder
from .sparse import choose, decode_sparse, encoder_product, select

SPARSE_ARCHS = ("topk", "batchtopk")
"""Architectures trained on sparse codes (see `sparse.py`)."""


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm on [n, d] float rows -> [d]."""
    median = x.mean(0)
    for _ in range(iters):
        weights = 1.0 / (x - median).norm(dim=1).clamp_min(1e-8)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() < tol * (median.norm() + 1e-8):
            return new
        median = new
    return median


MAX_ACTIVATION = 1e15
"""Larger values square past float32's range in the reconstruction error (3.4e38): only a broken source holds them."""


def check_activations(sample: torch.Tensor, source: str) -> None:
    """SaeAtlasError when a sample [n, d_in] of the training data cannot train an SAE: NaN / inf, values past
    MAX_ACTIVATION, or nothing but zeros (every latent would stay dead and FVU read 0)."""
    if not bool(torch.isfinite(sample).all()):
        raise SaeAtlasError(f"the activations of {source} hold NaN or inf: check the model / store they came from")
    peak = float(sample.abs().max()) if sample.numel() else 0.0
    if peak > MAX_ACTIVATION:
        raise SaeAtlasError(
            f"the activations of {source} reach {peak:.3g} (over {MAX_ACTIVATION:.0e}, past what float32 "
            "can square): check the data, or scale it down"
        )
    if peak == 0.0:
        raise SaeAtlasError(
            f"the activations of {source} are all zeros: an SAE can neither learn from nor be scored on them"
        )


def input_scale(sample: torch.Tensor) -> float:
    """Factor that makes the mean row norm sqrt(d_in)."""
    return math.sqrt(sample.shape[1]) / float(sample.double().norm(dim=1).mean().clamp_min(1e-8))


def check_diverged(sae: SparseAutoencoder, step: int) -> None:
    """SaeAtlasError when training diverged (a NaN or inf weight), before anything is saved."""
    if not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
        raise SaeAtlasError(f"training diverged at step {step} (NaN or inf weights): lower lr, or check the data")


def lr_at(step: int, train: TrainConfig, base_lr: float) -> float:
    """Linear warm-up, constant, then linear decay over the last `decay_fraction` of steps."""
    if step < train.warmup_steps:
        return base_lr * (step + 1) / train.warmup_steps
    decay_start = int(train.steps * (1 - train.decay_fraction))
    if step >= decay_start and train.decay_fraction > 0:
        return base_lr * max(0.0, (train.steps - step) / max(1, train.steps - decay_start))
    return base_lr


def default_lr(cfg: SAEConfig) -> float:
    return 2e-4 / math.sqrt(cfg.d_sae / 2**14)


@dataclass
class TrainState:
    """Everything that changes during training besides the SAE and optimizer."""

    step: int = 0
    scale: float = 1.0
    tokens_since_fired: torch.Tensor | None = None
    gba_fired: torch.Tensor | None = None
    gba_peak: torch.Tensor | None = None
    batchtopk_threshold: float | None = None
    history: list[dict] = field(default_factory=list)
    source: dict | None = None
    """The source's position (`source.state()`) for sources whose resume needs more than the step."""


# ---------------------------------------------------------------- ranks
# Under torchrun every rank holds an equal slice of the global batch, so the mean of the ranks' means over
# their slices is the global mean: a loss that is a mean over the batch is averaged through its gradients
# (`average_gradients`), and batch statistics that enter a loss or the state are averaged or summed here.
def check_world(batch_size: int) -> None:
    """SaeAtlasError unless the global batch splits evenly over the ranks."""
    world = distributed.world_size()
    if batch_size % world:
        raise SaeAtlasError(f"batch_size {batch_size} does not split over {world} ranks: use a multiple of {world}")


def rank_rows(batch_size: int) -> slice:
    """This rank's rows [r B / W, (r + 1) B / W) of a global batch of B rows (all of them in one process)."""
    size = batch_size // distributed.world_size()
    return slice(distributed.rank() * size, (distributed.rank() + 1) * size)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks, in place."""
    if distributed.active():
        dist.all_reduce(t)
    return t


def all_max(t: torch.Tensor) -> torch.Tensor:
    """`t`'s element-wise maximum over the ranks, in place."""
    if distributed.active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a per-rank mean `t` (over equal slices: the global batch's mean)."""
    return all_sum(t.clone()) / distributed.world_size() if distributed.active() else t


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """[world * m] every rank's [m] `t`, rank after rank."""
    parts = [torch.empty_like(t) for _ in range(distributed.world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def average_gradients(sae: SparseAutoencoder) -> None:
    """Average the ranks' gradients: each is the gradient of its slice's mean losses, so their average is the
    gradient of the global batch's (a parameter without a gradient on a rank counts zero there)."""
    if not distributed.active():
        return
    world = distributed.world_size()
    for p in sae.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)


# ---------------------------------------------------------------- losses
def aux_k_loss(x: torch.Tensor, recon: torch.Tensor, aux_recon: torch.Tensor) -> torch.Tensor:
    """AuxK (Gao et al. 2024, A.2): dead latents' reconstruction `aux_recon` [n, d_in] of the residual error.
    Its normaliser, the error's variance, is the global batch's under torchrun."""
    error = (x - recon).detach()
    variance = global_mean((error - global_mean(error.mean(0))).pow(2).sum(-1).mean())
    return ((aux_recon - error) ** 2).sum(-1).mean() / variance.clamp_min(1e-8)


def dead_topk(dead_pre: torch.Tensor, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AuxK's picks: the k_aux = d_in / 2 largest pre-activations [n, k_aux] of the dead latents
    (dead_pre [n, n_dead]), and their columns in dead_pre."""
    return dead_pre.topk(min(d_in // 2, dead_pre.shape[1]), dim=-1, sorted=False)


def sparsity_loss(sae: SparseAutoencoder, train: TrainConfig, state: TrainState, pre, codes) -> torch.Tensor:
    cfg = sae.cfg
    warm = train.sparsity_warmup_steps if train.sparsity_warmup_steps is not None else max(1, train.steps // 20)
    ramp = min(1.0, (state.step + 1) / warm)
    if cfg.arch == "relu":
        return ramp * cfg.l1_coefficient * (codes * sae.W_dec.norm(dim=1)).sum(-1).mean()
    if cfg.arch == "jumprelu":
        l0 = step_fn(pre, sae.threshold, cfg.jump_bandwidth).sum(-1).mean()
        target = cfg.target_l0 if cfg.target_l0 is not None else cfg.k
        if distributed.active():
            # (L / t - 1)^2 of the global mean L is not a mean over rows: its gradient 2 (L / t - 1) / t dL, with
            # dL the average of the ranks' dL_r, comes from each rank's L_r weighted by the global L.
            g = global_mean(l0.detach())
            penalty = (g / target - 1) ** 2 + 2 * (g / target - 1) / target * (l0 - l0.detach())
            return ramp * cfg.l0_coefficient * penalty
        return ramp * cfg.l0_coefficient * (l0 / target - 1) ** 2
    return pre.new_zeros(()) if pre is not None else codes.new_zeros(())


# ---------------------------------------------------------------- one step
class StepResult(NamedTuple):
    """What one forward pass hands to the optimizer step and the bookkeeping."""

    loss: torch.Tensor
    mse: torch.Tensor
    fired: torch.Tensor
    """[d_sae] bool: latents active on some token of the batch."""
    l0: float
    smallest_kept: float | None
    """Smallest positive code (batchtopk's inference threshold is an EMA of it)."""
    pre: torch.Tensor | None
    """[n, d_sae] pre-activations (gba's bias updates need them)."""


def matmul_dtype(train: TrainConfig, arch: str, device: torch.device | None = None) -> torch.dtype:
    """The matmul dtype: `auto` is bfloat16 for the sparse path where the device (a CPU with AVX-512 BF16 / AMX,
    a CUDA GPU from Ampere on) computes it natively (default device: the CPU)."""
    if train.compute_dtype == "auto":
        device = device or torch.device("cpu")
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if native and arch in SPARSE_ARCHS else torch.float32
    return getattr(torch, train.compute_dtype)


def sparse_losses(sae, x, train: TrainConfig, dead: torch.Tensor) -> StepResult:
    """TopK / BatchTopK forward on sparse codes: one dense matmul, the rest on the k kept latents."""
    centred = x - sae.b_dec.detach()
    product = encoder_product(sae, centred, matmul_dtype(train, sae.cfg.arch, x.device))  # [n, d_sae], no b_enc
    world, rank = distributed.world_size(), distributed.rank()
    picked = choose(sae.cfg.arch, product, sae.b_enc, sae.cfg.k, world, rank, all_gather)
    codes = select(sae, centred, *picked)
    recon = decode_sparse(codes, sae.W_dec, sae.b_dec)
    mse = ((recon - x) ** 2).sum(-1).mean()
    loss = mse
    n_dead = int(dead.sum())
    if train.aux_k_coefficient > 0 and n_dead:
        dead_ids = dead.nonzero().squeeze(1)
        values, pick = dead_topk(product[:, dead_ids].float() + sae.b_enc.detach()[dead_ids], sae.cfg.d_in)
        offsets = torch.arange(0, values.numel(), values.shape[1], device=x.device)
        aux = select(sae, centred, dead_ids[pick].reshape(-1), values.reshape(-1), offsets)
        loss = loss + train.aux_k_coefficient * aux_k_loss(x, recon, decode_sparse(aux, sae.W_dec))
    with torch.no_grad():
        positive = codes.values > 0
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[codes.indices[positive]] = True
        kept = codes.values[positive]
    return StepResult(
        loss, mse, fired, float(positive.sum()) / x.shape[0], float(kept.min()) if kept.numel() else None, None
    )


def dense_losses(sae, x, train: TrainConfig, state: TrainState, dead: torch.Tensor) -> StepResult:
    """Forward with dense codes (relu, jumprelu, gba, mp), autocast to bfloat16 when asked."""
    dtype = matmul_dtype(train, sae.cfg.arch, x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = sae(x)
    recon, codes, pre = out.recon.float(), out.codes.float(), None if out.pre is None else out.pre.float()
    mse = ((recon - x) ** 2).sum(-1).mean()
    loss = mse + sparsity_loss(sae, train, state, pre, codes)
    n_dead = int(dead.sum())
    if sae.cfg.arch == "jumprelu" and train.aux_k_coefficient > 0 and n_dead:
        values, pick = dead_topk(pre[:, dead], sae.cfg.d_in)
        aux = torch.zeros(len(x), n_dead, device=x.device).scatter_(-1, pick, values.relu()) @ sae.W_dec[dead]
        loss = loss + train.aux_k_coefficient * aux_k_loss(x, recon, aux)
    with torch.no_grad():
        active = codes > 0
        kept = codes[active]
        return StepResult(
            loss,
            mse,
            active.any(0),
            float(active.sum()) / x.shape[0],
            float(kept.min()) if kept.numel() else None,
            None if pre is None else pre.detach(),
        )


def train_step(sae, optimizer, x, train: TrainConfig, state: TrainState, base_lr: float) -> dict:
    """One optimizer step on a [batch, d_in] batch (already scaled; under torchrun this rank's slice of the
    global batch); returns its metrics, over the global batch."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.step, train, base_lr)
    dead = state.tokens_since_fired >= train.dead_after_tokens
    if sae.cfg.arch in SPARSE_ARCHS:
        result = sparse_losses(sae, x, train, dead)
    else:
        result = dense_losses(sae, x, train, state, dead)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    average_gradients(sae)
    sae.remove_parallel_gradient()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), train.grad_clip)
    optimizer.step()
    sae.normalize_decoder()
    _after_step(sae, state, x.shape[0] * distributed.world_size(), result)
    return {"step": state.step, **step_metrics(x, result), "dead": float(dead.float().mean())}


@torch.no_grad()
def step_metrics(x: torch.Tensor, result: StepResult) -> dict:
    """Loss, MSE, FVU and L0 of a step, over the global batch under torchrun (x [n, d_in] this rank's slice)."""
    if not distributed.active():
        total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
        loss, mse, fvu = result.loss.detach(), result.mse.detach(), result.mse.detach() / total_var.clamp_min(1e-12)
        return {"loss": float(loss), "mse": float(mse), "fvu": float(fvu), "l0": result.l0}
    real = torch.float64 if has_float64(x.device) else torch.float32
    head = torch.stack([result.loss.detach(), result.mse.detach(), x.new_tensor(result.l0), x.pow(2).sum(-1).mean()])
    means = global_mean(torch.cat([head, x.mean(0)]).to(real))  # one all_reduce: [4 + d_in]
    total_var = means[3] - means[4:].pow(2).sum()  # E|x|^2 - |E x|^2
    fvu = means[1] / total_var.clamp_min(1e-12)
    return {"loss": float(means[0]), "mse": float(means[1]), "fvu": float(fvu), "l0": float(means[2])}


@torch.no_grad()
def _after_step(sae, state: TrainState, n_tokens: int, result: StepResult) -> None:
    """Dead-latent counters, BatchTopK's threshold EMA and GBA's statistics, from the global batch of
    `n_tokens` rows (every rank ends the step with the same state)."""
    fired = all_sum(result.fired.int()) > 0 if distributed.active() else result.fired
    state.tokens_since_fired += n_tokens
    state.tokens_since_fired[fired] = 0
    smallest = result.smallest_kept
    if sae.cfg.arch == "batchtopk" and distributed.active():
        least = torch.tensor(-math.inf if smallest is None else -smallest, device=result.fired.device)
        smallest = None if math.isinf(float(all_max(least))) else -float(least)
    if sae.cfg.arch == "batchtopk" and smallest is not None:
        prev = state.batchtopk_threshold
        state.batchtopk_threshold = smallest if prev is None else 0.99 * prev + 0.01 * smallest
        sae.inference_threshold = state.batchtopk_threshold
    if sae.cfg.arch == "gba":
        state.gba_fired += all_sum((result.pre > sae.threshold).sum(0))
        state.gba_peak = torch.maximum(state.gba_peak, all_max(result.pre.max(0).values))
        if (state.step + 1) % sae.cfg.gba_every == 0:
            gba_update(sae, state, n_tokens=sae.cfg.gba_every * n_tokens)


def gba_targets(cfg: SAEConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[d_sae] target firing frequency of each latent: groups spaced geometrically."""
    groups = torch.arange(cfg.d_sae) * cfg.gba_groups // cfg.d_sae
    if cfg.gba_groups == 1:
        return torch.full((cfg.d_sae,), cfg.gba_freq_high)
    ratio = (cfg.gba_freq_low / cfg.gba_freq_high) ** (1 / (cfg.gba_groups - 1))
    return cfg.gba_freq_high * ratio ** groups.to(dtype)


@torch.no_grad()
def gba_update(sae: SparseAutoencoder, state: TrainState, n_tokens: int) -> None:
    """Group bias adaptation ("Taming Polysemanticity in LLMs: Provable Feature Recovery via Sparse
    Autoencoders", 2025): move each latent's gate toward its group's target frequency.

    The paper's bias b (floor -1 for unit-norm inputs, cap 0) is kept as the
    JumpReLU threshold theta = -b: our inputs have mean norm sqrt(d_in), so
    theta lies in [0, sqrt(d_in)].  Too frequent: theta += gamma * peak
    pre-activation.  Never fired: theta -= gamma * mean positive peak of its group.
    """
    cfg, device = sae.cfg, sae.threshold.device
    real = torch.float64 if has_float64(device) else torch.float32
    freq = state.gba_fired.to(real) / n_tokens
    targets = gba_targets(cfg, real).to(device)
    peak = state.gba_peak.clamp_min(0).to(real)
    groups = torch.arange(cfg.d_sae, device=device) * cfg.gba_groups // cfg.d_sae
    positive = (peak > 0).to(real)
    group_mean = torch.zeros(cfg.gba_groups, dtype=real, device=device).index_add_(0, groups, peak)
    group_mean /= torch.zeros(cfg.gba_groups, dtype=real, device=device).index_add_(0, groups, positive).clamp_min(1)
    theta = sae.threshold.to(real)
    theta = torch.where(freq > targets, (theta + cfg.gba_gamma * peak).clamp_max(math.sqrt(cfg.d_in)), theta)
    theta = torch.where(freq == 0, (theta - cfg.gba_gamma * group_mean[groups]).clamp_min(0.0), theta)
    sae.threshold.copy_(theta.float())
    state.gba_fired.zero_()
    state.gba_peak.fill_(-torch.inf)


# ---------------------------------------------------------------- set-up and loop
def init_sae(cfg: SAEConfig, source, train: TrainConfig) -> tuple[SparseAutoencoder, TrainState]:
    """A fresh SAE (seeded), the input scale and b_dec at the geometric median of a sample."""
    generator = torch.Generator().manual_seed(train.seed)
    sae = SparseAutoencoder(cfg, generator)
    sample = source.sample(min(source.n_tokens, 8192), seed=train.seed)
    check_activations(sample, getattr(source, "name", "the data"))
    scale = input_scale(sample)
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(sample * scale))
    state = TrainState(scale=scale, tokens_since_fired=torch.zeros(cfg.d_sae, dtype=torch.long))
    if cfg.arch == "gba":
        state.gba_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        state.gba_peak = torch.full((cfg.d_sae,), -torch.inf)
    return sae, state


def make_optimizer(sae: SparseAutoencoder, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999), fused=True)


def to_device(obj, device: torch.device | str):
    """`obj` (tensors in dicts, lists, tuples) with every tensor on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def save_checkpoint(path: Path, sae, optimizer, state: TrainState) -> None:
    """Atomically write everything needed to resume bit-exactly, from CPU copies: a checkpoint made on any
    device resumes on any other."""
    import io

    buffer = io.BytesIO()
    checkpoint = {
        "sae": sae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": vars(state).copy(),
        "inference_threshold": sae.inference_threshold,
    }
    torch.save(to_device(checkpoint, "cpu"), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, sae, optimizer) -> TrainState:
    from .formats import torch_load_safely

    fix = f"delete {path.parent} to train from the start"
    data = torch_load_safely(path, fix)
    if not isinstance(data, dict) or not {"sae", "optimizer", "state", "inference_threshold"} <= set(data):
        raise SaeAtlasError(f"{path} is not a saeatlas training checkpoint: {fix}")
    sae.load_state_dict(data["sae"])
    optimizer.load_state_dict(data["optimizer"])  # moves Adam's moments to the parameters' device
    sae.inference_threshold = data["inference_threshold"]
    return TrainState(**to_device(data["state"], sae.b_dec.device))


def train_sae(
    train: TrainConfig,
    source,
    checkpoint: Path | None = None,
    on_step: Callable[[dict], None] | None = None,
    device: torch.device | None = None,
) -> tuple[SparseAutoencoder, TrainState]:
    """Train the SAE `train.sae` on `source` (its `d_in` set from the data when None) on `device` (default:
    `train.device` resolved); resumes from `checkpoint` if it exists.  Returns the SAE, on the CPU, with the
    input scale folded in, and the final training state.

    Under torchrun (`distributed.init` called) each rank trains on its slice of every global batch
    (`rank_rows`) and the ranks keep equal weights and state; rank 0 writes the checkpoints.  Under
    `distributed.alone()` this process trains alone."""
    from ..devices import resolve_device

    reuse_freed_memory()
    device = resolve_device(train.device) if device is None else device
    check_world(train.batch_size)
    cfg = sae_config_for(train.sae, source.d_in)
    torch.manual_seed(train.seed)
    sae, state = init_sae(cfg, source, train)  # on the CPU: the same seeded weights on every device
    sae.to(device)
    state = TrainState(**to_device(vars(state), device))
    base_lr = train.lr if train.lr is not None else default_lr(cfg)
    optimizer = make_optimizer(sae, base_lr)
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint, sae, optimizer)
        if state.source is not None:
            source.restore(state.source)
    sae.train()
    batches = source.batches(train.batch_size, seed=train.seed, start_step=state.step, part=rank_rows(train.batch_size))
    while state.step < train.steps:
        x = next(batches).to(device, non_blocking=True) * state.scale
        metrics = train_step(sae, optimizer, x, train, state, base_lr)
        state.step += 1
        if on_step:
            on_step(metrics)
        if checkpoint is not None and train.checkpoint_every and state.step % train.checkpoint_every == 0:
            check_diverged(sae, state.step)
            state.source = source.state() if hasattr(source, "state") else None
            if distributed.is_main():
                save_checkpoint(checkpoint, sae, optimizer, state)
            distributed.barrier()
    check_diverged(sae, state.step)
    sae.eval()
    sae.to("cpu")
    sae.fold_scale(state.scale)
    return sae, state


def sae_config_for(cfg: SAEConfig, d_in: int) -> SAEConfig:
    """`cfg` with `d_in` set to the data's width; SaeAtlasError if it names another width."""
    if cfg.d_in is not None and cfg.d_in != d_in:
        raise SaeAtlasError(f"the SAE's d_in {cfg.d_in} does not match the activations' width {d_in}")
    return dataclasses.replace(cfg, d_in=d_in)
