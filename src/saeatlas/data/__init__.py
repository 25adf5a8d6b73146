"""Text in, activations out: corpora, tokenization, the activation store."""

from .corpus import Document, corpus_identity, corpus_names, load_documents
from .store import ActivationStore, read_manifest
from .tokens import EXCLUDED_BY_DEFAULT, FLAG_FIRST, FLAG_SPECIAL, Window, pack_windows, tokenize_text

__all__ = [
    "Document",
    "corpus_names",
    "corpus_identity",
    "load_documents",
    "ActivationStore",
    "read_manifest",
    "Window",
    "pack_windows",
    "tokenize_text",
    "FLAG_SPECIAL",
    "FLAG_FIRST",
    "EXCLUDED_BY_DEFAULT",
]
