"""ctypes wrappers of the kernels in `kernels.c`: tensors and arrays in, tensors and arrays out."""

from __future__ import annotations

import numpy as np
import torch

from .loader import library


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


def topk_rows(x: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-row top-k of x + bias (x a contiguous [n, width] float32 / bfloat16 matrix, bias [width],
    added in float32) -> (values [n, k] float32, columns [n, k] int64), unsorted."""
    n, width = x.shape
    bias = torch.zeros(width) if bias is None else bias.detach().float().contiguous()
    values = torch.empty(n, k, dtype=torch.float32)
    columns = torch.empty(n, k, dtype=torch.int64)
    lib = library()
    kernel = lib.topk_rows_bf16 if x.dtype == torch.bfloat16 else lib.topk_rows_f32
    kernel(_p(x), _p(bias), n, width, k, _p(values), _p(columns), torch.get_num_threads())
    return values, columns


def latent_order(latents: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes grouped by latent: (starts [n_latents + 1], order [m]) so that order[starts[j]:starts[j+1]]
    are the positions of latent j's codes, in their original order."""
    starts = torch.empty(n_latents + 1, dtype=torch.int64)
    order = torch.empty_like(latents)
    library().latent_order(_p(latents), latents.numel(), n_latents, _p(starts), _p(order))
    return starts, order


def scatter_by_latent(
    grouping: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    coeff: torch.Tensor,
    x: torch.Tensor,
    n_latents: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S^T x for the sparse S [n, n_latents] holding `coeff` at (rows, latents): ([n_latents, d], colsum
    [n_latents]).  `grouping` is `latent_order(latents)`; x [n, d] float32 contiguous."""
    starts, order = grouping
    out = torch.empty(n_latents, x.shape[1], dtype=torch.float32)
    colsum = torch.empty(n_latents, dtype=torch.float32)
    library().scatter_by_latent(
        _p(order),
        _p(starts),
        _p(rows),
        _p(coeff),
        _p(x),
        n_latents,
        x.shape[1],
        _p(out),
        _p(colsum),
        torch.get_num_threads(),
    )
    return out, colsum


def code_dots(
    grouping: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """[m] <a[rows[i]], b[latents[i]]> for each code i: a [n, d], b [n_latents, d], both float32 contiguous;
    `grouping` is `latent_order(latents)`."""
    starts, order = grouping
    out = torch.empty(rows.shape[0], dtype=torch.float32)
    library().code_dots(
        _p(order), _p(starts), _p(rows), _p(a), _p(b), b.shape[0], a.shape[1], _p(out), torch.get_num_threads()
    )
    return out


def permuted_gram_dots(A: np.ndarray, B: np.ndarray, P: np.ndarray) -> np.ndarray:
    """[m] sum_ij A[i, j] B[p_i, p_j] for each row p of P [m, n]; A, B [n, n] symmetric, used in float32
    (sums in float64: about 1e-7 relative off a float64 computation)."""
    A32, B32 = np.ascontiguousarray(A, dtype=np.float32), np.ascontiguousarray(B, dtype=np.float32)
    P32 = np.ascontiguousarray(P, dtype=np.int32)
    out = np.empty(len(P32), dtype=np.float64)
    library().permuted_gram_dots(
        A32.ctypes.data,
        B32.ctypes.data,
        A32.shape[0],
        P32.ctypes.data,
        len(P32),
        out.ctypes.data,
        torch.get_num_threads(),
    )
    return out
