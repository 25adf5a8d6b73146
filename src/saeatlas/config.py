"""Typed configuration: one dataclass per component, each field documented once.

Constraints are checked once, at the boundary (`validate`), with messages
that repeat the bad value and say what is allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from .errors import SaeAtlasError

StoreDtype = Literal["bfloat16", "float32"]
STORE_DTYPES: tuple[str, ...] = ("bfloat16", "float32")
SPLITS: tuple[str, ...] = ("train", "eval", "all")


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise SaeAtlasError(f"bad {key} {value!r}: {allowed}")


@dataclass
class ExtractConfig:
    """What `saeatlas extract` does; every field changes the bytes of the store."""

    model: str
    """Packaged model name, HF folder, .gguf file or hub id."""
    hooks: list[str]
    """Hook points, e.g. ["resid_post.3", "resid_post.9"]."""
    corpus: str = "wiki"
    """Named source (wiki, news, shakespeare, kjv), a local path, or hf:<dataset>."""
    tokens: int = 200_000
    """Token budget: stored tokens (every real token of a window, specials included)."""
    split: Literal["train", "eval", "all"] = "train"
    """Document-level split of the corpus to read."""
    eval_fraction: float = 0.1
    """Share of documents (by hash of their key) that form the eval split."""
    seed: int = 0
    """Seed of the document order shuffle."""
    context: int = 128
    """Tokens per context window, specials included."""
    pack_documents: bool = False
    """Fill windows across document boundaries (default: one document per window)."""
    window_chars: int | None = None
    """Start a new window about every this many characters, at a space before a word, so windows of
    two tokenizers start at the same characters (cross-tokenizer alignment); None: every `context` tokens."""
    batch_size: int = 8
    """Windows per forward pass."""
    shard_windows: int = 512
    """Windows per shard; a shard is the unit of resume and of hashing."""
    dtype: StoreDtype = "bfloat16"
    """Storage dtype of activations."""
    model_dtype: StoreDtype = "bfloat16"
    """Compute dtype of the model (bf16 is 3-4x faster on recent CPUs)."""
    extra: dict = field(default_factory=dict)
    """Free-form notes stored in the manifest (not used by the extractor)."""

    def validate(self) -> ExtractConfig:
        """Raise SaeAtlasError on the first bad field; returns self."""
        _check(self.tokens > 0, "--tokens", self.tokens, "give a positive token budget")
        _check(self.context >= 2, "--context", self.context, "use at least 2 tokens per window")
        _check(self.batch_size >= 1, "--batch-size", self.batch_size, "use at least 1")
        _check(self.shard_windows >= 1, "--shard-windows", self.shard_windows, "use at least 1")
        _check(self.dtype in STORE_DTYPES, "--dtype", self.dtype, f"use one of {', '.join(STORE_DTYPES)}")
        _check(
            self.model_dtype in STORE_DTYPES, "--model-dtype", self.model_dtype, f"use one of {', '.join(STORE_DTYPES)}"
        )
        _check(self.split in SPLITS, "--split", self.split, f"use one of {', '.join(SPLITS)}")
        _check(0 <= self.eval_fraction < 1, "--eval-fraction", self.eval_fraction, "use a value in [0, 1)")
        _check(
            self.window_chars is None or self.window_chars >= 1,
            "--window-chars",
            self.window_chars,
            "use a positive number of characters (about 4 per token in English text)",
        )
        _check(
            self.window_chars is None or not self.pack_documents,
            "--window-chars",
            self.window_chars,
            "windows cut at characters hold one document each: drop --pack-documents",
        )
        return self

    def to_dict(self) -> dict:
        """The settings as stored in a manifest; `window_chars` only when set, so stores written before
        it existed keep their identity (and resume)."""
        settings = asdict(self)
        if settings["window_chars"] is None:
            del settings["window_chars"]
        return settings
