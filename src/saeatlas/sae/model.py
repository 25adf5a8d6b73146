"""`SparseAutoencoder`: one module, the architecture chosen by its config.

Conventions (SAELens layout): W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] (JumpReLU).
The input has b_dec subtracted before encoding.  During training decoder rows
are kept at unit norm; `fold_scale` folds an activation normalisation factor
into the weights so the saved SAE works on raw activations.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .activations import batch_topk, jumprelu, matching_pursuit, topk
from .config import SAEConfig


class SAEOutput(NamedTuple):
    """Result of a forward pass."""

    recon: torch.Tensor
    """Reconstruction [n, d_in]."""
    codes: torch.Tensor
    """Latent activations [n, d_sae]."""
    pre: torch.Tensor | None
    """Pre-activations [n, d_sae] (None for matching pursuit)."""


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder; `cfg.arch` picks the encoder."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        if cfg.d_in is None:
            raise ValueError("SparseAutoencoder needs cfg.d_in: set it (or let the trainer take it from the data)")
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # Tied init (Anthropic April update, Gao et al.).  Stored transposed, [d_sae, d_in] contiguous:
        # the sparse encoder gradient is computed latent by latent, in this layout, and fused Adam
        # copies any non-contiguous parameter in and out at every step.
        self.W_enc_T = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae), requires_grad=cfg.arch != "gba")
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # JumpReLU threshold, trained directly (not as a log: Adam moves a log-threshold by ~lr per step,
        # far too slowly from 1e-3).  GBA gates with the same threshold, set by bias adaptation instead of
        # gradients (it is minus the paper's bias).  BatchTopK learns one global value for inference.
        init = 1e-3 if cfg.arch == "jumprelu" else 0.0
        self.threshold = nn.Parameter(torch.full((d_sae,), init), requires_grad=cfg.arch == "jumprelu")
        self.inference_threshold: float | None = None
        """batchtopk: global threshold used outside training (EMA of the smallest kept activation)."""

    @property
    def W_enc(self) -> torch.Tensor:
        """[d_in, d_sae] encoder weight: a transposed view of the parameter `W_enc_T`."""
        return self.W_enc_T.t()

    # ------------------------------------------------------------ encoder
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[n, d_in] -> [n, d_sae]: (x - b_dec) W_enc + b_enc."""
        return (x - self.b_dec.to(x.dtype)) @ self.W_enc.to(x.dtype) + self.b_enc.to(x.dtype)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Pre-activations -> codes, by architecture (training-mode semantics for batchtopk)."""
        arch = self.cfg.arch
        if arch == "relu":
            return pre.relu()
        if arch == "gba":
            # The adapted bias gates but does not shrink: with z = ReLU(pre + b) the encoder grows to
            # undo the shrinkage, which drives the bias down to its floor and the firing rate up.
            return pre * (pre > self.threshold.to(pre.dtype))
        if arch == "topk":
            return topk(pre, self.cfg.k)
        if arch == "batchtopk":
            if self.training or self.inference_threshold is None:
                return batch_topk(pre, self.cfg.k)
            return pre * (pre > self.inference_threshold)
        if arch == "jumprelu":
            return jumprelu(pre, self.threshold.to(pre.dtype), self.cfg.jump_bandwidth)
        raise ValueError(f"activate() does not apply to arch {arch}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes [n, d_sae] of activations [n, d_in]."""
        if self.cfg.arch == "mp":
            atoms = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
            scale = self.W_dec.norm(dim=1)
            codes = matching_pursuit(x - self.b_dec.to(x.dtype), atoms.to(x.dtype), self.cfg.k, self.cfg.mp_tolerance)
            return codes / scale.to(x.dtype)
        return self.activate(self.pre_activations(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[n, d_sae] -> [n, d_in]."""
        return codes @ self.W_dec.to(codes.dtype) + self.b_dec.to(codes.dtype)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        if self.cfg.arch == "mp":
            with torch.no_grad():
                codes = self.encode(x)
            return SAEOutput(self.decode(codes), codes, None)
        pre = self.pre_activations(x)
        codes = self.activate(pre)
        return SAEOutput(self.decode(codes), codes, pre)

    # ------------------------------------------------------------ conventions
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale decoder rows to unit norm (encoder columns absorb the inverse for relu-like SAEs)."""
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-8))
        self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out the gradient component along each decoder row (keeps rows unit norm under Adam)."""
        if self.W_dec.grad is None:
            return
        squared = torch.linalg.vector_norm(self.W_dec, dim=1).square().clamp_min(1e-16)  # faster than vecdot
        along = torch.linalg.vecdot(self.W_dec.grad, self.W_dec) / squared
        self.W_dec.grad.addcmul_(self.W_dec, along[:, None], value=-1.0)

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Fold an input scaling x -> x * scale into the weights.

        Before: trained on x * scale.  After: encode(x) gives the same codes and
        decode gives reconstructions in the raw space: W_enc *= scale,
        W_dec /= scale, b_dec /= scale (matching pursuit normalises its atoms,
        so the same change keeps its codes too).
        """
        self.W_enc_T.mul_(scale)
        self.W_dec /= scale
        self.b_dec /= scale
