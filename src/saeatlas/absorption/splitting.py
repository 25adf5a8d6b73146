"""Feature splitting by k-sparse probing over SAE latents.

An L1-regularised probe over all latents ranks them per class (largest signed weight first).  A balanced
logistic regression on the top-k latents is fitted for k = 1, 2, ...; k is accepted while
F1(k) > best F1 so far + tau (0.03).  The accepted latents are the class's main latents; splitting is
reported as their number, `num_split_features` (1 = no splitting), SAEBench's quantity under SAEBench's
name (adamkarvonen/SAEBench, sae_bench/evals/absorption/main.py: num_split_features = len(split_feats) in
eval_output.AbsorptionResultDetail; its k_sparse_probing.py keeps a column of the same name that is one
less, which the eval output does not use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from .probes import ProbeRecipe, Probes, probe_recipe, train_probes


@dataclass
class SplitResult:
    """Main latents of one class and the k-sparse probe on them."""

    main: list[int]
    """Main latent ids, in rank order."""
    f1_by_k: list[float]
    """Test F1 of the k-sparse probe for k = 1 .. max_k (as far as it was evaluated)."""
    f1: float
    """Test F1 of the probe on the main latents."""
    predicted_test: np.ndarray
    """[n_test] bool: that probe's predictions on the test split."""

    @property
    def num_split_features(self) -> int:
        """SAEBench's split-feature count: the number of main latents (1 = no splitting)."""
        return len(self.main)


def rank_latents(
    codes_train: np.ndarray, targets_train: np.ndarray, seed: int = 42, recipe: ProbeRecipe | None = None
) -> np.ndarray:
    """[n_classes, d_sae] latent ids, each row by the sparse probe's weight for that class, largest first.

    codes_train [n, d_sae], targets_train [n, n_classes] bool; `recipe`: the sparse probe's (default:
    saeatlas's, `probe_recipe("saeatlas", "sparse", seed)`).  Latents that never fire on the training set get
    no weight and rank last.
    """
    recipe = recipe or probe_recipe("saeatlas", "sparse", seed)
    alive = np.flatnonzero((np.asarray(codes_train) != 0).any(axis=0))
    probes: Probes = train_probes(codes_train[:, alive], targets_train, recipe)
    order = np.argsort(-probes.weight, axis=1, kind="stable")  # [n_classes, n_alive]
    dead = np.setdiff1d(np.arange(codes_train.shape[1]), alive)
    return np.concatenate([alive[order], np.broadcast_to(dead, (order.shape[0], len(dead)))], axis=1)


def _fit_k_sparse(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
    model.fit(train, y_train)
    return model.predict(test).astype(bool)


def split_feature(
    ranked: np.ndarray,
    codes_train: np.ndarray,
    y_train: np.ndarray,
    codes_test: np.ndarray,
    y_test: np.ndarray,
    tau: float = 0.03,
    max_k: int = 10,
    seed: int = 42,
) -> SplitResult:
    """The F1-jump rule for one class: ranked [d_sae] latent ids, y_* [n] bool."""
    best_f1, main, predicted, f1s = -1.0, [], np.zeros(len(y_test), dtype=bool), []
    if y_train.all() or not y_train.any():
        return SplitResult([int(ranked[0])], [0.0], 0.0, predicted)
    for k in range(1, max_k + 1):
        cols = ranked[:k]
        pred = _fit_k_sparse(codes_train[:, cols], y_train, codes_test[:, cols], seed)
        f1 = float(f1_score(y_test, pred, zero_division=0.0))
        f1s.append(f1)
        if k > 1 and f1 <= best_f1 + tau:
            break
        best_f1, main, predicted = f1, [int(c) for c in cols], pred
    return SplitResult(main, f1s, best_f1, predicted)
