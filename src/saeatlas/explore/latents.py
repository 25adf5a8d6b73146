"""One side's latents, loaded on demand: a store's token texts, an SAE's sparse codes over the store's usable
positions, and a latent's dashboard (as SAE-Vis / sae-dashboard show one): top activating contexts,
samples from lower activation intervals, the histogram of its nonzero activations, its firing frequency, and
the tokens its decoder direction promotes and suppresses through the model's unembedding.

Positions are the store's usable tokens (`compare.contexts.usable_rows`: no BOS/special token, not
position 0), so a latent's top contexts here are exactly `compare.contexts.top_contexts`'s (both come from
`contexts_from_codes` on the same codes).  Files are only read (memory maps, safetensors).

The controls have dashboards too: the random_init control's SAE is a `LatentSpace` over an SAE given in memory
(rebuilt by `views.Explorer`), and the neurons control's "latents" are raw neurons (`NeuronSpace`): neuron i is
dimension i of the store's activations, signed, so its histogram spans [min, max], its frequency counts the
positions where it is positive, and its "decoder direction" is the unit vector e_i (its logit effects are
column i of W_U).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..compare.align import gather_rows
from ..compare.contexts import Texts, store_codes, top_rows, usable_rows
from ..data.store import ActivationStore, from_storage
from ..fileio import cache_dir, write_bytes_atomic
from .study import SideSpec

log = logging.getLogger("saeatlas.explore")

TOP_N = 10
"""Top activating contexts per latent."""
WIDTH, AFTER = 12, 4
"""Tokens of context before / after the firing token (top_contexts' defaults)."""
INTERVALS = 4
"""Lower activation intervals sampled below the top contexts: (0, 1/4], (1/4, 2/4], ... of the max."""
PER_INTERVAL = 3
"""Contexts sampled from each interval."""
BINS = 24
"""Histogram bins over (0, max activation] (a neuron's: over [min, max])."""
NEURON_COLUMNS = 8
"""Neuron columns [n_usable] a `NeuronSpace` keeps (the most recently used)."""
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


CODES_VERSION = 1
"""Bumped when the codes an SAE gives a store would change (the encode, the usable rows): older caches go."""


def _codes_key(spec: SideSpec, view: StoreView, device: torch.device) -> str:
    """Names the codes of SAE `spec.sae` over the usable rows of `spec.hook` in store `view`: the store's
    manifest and the SAE's files by path, size and modification time (a study's products are written once,
    by renaming, so a rewritten product has a new time), the hook and the row count."""
    files = [Path(view.store.path) / "manifest.json", *sorted(p for p in Path(spec.sae).iterdir() if p.is_file())]
    parts = [f"{CODES_VERSION}", spec.hook, str(len(view.usable)), device.type]  # float sums differ by device
    for f in files:
        stat = f.stat()
        parts.append(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cached_codes(spec: SideSpec, view: StoreView, device: torch.device, encode) -> sp.csr_array:
    """The codes `encode()` gives, read from $SAEATLAS_CACHE/explore/<key>.npz when an earlier explorer wrote
    them (never into the study folder); a damaged or unwritable cache only means encoding again."""
    path = cache_dir() / "explore" / f"{_codes_key(spec, view, device)}.npz"
    try:
        return sp.csr_array(sp.load_npz(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    codes = encode()
    try:
        buffer = io.BytesIO()
        sp.save_npz(buffer, sp.csr_matrix(codes), compressed=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as exc:  # a full or read-only cache: the explorer works without it
        log.warning("explore: cannot keep the codes in %s (%s); they are encoded again next time", path, exc)
    return codes


class LatentSpace:
    """The SAE of one side at its hook, with its codes over the store's usable positions (built once).
    `sae`: the SAE itself (the random_init control's, rebuilt); None: loaded from `spec.sae`."""

    unit = "latent"

    def __init__(self, spec: SideSpec, view: StoreView, sae=None, device: str | torch.device = "cpu"):
        from ..sae.formats import load_sae

        self.spec, self.view = spec, view
        self.sae = (load_sae(spec.sae, device) if sae is None else sae.to(device)).eval()
        self._lock = threading.Lock()
        self._codes: sp.csr_array | None = None
        self._csc: sp.csc_array | None = None

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def codes(self) -> tuple[sp.csr_array, sp.csc_array]:
        """Codes [n_usable, d_sae], as CSR (rows) and CSC (columns), encoded on first use (a stored SAE's are
        kept in saeatlas's cache, `cached_codes`, so a later explorer over the same study skips the encode)."""
        with self._lock:
            if self._codes is None:
                encode = lambda: store_codes(self.view.store, self.sae, self.spec.hook, self.view.usable)
                codes = (
                    encode()
                    if self.spec.kind != "sae"
                    else cached_codes(self.spec, self.view, self.sae.W_dec.device, encode)
                )
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
            "unit": self.unit,
            "kind": self.spec.kind,
            "fires": "nonzero",
            "n_fire": len(values),
            "n_usable": n_usable,
            "frequency": len(values) / n_usable if n_usable else 0.0,
            "max": peak,
            "top": top,
            "intervals": _intervals(latent, positions, values, peak, self.view.usable, shade),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }

    def dense(self, latent: int) -> np.ndarray:
        """The latent's activation at every usable position [n_usable] float32 (zeros where it is silent)."""
        positions, values = self.column(latent)
        out = np.zeros(len(self.view.usable), dtype=np.float32)
        out[positions] = values
        return out

    def on(self, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, max, n_fire) [d_sae] each of the codes at usable positions `where` [m] (m >= 1)."""
        codes, _ = self.codes()
        sub = codes[where]  # [m, d_sae]
        mean = np.asarray(sub.sum(axis=0)).ravel() / len(where)
        peak = np.asarray(sub.max(axis=0).toarray()).ravel()
        fires = np.bincount(sub.indices[sub.data != 0], minlength=self.d_sae)
        return mean, peak, fires

    def context(self, row: int, activation: float, fires: dict[int, float]) -> dict:
        """The context around global `row` (top_contexts' format) with `acts` from `fires` (row -> activation)."""
        context = self.view.texts.context(row, activation, WIDTH, AFTER)
        context["acts"] = [fires.get(r, 0.0) for r in self.view.texts.context_rows(row, WIDTH, AFTER)]
        return context

    def decoder_row(self, latent: int) -> np.ndarray:
        """W_dec[latent] [d_in] float32."""
        return self.sae.W_dec[latent].detach().float().cpu().numpy()


class NeuronSpace:
    """The raw neurons of one side at its hook (the neurons control; compare's `neuron_side`): neuron i is
    dimension i of the store's activations.  A neuron's column is read from the memory maps when asked for (the
    last NEURON_COLUMNS are kept), never the whole [n, d_model]."""

    unit = "neuron"

    def __init__(self, spec: SideSpec, view: StoreView):
        self.spec, self.view = spec, view
        self._lock = threading.Lock()
        self._columns: dict[int, np.ndarray] = {}

    @property
    def d_sae(self) -> int:
        return int(self.view.store.d_model)

    def dense(self, neuron: int) -> np.ndarray:
        """The neuron's activation at every usable position [n_usable] float32 (signed)."""
        with self._lock:
            if neuron in self._columns:
                self._columns[neuron] = self._columns.pop(neuron)  # most recent last
                return self._columns[neuron]
        store = self.view.store
        parts = [
            from_storage(store.raw_activations(self.spec.hook, s)[:, neuron], store.dtype).float().numpy()
            for s in range(store.n_shards)
        ]
        column = np.concatenate(parts)[self.view.usable].astype(np.float32)  # [n_usable]
        with self._lock:
            self._columns[neuron] = column
            while len(self._columns) > NEURON_COLUMNS:
                self._columns.pop(next(iter(self._columns)))
        return column

    def column(self, neuron: int) -> tuple[np.ndarray, np.ndarray]:
        """Usable positions [m] where the neuron is positive ("fires") and its values there [m] float32."""
        values = self.dense(neuron)
        positions = np.flatnonzero(values > 0)
        return positions, values[positions]

    def dashboard(self, neuron: int) -> dict:
        """A neuron's dashboard, as `LatentSpace.dashboard`'s with these differences: `top` are the TOP_N largest
        values (ties: the earlier position); the histogram spans [min, max] of every usable position's value
        (`signed`); `n_fire` / `frequency` count the positions where it is positive (`fires`: "positive"); the
        intervals sample (0, max]; `min` is its smallest value."""
        values = self.dense(neuron)
        usable = self.view.usable
        positions, positive = self.column(neuron)
        shade = lambda row, act: self.context(row, act, values)
        top = np.lexsort((np.arange(len(values)), -values))[:TOP_N]
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
        edges = np.linspace(lo, hi, BINS + 1) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, BINS + 1)
        counts = np.histogram(values, bins=edges)[0]
        peak = max(hi, 0.0)
        return {
            "latent": neuron,
            "unit": self.unit,
            "kind": self.spec.kind,
            "fires": "positive",
            "n_fire": len(positions),
            "n_usable": len(usable),
            "frequency": len(positions) / len(usable) if len(usable) else 0.0,
            "max": hi,
            "min": lo,
            "top": [shade(int(usable[p]), float(values[p])) for p in top],
            "intervals": _intervals(neuron, positions, positive, peak, usable, shade),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist(), "signed": True},
        }

    def context(self, row: int, activation: float, values: np.ndarray) -> dict:
        """The context around global `row` with `acts`: the neuron's value at each of its tokens (0 where unusable)."""
        usable = self.view.usable
        context = self.view.texts.context(row, activation, WIDTH, AFTER)
        rows = np.asarray(self.view.texts.context_rows(row, WIDTH, AFTER), dtype=np.int64)
        at = np.minimum(np.searchsorted(usable, rows), len(usable) - 1)
        context["acts"] = np.where(usable[at] == rows, values[at], 0.0).astype(float).tolist()
        return context

    def on(self, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, max, n_positive) [d_model] each of the activations at usable positions `where` [m] (m >= 1)."""
        acts = torch.cat(list(gather_rows(self.view.store, self.spec.hook, self.view.usable[where]))).numpy()
        return acts.mean(0), acts.max(0), (acts > 0).sum(0)

    def decoder_row(self, neuron: int) -> np.ndarray:
        """The unit vector e_neuron [d_model] float32 (its logit effects are column `neuron` of W_U)."""
        out = np.zeros(self.d_sae, dtype=np.float32)
        out[neuron] = 1.0
        return out


def _intervals(latent: int, positions: np.ndarray, values: np.ndarray, peak: float, usable: np.ndarray, shade):
    """Seeded samples of contexts whose activation lies in each lower interval of (0, peak], highest first:
    [{lo, hi, n, contexts}]; positions [m] index `usable`, values [m] their activations."""
    rng = np.random.default_rng(latent)
    out = []
    for j in range(INTERVALS, 0, -1):
        lo, hi = peak * (j - 1) / INTERVALS, peak * j / INTERVALS
        inside = np.flatnonzero((values > lo) & (values <= hi))
        chosen = rng.choice(inside, size=min(PER_INTERVAL, len(inside)), replace=False) if len(inside) else []
        chosen = sorted(chosen, key=lambda k: (-values[k], positions[k]))
        contexts = [shade(int(usable[positions[k]]), float(values[k])) for k in chosen]
        out.append({"lo": lo, "hi": hi, "n": len(inside), "contexts": contexts})
    return out


def logit_effects(direction: np.ndarray, unembedding: np.ndarray, decode, n: int = N_LOGITS) -> dict:
    """The tokens a decoder direction [d_model] promotes and suppresses: W_U [vocab, d_model] @ direction,
    its `n` largest and `n` smallest entries as {positive, negative: [{token, id, value}]} (strings decoded)."""
    effects = unembedding @ direction  # [vocab]
    order = np.argsort(-effects, kind="stable")
    pick = lambda ids: [{"id": int(i), "token": decode([int(i)]), "value": float(effects[i])} for i in ids]
    return {"positive": pick(order[:n]), "negative": pick(order[::-1][:n])}
