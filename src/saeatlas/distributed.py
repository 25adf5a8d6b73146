"""torch.distributed, as torchrun launches it: one process per device (or CPU core group).

`torchrun --nproc-per-node N -m saeatlas <verb> ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous;
`init()` joins the process group (NCCL for CUDA devices, gloo otherwise).  Without torchrun every helper
here answers for one process (rank 0 of 1), so the same code runs alone or in a group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: torch.device | None = None) -> bool:
    """Join the process group torchrun set up (once); True when running distributed.

    The backend is NCCL when this process's device is CUDA, gloo otherwise.
    """
    if not launched() or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return True


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes shared files (manifests, results, records)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a conversion into a shared cache), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
