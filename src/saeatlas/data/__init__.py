"""Text in, activations out: corpora, tokenization, the activation store."""

from .corpus import Document, corpus_identity, corpus_names, load_documents
from .store import ActivationStore, read_manifest
from .tokens import EXCLUDED_BY_DEFAULT, FLAG_FIRST, FLAG_SPECIAL, Window, pack_windows, tokenize_text

__all__ = [
    "EXCLUDED_BY_DEFAULT",
    "FLAG_FIRST",
    "FLAG_SPECIAL",
    "ActivationStore",
    "Document",
    "Window",
    "corpus_identity",
    "corpus_names",
    "load_documents",
    "pack_windows",
    "read_manifest",
    "tokenize_text",
]
