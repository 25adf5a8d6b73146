"""Sparse codes for the TopK family: never build the dense [n, d_sae] code matrix.

A TopK SAE keeps k of d_sae latents per token, so everything after the encoder
matmul is sparse: the decoder is an `embedding_bag` over the k decoder rows,
and the encoder's backward only needs the k selected pre-activations per token
(a sparse-dense product instead of a second dense matmul).  The one dense
operation left is the encoder matmul, done in bfloat16 when asked.  The top-k
and the sparse products of the backward run in compiled kernels (`saeatlas.native`)
where a C compiler is at hand, and in torch operators otherwise.

Codes are kept as `SparseCodes`: for each token (row) its latent indices and
values, rows stored one after another (CSR order).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import native

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

GROUP_SIZE = 16
"""Columns per group in `fast_topk` (about sqrt(d_sae / k) balances its two stages)."""


def row_pointers(offsets: torch.Tensor, n_codes: int) -> torch.Tensor:
    """[n + 1] CSR row pointers from [n] row starts and the number of codes."""
    return torch.cat([offsets, offsets.new_tensor([n_codes])])


def rows_of(crow: torch.Tensor) -> torch.Tensor:
    """[m] row of each code, from [n + 1] CSR row pointers."""
    rows = torch.arange(crow.shape[0] - 1, device=crow.device)
    return torch.repeat_interleave(rows, crow.diff(), output_size=int(crow[-1]))


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
        return rows_of(self.crow())

    def to_dense(self) -> torch.Tensor:
        """[n, d_sae] dense codes (for metrics and tests; avoid in hot paths)."""
        dense = torch.zeros(self.n_rows, self.d_sae, dtype=self.values.dtype, device=self.values.device)
        dense[self.rows(), self.indices] = self.values.detach()
        return dense


def _native(tensor: torch.Tensor) -> bool:
    """Whether the native kernels serve `tensor`: they are compiled for CPUs, so other devices take torch's path."""
    return tensor.device.type == "cpu" and native.library() is not None


def fast_topk(
    pre: torch.Tensor, k: int, bias: torch.Tensor | None = None, group: int = GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-row top-k of pre + bias ([n, d_sae], bias [d_sae] added in float32)
    -> (values [n, k], indices [n, k]), unsorted.

    The native kernel where available; otherwise torch in two cheap stages:
    columns are split into `group` strided slices; the k groups with the
    largest maxima hold every top-k value (any top-k element outside them
    would be <= the k-th group maximum, so it ties with one inside), so the
    top-k of those k * group candidates is the answer.
    """
    n, width = pre.shape
    if _native(pre) and pre.is_contiguous() and pre.dtype in (torch.float32, torch.bfloat16):
        return native.topk_rows(pre, k, bias)
    if bias is not None:
        pre = pre + bias.detach().float()
    if width % group or width // group <= k:
        return pre.topk(k, dim=-1, sorted=False)
    m = width // group
    grouped = pre.view(n, group, m)  # group j holds columns j, j + m, j + 2m, ...
    _, best = grouped.amax(1).topk(k, dim=-1, sorted=False)  # [n, k] group ids
    candidates = grouped.gather(2, best[:, None, :].expand(n, group, k)).reshape(n, group * k)
    values, pick = candidates.topk(k, dim=-1, sorted=False)
    indices = (pick // k) * m + best.gather(1, pick % k)
    return values, indices


def topk_codes(pre: torch.Tensor, k: int, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopK: (indices [n*k], values [n*k], offsets [n]) of pre-activations pre + bias ([n, d_sae], [d_sae]);
    `select` applies the ReLU."""
    values, indices = fast_topk(pre, k, bias)
    offsets = torch.arange(0, pre.shape[0] * k, k, device=pre.device)
    return indices.reshape(-1), values.reshape(-1), offsets


def batch_topk_codes(
    pre: torch.Tensor,
    k: int,
    bias: torch.Tensor,
    world: int = 1,
    rank: int = 0,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchTopK: the k * n largest pre-activations pre + bias of the batch, in CSR order (`select` applies the ReLU).

    With `world` > 1 the batch is rank `rank`'s slice [n, d_sae] of a global batch of world * n rows, and the
    k * world * n largest of the global batch are kept: every value of the global top lies in its rank's own
    top k * world * n, so each rank offers those candidates, `gather` returns all ranks' [world * m], rank after
    rank (an all_gather), and each rank keeps its candidates above the global threshold and, of those equal to
    it, what the ranks before it left of the number still to keep.  Ties are common (a store repeats tokens,
    so rows repeat); exactly k * world * n codes are kept, as in one process.
    """
    n, width = pre.shape
    scores = (pre.float() + bias.detach().float()).reshape(-1)
    if world == 1:
        values, flat = scores.topk(k * n, sorted=False)
    else:
        n_keep = k * n * world
        candidates, flat = scores.topk(min(scores.numel(), n_keep), sorted=False)
        everyone = gather(candidates)  # [world * m]
        threshold = everyone.topk(n_keep, sorted=False).values.min()
        tied_before = int((everyone[: rank * len(candidates)] == threshold).sum())
        tied_left = n_keep - int((everyone > threshold).sum()) - tied_before
        tied = candidates == threshold
        keep = (candidates > threshold) | (tied & (tied.cumsum(0) <= tied_left))
        values, flat = candidates[keep], flat[keep]
    flat, order = flat.sort()
    values = values[order]
    rows = flat // width
    offsets = torch.searchsorted(rows, torch.arange(n, device=pre.device))
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
        grad = grad.float().contiguous()
        if _native(centred):
            rows = rows_of(crow)
            grad_w_enc_t, colsum = native.scatter_by_latent(
                native.latent_order(indices, d_sae), rows, grad, centred.contiguous(), d_sae
            )
            grad_w_enc = grad_w_enc_t.t()  # [d_in, d_sae] view of [d_sae, d_in]: W_enc_T's layout
        else:
            colsum = torch.zeros(d_sae, device=grad.device).index_add_(0, indices, grad)
            sparse = torch.sparse_csr_tensor(crow, indices, grad, (centred.shape[0], d_sae), check_invariants=False)
            grad_w_enc = torch.sparse.mm(sparse.t(), centred).t()  # [d_in, d_sae]
        return None, None, grad_w_enc, colsum, -(W_enc @ colsum), None, None


class _SparseDecode(torch.autograd.Function):
    """recon[r] = sum of values[i] W_dec[indices[i]] over row r's codes; backward by native kernels.

    grad_values[i] = <grad[row i], W_dec[indices[i]]>, grad_W_dec = S^T grad (S the codes), in one pass."""

    @staticmethod
    def forward(ctx, values, W_dec, indices, offsets, crow):
        ctx.save_for_backward(values, W_dec, indices, crow)
        return F.embedding_bag(indices, W_dec, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):
        values, W_dec, indices, crow = ctx.saved_tensors
        grad = grad.float().contiguous()
        rows, grouping = rows_of(crow), native.latent_order(indices, W_dec.shape[0])
        grad_values, grad_w_dec = native.decode_backward(
            grouping, rows, values.float().contiguous(), grad, W_dec.contiguous()
        )
        return grad_values, grad_w_dec, None, None, None


def encoder_product(sae, centred: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, d_sae] (x - b_dec) W_enc of centred inputs, without b_enc and without autograd, computed in `dtype`.

    The top-k adds b_enc in float32 as it reads each value: a bias in the
    bfloat16 matmul itself costs about a tenth of its time.  bfloat16 halves
    the matmul's time on CPUs with AVX-512 BF16 / AMX; the master weights and
    all gradients stay float32.
    """
    with torch.no_grad():
        return torch.mm(centred.to(dtype), sae.W_enc.to(dtype))


def choose(
    arch: str,
    product: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    world: int = 1,
    rank: int = 0,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices, values and offsets of the codes a TopK (per token) or BatchTopK (per batch) SAE keeps,
    from the encoder product [n, d_sae] and b_enc [d_sae]; BatchTopK over `world` ranks' slices (see
    `batch_topk_codes`)."""
    with torch.no_grad():
        if arch == "topk":
            return topk_codes(product, k, b_enc)
        if arch == "batchtopk":
            return batch_topk_codes(product, k, b_enc, world, rank, gather)
    raise ValueError(f"sparse codes need arch topk or batchtopk, not {arch}")


def select(sae, centred: torch.Tensor, indices, values, offsets) -> SparseCodes:
    """Codes from chosen pre-activations, ReLU'd, with the sparse encoder gradient attached."""
    crow = row_pointers(offsets, indices.shape[0])
    selected = _SelectedPre.apply(values.float(), centred.detach(), sae.W_enc, sae.b_enc, sae.b_dec, indices, crow)
    return SparseCodes(indices, selected.relu(), offsets, sae.cfg.d_sae)


def decode_sparse(codes: SparseCodes, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """[n, d_in] reconstruction sum_j codes_j W_dec[j] (+ b_dec), by embedding_bag."""
    if _native(W_dec) and W_dec.dtype == torch.float32:
        out = _SparseDecode.apply(codes.values, W_dec, codes.indices, codes.offsets, codes.crow())
    else:
        out = F.embedding_bag(codes.indices, W_dec, codes.offsets, mode="sum", per_sample_weights=codes.values)
    return out if b_dec is None else out + b_dec
