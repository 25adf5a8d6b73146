"""Sparse SAE codes at aligned positions, and each latent's top activating rows.

Codes are `scipy.sparse.csr_array`, float32, [n_positions, d_sae]: an SAE
fires on a few dozen of its thousands of latents per position, so a dense copy
(6.5 GB for 100k positions x 16384 latents) is never made.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import SaeAtlasError


def encode_sparse(sae, batches: Iterable[torch.Tensor]) -> sp.csr_array:
    """Codes [n_positions, d_sae] float32 CSR of `sae` on `batches` (float32 [chunk, d_in] tensors, in order).

    Each chunk is encoded densely under torch.no_grad and only its nonzeros are kept, so memory is one
    [chunk, d_sae] block plus the nonzeros.  The SAE is used in whatever mode it is in (call `.eval()`
    first for a BatchTopK SAE, whose training mode depends on the batch).  The chunks are encoded on the SAE's
    device; only the nonzeros come back to the CPU.
    """
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    device = sae.W_dec.device
    pointers, indices, values = [np.zeros(1, dtype=np.int64)], [], []
    n_rows = nnz = 0
    with torch.no_grad():
        for x in batches:
            if x.ndim != 2 or x.shape[1] != d_in:
                raise SaeAtlasError(
                    f"activation chunk of shape {tuple(x.shape)} does not fit an SAE with d_in {d_in}: "
                    "give [chunk, d_in] activations of the hook the SAE was trained on"
                )
            x = x.to(device=device, dtype=torch.float32)
            if sae.cfg.arch == "topk":
                row_ptr, cols, vals = _topk_chunk(sae, x)
            else:
                codes = sae.encode(x).float()  # [chunk, d_sae]
                # MPS has no sparse CSR layout: its dense codes come back to the CPU first
                csr = (codes.cpu() if device.type == "mps" else codes).to_sparse_csr().cpu()
                row_ptr, cols, vals = csr.crow_indices()[1:].numpy(), csr.col_indices().numpy(), csr.values().numpy()
            pointers.append(row_ptr.astype(np.int64) + nnz)
            indices.append(cols.astype(np.int32))
            values.append(vals.astype(np.float32))
            n_rows += x.shape[0]
            nnz += len(indices[-1])
    indptr = np.concatenate(pointers)
    data = np.concatenate(values) if values else np.zeros(0, np.float32)
    cols = np.concatenate(indices) if indices else np.zeros(0, np.int32)
    if nnz < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    return sp.csr_array((data, cols, indptr), shape=(n_rows, d_sae))


def _topk_chunk(sae, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A TopK SAE's codes of x [chunk, d_in] straight in CSR parts (row ends, columns, values), float32:
    the k largest pre-activations per row (the trainer's top-k), ReLU'd, zeros dropped; no dense codes."""
    from ..sae.sparse import encoder_product, fast_topk

    pre = encoder_product(sae, x - sae.b_dec)  # [chunk, d_sae]
    if x.device.type == "cpu":
        values, columns = fast_topk(pre, sae.cfg.k, sae.b_enc)  # [chunk, k] each
    else:  # the native top-k is a CPU kernel
        values, columns = (pre + sae.b_enc).topk(sae.cfg.k, dim=1, sorted=False)
    values = values.float().relu()
    keep = values > 0
    order = torch.argsort(columns, dim=1)  # columns ascending within each row, as CSR readers expect
    columns, values, keep = (t.gather(1, order) for t in (columns, values, keep))
    return keep.sum(1).cumsum(0).cpu().numpy(), columns[keep].cpu().numpy(), values[keep].cpu().numpy()


def top_positions(codes: sp.sparray, k: int = 5) -> np.ndarray:
    """[d_sae, k] int64: for each latent (column of `codes` [n, d_sae]) the rows of its k largest
    activations, largest first (ties: lower row first), -1 where it fires on fewer than k rows."""
    if k < 1:
        raise SaeAtlasError(f"top_positions needs k >= 1, got {k}")
    csc = sp.csc_array(codes)
    csc.eliminate_zeros()
    csc.sort_indices()
    d_sae = csc.shape[1]
    counts = np.diff(csc.indptr)  # [d_sae]
    column = np.repeat(np.arange(d_sae), counts)  # [nnz]
    # Entries come column by column with rows ascending, so a stable sort by (column, -value) keeps the
    # lower row first among equal values.
    order = np.lexsort((-csc.data.astype(np.float64), column))
    rank = np.arange(csc.nnz) - np.repeat(csc.indptr[:-1], counts)  # rank of each sorted entry in its column
    keep = rank < k
    out = np.full((d_sae, k), -1, dtype=np.int64)
    out[column[keep], rank[keep]] = csc.indices[order[keep]]
    return out


def random_like(cfg, x: torch.Tensor, l0: float, mean_code: float, generator: torch.Generator):
    """A random-init SAE of config `cfg` (the `random_init` control) that fires like the real one: on
    activations x [n, d_in] (a sample of those the real SAE encodes) it keeps `l0` latents per row on average
    with mean nonzero code `mean_code`, the real SAE's figures on the same activations.

    It starts as the trainer starts an SAE (`sae.trainer.init_sae`): random tied weights, b_dec at the
    geometric median of x.  relu / jumprelu / gba then get one threshold for every latent, the value that
    l0 x n of the n x d_sae pre-activations exceed (relu: as the bias -threshold); untouched, about half of
    the latents fire on every token (2044 of 4096), with codes ~ |x| / sqrt(d_in).  topk / batchtopk / mp keep
    k per row by construction.  Last, the encoder (with the bias and thresholds) is scaled so that the mean
    nonzero code is `mean_code` (not for mp, whose codes come from the decoder).  Returns it in eval mode.
    """
    from ..sae.model import SparseAutoencoder
    from ..sae.trainer import geometric_median

    sae = SparseAutoencoder(cfg, generator).eval()
    x = x.float()
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(x))
        if cfg.arch in ("relu", "jumprelu", "gba"):
            flat = sae.pre_activations(x).reshape(-1)  # b_enc is zero
            n_fire = round(l0 * len(x))
            if n_fire <= 0:
                threshold = float(flat.max()) + 1.0
            elif n_fire >= flat.numel():
                threshold = float(flat.min()) - 1.0
            else:
                top = flat.topk(n_fire + 1).values  # descending
                threshold = float(top[-2] + top[-1]) / 2
            if cfg.arch == "relu":
                sae.b_enc.fill_(-threshold)
            else:
                sae.threshold.fill_(threshold)
        if cfg.arch != "mp" and mean_code > 0:
            codes = sae.encode(x)
            current = float(codes[codes != 0].abs().mean()) if bool((codes != 0).any()) else 0.0
            if current > 0:
                factor = mean_code / current
                sae.W_enc_T.mul_(factor)
                sae.b_enc.mul_(factor)
                sae.threshold.mul_(factor)
    return sae
