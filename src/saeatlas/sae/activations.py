"""Sparse activation functions, with the straight-through estimators JumpReLU needs.

JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead", sec. 3): z = pre * H(pre - theta).
The step H has no useful gradient, so the threshold's gradient uses a rectangle
kernel K of width `bandwidth` around the threshold (pseudo-derivative).
"""

from __future__ import annotations

import torch


def _rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad
        return grad_pre, grad_threshold.sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad
        return torch.zeros_like(pre), grad_threshold.sum(0), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """[n, d_sae] pre-activations, [d_sae] thresholds -> pre where pre > threshold, else 0."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(pre - threshold) with the threshold pseudo-gradient (for an L0 penalty)."""
    return _Step.apply(pre, threshold, bandwidth)


def topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations per row (then ReLU), zero the rest. [n, d_sae]."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * n largest (ReLU'd) pre-activations of the whole batch. [n, d_sae]."""
    acts = pre.relu()
    flat = acts.flatten()
    values, indices = flat.topk(k * pre.shape[0], sorted=False)
    return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)


def matching_pursuit(residual: torch.Tensor, atoms: torch.Tensor, max_steps: int, tolerance: float) -> torch.Tensor:
    """Greedy non-negative matching pursuit (MP-SAE: "From Flat to Hierarchical: Extracting Sparse
    Representations with Matching Pursuit", Costa et al. 2025).

    residual [n, d_in] (input minus b_dec); atoms [d_sae, d_in], unit norm.
    Each step picks, per row, the atom with the largest positive inner product
    and subtracts its projection; rows stop when nothing projects positively or
    the residual is below `tolerance` x the input norm.  Returns codes [n, d_sae].
    """
    codes = torch.zeros(residual.shape[0], atoms.shape[0], dtype=residual.dtype, device=residual.device)
    floor = tolerance * residual.norm(dim=-1)
    rows = torch.arange(residual.shape[0], device=residual.device)
    for _ in range(max_steps):
        scores = (residual @ atoms.T).relu()  # [n, d_sae]
        best, j = scores.max(dim=-1)
        active = (best > 0) & (residual.norm(dim=-1) > floor)
        if not active.any():
            break
        coef = best * active
        codes[rows, j] += coef
        residual = residual - coef[:, None] * atoms[j]
    return codes
