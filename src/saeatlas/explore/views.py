"""The explorer's views, as JSON-ready dicts: the pair list (sorted and filtered), a pair side by side with its
co-firing contexts, one latent, a token search and a decoder direction's logit effects.

`Explorer` holds what has been loaded: stores (memory maps and their token index), SAEs with their codes (at
most `max_spaces` at once, least recently used dropped first), alignments of two stores and the models'
unembeddings (loaded on the first logit request).

Controls: the random_init control's SAE is rebuilt as the comparison built it (`compare.sides.SideCache.
random_init_sae` on the comparison's config from results.json: the same seeds, aligned rows and calibration),
once per hook; the neurons control's latents are the raw neurons (`latents.NeuronSpace`); the shifted
control's co-firing contexts use the shifted alignment (`align_stores(..., shift=1)`), as compare did.  Bad ids raise `NotFound` / `BadRequest`; the server turns
them into 404 / 400.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from .latents import LatentSpace, NeuronSpace, StoreView, logit_effects
from .study import ROLES, SideSpec, StudyIndex

N_COFIRE = 5
"""Co-firing contexts shown for a pair."""
SORTS = {"-corr": lambda p: (-(p["corr"] or -np.inf), p["rank"]), "corr": lambda p: (p["corr"] or -np.inf, p["rank"])}
SORTS |= {"a": lambda p: (p["idx_a"], p["idx_b"]), "b": lambda p: (p["idx_b"], p["idx_a"])}
"""Orders of the pair list: by correlation (descending / ascending) or by A's / B's latent index."""
MAX_LIMIT = 500


class NotFound(LookupError):
    """No such comparison, pair or latent (404)."""


class BadRequest(ValueError):
    """A malformed parameter (400)."""


class Explorer:
    """Views over one study (see the module docstring); safe to call from several threads."""

    def __init__(self, study: StudyIndex, max_spaces: int = 4, device: str | torch.device = "cpu"):
        self.study, self.max_spaces, self.device = study, max_spaces, torch.device(device)
        self._lock = threading.Lock()
        self._stores: dict[str, StoreView] = {}
        self._spaces: OrderedDict[SideSpec, LatentSpace | NeuronSpace] = OrderedDict()
        self._aligned: dict[tuple[str, str, int], object] = {}  # (store_a, store_b, shift) -> compare's Alignment
        self._alignments: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}  # the same, as positions
        self._unembeddings: dict[str, tuple[np.ndarray, object]] = {}
        # slow builds (alignments, random-init SAEs, unembeddings) wait on this one, not on `_lock`, so the views
        # that need none of them still answer meanwhile; reentrant: a random-init SAE needs an alignment
        self._build_lock = threading.RLock()
        self._random_saes: dict[tuple[str, str], object] = {}

    # ------------------------------------------------------------ loading
    def view(self, path) -> StoreView:
        with self._lock:
            if str(path) not in self._stores:
                self._stores[str(path)] = StoreView(path)
            return self._stores[str(path)]

    def space(self, spec: SideSpec) -> LatentSpace | NeuronSpace:
        """The latent space of one side, loaded on first use; the least recently used beyond max_spaces drop."""
        view = self.view(spec.store)
        with self._lock:
            if spec in self._spaces:
                self._spaces.move_to_end(spec)
                return self._spaces[spec]
        sae = self.random_init_sae(spec) if spec.kind == "random_init" else None
        with self._lock:
            if spec in self._spaces:
                return self._spaces[spec]
            space = NeuronSpace(spec, view) if spec.kind == "neurons" else LatentSpace(spec, view, sae, self.device)
            self._spaces[spec] = space
            while len(self._spaces) > self.max_spaces:
                self._spaces.popitem(last=False)
            return space

    def random_init_sae(self, spec: SideSpec):
        """The random_init control's SAE of side `spec` (model spec.model at spec.hook), rebuilt once as compare
        built it: `SideCache.random_init_sae` on the comparison's config and its aligned positions (the first
        max_positions of `align_stores`).  Costs encoding those positions with the real SAE (its L0 and scale)."""
        key = (spec.model, spec.hook)
        with self._build_lock:
            if key not in self._random_saes:
                self._random_saes[key] = self._sides_of_compare().random_init_sae(spec.model, spec.hook)
            return self._random_saes[key]

    def _sides_of_compare(self):
        """A fresh `SideCache` of compare over the study's stores and aligned positions (the alignment is kept;
        the cache, with the real SAEs' codes it encodes, is dropped by the caller; under _build_lock)."""
        import dataclasses

        from ..compare.sides import SideCache, limit_positions

        # the junk / top-token filters change matches, not codes: off, so no vocabulary is decoded
        cfg = dataclasses.replace(
            self.study.compare_config(), junk_filter=False, overlap_filter=False, device=str(self.device)
        )
        store_a, store_b = self.view(cfg.store_a).store, self.view(cfg.store_b).store
        align = limit_positions(self._aligned_stores(store_a, store_b), cfg.max_positions)
        return SideCache(cfg, store_a, store_b, align)

    def sides(self, cid: int) -> tuple[SideSpec, SideSpec]:
        try:
            return self.study.sides(cid)
        except KeyError:
            raise NotFound(f"comparison {cid} has no latents to show")

    def _comparison(self, cid: int) -> dict:
        try:
            return self.study.comparison(cid)
        except KeyError:
            raise NotFound(f"no comparison {cid}: the study has {len(self.study.comparisons)}")

    # ------------------------------------------------------------ views
    def pairs(
        self,
        cid: int | None,
        sort: str = "-corr",
        concept: str = "",
        role: str = "",
        letter: str = "",
        min_corr: float | None = None,
        max_corr: float | None = None,
        **page,
    ) -> dict:
        """Pairs of comparison `cid` (None: the real SAEs of every layer pair), filtered and sorted, one page:
        {total, offset, limit, pairs}.  concept: only pairs whose latents belong to it; role / letter: only
        pairs where a latent has that absorption role (main, split, absorber, or any) for that letter;
        min_corr / max_corr: only pairs whose correlation lies in [min_corr, max_corr]."""
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        if role and role not in (*ROLES, "any"):
            raise BadRequest(f"role must be one of {', '.join(ROLES)}, any, got {role!r}")
        ids = [cid] if cid is not None else [c["id"] for c in self.study.comparisons if c["kind"] == "sae"]
        for i in ids:
            self._comparison(i)
        rows = [p for i in ids for p in self.study.pairs(i)]
        if concept:
            rows = [p for p in rows if concept in p["concepts"]]
        if role or letter:
            rows = [p for p in rows if _has_role(p, role, letter)]
        if min_corr is not None or max_corr is not None:
            lo, hi = -np.inf if min_corr is None else min_corr, np.inf if max_corr is None else max_corr
            rows = [p for p in rows if p["corr"] is not None and lo <= p["corr"] <= hi]
        rows.sort(key=SORTS[sort])
        offset, limit = page.get("offset", 0), page.get("limit", 100)
        if offset < 0 or not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"offset must be >= 0 and limit 1..{MAX_LIMIT}, got {offset}, {limit}")
        return {"total": len(rows), "offset": offset, "limit": limit, "pairs": rows[offset : offset + limit]}

    def pair(self, cid: int, idx_a: int, idx_b: int) -> dict:
        """Both latents' dashboards, the pair's correlation and rank, and contexts where both fire."""
        self._comparison(cid)
        found = self.study.pair(cid, idx_a, idx_b)
        if found is None:
            raise NotFound(f"latents {idx_a} and {idx_b} are not a matched pair of comparison {cid}")
        spec_a, spec_b = self.sides(cid)
        space_a, space_b = self.space(spec_a), self.space(spec_b)
        return {
            **found,
            "labels": [spec_a.label, spec_b.label],
            "hooks": [spec_a.hook, spec_b.hook],
            "a": space_a.dashboard(idx_a),
            "b": space_b.dashboard(idx_b),
            "both": self._cofiring(space_a, space_b, idx_a, idx_b, self.study.shift(cid)),
        }

    def latent(self, cid: int, side: str, idx: int) -> dict:
        """One latent's dashboard and its partners in comparison `cid`."""
        spec = self.sides(cid)[_side(side)]
        space = self.space(spec)
        _check_latent(space, idx)
        return {
            "c": cid,
            "side": side,
            "label": spec.label,
            "hook": spec.hook,
            "latent": space.dashboard(idx),
            "partners": self.study.partners(cid, side, idx),
        }

    def search(self, cid: int, query: str, n: int = 10) -> dict:
        """For each side, the `n` latents with the largest mean activation over the usable positions whose token
        text (stripped, case-folded) is `query`, with their max, how often they fire there, and partners."""
        key = query.strip().casefold()
        if not key:
            raise BadRequest("give a token or word to search for (q)")
        out = {"c": cid, "query": query}
        for side, spec in zip("ab", self.sides(cid), strict=True):
            space = self.space(spec)
            where = space.view.words.get(key, np.zeros(0, dtype=np.int64))
            out[f"n_{side}"] = len(where)
            out[side] = self._top_on(space, cid, side, where, n) if len(where) else []
        return out

    def logits(self, cid: int, side: str, idx: int) -> dict:
        """The tokens latent `idx`'s decoder direction promotes and suppresses through its model's unembedding."""
        spec = self.sides(cid)[_side(side)]
        space = self.space(spec)
        _check_latent(space, idx)
        unembedding, tokenizer = self._unembedding(space.view)
        return {
            "c": cid,
            "side": side,
            "latent": idx,
            **logit_effects(space.decoder_row(idx), unembedding, tokenizer.decode),
        }

    # ------------------------------------------------------------ helpers
    def _top_on(self, space, cid: int, side: str, where: np.ndarray, n: int) -> list[dict]:
        mean, peak, fires = space.on(where)  # [d_sae] each, over the query's positions
        order = [int(i) for i in np.argsort(-mean, kind="stable")[:n] if mean[i] > 0]
        return [
            {
                "latent": i,
                "mean": float(mean[i]),
                "max": float(peak[i]),
                "n_fire": int(fires[i]),
                "partners": self.study.partners(cid, side, i),
            }
            for i in order
        ]

    def _cofiring(self, space_a, space_b, idx_a: int, idx_b: int, shift: int = 0) -> dict:
        """Aligned positions (`shift`: B's token that many after A's, as the shifted control aligns them) where
        both latents fire (neurons: are positive), the strongest by min(act_a / max_a, act_b / max_b)."""
        pos_a, pos_b = self._alignment(space_a.view, space_b.view, shift)
        col_a, col_b = space_a.dense(idx_a), space_b.dense(idx_b)
        va, vb = col_a[pos_a], col_b[pos_b]  # [n_aligned] each
        both = np.flatnonzero((va > 0) & (vb > 0))
        out = {"n_aligned": len(pos_a), "n_both": len(both), "n_a": int((va > 0).sum()), "n_b": int((vb > 0).sum())}
        if not len(both):
            return {**out, "contexts": []}
        score = np.minimum(va[both] / va.max(), vb[both] / vb.max())
        best = both[np.lexsort((both, -score))[:N_COFIRE]]
        out["contexts"] = [
            {"a": space_a.view.context(int(pos_a[k]), va[k]), "b": space_b.view.context(int(pos_b[k]), vb[k])}
            for k in best
        ]
        return out

    def _aligned_stores(self, store_a, store_b, shift: int = 0):
        """compare's `Alignment` of two stores (`compare.align.align_stores` with `shift`), computed once: the
        co-firing contexts and the random-init SAEs' calibration share it."""
        from ..compare.align import align_stores

        key = (str(store_a.path), str(store_b.path), shift)
        with self._build_lock:
            if key not in self._aligned:
                self._aligned[key] = align_stores(store_a, store_b, shift=shift)
            return self._aligned[key]

    def _alignment(self, view_a: StoreView, view_b: StoreView, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Aligned usable positions of two stores (`_aligned_stores`), computed once."""
        key = (str(view_a.store.path), str(view_b.store.path), shift)
        with self._lock:
            if key in self._alignments:
                return self._alignments[key]
        if view_a is view_b and not shift:
            both = np.arange(len(view_a.usable))
            positions = (both, both)
        else:
            align = self._aligned_stores(view_a.store, view_b.store, shift)
            positions = (np.searchsorted(view_a.usable, align.rows_a), np.searchsorted(view_b.usable, align.rows_b))
        with self._lock:
            return self._alignments.setdefault(key, positions)

    def _unembedding(self, view: StoreView) -> tuple[np.ndarray, object]:
        """The output embedding W_U [vocab, d_model] float32 of the store's model, and its tokenizer (the model
        is loaded once, on the first request; only W_U is kept)."""
        spec = view.store.manifest["model"]["spec"]
        with self._build_lock:
            if spec not in self._unembeddings:
                from ..compare.align import tokenizer_for_store
                from ..models import load_model

                handle = load_model(spec, dtype="float32")
                weight = handle.model.get_output_embeddings().weight.detach().float().cpu().numpy()
                self._unembeddings[spec] = (weight, tokenizer_for_store(view.store))
                del handle
            return self._unembeddings[spec]


def _side(side: str) -> int:
    if side not in ("a", "b"):
        raise BadRequest(f"side must be a or b, got {side!r}")
    return 0 if side == "a" else 1


def _check_latent(space: LatentSpace, idx: int) -> None:
    if not 0 <= idx < space.d_sae:
        raise NotFound(f"latent {idx} is out of range: the SAE has {space.d_sae} latents (0..{space.d_sae - 1})")


def _has_role(pair: dict, role: str, letter: str) -> bool:
    roles = pair["roles_a"] + pair["roles_b"]
    return any(
        (not role or role == "any" or r["role"] == role) and (not letter or r["letter"] == letter) for r in roles
    )
