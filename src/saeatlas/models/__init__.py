"""Language models: packaged registry, loading, hook point names, capture and patching."""

from .capture import capture, patched
from .handle import ModelHandle
from .hooks import STAGES, HookPoint, canonical_hook, hook_spellings, parse_hook, parse_hooks, transformer_lens_name
from .loading import cache_dir, load_model, load_tokenizer
from .registry import PACKAGED_MODELS, known_models

__all__ = [
    "PACKAGED_MODELS",
    "STAGES",
    "HookPoint",
    "ModelHandle",
    "cache_dir",
    "canonical_hook",
    "capture",
    "hook_spellings",
    "known_models",
    "load_model",
    "load_tokenizer",
    "parse_hook",
    "parse_hooks",
    "patched",
    "transformer_lens_name",
]
