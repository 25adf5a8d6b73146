"""SAE, training and evaluation configuration: one dataclass each, every field documented once.

As in sparsify, `TrainConfig` nests the `SAEConfig` of the SAE it trains (`TrainConfig.sae`); the command
line and the study file show the nested fields flat (`--k`, `sae.k`), since no name repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..config import DERIVED, FLATTEN, RUNTIME, Config, check, check_choice, check_device, check_float, check_int

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "gba", "mp"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
ComputeDtype = Literal["auto", "float32", "bfloat16"]
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)
MAX_D_SAE = 1 << 24
"""More latents than this (16.7M, the largest SAEs published) can only be a typo."""


@dataclass(kw_only=True)
class SAEConfig(Config):
    """Shape and encoder of a sparse autoencoder (saved in its cfg.json)."""

    arch: Architecture = "topk"
    """relu (L1), topk, batchtopk, jumprelu, gba (group bias adaptation) or mp (matching pursuit)."""
    d_in: int | None = field(default=None, metadata=DERIVED)
    """Width of the activations (None until the training data sets it)."""
    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """Active latents per token (topk, batchtopk: mean over the batch; jumprelu: target L0; mp: max pursuit
    steps)."""
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

    def _validate(self) -> None:
        check_choice(self, "arch", ARCHITECTURES)
        check(
            self.d_in is None or (isinstance(self.d_in, int) and 1 <= self.d_in <= MAX_D_SAE),
            "d_in",
            self.d_in,
            "use a positive width",
        )
        check_int(self, "d_sae", 1, MAX_D_SAE)
        check_int(
            self,
            "k",
            1,
            self.d_sae if isinstance(self.d_sae, int) else None,
            f"use an integer from 1 to d_sae ({self.d_sae})",
        )
        check_float(self, "l1_coefficient", 0)
        if self.target_l0 is not None:
            check_float(
                self,
                "target_l0",
                0,
                self.d_sae,
                low_open=True,
                allowed="use an L0 in (0, d_sae], or leave it unset (then k)",
            )
        check_float(self, "l0_coefficient", 0)
        check_float(self, "jump_bandwidth", 0, low_open=True)
        check_int(self, "gba_groups", 1, 1 << 16)
        check_float(self, "gba_freq_high", 0, 1, low_open=True, high_open=True)
        check_float(
            self,
            "gba_freq_low",
            0,
            self.gba_freq_high,
            low_open=True,
            allowed=f"use a frequency in (0, gba_freq_high = {self.gba_freq_high}]",
        )
        check_float(self, "gba_gamma", 0, low_open=True)
        check_int(self, "gba_every", 1)
        check_float(self, "mp_tolerance", 0)


@dataclass(kw_only=True)
class TrainConfig(Config):
    """How an SAE is trained: the SAE it trains (`sae`) and the optimisation."""

    sae: SAEConfig = field(default_factory=SAEConfig, metadata=FLATTEN)
    """The SAE to train (its fields are flat on the command line and in the study file)."""
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
    compute_dtype: ComputeDtype = "auto"
    """Compute dtype of the matmuls (master weights stay float32).  auto: bfloat16 for the TopK family where
    the CPU has native bfloat16 matmuls, float32 otherwise."""
    checkpoint_every: int = 500
    """Steps between checkpoints, the unit of resume (0: none)."""
    device: str = field(default="auto", metadata=RUNTIME)
    """Where to train: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps; under torchrun each
    process takes the GPU of its local rank."""

    def _validate(self) -> None:
        check(isinstance(self.sae, SAEConfig), "sae", self.sae, "give an SAEConfig")
        check_int(self, "steps", 1, 10**9)
        check_int(self, "batch_size", 1, 1 << 24)
        check(
            self.lr is None
            or (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and 0 < self.lr <= 1),
            "lr",
            self.lr,
            "use a learning rate in (0, 1]",
        )
        check_int(self, "warmup_steps", 0)
        check_float(self, "decay_fraction", 0, 1)
        if self.sparsity_warmup_steps is not None:
            check_int(self, "sparsity_warmup_steps", 1, 10**9, "use 1 to 10^9 steps, or leave it unset")
        check_float(self, "grad_clip", 0, low_open=True)
        check_float(self, "aux_k_coefficient", 0)
        check_int(self, "dead_after_tokens", 1)
        check_int(self, "seed", 0)
        check_choice(self, "compute_dtype", COMPUTE_DTYPES)
        check_int(self, "checkpoint_every", 0)
        check_device(self)

    def optimisation(self) -> dict:
        """The settings besides the SAE's own (what cfg.json records under `saeatlas.train`)."""
        settings = self.to_dict()
        del settings["sae"]
        return settings


@dataclass(kw_only=True)
class EvalConfig(Config):
    """What `saeatlas eval` measures: reconstruction on activations and, with a model, the SAE spliced in."""

    tokens: int = 65536
    """Tokens of activations to evaluate on."""
    model: str | None = None
    """Also splice the SAE into this model (packaged name, folder, .gguf, hub id): CE-loss recovered, delta LM
    loss, KL."""
    hook: str | None = None
    """Hook of the SAE (default: the hook its cfg.json names)."""
    corpus: str | None = None
    """Held-out text for the spliced metrics (default: the SAE's dataset, eval split; else wiki)."""
    ce_tokens: int = 8192
    """Tokens of held-out text for the spliced metrics (about: windows fixed in characters, spread over every
    held-out document)."""
    device: str = field(default="auto", metadata=RUNTIME)
    """Where to run the SAE and the model's forward: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N
    or mps; under torchrun each process takes the GPU of its local rank."""

    def _validate(self) -> None:
        from ..models.hooks import canonical_hook

        check_int(self, "tokens", 1, 10**12)
        check_int(self, "ce_tokens", 0, 10**9)
        if self.hook is not None:
            self.hook = canonical_hook(self.hook)
        check_device(self)
