"""Sparse autoencoders: architectures, training, metrics, file formats."""

from .config import ARCHITECTURES, SAEConfig, TrainConfig
from .formats import load_sae, save_saelens
from .metrics import evaluate
from .model import SAEOutput, SparseAutoencoder
from .trainer import train_sae

__all__ = [
    "ARCHITECTURES",
    "SAEConfig",
    "SAEOutput",
    "SparseAutoencoder",
    "TrainConfig",
    "evaluate",
    "load_sae",
    "save_saelens",
    "train_sae",
]
