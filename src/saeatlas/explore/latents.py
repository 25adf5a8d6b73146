"""One side's latents, loaded on demand: a store's token texts, an SAE's sparse codes over the store's usable
positions, and a latent's dashboard (as SAE-Vis / sae-dashboard show one): top activating contexts,
samples from lower activation intervals, the histogram of its nonzero activations, its firing frequency, and
the tokens its decoder direction promotes and suppresses through the model's unembedding.

Positions are the store's usable tokens (`compare.contexts.usable_rows`: no BOS/special token, not
position 0), so a latent's top contexts here are exactly `compare.contexts.top_contexts`'s (both come from
`contexts_from_codes` on the same codes).  Files are only read (memory maps, safetensors).
"""

from __future__ import annotations

import threading
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from ..compare.contexts import Texts, store_codes, top_rows, usable_rows
from ..data.store import ActivationStore
from .study import SideSpec

TOP_N = 10
"""Top activating contexts per latent."""
WIDTH, AFTER = 12, 4
"""Tokens of context before / after the firing token (top_contexts' defaults)."""
INTERVALS = 4
"""Lower activation intervals sampled below the top contexts: (0, 1/4], (1/4, 2/4], ... of the max."""
PER_INTERVAL = 3
"""Contexts sampled from each interval."""
BINS = 24
"""Histogram bins over (0, max activation]."""
N_LOGITS = 10
"""Tokens shown on each side of a decoder direction's logit effects."""


class StoreView:
    """A store's token records, usable rows and token texts (the index is read on first use)."""

    def __init__(self, path):
        self.store = ActivationStore(path)

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        return usable_rows(self.store)

    @property
    def index(self) -> np.ndarray:
        return self._rows[0]

    @property
    def usable(self) -> np.ndarray:
        """[n_usable] global rows of the usable tokens."""
        return self._rows[1]

    @cached_property
    def texts(self) -> Texts:
        return Texts(self.store, self.index)

    @cached_property
    def words(self) -> dict[str, np.ndarray]:
        """Token text (stripped, case-folded) -> usable positions [m] holding that token (built on first search)."""
        keys: dict[str, list[int]] = {}
        for p, row in enumerate(self.usable):
            keys.setdefault(self.texts.token(int(row)).strip().casefold(), []).append(p)
        return {k: np.asarray(v, dtype=np.int64) for k, v in keys.items()}

    def context(self, position: int, activation: float) -> dict:
        """The context around usable position `position` (top_contexts' format)."""
        return self.texts.context(int(self.usable[position]), float(activation), WIDTH, AFTER)


class LatentSpace:
    """The SAE of one side at its hook, with its codes over the store's usable positions (built once)."""

    def __init__(self, spec: SideSpec, view: StoreView):
        from ..sae.formats import load_sae

        self.spec, self.view = spec, view
        self.sae = load_sae(spec.sae).eval()
        self._lock = threading.Lock()
        self._codes: sp.csr_array | None = None
        self._csc: sp.csc_array | None = None

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def codes(self) -> tuple[sp.csr_array, sp.csc_array]:
        """Codes [n_usable, d_sae], as CSR (rows) and CSC (columns), encoded on first use."""
        with self._lock:
            if self._codes is None:
                codes = store_codes(self.view.store, self.sae, self.spec.hook, self.view.usable)
                self._codes, self._csc = codes, sp.csc_array(codes)
                self._csc.sort_indices()
        return self._codes, self._csc

    def column(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """Usable positions [m] where `latent` fires and its activations there [m] float32."""
        _, csc = self.codes()
        lo, hi = csc.indptr[latent], csc.indptr[latent + 1]
        values, positions = csc.data[lo:hi], csc.indices[lo:hi].astype(np.int64)
        keep = values != 0
        return positions[keep], values[keep]

    def dashboard(self, latent: int) -> dict:
        """A latent's dashboard: top contexts, interval samples, histogram, frequency (see the module docstring).

        Returns {latent, n_fire, n_usable, frequency, max, top: [CONTEXT], intervals: [{lo, hi, n, contexts}],
        histogram: {edges [BINS + 1], counts [BINS]}}; each CONTEXT (top_contexts' format) also holds `acts`,
        the latent's activation at each of its tokens (0 where silent or unusable)."""
        _, csc = self.codes()
        positions, values = self.column(latent)
        n_usable = len(self.view.usable)
        fires = dict(zip(self.view.usable[positions].tolist(), values.tolist(), strict=True))  # row -> activation
        shade = lambda row, act: self.context(row, act, fires)
        top = [shade(r, a) for r, a in top_rows(csc, self.view.usable, [latent], TOP_N)[latent]]
        peak = float(values.max()) if len(values) else 0.0
        edges = np.linspace(0.0, peak, BINS + 1) if peak > 0 else np.zeros(BINS + 1)
        counts = np.histogram(values, bins=edges)[0] if peak > 0 else np.zeros(BINS, dtype=np.int64)
        return {
            "latent": latent,
            "n_fire": len(values),
            "n_usable": n_usable,
            "frequency": len(values) / n_usable if n_usable else 0.0,
            "max": peak,
            "top": top,
            "intervals": self._intervals(latent, positions, values, peak, shade),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }

    def context(self, row: int, activation: float, fires: dict[int, float]) -> dict:
        """The context around global `row` (top_contexts' format) with `acts` from `fires` (row -> activation)."""
        context = self.view.texts.context(row, activation, WIDTH, AFTER)
        context["acts"] = [fires.get(r, 0.0) for r in self.view.texts.context_rows(row, WIDTH, AFTER)]
        return context

    def _intervals(self, latent: int, positions: np.ndarray, values: np.ndarray, peak: float, shade) -> list[dict]:
        """Seeded samples of contexts whose activation lies in each lower interval of (0, peak], highest first."""
        rng = np.random.default_rng(latent)
        out = []
        for j in range(INTERVALS, 0, -1):
            lo, hi = peak * (j - 1) / INTERVALS, peak * j / INTERVALS
            inside = np.flatnonzero((values > lo) & (values <= hi))
            chosen = rng.choice(inside, size=min(PER_INTERVAL, len(inside)), replace=False) if len(inside) else []
            chosen = sorted(chosen, key=lambda k: (-values[k], positions[k]))
            contexts = [shade(int(self.view.usable[positions[k]]), float(values[k])) for k in chosen]
            out.append({"lo": lo, "hi": hi, "n": len(inside), "contexts": contexts})
        return out

    def decoder_row(self, latent: int) -> np.ndarray:
        """W_dec[latent] [d_in] float32."""
        return self.sae.W_dec[latent].detach().float().cpu().numpy()


def logit_effects(direction: np.ndarray, unembedding: np.ndarray, decode, n: int = N_LOGITS) -> dict:
    """The tokens a decoder direction [d_model] promotes and suppresses: W_U [vocab, d_model] @ direction,
    its `n` largest and `n` smallest entries as {positive, negative: [{token, id, value}]} (strings decoded)."""
    effects = unembedding @ direction  # [vocab]
    order = np.argsort(-effects, kind="stable")
    pick = lambda ids: [{"id": int(i), "token": decode([int(i)]), "value": float(effects[i])} for i in ids]
    return {"positive": pick(order[:n]), "negative": pick(order[::-1][:n])}
