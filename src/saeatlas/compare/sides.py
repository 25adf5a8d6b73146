"""The two sides of a comparison: each model's SAE codes (or raw neurons) at the aligned positions, built once
per (kind, model, hook) and reused across the layer grid and its controls."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..data.store import ActivationStore
from ..errors import SaeAtlasError
from ..sae.formats import load_sae, sae_folder
from ..sae.model import SparseAutoencoder
from .align import Alignment, align_stores, gather_rows, tokenizer_for_store
from .codes import encode_sparse, top_positions
from .config import CompareConfig
from .correlate import CorrelationResult, pearson_dense, pearson_sparse
from .match import junk_latents, junk_token_ids


@dataclass
class Side:
    """One model's latents (or neurons) at the aligned positions."""

    label: str
    codes: sp.csr_array | np.ndarray
    """[n_positions, n_latents]: sparse SAE codes, or dense activations for neurons."""
    decoder: np.ndarray
    """[n_latents, d_model] decoder rows (the identity for neurons)."""
    junk: np.ndarray | None = None
    """[n_latents] bool: a top activating token is a junk token."""


def sae_side(
    label: str,
    store: ActivationStore,
    hook: str,
    sae: SparseAutoencoder,
    rows: np.ndarray,
    token_ids: np.ndarray,
    junk_ids: np.ndarray | None,
    chunk: int = 8192,
) -> Side:
    """Encode the activations at `rows` of `store` with `sae` (sparse), with the junk mask of its latents."""
    if sae.cfg.d_in != store.d_model:
        raise SaeAtlasError(f"{label}: the SAE has d_in {sae.cfg.d_in} but {store.path} holds d_model {store.d_model}")
    codes = encode_sparse(sae, gather_rows(store, hook, rows, chunk))
    junk = None
    if junk_ids is not None:
        junk = junk_latents(top_positions(codes, 5), token_ids, junk_ids)
    return Side(label, codes, sae.W_dec.detach().float().numpy(), junk)


def neuron_side(label: str, store: ActivationStore, hook: str, rows: np.ndarray) -> Side:
    """The raw activations (neurons) at `rows` as dense codes, with identity decoder rows."""
    acts = torch.cat(list(gather_rows(store, hook, rows))).numpy()
    return Side(label, acts, np.eye(acts.shape[1], dtype=np.float32))


def correlate(a: Side, b: Side, top_m: int) -> CorrelationResult:
    if isinstance(a.codes, np.ndarray):
        return pearson_dense(a.codes, b.codes, top_m=top_m)
    return pearson_sparse(a.codes, b.codes, top_m=top_m)


class SideCache:
    """Sides built once and reused across the grid (codes are the expensive part)."""

    def __init__(self, cfg: CompareConfig, store_a: ActivationStore, store_b: ActivationStore, align: Alignment):
        self.cfg, self.store_a, self.store_b, self.align = cfg, store_a, store_b, align
        self.junk_a = junk_token_ids(tokenizer_for_store(store_a)) if cfg.junk_filter else None
        self.junk_b = junk_token_ids(tokenizer_for_store(store_b)) if cfg.junk_filter else None
        self._cache: dict[tuple, Side] = {}
        self._shifted: Alignment | None = None

    def shifted(self) -> Alignment:
        if self._shifted is None:
            self._shifted = limit_positions(align_stores(self.store_a, self.store_b, shift=1), self.cfg.max_positions)
        return self._shifted

    def get(self, kind: str, which: str, hook: str) -> Side:
        key = (kind, which, hook)
        if key in self._cache:
            return self._cache[key]
        cfg, align = self.cfg, self.shifted() if kind == "shifted" else self.align
        store = self.store_a if which == "a" else self.store_b
        rows, tokens = (align.rows_a, align.token_a) if which == "a" else (align.rows_b, align.token_b)
        junk = self.junk_a if which == "a" else self.junk_b
        name = "A" if which == "a" else "B"
        if kind == "neurons":
            side = neuron_side(f"{name} {hook} neurons", store, hook, rows)
        else:
            template = cfg.saes_a if which == "a" else cfg.saes_b
            if kind == "skyline":
                template = cfg.skyline_saes_a
            sae = load_sae(sae_folder(template, hook))
            label = f"{name} {hook}"
            if kind == "random_init":
                sae = SparseAutoencoder(sae.cfg, torch.Generator().manual_seed(cfg.seed + 1)).eval()
                label += " random-init SAE"
            elif kind == "skyline":
                label = f"A {hook} SAE of another seed"
            side = sae_side(label, store, hook, sae, rows, tokens, junk)
        self._cache[key] = side
        return side


def limit_positions(align: Alignment, max_positions: int | None) -> Alignment:
    """The first `max_positions` aligned positions (all of them for None)."""
    if max_positions is None or len(align.rows_a) <= max_positions:
        return align
    n = max_positions
    return dataclasses.replace(
        align,
        rows_a=align.rows_a[:n],
        rows_b=align.rows_b[:n],
        doc=align.doc[:n],
        token_a=align.token_a[:n],
        token_b=align.token_b[:n],
    )


def control_pair(kind: str, sides: SideCache, hook_a: str, hook_b: str) -> tuple[Side, Side]:
    """The two sides a control compares in place of the real pair (hook_a, hook_b)."""
    if kind == "random_init":
        return sides.get("sae", "a", hook_a), sides.get("random_init", "b", hook_b)
    if kind == "neurons":
        return sides.get("neurons", "a", hook_a), sides.get("neurons", "b", hook_b)
    if kind == "shifted":
        return sides.get("shifted", "a", hook_a), sides.get("shifted", "b", hook_b)
    raise ValueError(kind)
