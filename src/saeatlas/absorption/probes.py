"""Linear probes: one-vs-rest logistic regressions trained together, and their scores.

The recipe of "A is for Absorption" (Chanin et al. 2024, arXiv:2409.14507): BCE with pos_weight = #neg / #pos per class, Adam,
lr 1e-2 decaying exponentially to 1e-5 over 50 epochs, weight decay 1e-4; an optional L1 penalty on the
weights (the sparse probe that ranks SAE latents).  Positive = score > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support

from ..memory import one_torch_thread


@dataclass(frozen=True)
class ProbeRecipe:
    """How probes are trained."""

    epochs: int = 50
    lr: float = 1e-2
    end_lr: float = 1e-5
    """The learning rate decays exponentially from `lr` to this over the epochs."""
    weight_decay: float = 1e-4
    batch_size: int = 64
    l1: float = 0.0
    """L1 penalty on the weights (0.01 for the sparse probe over SAE latents)."""
    seed: int = 42


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
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / d**0.5)
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    gamma = (recipe.end_lr / recipe.lr) ** (1.0 / max(recipe.epochs - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            loss = loss_fn(layer(X[idx]), Y[idx])
            if recipe.l1:
                loss = loss + recipe.l1 * layer.weight.abs().sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
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
