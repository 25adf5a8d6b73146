"""Each latent's top activating contexts in its own model's store: the text around the token it fires on.

A context is `{"tokens": [str], "focus": int, "activation": float}`: the tokens of one window of the store
around the firing position (`width` tokens before it, `after` tokens after it, never crossing a window or
document boundary), `focus` the index of the firing token in `tokens`.

Token strings come from the stored document text and the tokens' character spans, not from decoding token
ids one at a time: one-token decoding loses the leading space of SentencePiece tokens and turns the pieces
of a multi-byte character into U+FFFD.  Each token gets the text from the end of the token before it to its
own end, so the tokens of a context join up to exactly the document's text.  Tokens without a span (`<bos>`,
`[CLS]`) are decoded with the model's tokenizer.
"""

from __future__ import annotations

import numpy as np

from ..data.store import ActivationStore
from ..data.tokens import EXCLUDED_BY_DEFAULT, FLAG_SPECIAL
from ..errors import SaeAtlasError
from .align import gather_rows, tokenizer_for_store
from .codes import encode_sparse, top_positions


def top_contexts(
    store: ActivationStore, sae, hook: str, latents, n: int = 3, width: int = 12, after: int = 4
) -> dict[int, list[dict]]:
    """latent id -> its `n` top activating contexts in `store` (largest activation first; fewer, or [],
    for a latent that fires on fewer usable tokens).

    sae: a SparseAutoencoder trained on `hook` of this store's model (used in eval mode).
    latents: latent ids to look up.  Positions are the store's usable tokens (BOS/special tokens and
    position 0 are never a focus, as everywhere downstream).  Memory: the codes' nonzeros over the store.
    """
    latents = [int(i) for i in latents]
    _check(store, sae, hook, latents, n, width, after)
    index, usable = usable_rows(store)
    if not latents or len(usable) == 0:
        return {i: [] for i in latents}
    codes = store_codes(store, sae, hook, usable)  # [n_usable, d_sae]
    return contexts_from_codes(codes, usable, Texts(store, index), latents, n, width, after)


def usable_rows(store: ActivationStore) -> tuple[np.ndarray, np.ndarray]:
    """The store's token records, structured [n_tokens] (shards concatenated), and its usable global rows
    [n_usable] (no BOS/special token, not position 0)."""
    index = np.concatenate([store.index(s) for s in range(store.n_shards)])  # [n_tokens] records
    return index, np.flatnonzero((index["flags"] & EXCLUDED_BY_DEFAULT) == 0)


def store_codes(store: ActivationStore, sae, hook: str, usable: np.ndarray):
    """CSR float32 codes [n_usable, d_sae] of `sae` (in eval mode) at the store's `usable` rows of `hook`."""
    sae.eval()
    return encode_sparse(sae, gather_rows(store, hook, usable))


def contexts_from_codes(
    codes, usable: np.ndarray, texts: Texts, latents: list[int], n: int, width: int, after: int
) -> dict[int, list[dict]]:
    """latent id -> its `n` top contexts, from codes [n_usable, d_sae] (CSR or CSC) at global rows `usable`."""
    return {
        latent: [texts.context(row, act, width, after) for row, act in picks]
        for latent, picks in top_rows(codes, usable, latents, n).items()
    }


def top_rows(codes, usable: np.ndarray, latents: list[int], n: int) -> dict[int, list[tuple[int, float]]]:
    """latent id -> [(global row, activation)] of its `n` largest activations (largest first, ties: lower row),
    from codes [n_usable, d_sae] (CSR or CSC) at global rows `usable`."""
    chosen = codes[:, np.asarray(latents, dtype=np.int64)]  # [n_usable, n_latents] column subset
    top = top_positions(chosen, n)  # [n_latents, n] positions into `usable`, -1 padded
    return {
        latent: [(int(usable[p]), float(chosen[p, j])) for p in top[j] if p >= 0] for j, latent in enumerate(latents)
    }


def _check(store: ActivationStore, sae, hook: str, latents: list[int], n: int, width: int, after: int) -> None:
    if hook not in store.hooks:
        raise SaeAtlasError(f"store '{store.path}' has no hook '{hook}': it holds {', '.join(store.hooks)}")
    if sae.cfg.d_in != store.d_model:
        raise SaeAtlasError(
            f"the SAE has d_in {sae.cfg.d_in} but store '{store.path}' has d_model {store.d_model}: "
            "give the SAE trained on this model's hook"
        )
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise SaeAtlasError(
            f"latent {bad[0]} is out of range: the SAE has {sae.cfg.d_sae} latents (0..{sae.cfg.d_sae - 1})"
        )
    if n < 1 or width < 0 or after < 0:
        raise SaeAtlasError(
            f"top_contexts needs n >= 1, width >= 0 and after >= 0, got n={n}, width={width}, after={after}"
        )


class Texts:
    """Token strings of a store's rows, from its documents' text and the tokens' character spans."""

    def __init__(self, store: ActivationStore, index: np.ndarray):
        self.store, self.index = store, index
        self.docs = {d: r["text"] for d, r in store.documents().items()}
        position = index["position"].astype(np.int64)
        # A window starts at position 0 (or where the document changes, if windows were packed across them).
        starts = (position == 0) | np.r_[True, index["doc_id"][1:] != index["doc_id"][:-1]]
        self.segment = np.cumsum(starts) - 1  # [n_tokens] window/document segment of each row
        self._tokenizer = None

    def context(self, row: int, activation: float, width: int, after: int) -> dict:
        rows = self.context_rows(row, width, after)
        return {"tokens": self._strings(rows), "focus": rows.index(row), "activation": activation}

    def context_rows(self, row: int, width: int, after: int) -> list[int]:
        """Global rows of the context around `row`: `width` before, `after` after, within its window."""
        lo, hi = max(0, row - width), min(len(self.index), row + after + 1)
        return [r for r in range(lo, hi) if self.segment[r] == self.segment[row]]

    def _strings(self, rows: list[int]) -> list[str]:
        out, prev_end = [], None
        for r in rows:
            rec = self.index[r]
            text = self.docs.get(int(rec["doc_id"]))
            start, end = int(rec["char_start"]), int(rec["char_end"])
            if text is None or rec["flags"] & FLAG_SPECIAL or end <= start:
                out.append(self._decode(int(rec["token_id"])))
                continue
            begin = start if prev_end is None or prev_end > start else prev_end  # take the gap before it
            piece = text[begin:end] or text[start:end]  # overlapping spans (byte pieces of one character)
            out.append(piece)
            prev_end = end
        return out

    def token(self, row: int) -> str:
        """The text of the token at global `row` alone (its own span; decoded for a token without one)."""
        return self._strings([row])[0]

    def _decode(self, token_id: int) -> str:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for_store(self.store)
        return self._tokenizer.decode([token_id])
