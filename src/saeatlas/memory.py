"""CPU resource settings: keep freed memory for reuse (`reuse_freed_memory`) and run small torch work on one
thread (`one_torch_thread`).


torch allocates big CPU tensors with malloc.  glibc serves blocks above its
mmap threshold (at most 32 MiB) with fresh mappings and unmaps them when they
are freed, so a training step that allocates the same 100 MB matrix every
time page-faults on every page of it, every step: measured here, a bfloat16
GEMM into a fresh output ran at 620 GFLOP/s instead of 900, and a TopK SAE
step spent a quarter of its time in page faults.  `reuse_freed_memory` asks
glibc to serve every block from its heap and to keep freed pages, which is
what jemalloc or tcmalloc would do.  The cost: the process's resident size
no longer shrinks after a large free.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's M_MMAP_MAX to 0 and M_TRIM_THRESHOLD to 2 GiB; False where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


@contextlib.contextmanager
def one_torch_thread():
    """Run torch ops on one thread inside the block, then restore the thread count.

    Memory-bound block operations and the small matrices of probes and toy SAEs run 2-3x slower (up to 100x
    when another process holds a core) with torch's two intra-op threads on a 2-core machine: the threads wait
    on each other.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
