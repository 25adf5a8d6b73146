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


# ---------------------------------------------------------------- losses
def aux_k_loss(x: torch.Tensor, recon: torch.Tensor, aux_recon: torch.Tensor) -> torch.Tensor:
    """AuxK (Gao et al. 2024, A.2): dead latents' reconstruction `aux_recon` [n, d_in] of the residual error."""
    error = (x - recon).detach()
    return ((aux_recon - error) ** 2).sum(-1).mean() / (error - error.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)


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


def matmul_dtype(train: TrainConfig, arch: str) -> torch.dtype:
    """The matmul dtype: `auto` is bfloat16 for the sparse path where the CPU computes it natively."""
    if train.compute_dtype == "auto":
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if native and arch in SPARSE_ARCHS else torch.float32
    return getattr(torch, train.compute_dtype)


def sparse_losses(sae, x, train: TrainConfig, dead: torch.Tensor) -> StepResult:
    """TopK / BatchTopK forward on sparse codes: one dense matmul, the rest on the k kept latents."""
    centred = x - sae.b_dec.detach()
    product = encoder_product(sae, centred, matmul_dtype(train, sae.cfg.arch))  # [n, d_sae], no b_enc
    codes = select(sae, centred, *choose(sae.cfg.arch, product, sae.b_enc, sae.cfg.k))
    recon = decode_sparse(codes, sae.W_dec, sae.b_dec)
    mse = ((recon - x) ** 2).sum(-1).mean()
    loss = mse
    n_dead = int(dead.sum())
    if train.aux_k_coefficient > 0 and n_dead:
        dead_ids = dead.nonzero().squeeze(1)
        values, pick = dead_topk(product[:, dead_ids].float() + sae.b_enc.detach()[dead_ids], sae.cfg.d_in)
        offsets = torch.arange(0, values.numel(), values.shape[1])
        aux = select(sae, centred, dead_ids[pick].reshape(-1), values.reshape(-1), offsets)
        loss = loss + train.aux_k_coefficient * aux_k_loss(x, recon, decode_sparse(aux, sae.W_dec))
    with torch.no_grad():
        positive = codes.values > 0
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
        fired[codes.indices[positive]] = True
        kept = codes.values[positive]
    return StepResult(
        loss, mse, fired, float(positive.sum()) / x.shape[0], float(kept.min()) if kept.numel() else None, None
    )


def dense_losses(sae, x, train: TrainConfig, state: TrainState, dead: torch.Tensor) -> StepResult:
    """Forward with dense codes (relu, jumprelu, gba, mp), autocast to bfloat16 when asked."""
    dtype = matmul_dtype(train, sae.cfg.arch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = sae(x)
    recon, codes, pre = out.recon.float(), out.codes.float(), None if out.pre is None else out.pre.float()
    mse = ((recon - x) ** 2).sum(-1).mean()
    loss = mse + sparsity_loss(sae, train, state, pre, codes)
    n_dead = int(dead.sum())
    if sae.cfg.arch == "jumprelu" and train.aux_k_coefficient > 0 and n_dead:
        values, pick = dead_topk(pre[:, dead], sae.cfg.d_in)
        aux = torch.zeros(len(x), n_dead).scatter_(-1, pick, values.relu()) @ sae.W_dec[dead]
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
    """One optimizer step on a [batch, d_in] batch (already scaled); returns its metrics."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.step, train, base_lr)
    dead = state.tokens_since_fired >= train.dead_after_tokens
    if sae.cfg.arch in SPARSE_ARCHS:
        result = sparse_losses(sae, x, train, dead)
    else:
        result = dense_losses(sae, x, train, state, dead)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    sae.remove_parallel_gradient()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), train.grad_clip)
    optimizer.step()
    sae.normalize_decoder()
    _after_step(sae, state, x.shape[0], result)
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
    return {
        "step": state.step,
        "loss": float(result.loss.detach()),
        "mse": float(result.mse.detach()),
        "fvu": float(result.mse.detach() / total_var.clamp_min(1e-12)),
        "l0": result.l0,
        "dead": float(dead.float().mean()),
    }


@torch.no_grad()
def _after_step(sae, state: TrainState, n_tokens: int, result: StepResult) -> None:
    state.tokens_since_fired += n_tokens
    state.tokens_since_fired[result.fired] = 0
    if sae.cfg.arch == "batchtopk" and result.smallest_kept is not None:
        prev = state.batchtopk_threshold
        smallest = result.smallest_kept
        state.batchtopk_threshold = smallest if prev is None else 0.99 * prev + 0.01 * smallest
        sae.inference_threshold = state.batchtopk_threshold
    if sae.cfg.arch == "gba":
        state.gba_fired += (result.pre > sae.threshold).sum(0)
        state.gba_peak = torch.maximum(state.gba_peak, result.pre.max(0).values)
        if (state.step + 1) % sae.cfg.gba_every == 0:
            gba_update(sae, state, n_tokens=sae.cfg.gba_every * n_tokens)


def gba_targets(cfg: SAEConfig) -> torch.Tensor:
    """[d_sae] target firing frequency of each latent: groups spaced geometrically."""
    groups = torch.arange(cfg.d_sae) * cfg.gba_groups // cfg.d_sae
    if cfg.gba_groups == 1:
        return torch.full((cfg.d_sae,), cfg.gba_freq_high)
    ratio = (cfg.gba_freq_low / cfg.gba_freq_high) ** (1 / (cfg.gba_groups - 1))
    return cfg.gba_freq_high * ratio ** groups.double()


@torch.no_grad()
def gba_update(sae: SparseAutoencoder, state: TrainState, n_tokens: int) -> None:
    """Group bias adaptation ("Taming Polysemanticity in LLMs: Provable Feature Recovery via Sparse
    Autoencoders", 2025): move each latent's gate toward its group's target frequency.

    The paper's bias b (floor -1 for unit-norm inputs, cap 0) is kept as the
    JumpReLU threshold theta = -b: our inputs have mean norm sqrt(d_in), so
    theta lies in [0, sqrt(d_in)].  Too frequent: theta += gamma * peak
    pre-activation.  Never fired: theta -= gamma * mean positive peak of its group.
    """
    cfg = sae.cfg
    freq = state.gba_fired.double() / n_tokens
    targets = gba_targets(cfg)
    peak = state.gba_peak.clamp_min(0).double()
    groups = torch.arange(cfg.d_sae) * cfg.gba_groups // cfg.d_sae
    positive = (peak > 0).double()
    group_mean = torch.zeros(cfg.gba_groups, dtype=torch.float64).index_add_(0, groups, peak)
    group_mean /= torch.zeros(cfg.gba_groups, dtype=torch.float64).index_add_(0, groups, positive).clamp_min(1)
    theta = sae.threshold.double()
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


def save_checkpoint(path: Path, sae, optimizer, state: TrainState) -> None:
    """Atomically write everything needed to resume bit-exactly."""
    import io

    buffer = io.BytesIO()
    torch.save(
        {
            "sae": sae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": vars(state).copy(),
            "inference_threshold": sae.inference_threshold,
        },
        buffer,
    )
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, sae, optimizer) -> TrainState:
    from .formats import torch_load_safely

    fix = f"delete {path.parent} to train from the start"
    data = torch_load_safely(path, fix)
    if not isinstance(data, dict) or not {"sae", "optimizer", "state", "inference_threshold"} <= set(data):
        raise SaeAtlasError(f"{path} is not a saeatlas training checkpoint: {fix}")
    sae.load_state_dict(data["sae"])
    optimizer.load_state_dict(data["optimizer"])
    sae.inference_threshold = data["inference_threshold"]
    return TrainState(**data["state"])


def train_sae(
    train: TrainConfig,
    source,
    checkpoint: Path | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> tuple[SparseAutoencoder, TrainState]:
    """Train the SAE `train.sae` on `source` (its `d_in` set from the data when None); resumes from `checkpoint`
    if it exists.  Returns the SAE with the input scale folded in, and the final training state."""
    reuse_freed_memory()
    cfg = sae_config_for(train.sae, source.d_in)
    torch.manual_seed(train.seed)
    sae, state = init_sae(cfg, source, train)
    base_lr = train.lr if train.lr is not None else default_lr(cfg)
    optimizer = make_optimizer(sae, base_lr)
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint, sae, optimizer)
        if state.source is not None:
            source.restore(state.source)
    sae.train()
    batches = source.batches(train.batch_size, seed=train.seed, start_step=state.step)
    while state.step < train.steps:
        metrics = train_step(sae, optimizer, next(batches) * state.scale, train, state, base_lr)
        state.step += 1
        if on_step:
            on_step(metrics)
        if checkpoint is not None and train.checkpoint_every and state.step % train.checkpoint_every == 0:
            check_diverged(sae, state.step)
            state.source = source.state() if hasattr(source, "state") else None
            save_checkpoint(checkpoint, sae, optimizer, state)
    check_diverged(sae, state.step)
    sae.eval()
    sae.fold_scale(state.scale)
    return sae, state


def sae_config_for(cfg: SAEConfig, d_in: int) -> SAEConfig:
    """`cfg` with `d_in` set to the data's width; SaeAtlasError if it names another width."""
    if cfg.d_in is not None and cfg.d_in != d_in:
        raise SaeAtlasError(f"the SAE's d_in {cfg.d_in} does not match the activations' width {d_in}")
    return dataclasses.replace(cfg, d_in=d_in)
