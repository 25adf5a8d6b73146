"""Cross-store alignment: positions both models read with the same text prefix, and gathering their rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import HOOK, tiny_store, train_tokenizer

from saeatlas.compare.align import Alignment, align_stores, gather_rows, tokenizer_for_store
from saeatlas.data import ActivationStore
from saeatlas.data.tokens import EXCLUDED_BY_DEFAULT, FLAG_FIRST, FLAG_SPECIAL
from saeatlas.errors import SaeAtlasError, StoreError


@pytest.fixture(scope="module")
def stores(tiny_llama, tiny_gemma, tiny_other, long_corpus, tmp_path_factory):
    """name -> ActivationStore: llama / gemma / other tokenizer, each by tokens and by --window-chars."""
    root = tmp_path_factory.mktemp("align-stores")
    out = {}
    for name, model in (("llama", tiny_llama), ("gemma", tiny_gemma), ("other", tiny_other)):
        for mode, kw in (("tokens", {}), ("chars", {"window_chars": 60})):
            tiny_store(
                model,
                long_corpus,
                root / f"{name}-{mode}",
                tokens=100_000,
                context=32,
                batch_size=8,
                shard_windows=7,
                **kw,
            )
            out[f"{name}-{mode}"] = ActivationStore(root / f"{name}-{mode}")
    return out


# ---------------------------------------------------------------- a naive reference
def _rows(store: ActivationStore) -> list[dict]:
    """Every row with its document key and its window's start character (first text token's char_start)."""
    keys = {d: r["key"] for d, r in store.documents().items()}
    index = np.concatenate([store.index(s) for s in range(store.n_shards)])
    rows, start = [], None
    for i, r in enumerate(index):
        if r["position"] == 0:
            start = None
        if start is None and not r["flags"] & FLAG_SPECIAL:
            start = int(r["char_start"])
        rows.append(
            {
                "row": i,
                "key": keys[int(r["doc_id"])],
                "start": start,
                "end": int(r["char_end"]),
                "flags": int(r["flags"]),
                "token": int(r["token_id"]),
                "position": int(r["position"]),
            }
        )
    return rows


def _reference(a: ActivationStore, b: ActivationStore, exclude: int = EXCLUDED_BY_DEFAULT):
    rows_a, rows_b = _rows(a), _rows(b)
    at_b = {(r["key"], r["start"], r["end"]): r["row"] for r in rows_b if not r["flags"] & exclude}
    pairs = [
        (r["row"], at_b[(r["key"], r["start"], r["end"])])
        for r in rows_a
        if not r["flags"] & exclude and (r["key"], r["start"], r["end"]) in at_b
    ]
    ends_b = {(r["key"], r["end"]) for r in rows_b if not r["flags"] & exclude}
    same_char = sum(1 for r in rows_a if not r["flags"] & exclude and (r["key"], r["end"]) in ends_b) - len(pairs)
    return pairs, same_char, rows_a, rows_b


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "pair",
    [
        ("llama-chars", "other-chars"),
        ("llama-chars", "gemma-chars"),
        ("other-tokens", "gemma-tokens"),
        ("gemma-chars", "gemma-chars"),
    ],
)
def test_alignment_equals_the_naive_reference(stores, pair):
    a, b = stores[pair[0]], stores[pair[1]]
    align = align_stores(a, b)
    pairs, same_char, rows_a, rows_b = _reference(a, b)
    assert list(zip(align.rows_a.tolist(), align.rows_b.tolist())) == pairs
    docs_a = a.documents()
    for ra, rb, doc in zip(align.rows_a, align.rows_b, align.doc):
        x, y = rows_a[ra], rows_b[rb]
        assert x["key"] == y["key"] and x["start"] == y["start"] and x["end"] == y["end"]
        assert not (x["flags"] | y["flags"]) & EXCLUDED_BY_DEFAULT
    # Both models read exactly the same text: document[start:end].
    ra, rb = int(align.rows_a[-1]), int(align.rows_b[-1])
    assert docs_a[0]["text"] and rows_a[ra]["key"] == rows_b[rb]["key"]
    assert np.array_equal(align.token_a, [rows_a[r]["token"] for r in align.rows_a])
    assert np.array_equal(align.token_b, [rows_b[r]["token"] for r in align.rows_b])
    # Document groups: dense, one per document key, in A's order.
    keys = [rows_a[r]["key"] for r in align.rows_a]
    assert align.n_groups == len(set(keys)) and align.doc.max() == align.n_groups - 1
    assert all((g1 == g2) == (k1 == k2) for g1, g2, k1, k2 in zip(align.doc[:-1], align.doc[1:], keys[:-1], keys[1:]))
    c = align.counts
    assert c["aligned"] == len(align) == len(pairs) and c["same_char_other_window"] == same_char
    assert c["usable_a"] == sum(1 for r in rows_a if not r["flags"] & EXCLUDED_BY_DEFAULT)
    assert c["usable_b"] == sum(1 for r in rows_b if not r["flags"] & EXCLUDED_BY_DEFAULT)
    assert c["aligned"] + c["same_char_other_window"] <= min(c["usable_a"], c["usable_b"])
    assert c["method"] == ("position" if pair[0] == pair[1] else "char_offset") and c["shift"] == 0


def test_same_store_aligns_every_usable_position(stores):
    store = stores["gemma-tokens"]
    align = align_stores(store, store)
    assert np.array_equal(align.rows_a, align.rows_b) and align.counts["method"] == "position"
    assert align.counts["aligned"] == align.counts["usable_a"] == store.manifest["n_tokens_usable"]


def test_window_chars_makes_different_tokenizers_align(stores):
    """With token windows only the documents' first windows align; cut at characters nearly everything does."""
    by_tokens = align_stores(stores["llama-tokens"], stores["other-tokens"]).counts
    by_chars = align_stores(stores["llama-chars"], stores["other-chars"]).counts
    frac_tokens = by_tokens["aligned"] / by_tokens["usable_b"]
    frac_chars = by_chars["aligned"] / by_chars["usable_b"]
    assert frac_chars > 0.9 and frac_tokens < 0.6
    assert by_tokens["same_char_other_window"] > by_tokens["aligned"]
    # Same vocabulary, but Gemma's <bos> takes a slot of each window: token windows drift apart too.
    assert (
        align_stores(stores["llama-chars"], stores["gemma-chars"]).counts["aligned"]
        > 2 * align_stores(stores["llama-tokens"], stores["gemma-tokens"]).counts["aligned"]
    )


def test_excluded_flags_are_excluded(stores):
    a, b = stores["llama-chars"], stores["other-chars"]  # neither adds a <bos>: position 0 is a text token
    default = align_stores(a, b)
    with_first = align_stores(a, b, exclude=FLAG_SPECIAL)
    flags_a = np.concatenate([a.index(s) for s in range(a.n_shards)])["flags"]
    assert not (flags_a[default.rows_a] & EXCLUDED_BY_DEFAULT).any()
    flags_b = np.concatenate([b.index(s) for s in range(b.n_shards)])["flags"]
    n_first = np.count_nonzero((flags_a[with_first.rows_a] | flags_b[with_first.rows_b]) & FLAG_FIRST)
    assert n_first > 0.5 * a.manifest["n_windows"] and len(with_first) == len(default) + n_first
    pairs, *_ = _reference(a, b, exclude=FLAG_SPECIAL)
    assert list(zip(with_first.rows_a.tolist(), with_first.rows_b.tolist())) == pairs


@pytest.mark.parametrize("shift", [1, 3, -1])
def test_shift_pairs_a_with_the_b_token_s_later_in_its_window(stores, shift):
    a, b = stores["llama-chars"], stores["other-chars"]
    base, moved = align_stores(a, b), align_stores(a, b, shift=shift)
    index_b = np.concatenate([b.index(s) for s in range(b.n_shards)])
    expected = {}
    for ra, rb in zip(base.rows_a, base.rows_b):
        t = rb + shift
        if (
            0 <= t < len(index_b)
            and index_b["position"][t] == index_b["position"][rb] + shift
            and not index_b["flags"][t] & EXCLUDED_BY_DEFAULT
        ):
            expected[int(ra)] = int(t)
    assert dict(zip(moved.rows_a.tolist(), moved.rows_b.tolist())) == expected
    assert 0.5 * len(base) < len(moved) < len(base)
    assert np.array_equal(moved.token_b, index_b["token_id"][moved.rows_b]) and moved.counts["shift"] == shift
    assert moved.n_groups == base.n_groups


def test_alignment_errors_name_both_stores(stores, tiny_llama, tiny_gemma, long_corpus, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "elsewhere.txt").write_text("Completely different words live in this one file.")
    tiny_store(tiny_llama, tmp_path / "corpus", tmp_path / "elsewhere", tokens=1000)
    lonely = ActivationStore(tmp_path / "elsewhere")
    with pytest.raises(SaeAtlasError, match=r"share no document.*--window-chars") as err:
        align_stores(stores["llama-chars"], lonely)
    assert str(lonely.path) in str(err.value) and str(stores["llama-chars"].path) in str(err.value)
    # Windows of 2: Llama's hold tokens (2k, 2k+1), Gemma's <bos> + token j; no window start and end agree.
    for name, model in (("pairs", tiny_llama), ("singles", tiny_gemma)):
        tiny_store(model, long_corpus, tmp_path / name, tokens=200, context=2)
    with pytest.raises(SaeAtlasError, match=r"no position .* aligns .*windows that start elsewhere.*--window-chars"):
        align_stores(ActivationStore(tmp_path / "pairs"), ActivationStore(tmp_path / "singles"))
    with pytest.raises(SaeAtlasError, match="out of its window"):
        align_stores(stores["llama-chars"], stores["other-chars"], shift=1000)


def test_gather_rows_returns_the_rows_in_order(stores):
    store = stores["other-chars"]
    full = torch.cat([store.activations(HOOK, s) for s in range(store.n_shards)]).float()
    rows = np.random.default_rng(0).permutation(len(full))[:300]
    rows = np.r_[rows, rows[:5]]  # repeats are fine
    parts = list(gather_rows(store, HOOK, rows, chunk=64))
    assert [len(p) for p in parts] == [64] * 4 + [305 - 256] and parts[0].dtype == torch.float32
    assert torch.equal(torch.cat(parts), full[torch.from_numpy(rows)])
    align = align_stores(stores["llama-chars"], store)
    assert torch.equal(torch.cat(list(gather_rows(store, HOOK, align.rows_b))), full[torch.from_numpy(align.rows_b)])
    assert list(gather_rows(store, HOOK, np.zeros(0, dtype=np.int64))) == []
    with pytest.raises(StoreError, match="out of range"):
        next(gather_rows(store, HOOK, np.array([len(full)])))
    with pytest.raises(StoreError, match="no hook"):
        next(gather_rows(store, "resid_post.9", rows))


def test_tokenizer_for_store_loads_the_recorded_tokenizer(stores, tiny_other, tmp_path, long_corpus):
    tok = tokenizer_for_store(stores["other-chars"])
    index = stores["other-chars"].index(0)
    assert len(tok) == stores["other-chars"].manifest["tokenizer"]["vocab_size"]
    text = stores["other-chars"].documents()[0]["text"]
    assert tok(text, add_special_tokens=False)["input_ids"][:10] == index["token_id"][:10].tolist()
    # The recorded model folder later holds another tokenizer: refused, not silently used.
    moved = tmp_path / "model"
    shutil.copytree(tiny_other, moved)
    tiny_store(moved, long_corpus, tmp_path / "store", tokens=200)
    train_tokenizer(add_bos=False).save_pretrained(moved)
    with pytest.raises(SaeAtlasError, match="different tokenizer"):
        tokenizer_for_store(ActivationStore(tmp_path / "store"))


def test_alignment_is_a_dataclass_of_int64_arrays(stores):
    align = align_stores(stores["llama-chars"], stores["gemma-chars"])
    assert isinstance(align, Alignment)
    for name in ("rows_a", "rows_b", "doc", "token_a", "token_b"):
        array = getattr(align, name)
        assert array.dtype == np.int64 and array.shape == (len(align),)
    assert (np.diff(align.rows_a) > 0).all()


def test_window_chars_is_part_of_the_store_identity(tiny_llama, long_corpus, tmp_path):
    from saeatlas.cli import main

    args = [
        "extract",
        "--model",
        str(tiny_llama),
        "--hooks",
        HOOK,
        "--corpus",
        str(long_corpus),
        "--tokens",
        "300",
        "--split",
        "all",
        "--context",
        "32",
        "--dtype",
        "float32",
        "--model-dtype",
        "float32",
        "--quiet",
        "--out",
        str(tmp_path / "s"),
    ]
    assert main(args + ["--window-chars", "60"]) == 0
    store = ActivationStore(tmp_path / "s")
    assert store.manifest["settings"]["window_chars"] == 60
    index = store.index(0)
    assert (index["char_start"][index["position"] == 0] > 0).sum() > 2  # windows start inside documents
    assert main(args + ["--window-chars", "60"]) == 0  # same settings: complete, nothing to do
    with pytest.raises(StoreError, match="holds a different run"):
        tiny_store(tiny_llama, long_corpus, tmp_path / "s", tokens=300, context=32, window_chars=61)
    assert main(args + ["--window-chars", "60", "--pack-documents"]) == 2  # refused with a one-line message
