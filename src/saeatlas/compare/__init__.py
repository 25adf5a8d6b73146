"""Cross-model comparison of SAE feature spaces: align, correlate, match, score, test.

Modules: `align` (positions both models read with the same prefix), `codes`
(sparse SAE codes), `correlate` (streaming latent-latent Pearson), `match`
(pairing rules and filters), `similarity` (SVCCA, PWCCA, RSA, CKA, Procrustes,
mutual kNN), `stats` (permutation nulls, p, z, q), `concepts`
(keyword subspaces), `sides` (each model's codes at the aligned positions),
`scoring` (one pair of sides: match, score, nulls, the
half-sample test against the controls), `grid` (the jobs:
`run_compare` over a layer grid, `run_concepts`), `synthetic` (two planted models:
the ground truth).

The similarity measures take numpy arrays or torch tensors [n, d_a], [n, d_b].
"""

from .similarity import MEASURES, linear_cka, mutual_knn, procrustes, pwcca, rsa, svcca, svcca_legacy
from .stats import benjamini_hochberg, p_value, permutation_null, summarize, z_score

__all__ = [
    "MEASURES",
    "benjamini_hochberg",
    "linear_cka",
    "mutual_knn",
    "p_value",
    "permutation_null",
    "procrustes",
    "pwcca",
    "rsa",
    "summarize",
    "svcca",
    "svcca_legacy",
    "z_score",
]
