"""torch.distributed, as torchrun launches it: one process per device (or CPU core group).

`torchrun --nproc-per-node N -m saeatlas <verb> ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous;
`init()` joins the process group (NCCL for CUDA devices, gloo otherwise).  Without torchrun every helper
here answers for one process (rank 0 of 1), so the same code runs alone or in a group.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import SaeAtlasError

T = TypeVar("T")

WAIT = timedelta(days=7)
"""How long a rank waits in a collective: a study's rank waits there while another trains a whole SAE (hours),
so not torch's default of 10-30 minutes.  A rank that dies does not leave the others waiting: torchrun stops
them all."""

_alone = 0
"""Depth of `alone()` blocks: inside one, this process answers as rank 0 of 1 (a whole study stage on one rank)."""


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
        dist.init_process_group(backend=backend, timeout=WAIT)
    return True


@contextmanager
def joined(device_name: str = "auto") -> Iterator[bool]:
    """The command line's process for the block: in torchrun's group if it launched this one (left at the end,
    however the block ends), else alone.  Yields whether this process speaks: rank 0 prints and logs as one
    process does; the other ranks print nothing on stdout and log only errors (each still prints its own
    one-line error)."""
    if not launched():
        yield True
        return
    from .devices import resolve_device

    init(resolve_device(device_name))
    try:
        if is_main():
            yield True
            return
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.ERROR)
        with open(os.devnull, "w") as null, redirect_stdout(null):
            yield False
    finally:
        shutdown()


def active() -> bool:
    """Whether a process group of more than one process is running (and this process is not `alone()`)."""
    return not _alone and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def alone() -> Iterator[None]:
    """Run the block as one process (rank 0 of 1) though a group is running: a study gives whole stages to
    ranks, and a stage's own work (an extraction, a training) must then take no collective with the others."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


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


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` alone."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class RankFailed(RuntimeError):
    """Another rank met a bug (not a user error); it raised the real exception itself."""


def failure(exc: Exception) -> Exception:
    """What to send the other ranks when this one fails with `exc`: a user error as it is (each rank then
    prints the same line), a bug as a `RankFailed` naming it (the failing rank raises the real traceback)."""
    if isinstance(exc, SaeAtlasError):
        try:
            return pickle.loads(pickle.dumps(exc))
        except (pickle.PickleError, TypeError, AttributeError):  # an __init__ taking more than the message
            return SaeAtlasError(str(exc))
    return RankFailed(f"rank {rank()} failed: {type(exc).__name__}: {exc}")


def raise_first(outcomes: list) -> None:
    """Raise the first exception among the ranks' `outcomes` (gathered by `all_gather`), if any, marked as
    announced (every rank has it: none waits for it in a later collective)."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            outcome.announced = True
            raise outcome


def spread(items: list, fn: Callable[[Any], T]) -> list[T]:
    """[fn(item) for item in items], item i computed on rank i % world and the results gathered on every
    rank (picklable), in the order of `items`.  `fn` must not depend on which rank runs it (seeds from the item,
    not from a shared generator).  A rank's failure reaches every rank in this one gather (`announced`).
    Alone: a plain loop."""
    if not active():
        return [fn(item) for item in items]
    mine: dict[int, T] | Exception = {}
    local = None
    try:
        for i in range(rank(), len(items), world_size()):
            mine[i] = fn(items[i])
    except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here
        mine, local = failure(exc), exc
    gathered = all_gather(mine)
    if local is not None:
        local.announced = True
        raise local
    raise_first(gathered)
    merged = {i: value for part in gathered for i, value in part.items()}
    return [merged[i] for i in range(len(items))]


def elsewhere(n_items: int) -> int:
    """How many of `n_items` spread items other ranks compute."""
    return n_items - len(range(rank(), n_items, world_size()))


def together(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank (a job whose inner steps `spread` work over the ranks), then wait for all; a
    failure of one rank outside a `spread` is sent to the others, which may be waiting in one, so that every
    rank stops with it instead of hanging.  Alone: just `fn()`."""
    if not active():
        return fn()
    try:
        result = fn()
    except Exception as exc:
        if not getattr(exc, "announced", False):
            all_gather(failure(exc))
        raise
    raise_first(all_gather(None))
    return result


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only, once every rank has come this far (so what the others did before, e.g. probe
    files of their own checks, is over), and give every rank its result (picklable); if it raises a user error,
    every rank raises it, so no rank is left waiting in a later collective.  Alone: just `fn()`."""
    if not active():
        return fn()
    dist.barrier()
    box: list[Any] = [None]
    error: Exception | None = None
    if is_main():
        try:
            with alone():  # fn is rank 0's alone: a collective inside it would wait for ranks that never come
                box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here
            error = exc
            box[0] = ("error", failure(exc))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        error.announced = True
        raise error
    status, value = box[0]
    if status == "error":
        value.announced = True
        raise value
    return value


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
