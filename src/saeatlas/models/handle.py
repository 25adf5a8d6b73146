"""`ModelHandle`: a loaded model plus what saeatlas needs to know about it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import nn

from .architectures import Architecture, submodule
from .hooks import STAGES


@dataclass
class ModelHandle:
    """A language model ready for activation extraction."""

    spec: str
    """What the user asked for (`smollm2-135m`, a folder, a .gguf path, a hub id)."""
    name: str
    """Short display name."""
    model: nn.Module
    """The full transformers model (with its LM head if causal)."""
    tokenizer: object
    """Its (fast) tokenizer."""
    kind: Literal["causal", "encoder"]
    identity: str
    """Content identity of the weights (sha256 of the source file or a fingerprint)."""
    architecture: Architecture

    @property
    def base(self) -> nn.Module:
        """The block stack without the LM head (transformers' `base_model`: `model.model` for Llama and Gemma,
        `model.gpt_neox` for Pythia)."""
        return self.model.base_model if self.kind == "causal" else self.model

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer blocks, in order."""
        return submodule(self.base, self.architecture.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hook_points(self) -> list[str]:
        """Every hook point name this model offers, in forward order."""
        return [f"{stage}.{layer}" for layer in range(self.n_layers) for stage in STAGES]

    @cached_property
    def special_tokens(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(prefix, suffix) token ids the tokenizer adds around a text, e.g. ((2,), ()) for <bos>."""
        plain = self.tokenizer("a b c", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("a b c", add_special_tokens=True)["input_ids"]
        start = _find_sublist(full, plain)
        return tuple(full[:start]), tuple(full[start + len(plain) :])

    @cached_property
    def tokenizer_identity(self) -> str:
        """sha256 of the tokenizer's full definition (vocab, merges, normalizer)."""
        return tokenizer_identity(self.tokenizer)


def tokenizer_identity(tokenizer) -> str:
    """sha256 of a tokenizer's full definition (vocab, merges, normalizer): what a store's manifest records."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _find_sublist(full: list[int], part: list[int]) -> int:
    for start in range(len(full) - len(part) + 1):
        if full[start : start + len(part)] == part:
            return start
    raise ValueError("tokenizer adds special tokens inside the text; cannot find the text tokens")
