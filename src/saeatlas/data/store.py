"""The activation store: shards of activations + token metadata + a manifest.

Layout of a store folder::

    manifest.json                    what the store holds; readers trust only it
    index/shard-00000.npy            structured [n_tokens]: token_id, doc_id,
                                     position, char_start, char_end, flags
    documents/shard-00000.jsonl      {"doc_id", "key", "text"} of documents first
                                     seen in this shard
    <hook>/shard-00000.npy           [n_tokens, d_model]; float32, or bfloat16
                                     stored as its uint16 bit pattern

Every file is written under a temporary name and renamed when complete; the
manifest lists each finished shard with the sha256 of its files, and says
`complete: true` only once the whole run is done.  Readers check a shard's
hashes the first time they touch it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..errors import StoreError
from ..fileio import read_json, sha256_file
from ..schema import Manifest, checked, short_repr
from .tokens import EXCLUDED_BY_DEFAULT

MANIFEST = "manifest.json"
FORMAT = "saeatlas-activation-store"
FORMAT_VERSION = 1

INDEX_DTYPE = np.dtype(
    [
        ("token_id", "<i4"),
        ("doc_id", "<i4"),
        ("position", "<i4"),
        ("char_start", "<i4"),
        ("char_end", "<i4"),
        ("flags", "u1"),
    ]
)
"""One record per stored token."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def index_path(shard: int) -> str:
    return f"index/{shard_name(shard)}.npy"


def documents_path(shard: int) -> str:
    return f"documents/{shard_name(shard)}.jsonl"


def activations_path(hook: str, shard: int) -> str:
    return f"{hook}/{shard_name(shard)}.npy"


def to_storage(acts: torch.Tensor, dtype: str) -> np.ndarray:
    """[n, d] tensor -> numpy array in the storage dtype (bf16 as uint16 bits)."""
    if dtype == "bfloat16":
        return acts.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return acts.to(torch.float32).contiguous().numpy()


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of `to_storage`: numpy (copied into memory) -> torch tensor."""
    tensor = torch.from_numpy(np.array(array, copy=True, order="C"))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def read_manifest(path: Path) -> dict:
    """The manifest of the store at `path`; StoreError if there is none or it is unreadable."""
    file = Path(path) / MANIFEST
    manifest = read_json(
        file,
        f"'{path}' is not an activation store (no {MANIFEST}): run `saeatlas extract` first",
        "delete the store and extract again",
        StoreError,
    )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{file} is not a saeatlas activation store manifest: give the folder `extract` wrote")
    if manifest.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{file} has store format version {short_repr(manifest.get('version'))}; this saeatlas reads "
            f"{FORMAT_VERSION}: extract the store again with this saeatlas"
        )
    return checked(
        manifest, Manifest, file, "the manifest is damaged or was edited: extract the store again", StoreError
    )


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a store of `dtype` keeps its activations in (bf16 as its uint16 bits)."""
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(np.float32)


class ActivationStore:
    """Read-only view of a finished (or, with `allow_incomplete`, partial) store.

    Arrays are memory-mapped; a shard's file hashes are checked the first time
    it is read in this process.
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise StoreError(
                f"store '{path}' is incomplete ({len(self.manifest['shards'])} shards written): "
                "rerun the same `saeatlas extract` command to finish it"
            )
        self._verified: set[str] = set()
        """Files (paths relative to the store) whose sha256 matched the manifest in this process."""

    # ------------------------------------------------------------ facts
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def d_model(self) -> int:
        return int(self.manifest["model"]["d_model"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.manifest["shards"])

    # ------------------------------------------------------------ files
    def verify_shard(self, shard: int) -> None:
        """Check every file of one shard against the manifest's sha256; StoreError on mismatch."""
        for rel in self.manifest["shards"][shard]["files"]:
            self.verify_file(shard, rel)

    def verify_file(self, shard: int, rel: str) -> None:
        """Check one file of `shard` against the manifest's sha256 (once per process); StoreError on mismatch.

        Readers check only the files they read: one hook of an all-layer store is a small part of its bytes
        (training one layer's SAE would otherwise hash every layer's activations, docs/scaling.md)."""
        if rel in self._verified:
            return
        digest = self.manifest["shards"][shard]["files"].get(rel)
        file = self.path / rel
        if digest is None or not file.is_file():
            raise StoreError(f"store '{self.path}' is missing {rel}: extract again (same command resumes)")
        if sha256_file(file) != digest:
            raise StoreError(
                f"store '{self.path}' has a corrupt or truncated file {rel} (sha256 mismatch): "
                "delete that shard's files and rerun the same extract command to rewrite it"
            )
        self._verified.add(rel)

    def verify(self) -> None:
        """Check every shard."""
        for shard in range(self.n_shards):
            self.verify_shard(shard)

    def _load(self, rel: str, shard: int, dtype: np.dtype, shape: tuple[int, ...], field: str) -> np.ndarray:
        """The array of file `rel` of `shard`, which must be `dtype` of `shape` as the manifest's `field` says."""
        self.verify_file(shard, rel)
        try:
            array = np.load(self.path / rel, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise StoreError(f"cannot read {self.path / rel}: {exc}") from None
        if array.dtype != dtype or array.shape != shape:
            raise StoreError(
                f"{self.path / MANIFEST}: field {field} says {rel} holds {dtype} {list(shape)}, but it holds "
                f"{array.dtype} {list(array.shape)}: the manifest was edited or the file is another store's; "
                "extract the store again"
            )
        return array

    def index(self, shard: int) -> np.ndarray:
        """Token records of one shard, structured [n_tokens] (memory-mapped)."""
        n = self.manifest["shards"][shard]["n_tokens"]
        return self._load(index_path(shard), shard, INDEX_DTYPE, (n,), f"'shards[{shard}].n_tokens' = {n}")

    def raw_activations(self, hook: str, shard: int) -> np.ndarray:
        """Activations of one shard as stored, [n_tokens, d_model] (memory-mapped)."""
        if hook not in self.hooks:
            raise StoreError(f"store '{self.path}' has no hook '{hook}': it holds {', '.join(self.hooks)}")
        n, d = self.manifest["shards"][shard]["n_tokens"], self.d_model
        field = f"'dtype' = '{self.dtype}' (with n_tokens {n}, d_model {d})"
        return self._load(activations_path(hook, shard), shard, storage_dtype(self.dtype), (n, d), field)

    def activations(self, hook: str, shard: int) -> torch.Tensor:
        """Activations of one shard as a torch tensor [n_tokens, d_model] in the stored dtype."""
        return from_storage(self.raw_activations(hook, shard), self.dtype)

    def documents(self) -> dict[int, dict]:
        """doc_id -> {"doc_id", "key", "text"} for every document in the store."""
        docs: dict[int, dict] = {}
        for shard in range(self.n_shards):
            self.verify_file(shard, documents_path(shard))
            with open(self.path / documents_path(shard), encoding="utf-8") as fh:
                for line in fh:
                    record = json.loads(line)
                    docs[record["doc_id"]] = record
        return docs

    def usable_mask(self, shard: int, exclude: int = EXCLUDED_BY_DEFAULT) -> np.ndarray:
        """[n_tokens] bool: tokens without any of the `exclude` flags."""
        return (self.index(shard)["flags"] & exclude) == 0

    def norm_stats(self, hook: str, max_tokens: int = 50_000) -> dict[str, float]:
        """Mean L2 norm of usable tokens and of position-0 tokens (from the first shards)."""
        usable, first, seen = [], [], 0
        for shard in range(self.n_shards):
            if seen >= max_tokens:
                break
            acts = self.activations(hook, shard)[:max_tokens].float()
            index = self.index(shard)[:max_tokens]
            norms = acts.norm(dim=1).numpy()
            usable.append(norms[(index["flags"] & EXCLUDED_BY_DEFAULT) == 0])
            first.append(norms[index["position"] == 0])
            seen += len(norms)
        usable_all, first_all = np.concatenate(usable), np.concatenate(first)
        return {
            "mean_norm": float(usable_all.mean()) if len(usable_all) else float("nan"),
            "position0_mean_norm": float(first_all.mean()) if len(first_all) else float("nan"),
        }

    # ------------------------------------------------------------ streaming
    @cached_property
    def _shard_sizes(self) -> list[int]:
        return [s["n_tokens"] for s in self.manifest["shards"]]

    def batches(
        self,
        hook: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_tokens: int = 1 << 18,
        block_tokens: int = 4096,
        exclude: int = EXCLUDED_BY_DEFAULT,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Stream [batch_size, d_model] batches of one hook over the whole store.

        Shuffling is two-level with bounded memory: blocks of `block_tokens`
        consecutive tokens are visited in a seeded random order across all
        shards, `buffer_tokens` of them are gathered (memory-mapped reads) and
        shuffled row-wise.  Tokens with any `exclude` flag are skipped (by
        default BOS/special tokens and position 0).  Memory: about
        `buffer_tokens * d_model` values.
        """
        rng = np.random.default_rng(seed)
        blocks = [(s, start) for s, n in enumerate(self._shard_sizes) for start in range(0, n, block_tokens)]
        order = rng.permutation(len(blocks)) if shuffle else np.arange(len(blocks))
        carry: torch.Tensor | None = None
        blocks_per_buffer = max(1, buffer_tokens // block_tokens)
        for first in range(0, len(order), blocks_per_buffer):
            parts = [
                self._block(hook, *blocks[i], block_tokens, exclude) for i in order[first : first + blocks_per_buffer]
            ]
            buffer = torch.cat(([carry] if carry is not None else []) + parts)
            if shuffle:
                buffer = buffer[torch.from_numpy(rng.permutation(len(buffer)))]
            n_full = len(buffer) // batch_size * batch_size
            yield from buffer[:n_full].split(batch_size)
            carry = buffer[n_full:]
        if carry is not None and len(carry) and not drop_last:
            yield carry

    def _block(self, hook: str, shard: int, start: int, block_tokens: int, exclude: int) -> torch.Tensor:
        stop = start + block_tokens
        keep = self.usable_mask(shard, exclude)[start:stop]
        rows = self.raw_activations(hook, shard)[start:stop][keep]
        return from_storage(rows, self.dtype)
