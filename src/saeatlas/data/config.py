"""What `saeatlas extract` does: `ExtractConfig`, every field documented once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..config import RUNTIME, Config, check, check_choice, check_device, check_float, check_int, check_text
from ..models.hooks import canonical_hook
from .corpus import SPLITS, Split

Dtype = Literal["bfloat16", "float32"]
"""The dtypes a model runs in and a store keeps."""
DTYPES: tuple[str, ...] = get_args(Dtype)
MAX_TOKENS = 10**12
"""Token budgets above this can only be a typo."""


@dataclass(kw_only=True)
class TextConfig(Config):
    """Which text a store holds and how it is cut into windows (shared by `extract` and the study's [data])."""

    corpus: str = "wiki"
    """Named source (wiki, news, shakespeare, kjv), a local path, or hf:<dataset>."""
    tokens: int = 200_000
    """Token budget: stored tokens (every real token of a window, specials included)."""
    context: int = 128
    """Tokens per context window, specials included."""
    window_chars: int | None = None
    """Start a new window about every this many characters, at a space before a word, so windows of two
    tokenizers start at the same characters (needed to compare models with different tokenizers; about 4
    characters per token, e.g. 400 with context 128); None: every `context` tokens."""
    seed: int = 0
    """Seed of the document order shuffle."""

    def _validate(self) -> None:
        check_text(self, "corpus", "name a corpus (wiki, news, shakespeare, kjv), a path or hf:<dataset>")
        check_int(self, "tokens", 1, MAX_TOKENS, "give a positive token budget")
        check_int(self, "context", 2, 1 << 20, "use at least 2 tokens per window")
        if self.window_chars is not None:
            check_int(self, "window_chars", 1, 1 << 24, "use 1 to 2^24 characters (about 4 per token)")
        check_int(self, "seed", 0)


@dataclass(kw_only=True)
class ExtractConfig(TextConfig):
    """What `saeatlas extract` does; every field changes the bytes of the store."""

    model: str
    """Packaged model name, Hugging Face folder, .gguf file or hub id."""
    hooks: list[str]
    """Hook points, e.g. ["resid_post.3", "resid_post.9"] (any spelling `saeatlas.models.canonical_hook` takes)."""
    split: Split = "train"
    """Document-level split of the corpus to read."""
    eval_fraction: float = 0.1
    """Share of documents (by hash of their key) that form the eval split."""
    pack_documents: bool = False
    """Fill windows across document boundaries (default: one document per window)."""
    batch_size: int = 8
    """Windows per forward pass."""
    shard_windows: int = 512
    """Windows per shard; a shard is the unit of resume and of hashing."""
    store_dtype: Dtype = "bfloat16"
    """Storage dtype of the activations."""
    model_dtype: Dtype = "bfloat16"
    """Compute dtype of the model (bfloat16 is 3-4x faster on CPUs with AMX / avx512_bf16)."""
    extra: dict = field(default_factory=dict)
    """Free-form notes stored in the manifest (not used by the extractor)."""

    device: str = field(default="auto", metadata=RUNTIME)
    """Where to run the model's forward: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps; under
    torchrun each process takes the GPU of its local rank.  Not a store setting: the manifest does not record
    it, so a store started on one device resumes on another."""

    def _validate(self) -> None:
        check_text(self, "model", "name a packaged model, a Hugging Face folder, a .gguf file or a hub id")
        check(
            isinstance(self.hooks, list) and bool(self.hooks),
            "hooks",
            self.hooks,
            "name at least one hook point, e.g. resid_post.3",
        )
        self.hooks = [canonical_hook(h) for h in self.hooks]
        check(len(set(self.hooks)) == len(self.hooks), "hooks", self.hooks, "name each hook once")
        check_choice(self, "split", SPLITS)
        check_float(self, "eval_fraction", 0, 1, high_open=True)
        check_int(self, "batch_size", 1, 1 << 16)
        check_int(self, "shard_windows", 1, 1 << 24)
        check_choice(self, "store_dtype", DTYPES)
        check_choice(self, "model_dtype", DTYPES)
        check_device(self)
        check(
            self.window_chars is None or not self.pack_documents,
            "window_chars",
            self.window_chars,
            "windows cut at characters hold one document each: drop pack_documents",
        )

    def manifest_settings(self) -> dict:
        """The settings as a store's manifest records them (store format 1: the storage dtype is `dtype`;
        `window_chars` only when set, so stores written before it existed keep their identity and resume)."""
        settings = self.to_dict()
        settings["dtype"] = settings.pop("store_dtype")
        if settings["window_chars"] is None:
            del settings["window_chars"]
        return settings
