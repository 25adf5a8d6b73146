"""Positions both models read with the same text prefix, and their activations.

Two stores of the same corpus are aligned token by token: a position of store
A and one of store B pair up when both are usable tokens of the same document
(matched by document key), in windows that start at the same character of it,
and end at the same character.  Both models have then read exactly the same
text, doc[window_start:char_end] (plus their own special tokens).  With one
tokenizer this is "same window, same position"; with two tokenizers it needs
windows that start at the same characters: extract both stores with
`--window-chars` (see `data.tokens.text_cuts`).

The universality paper's public code (github.com/wlg1/univ_feat_geom) pairs
positions by index, which mixes up tokens when the tokenizers differ; here two
positions pair only when both tokenizations end at the same character offset,
with BOS / first positions masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..data.store import ActivationStore, from_storage
from ..data.tokens import EXCLUDED_BY_DEFAULT, FLAG_SPECIAL
from ..errors import SaeAtlasError, StoreError
from ..models.handle import tokenizer_identity

_HINT = "extract both with the same --corpus, --split and --seed, and the same --window-chars (e.g. 400)"


@dataclass
class Alignment:
    """Aligned positions of two stores, in the order of store A's rows.

    rows_a, rows_b [n] int64: global row indices (shards concatenated in order).
    doc [n] int64: document group 0..n_groups-1, one number per shared document key.
    token_a, token_b [n] int64: the token ids at those rows.
    """

    rows_a: np.ndarray
    rows_b: np.ndarray
    doc: np.ndarray
    token_a: np.ndarray
    token_b: np.ndarray
    n_groups: int
    counts: dict = field(default_factory=dict)
    """usable_a / usable_b (usable tokens of each store), shared_documents, aligned, same_char_other_window
    (usable A tokens ending at a character where a usable B token ends in the same document, but in a window
    that starts elsewhere: not aligned), method ("position": one tokenizer; "char_offset"), shift."""

    def __len__(self) -> int:
        return len(self.rows_a)


@dataclass
class _Tokens:
    """What alignment needs of one store, per row (global rows) [n_tokens] each."""

    token_id: np.ndarray
    group: np.ndarray
    """Shared document group of the row's document, -1 when the other store lacks it."""
    window: np.ndarray
    """Window number of the row (windows start at position 0)."""
    start_key: np.ndarray
    """int64 (group of the window's first text token) << 32 | window start character; -1 if unusable."""
    char_end: np.ndarray
    flags: np.ndarray
    usable: np.ndarray
    """bool: no excluded flag, a shared document, and the prefix up to char_end is complete."""


# ---------------------------------------------------------------- public
def align_stores(
    store_a: ActivationStore, store_b: ActivationStore, exclude: int = EXCLUDED_BY_DEFAULT, shift: int = 0
) -> Alignment:
    """Pair the positions of `store_a` and `store_b` where both models read the same text prefix.

    exclude: flag bits that make a token unusable (default BOS/special and position 0).
    shift: misalignment control; pair each aligned A position with the B token `shift` positions later
    in the same B window (pairs falling outside the window, or on an excluded token, are dropped).
    Raises SaeAtlasError when the stores share no document or no position aligns.
    """
    groups_a, groups_b, n_shared = _shared_groups(store_a, store_b)
    a = _tokens(store_a, groups_a, exclude)
    b = _tokens(store_b, groups_b, exclude)
    rows_a, rows_b, other_window = _match(a, b)
    if len(rows_a) == 0:
        raise SaeAtlasError(
            f"no position of '{store_a.path}' aligns with '{store_b.path}' ({n_shared} shared documents, "
            f"{other_window} tokens end at the same character in windows that start elsewhere): {_HINT}"
        )
    if shift:
        rows_a, rows_b = _shifted(rows_a, rows_b, b, shift, exclude, store_b.path)
    doc, n_groups = _renumber(a.group[rows_a])
    same_tokenizer = store_a.manifest["tokenizer"]["identity"] == store_b.manifest["tokenizer"]["identity"]
    counts = {
        "usable_a": int(((a.flags & exclude) == 0).sum()),
        "usable_b": int(((b.flags & exclude) == 0).sum()),
        "shared_documents": n_shared,
        "aligned": len(rows_a),
        "same_char_other_window": int(other_window),
        "method": "position" if same_tokenizer else "char_offset",
        "shift": int(shift),
    }
    return Alignment(rows_a, rows_b, doc, a.token_id[rows_a], b.token_id[rows_b], n_groups, counts)


def gather_rows(store: ActivationStore, hook: str, rows: np.ndarray, chunk: int = 8192) -> Iterator[torch.Tensor]:
    """Activations of `hook` at global `rows` [n] (any order), as float32 [<=chunk, d_model] tensors in order.

    Reads memory-mapped shards, `chunk` rows at a time (memory: about chunk x d_model floats).
    """
    rows = np.asarray(rows, dtype=np.int64)
    offsets = np.cumsum([0] + [s["n_tokens"] for s in store.manifest["shards"]])  # [n_shards + 1]
    if len(rows) and (rows.min() < 0 or rows.max() >= offsets[-1]):
        raise StoreError(
            f"rows out of range for store '{store.path}' ({offsets[-1]} tokens): the alignment belongs to another store"
        )
    for first in range(0, len(rows), chunk):
        part = rows[first : first + chunk]
        shard = np.searchsorted(offsets, part, side="right") - 1  # [m]
        out = torch.empty((len(part), store.d_model), dtype=torch.float32)
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            local = part[where] - offsets[s]
            order = np.argsort(local, kind="stable")  # sorted reads from the memory map
            raw = store.raw_activations(hook, int(s))[local[order]]
            out[torch.from_numpy(where[order])] = from_storage(raw, store.dtype).float()
        yield out


def tokenizer_for_store(store: ActivationStore):
    """The tokenizer that wrote `store` (from its manifest's model spec), loaded without the weights.

    Raises SaeAtlasError if the model spec now resolves to a different tokenizer than the manifest records.
    """
    return _cached_tokenizer(store.manifest["model"]["spec"], store.manifest["tokenizer"]["identity"], str(store.path))


# ---------------------------------------------------------------- documents
def _shared_groups(store_a: ActivationStore, store_b: ActivationStore) -> tuple[np.ndarray, np.ndarray, int]:
    """doc_id -> shared group (or -1) for each store, and the number of shared documents.

    Groups are numbered in store A's document order; a key seen twice in one store keeps its first document.
    """
    keys_a, keys_b = _doc_keys(store_a), _doc_keys(store_b)
    in_b = set(keys_b) - {None}
    shared = {key: i for i, key in enumerate(k for k in keys_a if k is not None and k in in_b)}
    if not shared:
        raise SaeAtlasError(f"stores '{store_a.path}' and '{store_b.path}' share no document (by key): {_HINT}")
    return _group_map(keys_a, shared), _group_map(keys_b, shared), len(shared)


def _doc_keys(store: ActivationStore) -> list[str | None]:
    """Key of every doc_id of the store, None for doc ids it does not hold; repeated keys after the first are None."""
    docs = store.documents()
    keys: list[str | None] = [None] * (max(docs) + 1 if docs else 0)
    seen: set[str] = set()
    for doc_id in sorted(docs):
        key = docs[doc_id]["key"]
        if key not in seen:
            keys[doc_id] = key
            seen.add(key)
    return keys


def _group_map(keys: list[str | None], shared: dict[str, int]) -> np.ndarray:
    return np.array([shared.get(k, -1) if k is not None else -1 for k in keys], dtype=np.int64)


def _renumber(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense group numbers 0..G-1 in order of first appearance (store A's document order)."""
    present, inverse = np.unique(groups, return_inverse=True)
    return inverse.astype(np.int64), len(present)


# ---------------------------------------------------------------- per-row keys
def _all_index(store: ActivationStore) -> np.ndarray:
    """Token records of every shard, concatenated, structured [n_tokens]."""
    return np.concatenate([np.asarray(store.index(s)) for s in range(store.n_shards)])


def _tokens(store: ActivationStore, doc_groups: np.ndarray, exclude: int) -> _Tokens:
    """Per-row window-start keys and usability of one store (vectorised over rows)."""
    index = _all_index(store)
    doc = index["doc_id"].astype(np.int64)
    group = doc_groups[doc]  # every stored doc_id has its documents/ record
    window = np.cumsum(index["position"] == 0) - 1  # [n]
    text = np.flatnonzero((index["flags"] & FLAG_SPECIAL) == 0)  # text rows, in store order
    start, end = index["char_start"][text].astype(np.int64), index["char_end"][text].astype(np.int64)
    new_doc = np.r_[True, doc[text][1:] != doc[text][:-1]]
    # Characters before a window = everything up to the end of the document's previous text token; the
    # min() keeps tokenizers whose offsets skip whitespace (BERT) at the same start as those that include it.
    prev_end = np.where(new_doc, 0, np.r_[0, end[:-1]])
    text_start = np.minimum(start, prev_end)
    # A prefix is complete only when the document's next text token starts at or after char_end (several
    # byte-level tokens of one character share its span; only the last one has read the whole character).
    complete = np.r_[new_doc[1:] | (start[1:] >= end[:-1]), True]
    # Each window's start: (group of its first text token's document) << 32 | that token's text_start.
    windows_with_text, first_at = np.unique(window[text], return_index=True)
    first_group = group[text[first_at]]
    window_key = np.full(int(window[-1]) + 1 if len(window) else 0, -1, dtype=np.int64)
    window_key[windows_with_text] = np.where(first_group >= 0, (first_group << 32) | text_start[first_at], -1)
    start_key = window_key[window]  # [n]
    usable = np.zeros(len(index), dtype=bool)
    usable[text] = complete
    usable &= ((index["flags"] & exclude) == 0) & (group >= 0) & (start_key >= 0)
    return _Tokens(
        index["token_id"].astype(np.int64),
        group,
        window,
        start_key,
        index["char_end"].astype(np.int64),
        index["flags"],
        usable,
    )


def _match(a: _Tokens, b: _Tokens) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows of A and B (sorted by A row) with equal (window start, document, char_end), and the count of
    usable A rows whose (document, char_end) occurs in B only in windows that start elsewhere."""
    ra, rb = np.flatnonzero(a.usable), np.flatnonzero(b.usable)
    # Factorise (window start key, document) jointly over both stores, then one int64 key per row.
    start_ids = _factorize(np.r_[a.start_key[ra], b.start_key[rb]])
    window_ids = _factorize((start_ids << 32) | np.r_[a.group[ra], b.group[rb]])
    key = (window_ids << 32) | np.r_[a.char_end[ra], b.char_end[rb]]
    first_a, first_b = _keep_first(key[: len(ra)]), _keep_first(key[len(ra) :])
    ra_u, rb_u = ra[first_a], rb[first_b]
    _, ia, ib = np.intersect1d(key[first_a], key[len(ra) + first_b], assume_unique=True, return_indices=True)
    rows_a, rows_b = ra_u[ia], rb_u[ib]
    order = np.argsort(rows_a, kind="stable")
    char_a, char_b = (a.group[ra] << 32) | a.char_end[ra], (b.group[rb] << 32) | b.char_end[rb]
    same_char = int(np.isin(char_a, char_b).sum()) - len(rows_a)
    return rows_a[order], rows_b[order], same_char


def _factorize(values: np.ndarray) -> np.ndarray:
    """Small dense int64 codes of `values` (equal values, equal codes)."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _keep_first(keys: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each key (keys are unique in practice; duplicates are dropped)."""
    return np.sort(np.unique(keys, return_index=True)[1])


def _shifted(
    rows_a: np.ndarray, rows_b: np.ndarray, b: _Tokens, shift: int, exclude: int, path_b
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned pairs with B moved `shift` rows within its window; pairs leaving the window or landing on an
    excluded token are dropped."""
    target = rows_b + shift
    inside = (target >= 0) & (target < len(b.window))
    target_c = np.clip(target, 0, max(len(b.window) - 1, 0))
    keep = inside & (b.window[target_c] == b.window[rows_b]) & ((b.flags[target_c] & exclude) == 0)
    if not keep.any():
        raise SaeAtlasError(
            f"shift {shift} moves every aligned position of '{path_b}' out of its window: use a smaller shift"
        )
    return rows_a[keep], target[keep]


# ---------------------------------------------------------------- tokenizer
@lru_cache(maxsize=8)
def _cached_tokenizer(spec: str, identity: str, store_path: str):
    from ..models import load_tokenizer

    try:
        tokenizer = load_tokenizer(spec)
    except SaeAtlasError as exc:
        raise SaeAtlasError(f"cannot load the tokenizer of store '{store_path}' (model '{spec}'): {exc}") from exc
    if tokenizer_identity(tokenizer) != identity:
        raise SaeAtlasError(
            f"model '{spec}' recorded by store '{store_path}' now has a different tokenizer than the one that "
            "wrote the store: point the manifest's model at the original model or extract again"
        )
    return tokenizer
