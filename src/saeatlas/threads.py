"""CPU threads: torch's threads on a machine shared with other jobs (`share_cores`), and independent numpy work
on every core (`parallel_map`).

`share_cores` runs on `import saeatlas`, so before any stage of every entry point (the command line, the
study, the Python API, the tests).  torch's intra-op threads are OpenMP threads (its bundled libgomp, which
MKL and saeatlas's native kernels share).  By default a libgomp thread that waits, for the next parallel
region or for the other threads at the end of one, spins for about 4 ms before it sleeps.  Alone on the
machine that costs nothing; beside another busy process, the spinning thread holds a core that the thread
with the work needs, and steps made of many small ops (JumpReLU, ReLU, GBA training) wait a scheduler slice
at every op: measured on 2 cores beside one `yes > /dev/null`, a JumpReLU SAE (d 64, 1024 latents, 400 steps
of 512) ran at 11 % of its solo speed, against a fair share of 50 % (bench/load.py).

libgomp reads its wait policy once, when it loads (with torch), so the remedy depends on whether torch is
already loaded:

* not yet (`import saeatlas` first: the CLI, the study, the tests): OMP_WAIT_POLICY=PASSIVE, under which a
  waiting thread sleeps at once and gives its core away;
* already, with spinning threads (`import torch` before `import saeatlas`): torch on one intra-op thread,
  which never waits for another, and a warning that says how to keep every core.

A wait policy (OMP_WAIT_POLICY, GOMP_SPINCOUNT) or thread count (OMP_NUM_THREADS, torch.set_num_threads)
the user chose is left alone.

`parallel_map`: many small LAPACK calls (eigh of a 640 x 640 Gram matrix, a few milliseconds each) barely use
a second BLAS thread; running two such tasks side by side, each on one thread, does.  numpy releases the GIL
inside BLAS / LAPACK and its array loops, so plain threads suffice.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing stays unimported: this module loads with `import saeatlas`, which is quick
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TypeVar

    T = TypeVar("T")
    R = TypeVar("R")

WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Environment variables that set how libgomp's threads wait (read when it loads)."""

_shared: str | None = None


def share_cores() -> str:
    """Make torch's threads give a core away while they wait (see the module doc); the first call decides, later
    calls return what it did:

    "passive": torch was not loaded yet; OMP_WAIT_POLICY=PASSIVE is set for it (and for child processes).
    "user": the user set the wait policy or torch's thread count; left alone.
    "one thread": torch was loaded with spinning threads; torch.set_num_threads(1).
    """
    global _shared
    if _shared is not None:
        return _shared
    chosen = any(name in os.environ for name in WAIT_SETTINGS)
    loaded = "torch" in sys.modules
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # for torch in this process if not loaded, and children
    if chosen or not loaded:
        _shared = "user" if chosen else "passive"
        return _shared
    import torch

    if "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() != _default_threads():
        _shared = "user"
    elif torch.get_num_threads() <= 1:
        _shared = "one thread"
    else:
        import logging

        torch.set_num_threads(1)
        _shared = "one thread"
        logging.getLogger("saeatlas").warning(
            "torch was imported before saeatlas, so its threads spin while they wait, which stalls "
            "them where other jobs share the cores; saeatlas runs torch on one thread.  To use all %d, import "
            "saeatlas before torch or set OMP_WAIT_POLICY=PASSIVE in the environment.",
            _default_threads(),
        )
    return _shared


def _default_threads() -> int:
    """torch's default intra-op thread count: the CPUs this process may run on (libgomp's default)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """[fn(item) for item in items], computed by `workers` threads (default: the CPU count) with BLAS
    limited to one thread each; the order of the results is the order of the items."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    items = list(items)
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))
