"""Feature splitting and absorption on the first-letter task ("A is for Absorption", Chanin et al. 2024,
arXiv:2409.14507).

Modules: `task` (vocabulary, prompts, the target word's position, activations, cached), `probes` (the 26
one-vs-rest logistic probes), `splitting` (k-sparse probing, main latents), `projection` (absorption
fraction and full absorption, the evaluation suite's variant), `attribution` (integrated gradients, the
paper's ablation variant), `toy` (a parent/child toy model: the ground truth), `run` (the job).
"""

from .config import AbsorptionConfig
from .probes import ProbeRecipe, Probes, classification_scores, train_probes
from .projection import ProjectionThresholds, projection_absorption
from .run import run_absorption
from .splitting import rank_latents, split_feature

__all__ = [
    "AbsorptionConfig",
    "ProbeRecipe",
    "Probes",
    "ProjectionThresholds",
    "classification_scores",
    "projection_absorption",
    "rank_latents",
    "run_absorption",
    "split_feature",
    "train_probes",
]
