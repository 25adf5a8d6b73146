"""Tokenization with character offsets and packing into context windows."""

from __future__ import annotations

import numpy as np
import pytest

from saeatlas.data.tokens import FLAG_FIRST, FLAG_SPECIAL, pack_windows, tokenize_text
from saeatlas.models import load_model

from conftest import TEXTS


@pytest.fixture(scope="module")
def gemma_handle(tiny_gemma):
    return load_model(str(tiny_gemma))


def test_offsets_cover_the_text_in_order(gemma_handle):
    text = TEXTS[0] + " " + TEXTS[3]
    ids, spans = tokenize_text(gemma_handle.tokenizer, text)
    assert ids.dtype == np.int32 and spans.shape == (len(ids), 2)
    assert spans[0, 0] == 0 and spans[-1, 1] == len(text)
    assert (spans[1:, 0] == spans[:-1, 1]).all()  # contiguous, no gaps or overlaps
    for token, (start, end) in zip(ids, spans):
        assert gemma_handle.tokenizer.decode([int(token)]) == text[start:end]


def _docs():
    return [(i, " ".join(TEXTS[: 1 + i % 5])) for i in range(6)]


def test_windows_hold_one_document_and_repeat_the_bos(gemma_handle):
    tok = gemma_handle.tokenizer
    prefix, suffix = gemma_handle.special_tokens
    windows = list(pack_windows(_docs(), tok, context=16, prefix=prefix, suffix=suffix))
    per_doc = {}
    for w in windows:
        assert 2 <= len(w) <= 16
        assert len(set(w.doc_ids.tolist())) == 1
        assert w.token_ids[0] == tok.bos_token_id and w.flags[0] == FLAG_SPECIAL | FLAG_FIRST
        assert (w.flags[1:] == 0).all() and (w.char_spans[0] == 0).all()
        per_doc.setdefault(int(w.doc_ids[0]), []).append(w)
    for doc_id, text in _docs():
        ids, spans = tokenize_text(tok, text)
        joined = np.concatenate([w.token_ids[1:] for w in per_doc[doc_id]])
        assert np.array_equal(joined, ids)  # every token once, in order
        assert all(len(w) == 16 for w in per_doc[doc_id][:-1])  # only the last window is short


def test_packing_fills_windows_across_documents(gemma_handle):
    tok = gemma_handle.tokenizer
    windows = list(pack_windows(_docs(), tok, context=16, prefix=gemma_handle.special_tokens[0], pack_documents=True))
    assert all(len(w) == 16 for w in windows[:-1])
    assert any(len(set(w.doc_ids[1:].tolist())) > 1 for w in windows)
    all_ids = np.concatenate([w.token_ids[1:] for w in windows])
    expected = np.concatenate([tokenize_text(tok, text)[0] for _, text in _docs()])
    assert np.array_equal(all_ids, expected)


def test_without_bos_position_zero_is_a_text_token_flagged_first(tiny_llama):
    handle = load_model(str(tiny_llama))
    windows = list(pack_windows(_docs(), handle.tokenizer, context=8))
    for w in windows:
        assert w.flags[0] == FLAG_FIRST and (w.flags[1:] == 0).all()
        assert w.char_spans[0, 1] > w.char_spans[0, 0]


def test_context_too_small_for_specials(gemma_handle):
    with pytest.raises(ValueError, match="no room"):
        list(pack_windows(_docs(), gemma_handle.tokenizer, context=1, prefix=(2,)))
