"""Linear probes: one-vs-rest logistic regressions trained together, and their scores.

The recipe of "A is for Absorption" (Chanin et al. 2024, arXiv:2409.14507): BCE with pos_weight = #neg / #pos per class, Adam,
lr 1e-2 decaying exponentially to 1e-5 over 50 epochs, weight decay 1e-4; an optional L1 penalty on the
weights (the sparse probe that ranks SAE latents).  Positive = score > 0.

Two recipes (`PROBE_RECIPES`), named by `AbsorptionOptions.probe_recipe`:

- saeatlas: both probes in batches of 64 with weight decay 1e-4; the learning rate reaches 1e-5 at the last
  epoch; weights start N(0, 1/d), bias 0.
- saebench: SAEBench's (adamkarvonen/SAEBench, sae_bench/evals/absorption/): the letter probes as above
  (common.py train_and_save_probes passes batch 64 to probing.py train_linear_probe_for_task, weight decay
  1e-4); the sparse probe in batches of 4096 with weight decay 1e-6 (k_sparse_probing.py
  train_sparse_multi_probe, as in lasr-spelling/sae-spelling); for both, gamma = (1e-5 / 1e-2)^(1 / epochs),
  so the last epoch runs at 1e-2 * gamma^49, and torch.nn.Linear's default uniform initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support

from ..memory import one_torch_thread

RecipeName = Literal["saeatlas", "saebench"]
RECIPE_NAMES: tuple[str, ...] = get_args(RecipeName)


@dataclass(frozen=True)
class ProbeRecipe:
    """How probes are trained."""

    epochs: int = 50
    lr: float = 1e-2
    end_lr: float = 1e-5
    """The learning rate decays exponentially from `lr` towards this over the epochs."""
    weight_decay: float = 1e-4
    batch_size: int = 64
    l1: float = 0.0
    """L1 penalty on the weights (0.01 for the sparse probe over SAE latents)."""
    seed: int = 42
    reach_end_lr: bool = True
    """True: the last epoch runs at `end_lr` (gamma = (end_lr / lr)^(1 / (epochs - 1))); False: SAEBench's
    gamma = (end_lr / lr)^(1 / epochs), which stops one decay step short of it."""
    init: Literal["normal", "uniform"] = "normal"
    """normal: weights N(0, 1/d), bias 0; uniform: torch.nn.Linear's default (weights and bias U(+-1/sqrt(d)))."""


PROBE_RECIPES: dict[str, dict[str, ProbeRecipe]] = {
    "saeatlas": {"letters": ProbeRecipe(), "sparse": ProbeRecipe(l1=0.01)},
    "saebench": {
        "letters": ProbeRecipe(reach_end_lr=False, init="uniform"),
        "sparse": ProbeRecipe(l1=0.01, batch_size=4096, weight_decay=1e-6, reach_end_lr=False, init="uniform"),
    },
}
"""Recipe name -> the letter probes' and the sparse (latent-ranking) probe's recipe (module docstring)."""


def probe_recipe(name: str, which: Literal["letters", "sparse"], seed: int = 42) -> ProbeRecipe:
    """The `which` probe's recipe of recipe `name` ("saeatlas" or "saebench"), seeded."""
    return replace(PROBE_RECIPES[name][which], seed=seed)


@dataclass
class Probes:
    """C one-vs-rest probes: score = x @ weight.T + bias."""

    weight: np.ndarray
    """[n_classes, d]"""
    bias: np.ndarray
    """[n_classes]"""

    def scores(self, x: np.ndarray) -> np.ndarray:
        """[n, d] -> [n, n_classes] logits."""
        return np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[n, d] -> [n, n_classes] bool: score > 0."""
        return self.scores(x) > 0

    def direction(self, c: int) -> np.ndarray:
        """Unit direction [d] of class c's probe."""
        w = self.weight[c].astype(np.float64)
        return w / np.linalg.norm(w)


def learning_rates(recipe: ProbeRecipe) -> np.ndarray:
    """[epochs] learning rate of each epoch: exponential decay from `recipe.lr` towards `recipe.end_lr`."""
    steps = max(recipe.epochs - 1, 1) if recipe.reach_end_lr else recipe.epochs
    gamma = (recipe.end_lr / recipe.lr) ** (1.0 / steps)
    return recipe.lr * gamma ** np.arange(recipe.epochs, dtype=np.float64)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[n] int -> [n, n_classes] bool."""
    return np.eye(n_classes, dtype=bool)[np.asarray(labels)]


def train_probes(x: np.ndarray, targets: np.ndarray, recipe: ProbeRecipe = ProbeRecipe()) -> Probes:
    """Train one probe per column of `targets` ([n, n_classes] bool) on x [n, d], all at once."""
    with one_torch_thread():
        return _train_probes(x, targets, recipe)


def _train_probes(x: np.ndarray, targets: np.ndarray, recipe: ProbeRecipe) -> Probes:
    gen = torch.Generator().manual_seed(recipe.seed)
    X = torch.as_tensor(np.asarray(x, dtype=np.float32))
    Y = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    n, d = X.shape
    positives = Y.sum(0)
    pos_weight = (n - positives) / positives.clamp_min(1.0)
    layer = torch.nn.Linear(d, Y.shape[1])
    with torch.no_grad():
        if recipe.init == "uniform":
            bound = 1.0 / d**0.5
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=gen) * 2 - 1) * bound)
        else:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / d**0.5)
            layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for lr in learning_rates(recipe):
        for group in opt.param_groups:
            group["lr"] = float(lr)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            loss = loss_fn(layer(X[idx]), Y[idx])
            if recipe.l1:
                loss = loss + recipe.l1 * layer.weight.abs().sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return Probes(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())


def classification_scores(predicted: np.ndarray, actual: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and counts of two [n, n_classes] bool arrays; a score whose
    denominator is 0 (no predictions, no positives) is 0, as in `splitting.py`'s f1_score."""
    predicted, actual = np.asarray(predicted, bool), np.asarray(actual, bool)
    per_class = [
        precision_recall_fscore_support(
            actual[:, c], predicted[:, c], average="binary", pos_label=True, zero_division=0.0
        )[:3]
        for c in range(actual.shape[1])
    ]
    scores = np.array(per_class, dtype=np.float64).reshape(-1, 3)  # [n_classes, (precision, recall, f1)]
    precision, recall, f1 = (scores[:, i].copy() for i in range(3))
    tp = (predicted & actual).sum(0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": tp.astype(np.int64),
        "positives": actual.sum(0).astype(np.int64),
    }
