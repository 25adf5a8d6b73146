"""Downstream metrics: the SAE spliced into the model at its hook.

CE-loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), where CE_zero
zero-ablates the hook's activation; delta LM loss = CE_sae - CE_clean; KL is
KL(clean || spliced) of the next-token distributions.  The activation is
replaced at every text token; special tokens and position 0 (the attention
sink, which SAEs are not trained on) keep their clean activations.

The held-out text is a set of windows spread over all held-out documents and
chosen from the texts alone (`choose_windows`: documents by key, windows by the
character they start at), so every model of a study reads the same text.  Each
figure is the mean over documents of the per-document means, with its standard
error over documents (`saeatlas.sae.metrics.downstream_figures`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..data.corpus import Document, load_documents
from ..data.tokens import EXCLUDED_BY_DEFAULT, Window, framed, pad_windows, text_cuts, tokenize_text
from ..models import ModelHandle, parse_hook, patched
from .metrics import downstream_figures
from .model import SparseAutoencoder

CHARS_PER_TOKEN = 4
"""Characters per token assumed when turning a token budget into windows of text (English, BPE tokenizers).
The windows are fixed in characters so that every model reads the same text; `n_predictions` says how many
tokens a model actually scored."""


def _seeded(seed: int, key: str) -> int:
    """A 64-bit integer from `seed` and a document key, the same on every machine and in every process."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "little")


def allocate_windows(n_cuts: Sequence[int], n_windows: int) -> list[int]:
    """Windows per document [D]: one to each document in turn, in the given order, until `n_windows` are
    given out or every document's `n_cuts` (its candidate windows) are used; the first documents get the
    remainder."""
    given = [0] * len(n_cuts)
    total, left = 0, sum(n_cuts)
    while total < min(n_windows, left):
        for d, m in enumerate(n_cuts):
            if total == n_windows:
                break
            if given[d] < m:
                given[d] += 1
                total += 1
    return given


def choose_windows(documents: Sequence[Document], n_chars: int, window_chars: int, seed: int = 0) -> dict:
    """Document key -> sorted character positions where its windows start, chosen from the texts alone.

    Candidate windows start at `text_cuts(text, window_chars)` and run to the next cut.  Documents are
    visited in an order seeded by their key (so the choice does not depend on the list's order, and a budget
    smaller than the number of documents reads a seeded subset); `allocate_windows` spreads the windows over
    them; within a document they are a systematic sample with a seeded offset (evenly spread through the
    text).  As many windows are taken as hold `n_chars` characters (or all of them).  Documents with no
    window are left out.
    """
    docs = sorted(documents, key=lambda d: (_seeded(seed, d.key), d.key))
    cuts = [text_cuts(d.text, window_chars) for d in docs]
    lengths = [np.diff([*c, len(d.text)]) for c, d in zip(cuts, docs, strict=True)]
    offsets = [np.random.default_rng(_seeded(seed, d.key)).random() for d in docs]
    n_windows, available = max(1, math.ceil(n_chars / window_chars)), sum(len(c) for c in cuts)
    while True:
        picks = [
            np.floor((np.arange(n) + offset) * len(c) / n).astype(int) if n else np.zeros(0, int)
            for c, n, offset in zip(cuts, allocate_windows([len(c) for c in cuts], n_windows), offsets, strict=True)
        ]
        held = sum(int(length[p].sum()) for length, p in zip(lengths, picks, strict=True))
        if held >= n_chars or n_windows >= available:
            break
        n_windows += max(1, math.ceil((n_chars - held) / window_chars))
    return {d.key: [c[i] for i in p] for d, c, p in zip(docs, cuts, picks, strict=True) if len(p)}


def document_windows(
    text: str,
    starts: Sequence[int],
    window_chars: int,
    tokenizer,
    context: int,
    prefix: tuple[int, ...] = (),
    suffix: tuple[int, ...] = (),
    doc_id: int = 0,
) -> list[Window]:
    """The windows of one document that start at the characters `starts` (cuts of `text_cuts`): from the
    first token at or after a start to the first token at or after the next cut, at most `context` tokens
    with the special tokens (the end may then differ between tokenizers; the start never does)."""
    ids, spans = tokenize_text(tokenizer, text)
    chunk = Window(ids, np.full(len(ids), doc_id, np.int32), spans, np.zeros(len(ids), np.uint8))
    cuts = text_cuts(text, window_chars)
    body = context - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"context {context} leaves no room for text after special tokens")
    windows = []
    for start in starts:
        after = cuts.index(start) + 1
        end = cuts[after] if after < len(cuts) else len(text) + 1
        lo = int(np.searchsorted(spans[:, 0], start, side="left"))
        hi = min(int(np.searchsorted(spans[:, 0], end, side="left")), lo + body)
        if hi > lo:
            windows.append(framed(chunk.slice(lo, hi), prefix, suffix, doc_id))
    return windows


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """Per-row summed CE [b] (float64) of next-token prediction over positions whose next token is real, the
    log-probs [b, s-1, vocab] and that mask [b, s-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target_ok = mask[:, 1:].bool()
    ce = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.where(target_ok, ce, 0).sum(1, dtype=_wide(logits.device)), logp, target_ok


def _wide(device: torch.device) -> torch.dtype:
    """The accumulation dtype on `device`: float64 where it has it (not MPS)."""
    from ..devices import has_float64

    return torch.float64 if has_float64(device) else torch.float32


@torch.no_grad()
def spliced_metrics(
    handle: ModelHandle,
    sae: SparseAutoencoder,
    hook: str,
    corpus: str = "wiki",
    split: str = "eval",
    n_tokens: int = 8192,
    context: int = 128,
    batch_size: int = 4,
    window_chars: int | None = None,
    seed: int = 0,
) -> dict:
    """CE clean / SAE / zero-ablated, CE-loss recovered, delta loss and KL on held-out text, each with its
    standard error over documents (`<name>_se`).

    About `n_tokens` tokens in windows of `window_chars` characters (default 3 per token of `context`),
    spread over every document of `corpus`'s `split` by `choose_windows` with `seed`.  Runs on the model's
    device (the SAE is moved there); the per-document sums come back to the CPU.
    """
    point = parse_hook(hook, handle.n_layers)
    device = handle.device
    sae = sae.to(device)
    window_chars = window_chars or 3 * context
    docs = load_documents(corpus, split=split)
    chosen = choose_windows(docs, n_tokens * CHARS_PER_TOKEN, window_chars, seed)
    read = [d for d in docs if d.key in chosen]
    windows = [
        w
        for doc_id, d in enumerate(read)
        for w in document_windows(
            d.text, chosen[d.key], window_chars, handle.tokenizer, context, *handle.special_tokens, doc_id=doc_id
        )
    ]
    sums = np.zeros((4, len(read)))  # clean, sae, zero, kl per document
    counts = np.zeros(len(read))
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        ids, mask = pad_windows(batch, handle.tokenizer.pad_token_id or 0)
        keep = torch.zeros_like(mask, dtype=torch.bool)
        for row, w in enumerate(batch):
            keep[row, : len(w)] = torch.from_numpy((w.flags & EXCLUDED_BY_DEFAULT) == 0)
        ids, mask, keep = ids.to(device), mask.to(device), keep.to(device)
        keep3 = keep[..., None]

        def through_sae(act, keep3=keep3):
            recon = sae.decode(sae.encode(act.float())).to(act.dtype)
            return torch.where(keep3, recon, act)

        def zeroed(act, keep3=keep3):
            return torch.where(keep3, torch.zeros_like(act), act)

        clean_ce, clean_logp, ok = _next_token_stats(handle.model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        with patched(handle, point, through_sae):
            sae_ce, sae_logp, _ = _next_token_stats(handle.model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        with patched(handle, point, zeroed):
            zero_ce, *_ = _next_token_stats(handle.model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        kl = torch.where(ok, (clean_logp.exp() * (clean_logp - sae_logp)).sum(-1), 0).sum(1, dtype=_wide(device))
        rows = [int(w.doc_ids[0]) for w in batch]
        for i, values in enumerate((clean_ce, sae_ce, zero_ce, kl)):
            np.add.at(sums[i], rows, values.cpu().numpy())
        np.add.at(counts, rows, ok.sum(1).cpu().numpy())
    scored = counts > 0
    if not scored.any():
        raise ValueError(f"no next-token predictions in the held-out text of corpus '{corpus}'")
    clean, with_sae, zero, kl = sums[:, scored] / counts[scored]
    return {
        **downstream_figures(clean, with_sae, zero, kl),
        "n_predictions": int(counts.sum()),
        "n_windows": len(windows),
        "n_documents": int(scored.sum()),
        "documents_available": len(docs),
        "documents": sorted(d.key for d, s in zip(read, scored, strict=True) if s),
        "corpus": f"{corpus} ({split} split)",
    }
