"""Small C kernels (CPU only) for any stage: sparse SAE training and the RSA / CKA permutation nulls.

The per-row top-k of the encoder's pre-activations and the sparse products
of the backward pass are simple loops that torch's CPU operators run several
times slower than compiled C (torch.topk scans the whole row per element kept;
embedding_bag's backward and sparse CSR products allocate and sort); the
permutation nulls of RSA and CKA gather an n x n matrix per permutation.
`kernels.c` holds these loops; `loader` compiles and loads it, `wrappers`
calls it.  Callers test `library() is not None` and otherwise use their torch
or NumPy implementation.
"""

from .loader import library
from .wrappers import decode_backward, latent_order, permuted_gram_dots, scatter_by_latent, topk_rows

__all__ = ["decode_backward", "latent_order", "library", "permuted_gram_dots", "scatter_by_latent", "topk_rows"]
