"""Language models: packaged registry, loading, hook points."""

from .handle import ModelHandle
from .hooks import STAGES, HookPoint, capture, parse_hook, parse_hooks, patched
from .loading import cache_dir, load_model, load_tokenizer
from .registry import PACKAGED_MODELS, known_models

__all__ = [
    "ModelHandle",
    "HookPoint",
    "STAGES",
    "capture",
    "patched",
    "parse_hook",
    "parse_hooks",
    "load_model",
    "load_tokenizer",
    "cache_dir",
    "known_models",
    "PACKAGED_MODELS",
]
