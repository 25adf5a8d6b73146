"""Latent-latent Pearson correlation over positions, from running sums with float64 accumulators.

For every latent i of SAE A and j of SAE B over n aligned positions:

    r_ij = (S_ij / n - mean_a_i mean_b_j) / (sd_a_i sd_b_j),   S = codes_a^T codes_b,

with sums, sums of squares and the cross sums S accumulated in float64.  SAE
codes are ~99% zeros, so S is a sparse-sparse product: each nonzero of A meets
only the ~k nonzeros of B at the same position (100k positions x 64 x 64 =
0.4 G products for two TopK-64 SAEs), against n d_a d_b = 27 T for the dense
product of z-scored copies the paper's code makes (6.5 GB per side).

S is produced in blocks of A latents and turned into correlations block by
block: the best and top-m partners of every latent on both sides are kept, the
full [d_a, d_b] matrix only on request.

On an accelerator (`device`) S is instead a sum over chunks of positions of dense
products codes_a[chunk]^T codes_b[chunk], the matmuls GPUs are built for, in
float64 where the device has it; where it has not (MPS), in float32 with each
chunk's product added by Neumaier's compensated summation, so the error does
not grow with the number of chunks (tests/test_devices.py measures it against
float64).  The blocks of S come back to the CPU, where the rest is the same.

Dead latents (zero variance over the positions) get NaN and are never
anyone's partner: the paper's code (github.com/wlg1/univ_feat_geom) matched
them to latent 0 (NaN's argmax).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..devices import has_float64
from ..errors import SaeAtlasError
from ..memory import one_torch_thread

BLOCK_BYTES = 1 << 24
"""Default size of one float64 block of S (A latents x d_b): 16 MiB.  Larger blocks are no faster: glibc
maps blocks over 32 MiB afresh at every allocation, and their page faults then cost more than the sums."""
PRODUCT_BUDGET = 1 << 22
"""Products a-value x b-value generated at once (their keys and weights take ~16 bytes each)."""
DEVICE_BLOCK_BYTES = 1 << 30
"""Size of one block of S (A latents x d_b) on an accelerator, compensation included."""
DEVICE_CHUNK = 4096
"""Positions per dense product on an accelerator."""
DEAD_VARIANCE = 1e-10
"""A latent is dead when its variance is at most this fraction of its mean square (zero or constant)."""


@dataclass
class CorrelationResult:
    """Correlations between the latents of A (d_a) and of B (d_b) over `n_positions` positions.

    Bests and candidates use the signed correlation and alive latents only; -1 / NaN where there is none.
    """

    n_positions: int
    dead_a: np.ndarray
    """[d_a] bool: zero variance over the positions (never fires, or constant)."""
    dead_b: np.ndarray
    """[d_b] bool."""
    best_a_for_b: np.ndarray
    """[d_b] int64: the most correlated alive A latent of each B latent (-1 if the B latent is dead)."""
    best_corr_for_b: np.ndarray
    """[d_b] float64: its correlation (NaN if none)."""
    best_b_for_a: np.ndarray
    """[d_a] int64."""
    best_corr_for_a: np.ndarray
    """[d_a] float64."""
    cand_a_for_b: np.ndarray
    """[d_b, top_m] int64: the top-m A latents of each B latent, most correlated first, -1 padded."""
    cand_corr_a_for_b: np.ndarray
    """[d_b, top_m] float64, NaN padded."""
    cand_b_for_a: np.ndarray
    """[d_a, top_m] int64."""
    cand_corr_b_for_a: np.ndarray
    """[d_a, top_m] float64."""
    matrix: np.ndarray | None = None
    """[d_a, d_b] float32 correlation matrix (NaN in dead rows and columns), or None."""


@dataclass
class _Moments:
    """Per-latent mean and standard deviation from sums over n positions; `inv_sd` is 0 for dead latents."""

    mean: np.ndarray
    inv_sd: np.ndarray
    dead: np.ndarray


def _moments(n: float, total: np.ndarray, total_sq: np.ndarray) -> _Moments:
    if n <= 0:
        zeros = np.zeros_like(total, dtype=np.float64)
        return _Moments(zeros, zeros.copy(), np.ones(total.shape, dtype=bool))
    mean = total / n
    mean_sq = total_sq / n
    var = mean_sq - mean * mean
    dead = var <= DEAD_VARIANCE * mean_sq
    inv_sd = np.where(dead, 0.0, 1.0 / np.sqrt(np.where(dead, 1.0, var)))
    return _Moments(mean, inv_sd, dead)


# ---------------------------------------------------------------- public
def pearson_sparse(
    codes_a: sp.sparray,
    codes_b: sp.sparray,
    top_m: int = 10,
    dense: bool = False,
    block: int | None = None,
    device: torch.device | None = None,
    accumulate: torch.dtype | None = None,
) -> CorrelationResult:
    """Pearson correlation between every column of `codes_a` [n, d_a] and of `codes_b` [n, d_b] (sparse).

    block: at most this many A latents per block of cross sums (default: a 16 MiB float64 block; blocks
    are also cut to about PRODUCT_BUDGET products).  Memory: a block, the products of one block, B's rows
    in float64, and the [d_a, d_b] float32 matrix only when `dense`.
    device: where the cross sums run (None or the CPU: the sparse CPU path); accumulate: their dtype on the
    device (default float64 where it has it, else compensated float32); given with the CPU device, the
    device path runs on the CPU (to test it).
    """
    a, b = _as_csr(codes_a, "codes_a"), _as_csr(codes_b, "codes_b")
    _check_rows(a.shape[0], b.shape[0])
    _check_top_m(top_m)
    n = a.shape[0]
    mom_a, mom_b = _moments(n, *_column_sums(a)), _moments(n, *_column_sums(b))
    if _on_device(device, accumulate):
        blocks = _device_cross_blocks(_csr_chunks(a), _csr_chunks(b), n, a.shape[1], b.shape[1], device, accumulate)
    else:
        blocks = _sparse_cross_blocks(a, b, block or max(1, BLOCK_BYTES // (8 * max(b.shape[1], 1))))
    with one_torch_thread():
        return _collect(blocks, n, mom_a, mom_b, top_m, dense)


def pearson_dense(
    x_a, x_b, top_m: int = 10, chunk: int = 8192, device: torch.device | None = None, accumulate=None
) -> CorrelationResult:
    """Pearson correlation between the columns of dense activations x_a [n, d_a] and x_b [n, d_b]
    (raw neurons), accumulated in float64 over chunks of `chunk` positions; the matrix is kept.
    device, accumulate: where the cross sums run, in what dtype, as for `pearson_sparse`."""
    xa, xb = _as_dense(x_a, "x_a"), _as_dense(x_b, "x_b")
    _check_rows(xa.shape[0], xb.shape[0])
    _check_top_m(top_m)
    n, d_a, d_b = xa.shape[0], xa.shape[1], xb.shape[1]
    # Shifting each column by a typical value keeps S/n - mean_a mean_b from cancelling for neurons with a
    # large mean (residual streams have some); correlations do not change under a shift.
    shift_a = xa[:chunk].mean(0, dtype=np.float64) if n else np.zeros(d_a)
    shift_b = xb[:chunk].mean(0, dtype=np.float64) if n else np.zeros(d_b)
    on_device = _on_device(device, accumulate)
    sa, saa, sb, sbb = np.zeros(d_a), np.zeros(d_a), np.zeros(d_b), np.zeros(d_b)
    cross = None if on_device else np.zeros((d_a, d_b))
    for first in range(0, n, chunk):
        ca = xa[first : first + chunk].astype(np.float64) - shift_a  # [c, d_a]
        cb = xb[first : first + chunk].astype(np.float64) - shift_b  # [c, d_b]
        sa += ca.sum(0)
        saa += np.einsum("ij,ij->j", ca, ca)
        sb += cb.sum(0)
        sbb += np.einsum("ij,ij->j", cb, cb)
        if cross is not None:
            cross += ca.T @ cb
    if on_device:
        blocks = _device_cross_blocks(
            _dense_chunks(xa, shift_a), _dense_chunks(xb, shift_b), n, d_a, d_b, device, accumulate
        )
    else:
        rows = max(1, BLOCK_BYTES // (8 * max(d_b, 1)))
        blocks = ((r, min(r + rows, d_a), cross[r : r + rows]) for r in range(0, d_a, rows))
    with one_torch_thread():
        return _collect(blocks, n, _moments(n, sa, saa), _moments(n, sb, sbb), top_m, dense=True)


# ---------------------------------------------------------------- inputs
def _as_csr(codes, name: str) -> sp.csr_array:
    if not sp.issparse(codes):
        raise SaeAtlasError(
            f"{name} must be a scipy sparse array [n_positions, d_sae] (see encode_sparse); "
            f"got {type(codes).__name__}: use pearson_dense for dense activations"
        )
    csr = sp.csr_array(codes)
    if csr.ndim != 2:
        raise SaeAtlasError(f"{name} must be 2-D [n_positions, d_sae], got shape {csr.shape}")
    csr.sum_duplicates()
    return csr


def _as_dense(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise SaeAtlasError(f"{name} must be 2-D [n_positions, d], got shape {x.shape}")
    return x


def _check_rows(n_a: int, n_b: int) -> None:
    if n_a != n_b:
        raise SaeAtlasError(f"A has {n_a} positions but B has {n_b}: correlate codes of the same aligned positions")


def _check_top_m(top_m: int) -> None:
    if top_m < 1:
        raise SaeAtlasError(f"top_m must be at least 1, got {top_m}")


def _column_sums(csr: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    """([d] sum, [d] sum of squares) of each column, in float64."""
    values = csr.data.astype(np.float64)
    d = csr.shape[1]
    return (_scatter_add(csr.indices, values, d), _scatter_add(csr.indices, values * values, d))


def _scatter_add(keys: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """[size] float64: out[key] += weight (np.bincount, which returns ints for empty input)."""
    return np.bincount(keys, weights, minlength=size).astype(np.float64, copy=False)


# ---------------------------------------------------------------- cross sums
def _sparse_cross_blocks(a: sp.csr_array, b: sp.csr_array, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(r0, r1, S[r0:r1] float64 [r1 - r0, d_b]) over blocks of at most `rows` A latents.

    For the nonzeros of A latents r0..r1, gather the B row at the same position and scatter-add the
    products into the block (np.bincount on flat keys row * d_b + j).  Keys of one A latent stay within one
    row of the block, so the scatter stays in cache.
    """
    a_t = sp.csr_array(a.T)  # [d_a, n]: each A latent's positions
    a_t.sort_indices()
    a_values = a_t.data.astype(np.float64)
    d_a, d_b = a.shape[1], b.shape[1]
    b_rows = _RowGather(b)
    # Products of each A latent (B row sizes at its positions), cumulated, to size the blocks.
    work = np.concatenate([[0], np.cumsum(b_rows.cost[a_t.indices])])[a_t.indptr]  # [d_a + 1]
    start = 0
    while start < d_a:
        limit = np.searchsorted(work, work[start] + PRODUCT_BUDGET, side="right") - 1
        stop = int(min(max(limit, start + 1), start + rows, d_a))
        lo, hi = a_t.indptr[start], a_t.indptr[stop]
        row_key = np.repeat(np.arange(stop - start, dtype=np.int64) * d_b, np.diff(a_t.indptr[start : stop + 1]))
        keys, weights = b_rows.products(a_t.indices[lo:hi], a_values[lo:hi], row_key)
        yield start, stop, _scatter_add(keys, weights, (stop - start) * d_b).reshape(stop - start, d_b)
        start = stop


class _RowGather:
    """B's rows, gathered for many positions at once: padded to the longest row when rows are about
    equally long (TopK), else as concatenated CSR ranges."""

    def __init__(self, b: sp.csr_array):
        self.lengths = np.diff(b.indptr).astype(np.int64)  # [n]
        n = b.shape[0]
        width = int(self.lengths.max()) if n else 0
        self.padded = n * width <= 1.5 * b.nnz + n
        self.cost = np.full(n, width, dtype=np.int64) if self.padded else self.lengths
        """[n] products generated per A nonzero at each position."""
        if self.padded:
            filled = np.arange(width) < self.lengths[:, None]  # [n, width]
            self.columns = np.zeros((n, width), dtype=np.int64)
            self.values = np.zeros((n, width), dtype=np.float64)  # padding adds 0 to column 0
            self.columns[filled] = b.indices
            self.values[filled] = b.data
        else:
            self.indptr = b.indptr.astype(np.int64)
            self.columns = b.indices.astype(np.int64)
            self.values = b.data.astype(np.float64)

    def products(
        self, positions: np.ndarray, a_values: np.ndarray, row_key: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat keys row_key + j and products a * b_j over the B nonzeros j at each position. [m] in, [P] out."""
        if self.padded:
            keys = self.columns[positions]  # [m, width]
            keys += row_key[:, None]
            weights = self.values[positions]
            weights *= a_values[:, None]
            return keys.reshape(-1), weights.reshape(-1)
        lengths = self.lengths[positions]
        offsets = np.cumsum(lengths) - lengths
        source = np.repeat(self.indptr[positions] - offsets, lengths) + np.arange(lengths.sum())
        keys = np.repeat(row_key, lengths) + self.columns[source]
        return keys, np.repeat(a_values, lengths) * self.values[source]


# ---------------------------------------------------------------- cross sums on an accelerator
ChunkFn = Callable[[int, int, torch.device, torch.dtype], torch.Tensor]
"""chunk(first, last, device, dtype) -> [last - first, d] dense rows of one side, on `device`."""


def _on_device(device: torch.device | None, accumulate: torch.dtype | None) -> bool:
    """Whether the cross sums take the accelerator path (any device but the CPU, or a dtype forced)."""
    return device is not None and (device.type != "cpu" or accumulate is not None)


def _csr_chunks(csr: sp.csr_array) -> ChunkFn:
    """Rows of sparse codes [n, d], made dense on the device (scattered there: no dense copy on the CPU)."""

    def chunk(first: int, last: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        part = csr[first:last]
        rows = np.repeat(np.arange(part.shape[0], dtype=np.int64), np.diff(part.indptr))
        out = torch.zeros(part.shape, dtype=dtype, device=device)  # [c, d]
        index = (torch.from_numpy(rows).to(device), torch.from_numpy(part.indices.astype(np.int64)).to(device))
        out[index] = torch.from_numpy(part.data).to(device=device, dtype=dtype)
        return out

    return chunk


def _dense_chunks(x: np.ndarray, shift: np.ndarray) -> ChunkFn:
    """Rows of dense activations [n, d] minus a per-column shift [d] (in float64 before the device dtype)."""

    def chunk(first: int, last: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        rows = torch.from_numpy(x[first:last].astype(np.float64) - shift)  # [c, d]
        return rows.to(device=device, dtype=dtype)

    return chunk


def neumaier_add(total: torch.Tensor, compensation: torch.Tensor, x: torch.Tensor) -> None:
    """total + compensation += x elementwise, in place, by Neumaier's compensated summation: `compensation`
    gathers the low-order bits each addition to `total` drops, so n additions err by O(eps), not O(n eps)."""
    summed = total + x
    compensation += torch.where(total.abs() >= x.abs(), (total - summed) + x, (x - summed) + total)
    total.copy_(summed)


def _device_cross_blocks(
    chunks_a: ChunkFn,
    chunks_b: ChunkFn,
    n: int,
    d_a: int,
    d_b: int,
    device: torch.device,
    accumulate: torch.dtype | None = None,
    chunk: int = DEVICE_CHUNK,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(r0, r1, S[r0:r1] float64 [r1 - r0, d_b]) with S = A^T B summed over chunks of positions on `device`:
    float64 where it has it, else float32 with Neumaier compensation across chunks (`accumulate` forces one)."""
    dtype = accumulate or (torch.float64 if has_float64(device) else torch.float32)
    compensated = dtype != torch.float64
    per_row = torch.finfo(dtype).bits // 8 * max(d_b, 1) * (2 if compensated else 1)
    rows = max(1, DEVICE_BLOCK_BYTES // per_row)
    for r0 in range(0, d_a, rows):
        r1 = min(r0 + rows, d_a)
        total = torch.zeros((r1 - r0, d_b), dtype=dtype, device=device)
        compensation = torch.zeros_like(total) if compensated else None
        for first in range(0, n, chunk):
            last = min(first + chunk, n)
            part = chunks_a(first, last, device, dtype)[:, r0:r1].T @ chunks_b(first, last, device, dtype)
            if compensation is None:
                total += part
            else:
                neumaier_add(total, compensation, part)
        block = total.cpu().to(torch.float64)
        if compensation is not None:  # added in float64 on the CPU: the sum keeps bits float32 cannot hold
            block += compensation.cpu().to(torch.float64)
        yield r0, r1, block.numpy()


# ---------------------------------------------------------------- correlations
def _collect(
    blocks: Iterator[tuple[int, int, np.ndarray]], n: int, mom_a: _Moments, mom_b: _Moments, top_m: int, dense: bool
) -> CorrelationResult:
    """Turn blocks of cross sums into correlations; keep bests and top-m candidates on both sides."""
    d_a, d_b = len(mom_a.mean), len(mom_b.mean)
    m_rows, m_cols = min(top_m, d_b), min(top_m, d_a)
    row_idx = np.full((d_a, m_rows), -1, dtype=np.int64)
    row_val = np.full((d_a, m_rows), -np.inf)
    cols = _ColumnTop(d_b, m_cols)
    matrix = np.empty((d_a, d_b), dtype=np.float32) if dense else None
    mean_b, inv_b = torch.from_numpy(mom_b.mean), torch.from_numpy(mom_b.inv_sd)
    dead_b = torch.from_numpy(np.flatnonzero(mom_b.dead))
    for r0, r1, cross in blocks:
        corr = torch.from_numpy(cross)  # [r, d_b], turned into correlations in place
        corr.div_(max(n, 1))
        corr.addr_(torch.from_numpy(mom_a.mean[r0:r1]), mean_b, alpha=-1.0)
        corr.mul_(torch.from_numpy(mom_a.inv_sd[r0:r1])[:, None]).mul_(inv_b[None, :]).clamp_(-1.0, 1.0)
        # Dead latents: -inf so they are never selected (NaN in the matrix below).
        corr.index_fill_(1, dead_b, -np.inf)
        corr.index_fill_(0, torch.from_numpy(np.flatnonzero(mom_a.dead[r0:r1])), -np.inf)
        if matrix is not None:
            matrix[r0:r1] = cross
        if m_rows:
            val, idx = torch.topk(corr, m_rows, dim=1)
            row_val[r0:r1], row_idx[r0:r1] = val.numpy(), idx.numpy()
        cols.update(corr, r0)
    if matrix is not None:
        matrix[mom_a.dead] = np.nan
        matrix[:, mom_b.dead] = np.nan
    cand_b_for_a, corr_b_for_a = _finish_candidates(row_idx, row_val, top_m)
    cand_a_for_b, corr_a_for_b = _finish_candidates(*cols.result(), top_m)
    return CorrelationResult(
        n_positions=int(n),
        dead_a=mom_a.dead,
        dead_b=mom_b.dead,
        best_a_for_b=cand_a_for_b[:, 0].copy(),
        best_corr_for_b=corr_a_for_b[:, 0].copy(),
        best_b_for_a=cand_b_for_a[:, 0].copy(),
        best_corr_for_a=corr_b_for_a[:, 0].copy(),
        cand_a_for_b=cand_a_for_b,
        cand_corr_a_for_b=corr_a_for_b,
        cand_b_for_a=cand_b_for_a,
        cand_corr_b_for_a=corr_b_for_a,
        matrix=matrix,
    )


def _finish_candidates(idx: np.ndarray, val: np.ndarray, top_m: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by correlation (ties: lower index first), pad to top_m, -inf -> (-1, NaN)."""
    d, m = idx.shape
    out_idx = np.full((d, top_m), -1, dtype=np.int64)
    out_val = np.full((d, top_m), np.nan)
    if m:
        order = np.lexsort((idx, -val), axis=-1)
        idx, val = np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)
        found = np.isfinite(val)
        out_idx[:, :m] = np.where(found, idx, -1)
        out_val[:, :m] = np.where(found, val, np.nan)
    return out_idx, out_val


class _ColumnTop:
    """Running top-m rows of each column of [d_a, d_b] seen in blocks of rows (in increasing row order)."""

    def __init__(self, d: int, m: int):
        self.m = m
        self.idx = np.full((d, m), -1, dtype=np.int64)
        self.val = np.full((d, m), -np.inf)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_pending = 0
        self.flush_at = max(d * m, 1 << 16)
        self.rows_seen = 0

    def update(self, corr: torch.Tensor, r0: int) -> None:
        """Offer the block corr [r, d] of rows r0..r0+r."""
        if self.m == 0:
            return
        self.rows_seen += corr.shape[0]
        if self.rows_seen > 2 * self.m:
            # Only entries above a column's m-th best so far can enter (strictly: earlier rows win ties).
            # The floor lags while candidates wait to be merged, which only lets more through.
            floor = torch.from_numpy(self.val[:, -1])
            rows, cols = (t.numpy() for t in torch.nonzero(corr > floor[None, :], as_tuple=True))
            if len(rows) <= corr.numel() // 8:
                self._add(cols, rows + r0, corr.numpy()[rows, cols])
                return
        # First blocks (or a block that beats most floors): a dense top-m per column is cheaper.
        val, idx = torch.topk(corr, min(self.m, corr.shape[0]), dim=0)  # [m', d]
        cols = np.broadcast_to(np.arange(corr.shape[1]), val.shape).reshape(-1)
        self._add(cols, idx.numpy().reshape(-1) + r0, val.numpy().reshape(-1))

    def _add(self, cols: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> None:
        self.pending.append((cols, rows, vals))
        self.n_pending += len(cols)
        if self.n_pending >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        cols, rows, vals = (np.concatenate(parts) for parts in zip(*self.pending))
        self.pending, self.n_pending = [], 0
        touched = np.unique(cols)
        m = self.m
        all_cols = np.concatenate([np.repeat(touched, m), cols])
        all_rows = np.concatenate([self.idx[touched].reshape(-1), rows])
        all_vals = np.concatenate([self.val[touched].reshape(-1), vals])
        order = np.lexsort((all_rows, -all_vals, all_cols))
        all_cols, all_rows, all_vals = all_cols[order], all_rows[order], all_vals[order]
        counts = np.bincount(np.searchsorted(touched, all_cols), minlength=len(touched))
        rank = np.arange(len(all_cols)) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = rank < m
        self.idx[all_cols[keep], rank[keep]] = all_rows[keep]
        self.val[all_cols[keep], rank[keep]] = all_vals[keep]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """([d, m] rows, [d, m] values), best first; -inf where fewer than m rows were offered."""
        self._flush()
        return self.idx, self.val
