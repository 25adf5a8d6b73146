"""Tokenization with character offsets and packing into context windows."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TEXTS, train_other_tokenizer

from saeatlas.data.tokens import FLAG_FIRST, FLAG_SPECIAL, pack_windows, text_cuts, token_pieces, tokenize_text
from saeatlas.models import load_model


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
        ids, _ = tokenize_text(tok, text)
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


# ---------------------------------------------------------------- windows cut at characters
def _long_docs():
    return [(i, " ".join(TEXTS[(i + j) % 5] for j in range(3 + 2 * i))) for i in range(6)]


def test_text_cuts_start_at_a_space_before_a_word_every_n_characters():
    text = "aa bb  cc (dd) ee 12 ff"
    assert text_cuts(text, 1) == [0, 2, 14, 17, 20]  # not inside "  ", not before "(", yes before digits
    assert text_cuts(text, 6) == [0, 14, 20]  # the first candidate at or after the previous cut + 6
    assert text_cuts(text, 100) == [0]
    assert text_cuts("", 5) == [0]


def test_window_chars_windows_start_at_the_cuts(gemma_handle):
    tok = gemma_handle.tokenizer
    windows = list(pack_windows(_long_docs(), tok, context=32, prefix=(tok.bos_token_id,), window_chars=60))
    for doc_id, text in _long_docs():
        ids, _ = tokenize_text(tok, text)
        mine = [w for w in windows if w.doc_ids[0] == doc_id]
        assert all(len(w) <= 32 and w.flags[0] == FLAG_SPECIAL | FLAG_FIRST for w in mine)
        assert np.array_equal(np.concatenate([w.token_ids[1:] for w in mine]), ids)  # every token once, in order
        starts = [int(w.char_spans[1, 0]) for w in mine]
        cuts = text_cuts(text, 60)
        assert set(cuts) <= set(starts) and len(cuts) > 2  # this tokenizer starts a token at every cut
        for before, start in zip(mine, starts[1:]):  # any other window follows a full one (piece > context)
            assert start in cuts or len(before) == 32


def test_window_starts_coincide_across_tokenizers(gemma_handle):
    """Two different tokenizers cut at the same characters, so their windows start at the same text."""
    first, other = gemma_handle.tokenizer, train_other_tokenizer()
    assert first.get_vocab() != other.get_vocab()

    def starts(tok, **kw):
        return {(int(w.doc_ids[0]), int(w.char_spans[0, 0])) for w in pack_windows(_long_docs(), tok, context=24, **kw)}

    by_chars = starts(first, window_chars=50), starts(other, window_chars=50)
    by_tokens = starts(first), starts(other)
    shared = len(by_chars[0] & by_chars[1]) / max(len(by_chars[0]), len(by_chars[1]))
    shared_tokens = len(by_tokens[0] & by_tokens[1]) / max(len(by_tokens[0]), len(by_tokens[1]))
    assert len(by_chars[0]) > 3 * len(_long_docs())
    assert shared >= 0.9 and shared_tokens < 0.5


def test_default_pieces_are_runs_of_body_tokens():
    spans = np.stack([np.arange(10) * 2, np.arange(10) * 2 + 2], axis=1)
    assert token_pieces(spans, "x" * 20, 4) == [(0, 4), (4, 8), (8, 10)]
    text = "aaa bbb ccc ddd eee"  # 19 chars; tokens of 2 chars do not start at the cuts 4, 8, ...
    spans = np.array([[0, 3], [3, 7], [7, 11], [11, 15], [15, 19]])
    assert token_pieces(spans, text, 2, window_chars=8) == [(0, 2), (2, 3), (3, 5)]  # cut 8 -> token at 11


def test_window_chars_refuses_packing(gemma_handle):
    with pytest.raises(ValueError, match="pack_documents"):
        list(pack_windows(_docs(), gemma_handle.tokenizer, context=16, pack_documents=True, window_chars=40))
    from saeatlas.data.config import ExtractConfig
    from saeatlas.errors import SaeAtlasError

    with pytest.raises(SaeAtlasError, match="bad window_chars = 40: .*drop pack_documents"):
        ExtractConfig(model="m", hooks=["resid_post.0"], pack_documents=True, window_chars=40)
    with pytest.raises(SaeAtlasError, match="bad window_chars = 0"):
        ExtractConfig(model="m", hooks=["resid_post.0"], window_chars=0)
    settings = ExtractConfig(model="m", hooks=["resid_post.0"]).manifest_settings()
    assert "window_chars" not in settings  # old manifests keep their identity
    assert settings["dtype"] == "bfloat16" and "store_dtype" not in settings  # store format 1's name
    assert ExtractConfig(model="m", hooks=["0"], window_chars=40).manifest_settings()["window_chars"] == 40
