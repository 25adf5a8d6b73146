"""Language models: packaged registry, loading, hook points."""

from .handle import ModelHandle
from .hooks import STAGES, HookPoint, capture, parse_hook, parse_hooks, patched
from .loading import cache_dir, load_model, load_tokenizer
from .registry import PACKAGED_MODELS, known_models

__all__ = [
    "PACKAGED_MODELS",
    "STAGES",
    "HookPoint",
    "ModelHandle",
    "cache_dir",
    "capture",
    "known_models",
    "load_model",
    "load_tokenizer",
    "parse_hook",
    "parse_hooks",
    "patched",
]
