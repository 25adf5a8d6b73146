"""Tokenization with character offsets, and packing into context windows.

Every stored token keeps the document it came from and its character span in
that document's text, so later stages can align two tokenizers (positions
where both end a token at the same character) and show contexts.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

FLAG_SPECIAL = 1
"""Token added by the tokenizer, not text: <bos>, [CLS], [SEP]."""
FLAG_FIRST = 2
"""Position 0 of a window: the attention sink, ~100x the norm of the rest."""
EXCLUDED_BY_DEFAULT = FLAG_SPECIAL | FLAG_FIRST
"""Tokens with any of these flags are left out of training and correlations by default."""

_CUT_CANDIDATE = re.compile(r"(?<=\S) (?=\w)")
"""Where a window may start: a plain space after a non-space and before a word character.

Tokenizers in use (byte-level BPE, SentencePiece/Metaspace, Llama-3 regex) all
begin a token at such a space (" word", "▁word", or a lone " " before digits),
so a window cut there starts at the same character for every tokenizer.
"""


@dataclass
class Window:
    """One context window: one row of a batch.

    token_ids [n] int32; doc_ids [n] int32; char_spans [n, 2] int32 (start, end
    in the document's text; (0, 0) for special tokens); flags [n] uint8.
    """

    token_ids: np.ndarray
    doc_ids: np.ndarray
    char_spans: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.token_ids)

    def slice(self, start: int, stop: int | None = None) -> Window:
        """Tokens [start, stop) as a new window (views, no copy)."""
        return Window(*(a[start:stop] for a in (self.token_ids, self.doc_ids, self.char_spans, self.flags)))


def tokenize_text(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [n] int32 and character spans [n, 2] int32 of `text`, no special tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    spans = np.asarray(enc["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    return ids, spans


def text_cuts(text: str, window_chars: int) -> list[int]:
    """Character positions where the windows of `text` start; depends on the text alone.

    The first cut is 0; each next cut is the first cut candidate (a space between a
    non-space and a word character) at or after the previous cut + `window_chars`.
    """
    cuts = [0]
    for match in _CUT_CANDIDATE.finditer(text):
        if match.start() >= cuts[-1] + window_chars:
            cuts.append(match.start())
    return cuts


def token_pieces(spans: np.ndarray, text: str, body: int, window_chars: int | None = None) -> list[tuple[int, int]]:
    """Token ranges [start, stop) of one document's windows, each at most `body` tokens.

    spans [n, 2]: character spans of the document's tokens.  Without
    `window_chars`: consecutive runs of `body` tokens.  With it: the document is
    cut before the first token starting at or after each of `text_cuts` (the
    token that starts exactly at the cut, for the usual tokenizers), and a
    piece longer than `body` tokens is split further every `body` tokens.
    """
    n = len(spans)
    if window_chars is None:
        return [(start, min(start + body, n)) for start in range(0, n, body)]
    starts = np.unique(np.searchsorted(spans[:, 0], text_cuts(text, window_chars), side="left"))
    bounds = [int(b) for b in starts if b < n] + [n]
    return [
        (start, min(start + body, stop))
        for piece_start, stop in itertools.pairwise(bounds)
        for start in range(piece_start, stop, body)
    ]


def _special(ids: tuple[int, ...], doc_id: int) -> Window:
    n = len(ids)
    return Window(
        np.asarray(ids, dtype=np.int32),
        np.full(n, doc_id, dtype=np.int32),
        np.zeros((n, 2), dtype=np.int32),
        np.full(n, FLAG_SPECIAL, dtype=np.uint8),
    )


def framed(body: Window, prefix: tuple[int, ...], suffix: tuple[int, ...], doc_id: int) -> Window:
    """One window: the special tokens `prefix`, the text tokens `body`, the special tokens `suffix` (all of
    document `doc_id`), its first token flagged FLAG_FIRST."""
    return _concat([_special(prefix, doc_id), body, _special(suffix, doc_id)])


def _concat(parts: list[Window]) -> Window:
    window = Window(
        *(np.concatenate(arrays) for arrays in zip(*((p.token_ids, p.doc_ids, p.char_spans, p.flags) for p in parts)))
    )
    window.flags[0] |= FLAG_FIRST  # np.concatenate made a copy, so no input is modified
    return window


def pack_windows(
    documents: Iterable[tuple[int, str]],
    tokenizer,
    context: int,
    prefix: tuple[int, ...] = (),
    suffix: tuple[int, ...] = (),
    pack_documents: bool = False,
    window_chars: int | None = None,
) -> Iterator[Window]:
    """Cut tokenized documents into windows of at most `context` tokens.

    documents: (doc_id, text) pairs in order.  prefix / suffix: special token ids
    the tokenizer adds around every sequence (e.g. (<bos>,)), repeated in each
    window.  By default a window holds one document only (the last window of a
    document may be short); with `pack_documents` windows are filled across
    document boundaries.  With `window_chars` (one document per window) windows
    start at the characters `text_cuts` picks, the same for every tokenizer (see
    `token_pieces`).
    """
    body = context - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"context {context} leaves no room for text after special tokens")
    if window_chars is not None and pack_documents:
        raise ValueError("window_chars cuts each document on its own; it cannot be combined with pack_documents")
    pending: list[Window] = []
    pending_len = 0
    for doc_id, text in documents:
        ids, spans = tokenize_text(tokenizer, text)
        chunk = Window(ids, np.full(len(ids), doc_id, np.int32), spans, np.zeros(len(ids), np.uint8))
        if not pack_documents:
            for start, stop in token_pieces(spans, text, body, window_chars):
                yield framed(chunk.slice(start, stop), prefix, suffix, doc_id)
            continue
        pending.append(chunk)
        pending_len += len(ids)
        while pending_len >= body:
            yield _take(pending, body, prefix, suffix)
            pending_len -= body
    if pack_documents and pending_len:
        yield _take(pending, pending_len, prefix, suffix)


def _take(pending: list[Window], n: int, prefix: tuple[int, ...], suffix: tuple[int, ...]) -> Window:
    """Pop the first `n` body tokens from `pending` into one window."""
    parts, need = [], n
    while need:
        head = pending[0]
        if len(head) <= need:
            parts.append(pending.pop(0))
            need -= len(head)
        else:
            parts.append(head.slice(0, need))
            pending[0] = head.slice(need)
            need = 0
    first_doc, last_doc = int(parts[0].doc_ids[0]), int(parts[-1].doc_ids[-1])
    return _concat([_special(prefix, first_doc), *parts, _special(suffix, last_doc)])


def pad_windows(windows: list[Window], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad windows into one batch: input_ids and attention_mask, both [batch, max_len] int64."""
    length = max(len(w) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.from_numpy(window.token_ids)
        mask[row, : len(window)] = 1
    return ids, mask
