"""SAE and training configuration: one dataclass each, every field documented once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from ..config import _check

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "gba", "mp"]
ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu", "gba", "mp")


@dataclass
class SAEConfig:
    """Shape and encoder of a sparse autoencoder."""

    arch: Architecture
    """relu (L1), topk, batchtopk, jumprelu, gba (group bias adaptation) or mp (matching pursuit)."""
    d_in: int
    """Width of the activations."""
    d_sae: int
    """Number of latents."""
    k: int = 32
    """Active latents per token (topk, batchtopk: mean over the batch; mp: max pursuit steps)."""
    l1_coefficient: float = 5.0
    """relu: weight of the decoder-norm-weighted L1 penalty (on normalised activations)."""
    target_l0: float | None = None
    """jumprelu: train towards this L0 instead of a fixed L0 penalty (default: k)."""
    l0_coefficient: float = 1.0
    """jumprelu: weight of the L0 (or target-L0) penalty."""
    jump_bandwidth: float = 0.05
    """jumprelu: width of the rectangle kernel of the straight-through estimator."""
    gba_groups: int = 10
    """gba: number of latent groups, each with its own target firing frequency."""
    gba_freq_high: float = 0.05
    """gba: target firing frequency of the first group.  The paper starts near 0.5; with groups
    that frequent, latents that fire far more often than any one feature stay polysemantic
    (planted-feature recovery fell to 0.4 with 0.2, and to 0.90-0.92 with 0.1 on unlucky seeds)."""
    gba_freq_low: float = 1e-3
    """gba: target firing frequency of the last group (geometric spacing in between)."""
    gba_gamma: float = 0.05
    """gba: bias step, as a fraction of the peak pre-activation.  The paper's 0.01 every 50
    steps suits runs of 1e5+ steps; CPU runs of a few thousand steps need 0.05 every 10."""
    gba_every: int = 10
    """gba: steps between bias updates."""
    mp_tolerance: float = 1e-6
    """mp: stop when the residual norm falls below this fraction of the input norm."""

    def validate(self) -> SAEConfig:
        _check(self.arch in ARCHITECTURES, "--arch", self.arch, f"use one of {', '.join(ARCHITECTURES)}")
        _check(self.d_in >= 1, "d_in", self.d_in, "must be positive")
        _check(self.d_sae >= 1, "--width", self.d_sae, "must be positive")
        _check(1 <= self.k <= self.d_sae, "--k", self.k, f"must be between 1 and the width {self.d_sae}")
        _check(self.l1_coefficient >= 0, "--l1-coefficient", self.l1_coefficient, "must be >= 0")
        _check(self.gba_groups >= 1, "gba_groups", self.gba_groups, "must be >= 1")
        _check(
            0 < self.gba_freq_low <= self.gba_freq_high < 1,
            "gba frequencies",
            (self.gba_freq_low, self.gba_freq_high),
            "need 0 < low <= high < 1",
        )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TrainConfig:
    """How an SAE is trained."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float | None = None
    """Adam learning rate (default 2e-4 / sqrt(d_sae / 2^14), as for TopK SAEs)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up."""
    decay_fraction: float = 0.2
    """Fraction of steps at the end over which the learning rate decays linearly to 0."""
    sparsity_warmup_steps: int | None = None
    """relu, jumprelu: steps over which the L1 / L0 coefficient ramps up from 0 (default 5% of steps)."""
    grad_clip: float = 1.0
    """Maximum gradient norm."""
    aux_k_coefficient: float = 1 / 32
    """topk, batchtopk, jumprelu: weight of the AuxK loss that revives dead latents."""
    dead_after_tokens: int = 1_000_000
    """A latent that has not fired for this many tokens counts as dead (AuxK, metrics)."""
    seed: int = 0
    """Seed of initialisation and data order."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype of the matmuls (master weights stay float32).  `auto`: bfloat16 for the
    TopK family where the CPU has native bfloat16 matmuls, float32 otherwise."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0 = none)."""

    def validate(self) -> TrainConfig:
        _check(self.steps >= 1, "--steps", self.steps, "must be positive")
        _check(self.batch_size >= 1, "--batch-size", self.batch_size, "must be positive")
        _check(self.dtype in ("auto", "float32", "bfloat16"), "--dtype", self.dtype, "use auto, float32 or bfloat16")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
