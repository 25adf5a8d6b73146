"""What `saeatlas compare` and `saeatlas concepts` do: `CompareOptions` (how latents are matched and scored;
also the study's [compare] table), `CompareConfig` (which stores and SAEs) and `ConceptsConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import RUNTIME, Config, check, check_choice, check_device, check_float, check_int, check_subset
from ..models.hooks import canonical_hook, template_problem
from .match import METHODS, Method
from .similarity import MEASURES

CONTROLS: tuple[str, ...] = ("random_init", "neurons", "shifted", "skyline")
DEFAULT_MEASURES: tuple[str, ...] = ("svcca", "pwcca", "rsa", "linear_cka", "mutual_knn", "svcca_legacy")
"""Measures scored by default.  `procrustes` is on request: its null needs a d_a x d_b SVD per permutation
(about a minute for 1000 permutations of 640- and 576-wide decoders)."""
BUILTIN_CONCEPTS = "builtin"
"""The concept source that names the paper's eight keyword categories (compare/concepts.json)."""


@dataclass(kw_only=True)
class CompareOptions(Config):
    """How latents are matched and scored: shared by `compare`, `concepts` and the study's [compare] table."""

    method: Method = "many_to_one"
    """Matching rule: each B latent to its best A latent (the paper's), the paper's first-occurrence 1-1
    (legacy: kept only to reproduce it), mutual nearest neighbours, or an optimal 1-1 assignment."""
    threshold: float = 0.1
    """Pairs need a correlation above this."""
    chance_shifts: int = 19
    """Circular shifts of A's positions that set each B latent's chance threshold (0: none): a pair also needs
    a correlation above the B latent's best correlation with a shifted A, over these shifts, so a latent with
    no partner passes with chance 1 / (chance_shifts + 1).  For sparse codes the fixed `threshold` is no chance
    filter (unrelated codes: 1349 of 2000 B latents pass 0.1); each shift costs one more correlation.  Not
    applied with legacy_first, which reproduces the paper's rule (the fixed threshold only)."""
    junk_filter: bool = True
    """Drop pairs whose latents' top activating tokens include a junk token (the paper's filter; with
    legacy_first, the paper's exact junk strings)."""
    overlap_filter: bool = False
    """Drop pairs whose two latents' 5 top activating tokens share no token (the paper's filter, compared as
    decoded strings; always on with legacy_first)."""
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    """Similarity measures of the matched decoder rows."""
    activation_measures: list[str] = field(default_factory=lambda: ["svcca", "linear_cka"])
    """Measures also computed on the matched latents' activations (positions as data points)."""
    activation_positions: int = 1024
    """Positions sampled (seeded) for the activation measures (CKA's null costs n^2 per permutation)."""
    svcca_k: int | Literal["variance"] = 50
    """SVCCA / PWCCA directions per side, at most a tenth of the data points; "variance": enough directions for
    `svcca_variance` of the variance, which for decoder rows is nearly all of them (600 of 640): CCA on that
    many directions with a few thousand pairs drifts towards 1 whatever the pairing (the null mean of SVCCA
    grows with k, from 0.01 at k 1 to 0.27 at k 500 for random decoders)."""
    svcca_variance: float = 0.99
    """Variance fraction that sets SVCCA's directions when `svcca_k` is "variance"."""
    max_points: int = 2000
    """rsa, linear_cka and mutual_knn use at most this many data points (a seeded sample): their nulls cost
    n^2 per permutation (RSA's inner matrices, CKA's Gram matrices, the kNN graphs)."""
    top_m: int = 10
    """Candidate partners kept per latent (the assignment graph; the best partner above the chance thresholds
    is picked among them)."""
    n_permutations: int = 1000
    """Random pairings in each null."""
    n_bootstrap: int = 20
    """Random halves of the documents on which the real pair and its controls are re-selected (correlation,
    threshold, matching) and re-scored: the intervals and the test of the real pair against its controls
    (0: neither).  Each costs one correlation per comparison on half of the positions."""
    bootstrap_measures: list[str] = field(default_factory=lambda: ["svcca", "rsa", "linear_cka"])
    """Measures tested against the controls on the half-samples (the headline test), with an interval where
    the measure's interval is calibrated (scoring.INTERVAL_MEASURES)."""
    control_measures: list[str] = field(default_factory=lambda: ["svcca", "rsa", "linear_cka"])
    """Measures of the controls (decoder rows; activations too for neurons, which have no decoder)."""
    random_init_seeds: int = 3
    """Random SAEs of the random_init control: the headline test compares the real pair with their mean
    score and counts their spread (each extra seed costs one more selection per layer pair; the half-samples
    use the first).  Over 4 seeds the demo's random-init scores spread by 0.15-0.80 times the half-sample
    standard error of the test (bench/random_init_seeds.py), so one seed alone overstates the evidence."""
    controls: list[str] = field(default_factory=lambda: ["random_init", "neurons", "shifted"])
    """Controls scored beside each layer pair ([] for none): random_init (B's SAE with random weights),
    neurons (raw activations), shifted (B one token later: misaligned), skyline (A against SAEs of A trained
    with another seed; it needs those SAEs, so it is not on by default)."""
    max_positions: int | None = None
    """Use at most this many aligned positions (the first ones)."""
    seed: int = 0
    """Seed of permutations, bootstraps and samples."""
    device: str = field(default="auto", metadata=RUNTIME)
    """Where to run the SAE encodes, the correlation sums and the permutation nulls: auto (CUDA, then MPS, then
    the CPU), cpu, cuda, cuda:N or mps; under torchrun each process takes the GPU of its local rank.  The
    results are the same files on every device."""

    def _validate(self) -> None:
        check_choice(self, "method", METHODS)
        check_float(self, "threshold", -1, 1, high_open=True, allowed="use a correlation in [-1, 1)")
        for name in ("measures", "activation_measures", "bootstrap_measures", "control_measures"):
            check_subset(self, name, tuple(MEASURES))
        check(bool(self.measures), "measures", self.measures, f"name at least one of {', '.join(MEASURES)}")
        check_int(self, "activation_positions", 3, 10**6)
        check(
            self.svcca_k == "variance"
            or (isinstance(self.svcca_k, int) and not isinstance(self.svcca_k, bool) and 1 <= self.svcca_k <= 10**5),
            "svcca_k",
            self.svcca_k,
            'use a number of directions >= 1, or "variance"',
        )
        check_float(self, "svcca_variance", 0, 1, low_open=True)
        check_int(self, "max_points", 3, 10**6)
        check_int(self, "top_m", 1, 1000)
        check_int(self, "n_permutations", 1, 10**7, "use at least 1 (1000 for p-values)")
        check_int(self, "n_bootstrap", 0, 10**6, "use 0 (none) or more (20 for intervals and tests)")
        check_int(self, "chance_shifts", 0, 1000, "use 0 (no chance threshold) or more, e.g. 19")
        check_int(self, "random_init_seeds", 1, 100, "use 1 (one random SAE) or more, e.g. 3")
        check_subset(self, "controls", CONTROLS)
        check(
            self.max_positions is None or (isinstance(self.max_positions, int) and self.max_positions >= 1),
            "max_positions",
            self.max_positions,
            "use a positive number of positions, or leave it unset",
        )
        check_int(self, "seed", 0)
        check_device(self)


@dataclass(kw_only=True)
class CompareConfig(CompareOptions):
    """A layer grid of model A against model B, with nulls, bootstraps and controls."""

    store_a: str
    """Activation store of model A (`saeatlas extract`)."""
    store_b: str
    """Activation store of model B, extracted from the same corpus, split and seed."""
    saes_a: str
    """SAEs of model A: a folder template with `{hook}` or `{layer}` (e.g. runs/sae-gemma-{hook}), or a
    folder holding one SAE folder per hook (named resid_post.3, blocks.3.hook_resid_post or layers.3)."""
    saes_b: str
    """SAEs of model B, likewise."""
    hooks_a: list[str]
    """Hooks of model A (resid_post.3, a bare layer number 3, blocks.3.hook_resid_post or model.layers.3)."""
    hooks_b: list[str]
    """Hooks of model B."""
    skyline_saes_a: str | None = None
    """SAEs of model A trained with another seed (a template like `saes_a`), for the skyline control."""

    def _validate(self) -> None:
        for name in ("hooks_a", "hooks_b"):
            hooks = getattr(self, name)
            check(isinstance(hooks, list) and bool(hooks), name, hooks, "name at least one hook, e.g. resid_post.3")
            setattr(self, name, [canonical_hook(h) for h in hooks])
            check(len(set(getattr(self, name))) == len(hooks), name, hooks, "name each hook once")
        for name in ("saes_a", "saes_b", "skyline_saes_a"):
            template = getattr(self, name)
            if template is not None:
                problem = template_problem(template) if isinstance(template, str) else "not a string"
                check(problem is None, name, template, f"{problem}: use {{hook}} and/or {{layer}}, e.g. saes/{{hook}}")
        check(
            "skyline" not in self.controls or bool(self.skyline_saes_a),
            "skyline_saes_a",
            self.skyline_saes_a,
            "the skyline control needs SAEs of model A trained with another seed",
        )


@dataclass(kw_only=True)
class ConceptsConfig(CompareConfig):
    """Concept subspaces: the latents of each concept's keywords, matched and scored within the concept."""

    concepts: list[str] = field(default_factory=lambda: [BUILTIN_CONCEPTS])
    """Concept definitions, merged: "builtin" (the paper's eight categories) and / or TOML or JSON files
    {name: [words]}."""

    def _validate(self) -> None:
        check(
            isinstance(self.concepts, list) and bool(self.concepts),
            "concepts",
            self.concepts,
            'name at least one source: "builtin" or a TOML / JSON file {name: [words]}',
        )
