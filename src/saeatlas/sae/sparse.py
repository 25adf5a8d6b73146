"""Sparse codes for the TopK family: never build the dense [n, d_sae] code matrix.

A TopK SAE keeps k of d_sae latents per token, so everything after the encoder
matmul is sparse: the decoder is an `embedding_bag` over the k decoder rows,
and the encoder's backward only needs the k selected pre-activations per token
(a sparse-dense product instead of a second dense matmul).  The one dense
operation left is the encoder matmul, done in bfloat16 when asked.

Codes are kept as `SparseCodes`: for each token (row) its latent indices and
values, rows stored one after another (CSR order).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

GROUP_SIZE = 16
"""Columns per group in `fast_topk` (about sqrt(d_sae / k) balances its two stages)."""


def row_pointers(offsets: torch.Tensor, n_codes: int) -> torch.Tensor:
    """[n + 1] CSR row pointers from [n] row starts and the number of codes."""
    return torch.cat([offsets, offsets.new_tensor([n_codes])])


class SparseCodes(NamedTuple):
    """Latent codes of n tokens in CSR order."""

    indices: torch.Tensor
    """[m] latent index of each kept code, row after row."""
    values: torch.Tensor
    """[m] value of each kept code (may carry autograd history)."""
    offsets: torch.Tensor
    """[n] position in `indices` where each row starts."""
    d_sae: int

    @property
    def n_rows(self) -> int:
        return self.offsets.shape[0]

    def crow(self) -> torch.Tensor:
        """[n + 1] CSR row pointers."""
        return row_pointers(self.offsets, self.indices.shape[0])

    def rows(self) -> torch.Tensor:
        """[m] row of each kept code."""
        counts = self.crow().diff()
        return torch.repeat_interleave(torch.arange(self.n_rows), counts)

    def to_dense(self) -> torch.Tensor:
        """[n, d_sae] dense codes (for metrics and tests; avoid in hot paths)."""
        dense = torch.zeros(self.n_rows, self.d_sae, dtype=self.values.dtype)
        dense[self.rows(), self.indices] = self.values.detach()
        return dense


def fast_topk(pre: torch.Tensor, k: int, group: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-row top-k of [n, d_sae] in two cheap stages -> (values [n, k], indices [n, k]), unsorted.

    Columns are split into `group` strided slices; the k groups with the
    largest maxima hold every top-k value (any top-k element outside them
    would be <= the k-th group maximum, so it ties with one inside), so the
    top-k of those k * group candidates is the answer.  Several times faster
    than `torch.topk` over the full width on CPU.
    """
    n, width = pre.shape
    if width % group or width // group <= k:
        return pre.topk(k, dim=-1, sorted=False)
    m = width // group
    grouped = pre.view(n, group, m)  # group j holds columns j, j + m, j + 2m, ...
    _, best = grouped.amax(1).topk(k, dim=-1, sorted=False)  # [n, k] group ids
    candidates = grouped.gather(2, best[:, None, :].expand(n, group, k)).reshape(n, group * k)
    values, pick = candidates.topk(k, dim=-1, sorted=False)
    indices = (pick // k) * m + best.gather(1, pick % k)
    return values, indices


def topk_codes(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopK: (indices [n*k], values [n*k], offsets [n]) of [n, d_sae] pre-activations (`select` applies the ReLU)."""
    values, indices = fast_topk(pre, k)
    offsets = torch.arange(0, pre.shape[0] * k, k)
    return indices.reshape(-1), values.reshape(-1), offsets


def batch_topk_codes(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchTopK: the k * n largest pre-activations of the batch, in CSR order (`select` applies the ReLU)."""
    n, width = pre.shape
    values, flat = pre.reshape(-1).topk(k * n, sorted=False)
    flat, order = flat.sort()
    values = values[order]
    rows = flat // width
    offsets = torch.searchsorted(rows, torch.arange(n))
    return flat % width, values, offsets


class _SelectedPre(torch.autograd.Function):
    """values = pre[rows, indices] (already computed); backward is sparse.

    pre = (x - b_dec) @ W_enc + b_enc, so for the gradient g of the selected
    entries: dW_enc = (x - b_dec)^T S, db_enc = colsum(S), db_dec = -W_enc colsum(S),
    with S the sparse [n, d_sae] matrix holding g.
    """

    @staticmethod
    def forward(ctx, values, centred, W_enc, b_enc, b_dec, indices, crow):
        ctx.save_for_backward(centred, W_enc, indices, crow)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        centred, W_enc, indices, crow = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad = grad.float()
        colsum = torch.zeros(d_sae).index_add_(0, indices, grad)
        sparse = torch.sparse_csr_tensor(crow, indices, grad, (centred.shape[0], d_sae), check_invariants=False)
        grad_w_enc = torch.sparse.mm(sparse.t(), centred).t()  # [d_in, d_sae]
        return None, None, grad_w_enc, colsum, -(W_enc @ colsum), None, None


def encoder_pre(sae, centred: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, d_sae] pre-activations of centred inputs (x - b_dec), without autograd, computed in `dtype`.

    bfloat16 halves the matmul's time on CPUs with AVX-512 BF16 / AMX; the
    master weights and all gradients stay float32.
    """
    with torch.no_grad():
        return torch.addmm(sae.b_enc.to(dtype), centred.to(dtype), sae.W_enc.to(dtype))


def choose(arch: str, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices, values and offsets of the codes a TopK (per token) or BatchTopK (per batch) SAE keeps."""
    with torch.no_grad():
        if arch == "topk":
            return topk_codes(pre, k)
        if arch == "batchtopk":
            return batch_topk_codes(pre, k)
    raise ValueError(f"sparse codes need arch topk or batchtopk, not {arch}")


def select(sae, centred: torch.Tensor, indices, values, offsets) -> SparseCodes:
    """Codes from chosen pre-activations, ReLU'd, with the sparse encoder gradient attached."""
    crow = row_pointers(offsets, indices.shape[0])
    selected = _SelectedPre.apply(values.float(), centred.detach(), sae.W_enc, sae.b_enc, sae.b_dec, indices, crow)
    return SparseCodes(indices, selected.relu(), offsets, sae.cfg.d_sae)


def decode_sparse(codes: SparseCodes, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """[n, d_in] reconstruction sum_j codes_j W_dec[j] (+ b_dec), by embedding_bag."""
    out = F.embedding_bag(codes.indices, W_dec, codes.offsets, mode="sum", per_sample_weights=codes.values)
    return out if b_dec is None else out + b_dec
