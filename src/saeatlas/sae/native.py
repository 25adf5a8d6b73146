"""Native kernels of sparse SAE training and of the RSA / CKA permutation nulls: `kernels.c`, compiled once per machine, called with ctypes.

The per-row top-k of the encoder's pre-activations and the sparse products
of the backward pass are simple loops that torch's CPU operators run several
times slower than compiled C (torch.topk scans the whole row per element kept;
embedding_bag's backward and sparse CSR products allocate and sort).  On first
use `kernels.c` is compiled with the system C compiler (`$CC`, default `cc`,
`-O3 -march=native -fopenmp`) into `<cache>/native/`, keyed by a hash of the
source, the flags and the compiler; later processes load the library.

Where no compiler works, or with `SAEATLAS_NATIVE=0`, `library()` is None and
every caller uses its torch implementation; the tests check both agree.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..fileio import cache_dir

log = logging.getLogger("saeatlas")

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c11", "-shared", "-fPIC"]

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "topk_rows_f32": [_ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _int],
    "topk_rows_bf16": [_ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _int],
    "latent_order": [_ptr, _i64, _i64, _ptr, _ptr],
    "scatter_by_latent": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _int],
    "code_dots": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _int],
    "permuted_gram_dots": [_ptr, _ptr, _i64, _ptr, _i64, _ptr, _int],
}


def _compiler_identity(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else ""


def _build(cc: str) -> Path | None:
    """Compile kernels.c into the cache (atomically); the library's path, or None if compiling fails."""
    source = SOURCE.read_bytes()
    identity = _compiler_identity(cc)
    if not identity:
        return None
    key = hashlib.sha256(
        b"\0".join([source, " ".join(FLAGS).encode(), identity.encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    target = cache_dir() / "native" / f"saeatlas-kernels-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp), "-lm"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        log.warning("saeatlas: compiling %s failed, using torch kernels instead:\n%s", SOURCE.name, done.stderr[-2000:])
        return None
    os.replace(tmp, target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, build failure, or SAEATLAS_NATIVE=0)."""
    if os.environ.get("SAEATLAS_NATIVE", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    try:
        path = _build(cc)
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("saeatlas: native kernels unavailable (%s), using torch kernels instead", exc)
        return None
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib


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
