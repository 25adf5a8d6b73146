"""Independent numpy work on every core: one task per thread, each with a single-threaded BLAS.

Many small LAPACK calls (eigh of a 640 x 640 Gram matrix, a few milliseconds
each) barely use a second BLAS thread; running two such tasks side by side,
each on one thread, does.  numpy releases the GIL inside BLAS / LAPACK and its
array loops, so plain threads suffice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """[fn(item) for item in items], computed by `workers` threads (default: the CPU count) with BLAS
    limited to one thread each; the order of the results is the order of the items."""
    items = list(items)
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
