"""Concept subspaces: which SAE latents belong to a keyword category.

Following the semantic-subspace experiment of the universality paper (Lan et al. 2024,
arXiv:2410.06981), a latent belongs to a concept when one of its top activating
tokens is one of the concept's keywords.  Unlike the paper (which compares one
token string with the keyword), a keyword here is the token sequence it has in
running text, so words the tokenizer splits into several tokens count too: a
top row matches when it is the LAST token of the sequence and the tokens before
it, inside the same window, are the rest of the sequence.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import SaeAtlasError
from ..schema import ConceptsFile, checked

BUILTIN = "concepts.json"
"""The paper's eight keyword categories, shipped as package data."""
_PAD = -2
"""Fills the unused left part of a right-aligned keyword sequence; equals no token id and no out-of-window -1."""


# ---------------------------------------------------------------- keyword lists
def load_concepts(path: str | Path | None = None) -> dict[str, list[str]]:
    """Concept name -> keywords: the built-in categories, or a user .toml / .json file mapping names to word lists."""
    if path is None:
        text = resources.files("saeatlas.compare").joinpath(BUILTIN).read_text(encoding="utf-8")
        return _checked(json.loads(text), BUILTIN)
    path = Path(path)
    if not path.is_file():
        raise SaeAtlasError(f"concepts file '{path}' does not exist: give a .toml or .json file of name = [words]")
    if path.suffix not in (".toml", ".json"):
        raise SaeAtlasError(f"concepts file '{path}' is neither .toml nor .json: use one of those formats")
    parse = tomllib.loads if path.suffix == ".toml" else json.loads
    try:
        raw = parse(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise SaeAtlasError(f"concepts file '{path}' cannot be parsed ({str(exc).splitlines()[0]}): fix it") from None
    return _checked(raw, str(path))


def load_concept_sources(sources: list[str]) -> dict[str, list[str]]:
    """The concepts of several sources merged, in order: "builtin" (the paper's eight categories) and / or
    TOML / JSON files.  A concept named by two sources is an error (say which words it should hold once)."""
    from .config import BUILTIN_CONCEPTS

    merged: dict[str, list[str]] = {}
    for source in sources:
        for name, words in load_concepts(None if source == BUILTIN_CONCEPTS else source).items():
            if name in merged:
                raise SaeAtlasError(f"concept '{name}' is defined twice (again in '{source}'): name it once")
            merged[name] = words
    return merged


def _checked(raw, source: str) -> dict[str, list[str]]:
    """`raw` as name -> list of words, or SaeAtlasError naming `source`, the field and the problem."""
    fix = 'map each concept name to a non-empty list of words, e.g. Time = ["day", "week"]'
    checked(raw, ConceptsFile, f"concepts file '{source}'", fix)
    concepts = {}
    for name, words in raw.items():
        for i, word in enumerate(words):
            if not word.strip():
                raise SaeAtlasError(f"concepts file '{source}': field '{name}[{i}]' = {word!r}: expected a word; {fix}")
        concepts[str(name)] = [w.strip() for w in words]
    return concepts


def keyword_sequences(tokenizer, words: list[str]) -> list[tuple[int, ...]]:
    """Distinct token-id sequences of `words` as they appear in running text, no special tokens.

    Variants of each word: as given, lower-case and Capitalised, each with and without a leading space.
    """
    sequences: dict[tuple[int, ...], None] = {}
    for word in words:
        for form in dict.fromkeys((word, word.lower(), word[:1].upper() + word[1:])):
            for text in (form, " " + form):
                ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
                if ids:
                    sequences[ids] = None
    return list(sequences)


# ---------------------------------------------------------------- membership
def concept_membership(
    token_ids: np.ndarray, positions: np.ndarray, top_rows: np.ndarray, tokenizer, concepts: dict[str, list[str]]
) -> dict[str, np.ndarray]:
    """Concept name -> [d_sae] bool: latents with a top activating row that ends a keyword of the concept.

    token_ids, positions [n_rows]: token id and window position of every store row.
    top_rows [d_sae, k]: each latent's top activating store rows, -1 = padding.
    One pass over the distinct top rows: candidate keywords are found by their last token id.
    """
    token_ids, positions = np.asarray(token_ids, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    top_rows = np.asarray(top_rows, dtype=np.int64)
    _check_shapes(token_ids, positions, top_rows)
    table, member = _sequence_table(tokenizer, concepts)  # [S, L], [S, C]
    valid = top_rows >= 0
    rows, inverse = np.unique(top_rows[valid], return_inverse=True)  # [m], [n_valid]
    row_concepts = _row_concepts(rows, token_ids, positions, table, member)  # [m, C]
    latent = np.zeros((*top_rows.shape, len(concepts)), dtype=bool)  # [d_sae, k, C]
    latent[valid] = row_concepts[inverse]
    hits = latent.any(axis=1)  # [d_sae, C]
    return {name: hits[:, c] for c, name in enumerate(concepts)}


def _check_shapes(token_ids: np.ndarray, positions: np.ndarray, top_rows: np.ndarray) -> None:
    if token_ids.ndim != 1 or token_ids.shape != positions.shape:
        raise SaeAtlasError(f"token_ids {token_ids.shape} and positions {positions.shape} must be [n_rows] each")
    if top_rows.ndim != 2:
        raise SaeAtlasError(f"top_rows must be [d_sae, k] store rows, got shape {top_rows.shape}")
    if top_rows.size and top_rows.max() >= len(token_ids):
        raise SaeAtlasError(
            f"top_rows holds row {top_rows.max()} but the store has {len(token_ids)} rows: "
            "pass the token ids of the store the rows index"
        )


def _sequence_table(tokenizer, concepts: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct keyword sequence right-aligned in [S, L] int64 (left padded with _PAD), and [S, C] bool
    membership of each sequence in each concept."""
    owners: dict[tuple[int, ...], set[int]] = {}
    for c, words in enumerate(concepts.values()):
        for seq in keyword_sequences(tokenizer, words):
            owners.setdefault(seq, set()).add(c)
    length = max((len(s) for s in owners), default=1)
    table = np.full((len(owners), length), _PAD, dtype=np.int64)
    member = np.zeros((len(owners), len(concepts)), dtype=bool)
    for i, (seq, cs) in enumerate(owners.items()):
        table[i, length - len(seq) :] = seq
        member[i, sorted(cs)] = True
    return table, member


def _row_concepts(
    rows: np.ndarray, token_ids: np.ndarray, positions: np.ndarray, table: np.ndarray, member: np.ndarray
) -> np.ndarray:
    """[m, C] bool: the concepts of which row `rows[i]` ends a keyword sequence (inside its window)."""
    out = np.zeros((len(rows), member.shape[1]), dtype=bool)
    if len(rows) == 0 or len(table) == 0:
        return out
    length = table.shape[1]
    back = np.arange(length - 1, -1, -1)  # [L] how far before the row each column lies
    src = rows[:, None] - back[None, :]  # [m, L]
    inside = positions[rows][:, None] >= back[None, :]  # same window: positions count from the window start
    context = np.where(inside, token_ids[np.maximum(src, 0)], -1)  # [m, L]
    order = np.argsort(table[:, -1], kind="stable")
    last = table[order, -1]  # [S] sorted last token ids
    lo = np.searchsorted(last, token_ids[rows], side="left")
    n_cand = np.searchsorted(last, token_ids[rows], side="right") - lo  # [m]
    pair_row = np.repeat(np.arange(len(rows)), n_cand)  # [p]
    first_pair = np.cumsum(n_cand) - n_cand
    pair_seq = order[lo[pair_row] + np.arange(len(pair_row)) - first_pair[pair_row]]  # [p]
    seq = table[pair_seq]  # [p, L]
    matched = ((seq == context[pair_row]) | (seq == _PAD)).all(axis=1)
    np.logical_or.at(out, pair_row[matched], member[pair_seq[matched]])
    return out
