"""Where training activations come from: an in-memory matrix or an activation store.

Both give a deterministic batch sequence that is a function of (seed, step), so
a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import SaeAtlasError


def check_finite(x: torch.Tensor, where: str) -> None:
    """SaeAtlasError if `x` holds NaN or Inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=-1).sum()) if x.ndim > 1 else int((~torch.isfinite(x)).sum())
        raise SaeAtlasError(f"{where} holds NaN or Inf in {bad} rows: clean the activations before training")


class TensorSource:
    """Activations held in memory, [n_tokens, d_in]; epochs are seeded permutations."""

    def __init__(self, x: torch.Tensor, name: str = "activations"):
        if x.ndim != 2 or x.shape[0] == 0:
            raise SaeAtlasError(f"{name} must be a non-empty [n_tokens, d_in] matrix, got shape {list(x.shape)}")
        check_finite(x, name)
        self.x = x.float()
        self.name = name

    @property
    def d_in(self) -> int:
        return self.x.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.x.shape[0]

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """Up to n rows, chosen with `seed` (for initialisation)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_tokens, generator=g)[:n]
        return self.x[idx]

    def batches(
        self, batch_size: int, seed: int, start_step: int = 0, part: slice = slice(None)
    ) -> Iterator[torch.Tensor]:
        """Infinite stream of [batch_size, d_in] batches, from step `start_step` on; with `part`, only those
        rows of each (a rank's slice of the global batch)."""
        per_epoch = max(1, self.n_tokens // batch_size)
        epoch, offset = divmod(start_step, per_epoch)
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n_tokens, generator=g)
            for i in range(offset, per_epoch):
                yield self.x[perm[i * batch_size : (i + 1) * batch_size][part]]
            epoch, offset = epoch + 1, 0


class StoreSource:
    """One hook of an activation store, streamed with bounded memory."""

    def __init__(self, path: str | Path, hook: str):
        from ..data.store import ActivationStore
        from ..models.hooks import canonical_hook

        self.store = ActivationStore(path)
        hook = canonical_hook(hook)
        if hook not in self.store.hooks:
            raise SaeAtlasError(f"store '{path}' has no hook '{hook}': it holds {', '.join(self.store.hooks)}")
        self.hook = hook
        self.name = f"{path}:{hook}"

    @property
    def d_in(self) -> int:
        return self.store.d_model

    @property
    def n_tokens(self) -> int:
        return int(self.store.manifest["n_tokens_usable"])

    def sample(self, n: int, seed: int) -> torch.Tensor:
        batch = next(self.store.batches(self.hook, batch_size=n, seed=seed))
        x = batch.float()
        check_finite(x, self.name)
        return x

    def batches(
        self, batch_size: int, seed: int, start_step: int = 0, part: slice = slice(None)
    ) -> Iterator[torch.Tensor]:
        """Infinite stream of [batch_size, d_in] batches, from step `start_step` on; with `part`, only those
        rows of each (a rank's slice of the global batch; every rank reads the whole of it from the store)."""
        step, epoch = 0, 0
        while True:
            for batch in self.store.batches(self.hook, batch_size, seed=seed * 1_000_003 + epoch, drop_last=True):
                if step >= start_step:
                    x = batch[part].float()
                    check_finite(x, self.name)
                    yield x
                step += 1
            epoch += 1


def load_matrix(path: str | Path) -> TensorSource:
    """A `.npy` or `.safetensors` file holding one [n_tokens, d_in] matrix."""
    path = Path(path)
    if not path.is_file():
        raise SaeAtlasError(f"activation file '{path}' does not exist: check the path")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise SaeAtlasError(f"'{path}' is not a plain .npy array ({exc}); pickles are refused") from None
        if array.dtype.kind not in "fiu":
            raise SaeAtlasError(f"'{path}' holds {array.dtype}, not numbers")
        return TensorSource(torch.from_numpy(np.asarray(array, dtype=np.float32)), path.name)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise SaeAtlasError(f"'{path}' is not a valid safetensors file ({exc})") from None
        if len(tensors) != 1:
            raise SaeAtlasError(
                f"'{path}' holds {len(tensors)} tensors ({', '.join(tensors)}); expected one [n_tokens, d_in]"
            )
        return TensorSource(next(iter(tensors.values())), path.name)
    raise SaeAtlasError(f"'{path}': activations must be a .npy or .safetensors file")
