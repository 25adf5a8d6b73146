"""The two sides of a comparison: each model's SAE codes (or raw neurons) at the aligned positions, built once
per (kind, model, hook) and reused across the layer grid and its controls."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..data.store import ActivationStore
from ..devices import resolve_device
from ..errors import SaeAtlasError
from ..sae.formats import load_sae, sae_folder
from ..sae.model import SparseAutoencoder
from .align import Alignment, align_stores, gather_rows, tokenizer_for_store
from .codes import encode_sparse, random_like, top_positions
from .config import CompareConfig, CompareOptions
from .correlate import CorrelationResult
from .match import (
    Matches,
    junk_latents,
    junk_token_ids,
    match,
    paper_junk_latents,
    shared_token_keys,
    top_token_texts,
)


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
    top_tokens: np.ndarray | None = None
    """[n_latents, 5] object: the decoded strings of its 5 top activating tokens (None past the last position it
    fires on), for the top-token overlap filter; None when that filter is off."""


def sae_side(
    label: str,
    store: ActivationStore,
    hook: str,
    sae: SparseAutoencoder,
    rows: np.ndarray,
    token_ids: np.ndarray,
    junk_ids: np.ndarray | None,
    chunk: int = 8192,
    tokenizer=None,
    paper_junk: bool = False,
) -> Side:
    """Encode the activations at `rows` of `store` with `sae` (sparse), with the junk mask of its latents.

    junk_ids: the junk token ids (None: no junk mask).  tokenizer: decode the 5 top activating tokens of each
    latent (`Side.top_tokens`, for the overlap filter).  paper_junk: the junk mask from those strings and the
    paper's list instead of `junk_ids` (the legacy mode; needs `tokenizer`)."""
    if sae.cfg.d_in != store.d_model:
        raise SaeAtlasError(f"{label}: the SAE has d_in {sae.cfg.d_in} but {store.path} holds d_model {store.d_model}")
    if paper_junk and tokenizer is None:
        raise ValueError("sae_side: paper_junk needs the tokenizer that decodes the top tokens")
    codes = encode_sparse(sae, gather_rows(store, hook, rows, chunk))
    top = top_positions(codes, 5)
    texts = None if tokenizer is None else top_token_texts(top, token_ids, tokenizer.decode)
    junk = None
    if paper_junk:
        junk = paper_junk_latents(texts)
    elif junk_ids is not None:
        junk = junk_latents(top, token_ids, junk_ids)
    return Side(label, codes, sae.W_dec.detach().float().cpu().numpy(), junk, texts)


def neuron_side(label: str, store: ActivationStore, hook: str, rows: np.ndarray) -> Side:
    """The raw activations (neurons) at `rows` as dense codes, with identity decoder rows."""
    acts = torch.cat(list(gather_rows(store, hook, rows))).numpy()
    return Side(label, acts, np.eye(acts.shape[1], dtype=np.float32))


def match_sides(result: CorrelationResult, a: Side, b: Side, cfg: CompareOptions) -> Matches:
    """Match the latents of a and b (`result`: their correlations) with `cfg.method` and `cfg.threshold`,
    dropping junk pairs (`cfg.junk_filter`) and pairs whose latents share no top token (legacy_first, or
    `cfg.overlap_filter`).  Sides without junk masks / top tokens (neurons) are not filtered."""
    use_junk = cfg.junk_filter and a.junk is not None and b.junk is not None
    tokens_a = tokens_b = None
    if (cfg.method == "legacy_first" or cfg.overlap_filter) and a.top_tokens is not None and b.top_tokens is not None:
        tokens_a, tokens_b = shared_token_keys(a.top_tokens, b.top_tokens)
    junk_a, junk_b = (a.junk, b.junk) if use_junk else (None, None)
    return match(result, cfg.method, cfg.threshold, junk_a, junk_b, tokens_a, tokens_b)


class SideCache:
    """Sides built once and reused across the grid (codes are the expensive part)."""

    def __init__(self, cfg: CompareConfig, store_a: ActivationStore, store_b: ActivationStore, align: Alignment):
        self.cfg, self.store_a, self.store_b, self.align = cfg, store_a, store_b, align
        self.device = resolve_device(cfg.device)
        legacy = cfg.method == "legacy_first"
        # The legacy mode judges junk from the decoded top tokens with the paper's strings, not from token ids.
        self.paper_junk = legacy and cfg.junk_filter
        self.top_tokens = legacy or cfg.overlap_filter
        ids = cfg.junk_filter and not legacy
        self.junk_a = junk_token_ids(tokenizer_for_store(store_a)) if ids else None
        self.junk_b = junk_token_ids(tokenizer_for_store(store_b)) if ids else None
        self._cache: dict[tuple, Side] = {}
        self._shifted: Alignment | None = None

    def shifted(self) -> Alignment:
        if self._shifted is None:
            self._shifted = limit_positions(align_stores(self.store_a, self.store_b, shift=1), self.cfg.max_positions)
        return self._shifted

    def get(self, kind: str, which: str, hook: str, seed: int = 0) -> Side:
        """The side of `kind` for model `which` at `hook`; `seed` numbers the random_init control's random SAEs
        (0: the one every test uses; others for the spread over seeds)."""
        key = (kind, which, hook, seed)
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
            label = f"{name} {hook}"
            if kind == "random_init":
                sae = self.random_init_sae(which, hook, seed).to(self.device)
                label += " random-init SAE" + (f" (seed {seed})" if seed else "")
            else:
                template = cfg.skyline_saes_a if kind == "skyline" else cfg.saes_a if which == "a" else cfg.saes_b
                sae = load_sae(sae_folder(template, hook), self.device)
                if kind == "skyline":
                    label = f"A {hook} SAE of another seed"
            tokenizer = tokenizer_for_store(store) if self.top_tokens else None
            side = sae_side(
                label, store, hook, sae, rows, tokens, junk, tokenizer=tokenizer, paper_junk=self.paper_junk
            )
        self._cache[key] = side
        return side

    def random_init_sae(self, which: str, hook: str, seed: int = 0) -> SparseAutoencoder:
        """The random_init control's SAE of model `which` at `hook` (seed 0: the one whose matched pairs the results
        list), on the CPU: made from a CPU generator, so the same weights on every device.  Reproducible from the
        comparison's config alone (the explorer rebuilds it this way); encodes the real SAE's codes first."""
        template = self.cfg.saes_a if which == "a" else self.cfg.saes_b
        sae = load_sae(sae_folder(template, hook), "cpu")
        store = self.store_a if which == "a" else self.store_b
        rows = self.align.rows_a if which == "a" else self.align.rows_b
        return self._random_like(sae, which, hook, store, rows, seed)

    def _random_like(self, sae: SparseAutoencoder, which: str, hook: str, store, rows: np.ndarray, seed: int):
        """A random-init SAE of `sae`'s architecture (weights from seed `cfg.seed + 1 + seed`) with the real SAE's
        L0 and code scale on these rows, calibrated on a seeded sample of them (at most 16384 rows and 2^24
        pre-activations)."""
        real = self.get("sae", which, hook).codes  # [n, d_sae] sparse
        l0 = real.nnz / max(real.shape[0], 1)
        mean_code = float(np.abs(real.data).mean()) if real.nnz else 0.0
        n = min(len(rows), 16384, max(256, 2**24 // sae.cfg.d_sae))
        sample = np.sort(np.random.default_rng(self.cfg.seed).choice(len(rows), size=n, replace=False))
        x = torch.cat(list(gather_rows(store, hook, rows[sample])))
        return random_like(sae.cfg, x, l0, mean_code, torch.Generator().manual_seed(self.cfg.seed + 1 + seed))


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
