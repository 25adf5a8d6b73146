"""Which device a stage runs on: `--device auto|cpu|cuda|cuda:N|mps` (and `device` in the study file).

`auto` picks CUDA, then MPS, then the CPU.  Under torchrun each process takes the CUDA device of its
LOCAL_RANK when the device is `auto` or a bare `cuda` (one process per device, as sparsify does).
"""

from __future__ import annotations

import os
import re

import torch

from .errors import SaeAtlasError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")
"""The device names every verb and the study accept."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The torch.device `name` stands for on this machine (and, under torchrun, this process).

    SaeAtlasError when the device asked for is not here (no CUDA, cuda:N past the last GPU, no MPS).
    """
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise SaeAtlasError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise SaeAtlasError("device 'mps' is not available here (no Apple GPU): use --device cpu or auto")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise SaeAtlasError(f"device {name!r} is not available here (no CUDA GPU): use --device cpu or auto")
    count = torch.cuda.device_count()
    index = int(name.split(":")[1]) if ":" in name else local_rank % count
    if index >= count:
        raise SaeAtlasError(
            f"device {name!r} is not here: this machine has {count} CUDA device(s), cuda:0..{count - 1}"
        )
    return torch.device("cuda", index)


def has_float64(device: torch.device) -> bool:
    """Whether `device` computes in float64 (MPS does not)."""
    return device.type != "mps"
