"""What `saeatlas compare` and `saeatlas concepts` do: one dataclass, every field documented once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from ..config import _check

METHODS: tuple[str, ...] = ("many_to_one", "legacy_first", "mutual", "assignment")
CONTROLS: tuple[str, ...] = ("random_init", "neurons", "shifted", "skyline")
DEFAULT_MEASURES = ["svcca", "pwcca", "rsa", "linear_cka", "mutual_knn", "svcca_legacy"]
"""Measures scored by default.  `procrustes` is on request: its null needs a d_a x d_b SVD per permutation
(about a minute for 1000 permutations of 640- and 576-wide decoders)."""


@dataclass
class CompareConfig:
    """A layer grid of model A against model B, with nulls, bootstraps and controls."""

    store_a: str
    """Activation store of model A (`saeatlas extract`)."""
    store_b: str
    """Activation store of model B, extracted from the same corpus, split and seed."""
    sae_a: str
    """SAEs of model A: a folder template with `{hook}` or `{layer}` (e.g. runs/sae-gemma-{hook}), or a
    folder holding one SAE folder per hook (named like the hook)."""
    sae_b: str
    """SAEs of model B, likewise."""
    layers_a: list[str]
    """Hooks of model A (e.g. resid_post.3); bare numbers mean resid_post.N."""
    layers_b: list[str]
    """Hooks of model B."""
    method: Literal["many_to_one", "legacy_first", "mutual", "assignment"] = "many_to_one"
    """Matching rule: each B latent to its best A latent (the paper's), the paper's first-occurrence 1-1,
    mutual nearest neighbours, or an optimal 1-1 assignment."""
    threshold: float = 0.1
    """Pairs need a correlation above this."""
    junk_filter: bool = True
    """Drop pairs whose latents' top activating tokens include a junk token (the paper's filter)."""
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    """Similarity measures of the matched decoder rows."""
    activation_measures: list[str] = field(default_factory=lambda: ["svcca", "linear_cka"])
    """Measures also computed on the matched latents' activations (positions as data points)."""
    activation_positions: int = 1024
    """Positions sampled (seeded) for the activation measures (CKA's null costs n^2 per permutation)."""
    svcca_k: int | None = 50
    """SVCCA / PWCCA directions per side, at most a tenth of the data points.  None: enough directions
    for `svcca_variance` of the variance, which for decoder rows is nearly all of them (600 of 640): CCA on
    that many directions with a few thousand pairs drifts towards 1 whatever the pairing (the null mean of
    SVCCA grows with k, from 0.01 at k 1 to 0.27 at k 500 for random decoders)."""
    svcca_variance: float = 0.99
    """Variance fraction that sets SVCCA's directions when `svcca_k` is None."""
    max_points: int = 2000
    """rsa, linear_cka and mutual_knn use at most this many data points (a seeded sample): their nulls cost
    n^2 per permutation (RSA's inner matrices, CKA's Gram matrices, the kNN graphs)."""
    top_m: int = 10
    """Candidate partners kept per latent (assignment graph, bootstrap re-matching)."""
    n_permutations: int = 1000
    """Random pairings in each null."""
    n_bootstrap: int = 100
    """Resamples of documents for the confidence intervals (0: none)."""
    bootstrap_measures: list[str] = field(default_factory=lambda: ["svcca", "linear_cka"])
    """Measures that get a bootstrap confidence interval."""
    control_measures: list[str] = field(default_factory=lambda: ["svcca", "rsa", "linear_cka"])
    """Measures of the controls (decoder rows; activations too for neurons, which have no decoder)."""
    controls: list[str] = field(default_factory=lambda: ["random_init", "neurons", "shifted"])
    """Controls scored beside each layer pair: random_init (B's SAE with random weights), neurons (raw
    activations), shifted (B one token later: misaligned), skyline (A against `skyline_sae_a`)."""
    skyline_sae_a: str | None = None
    """SAEs of model A trained with another seed (template like `sae_a`), for the skyline control."""
    max_positions: int | None = None
    """Use at most this many aligned positions (the first ones)."""
    seed: int = 0
    """Seed of permutations, bootstraps and samples."""

    def validate(self) -> CompareConfig:
        _check(self.method in METHODS, "--method", self.method, f"use one of {', '.join(METHODS)}")
        _check(-1 <= self.threshold < 1, "--threshold", self.threshold, "use a correlation in [-1, 1)")
        _check(self.n_permutations >= 1, "--permutations", self.n_permutations, "use at least 1 (1000 for p-values)")
        _check(self.n_bootstrap >= 0, "--bootstrap", self.n_bootstrap, "use 0 (none) or more")
        _check(
            len(self.layers_a) > 0 and len(self.layers_b) > 0,
            "layers",
            (self.layers_a, self.layers_b),
            "give at least one layer per model",
        )
        for c in self.controls:
            _check(c in CONTROLS, "control", c, f"use some of {', '.join(CONTROLS)}")
        _check(
            "skyline" not in self.controls or bool(self.skyline_sae_a),
            "skyline control",
            self.skyline_sae_a,
            "give --skyline-sae-a (SAEs of model A trained with another seed)",
        )
        _check(self.top_m >= 1, "--top-m", self.top_m, "use at least 1")
        from .similarity import MEASURES

        for m in [*self.measures, *self.activation_measures, *self.control_measures]:
            _check(m in MEASURES, "measure", m, f"use some of {', '.join(MEASURES)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
