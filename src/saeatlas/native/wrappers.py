"""ctypes wrappers of the kernels in `kernels.c`: tensors and arrays in, tensors and arrays out.

C reads and writes raw pointers with the lengths it is given, so each wrapper
first checks every argument it passes as a pointer: a CPU tensor (or a NumPy
array), its dtype, that it is contiguous, its number of dimensions and every
shape the kernel relies on.  A mismatch is a bug in the caller and raises
TypeError (not a tensor / array, wrong dtype) or ValueError (device, layout,
dimensions, shape) instead of letting C read the wrong memory.  The checks
are O(1) per call; index values (latent ids, rows, except the permutations of
`permuted_gram_dots`) are not scanned, as that would cost a pass over the data
on every training step.
"""

from __future__ import annotations

import ctypes
import operator

import numpy as np
import torch

from .loader import library


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the native kernels are not loaded (check saeatlas.native.library() before calling them)")
    return lib


def _tensor(fn: str, name: str, t, dtypes: tuple[torch.dtype, ...], shape: tuple[int | None, ...]) -> None:
    """Check that t is a contiguous CPU tensor of one of `dtypes` whose shape matches `shape` (None: any size)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, not {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{fn}: {name} must be {allowed}, not {str(t.dtype).removeprefix('torch.')}")
    if t.device.type != "cpu" or t.layout != torch.strided:
        raise ValueError(f"{fn}: {name} must be a dense CPU tensor, not {t.layout} on {t.device}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        want = ", ".join("*" if w is None else str(w) for w in shape)
        raise ValueError(f"{fn}: {name} must have shape [{want}], not {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous (call .contiguous()), got strides {t.stride()}")


def _array(fn: str, name: str, a, dtype: type, shape: tuple[int | None, ...]) -> None:
    """Check that a is an aligned C-contiguous NumPy array of `dtype` (native byte order) matching `shape`."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, not {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{fn}: {name} must be {np.dtype(dtype)}, not {a.dtype}")
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = ", ".join("*" if w is None else str(w) for w in shape)
        raise ValueError(f"{fn}: {name} must have shape [{want}], not {list(a.shape)}")
    if not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError(
            f"{fn}: {name} must be C-contiguous and aligned (np.ascontiguousarray), got strides {a.strides}"
        )


def _count(fn: str, name: str, value, low: int, high: int | None = None) -> int:
    """value as an int in [low, high] (high None: no upper bound)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an integer, not {type(value).__name__}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{fn}: {name} = {value} must lie in [{low}, {'inf' if high is None else high}]")
    return value


def _grouping(fn: str, grouping, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts [n_latents + 1], order [m]) as `latent_order` returns them."""
    starts, order = grouping
    _tensor(fn, "starts", starts, (torch.int64,), (n_latents + 1,))
    _tensor(fn, "order", order, (torch.int64,), (None,))
    return starts, order


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


def topk_rows(x: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-row top-k of x + bias (x a contiguous [n, width] float32 / bfloat16 matrix, bias [width],
    added in float32) -> (values [n, k] float32, columns [n, k] int64), unsorted.  1 <= k <= width."""
    _tensor("topk_rows", "x", x, (torch.float32, torch.bfloat16), (None, None))
    n, width = x.shape
    k = _count("topk_rows", "k", k, 1, width)
    bias = torch.zeros(width) if bias is None else bias.detach().float().contiguous()
    _tensor("topk_rows", "bias", bias, (torch.float32,), (width,))
    values = torch.empty(n, k, dtype=torch.float32)
    columns = torch.empty(n, k, dtype=torch.int64)
    lib = _lib()
    kernel = lib.topk_rows_bf16 if x.dtype == torch.bfloat16 else lib.topk_rows_f32
    kernel(_p(x), _p(bias), n, width, k, _p(values), _p(columns), torch.get_num_threads())
    return values, columns


def latent_order(latents: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes grouped by latent: (starts [n_latents + 1], order [m]) so that order[starts[j]:starts[j+1]]
    are the positions of latent j's codes, in their original order.  latents [m] int64, each in
    [0, n_latents) (not checked: it would cost a pass over the codes)."""
    _tensor("latent_order", "latents", latents, (torch.int64,), (None,))
    n_latents = _count("latent_order", "n_latents", n_latents, 0)
    starts = torch.empty(n_latents + 1, dtype=torch.int64)
    order = torch.empty_like(latents)
    _lib().latent_order(_p(latents), latents.numel(), n_latents, _p(starts), _p(order))
    return starts, order


def scatter_by_latent(
    grouping: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    coeff: torch.Tensor,
    x: torch.Tensor,
    n_latents: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S^T x for the sparse S [n, n_latents] holding `coeff` at (rows, latents): ([n_latents, d], colsum
    [n_latents]).  `grouping` is `latent_order(latents)`; rows [m] int64, coeff [m] float32, x [n, d]
    float32, all contiguous; rows in [0, n) (not checked)."""
    fn = "scatter_by_latent"
    n_latents = _count(fn, "n_latents", n_latents, 0)
    starts, order = _grouping(fn, grouping, n_latents)
    m = order.shape[0]
    _tensor(fn, "rows", rows, (torch.int64,), (m,))
    _tensor(fn, "coeff", coeff, (torch.float32,), (m,))
    _tensor(fn, "x", x, (torch.float32,), (None, None))
    out = torch.empty(n_latents, x.shape[1], dtype=torch.float32)
    colsum = torch.empty(n_latents, dtype=torch.float32)
    _lib().scatter_by_latent(
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


def decode_backward(
    grouping: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    values: torch.Tensor,
    grad: torch.Tensor,
    w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of the sparse decode recon[r] = sum of values[i] w[latents[i]] over row r's codes, from
    grad [n, d] of recon: (grad_values [m] = <grad[rows[i]], w[latents[i]]>, grad_w [n_latents, d] = S^T grad
    with S [n, n_latents] holding `values`).  values [m], grad, w float32 contiguous; `grouping` is
    `latent_order(latents)`; rows [m] int64 in [0, n) (not checked)."""
    fn = "decode_backward"
    _tensor(fn, "grad", grad, (torch.float32,), (None, None))
    _tensor(fn, "w", w, (torch.float32,), (None, grad.shape[1]))
    starts, order = _grouping(fn, grouping, w.shape[0])
    m = order.shape[0]
    _tensor(fn, "rows", rows, (torch.int64,), (m,))
    _tensor(fn, "values", values, (torch.float32,), (m,))
    grad_values = torch.empty(m, dtype=torch.float32)
    grad_w = torch.empty(w.shape, dtype=torch.float32)
    _lib().decode_backward(
        _p(order),
        _p(starts),
        _p(rows),
        _p(values),
        _p(grad),
        _p(w),
        w.shape[0],
        w.shape[1],
        _p(grad_values),
        _p(grad_w),
        torch.get_num_threads(),
    )
    return grad_values, grad_w


def permuted_gram_dots(A: np.ndarray, B: np.ndarray, P: np.ndarray) -> np.ndarray:
    """[m] sum_ij A[i, j] B[p_i, p_j] for each row p of P [m, n]; A, B [n, n] symmetric float32, P int32
    with entries in [0, n), all C-contiguous (sums in float64: about 1e-7 relative off a float64
    computation).  P's range is checked: a pass over m x n entries beside the kernel's m x n^2 / 2."""
    fn = "permuted_gram_dots"
    _array(fn, "A", A, np.float32, (None, None))
    n = A.shape[0]
    if A.shape[1] != n:
        raise ValueError(f"{fn}: A must be square, not {list(A.shape)}")
    _array(fn, "B", B, np.float32, (n, n))
    _array(fn, "P", P, np.int32, (None, n))
    if P.size and (P.min() < 0 or P.max() >= n):
        raise ValueError(f"{fn}: P's entries must lie in [0, {n}), found [{P.min()}, {P.max()}]")
    out = np.empty(len(P), dtype=np.float64)
    _lib().permuted_gram_dots(
        A.ctypes.data, B.ctypes.data, n, P.ctypes.data, len(P), out.ctypes.data, torch.get_num_threads()
    )
    return out
