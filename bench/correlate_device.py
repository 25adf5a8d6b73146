"""Benchmark: the accelerator path of the latent-latent correlation sums, and its float32 error.

On an accelerator, `pearson_sparse(..., device=)` sums S = codes_a^T codes_b as
dense products over chunks of positions (`compare/correlate.py`), in float64
where the device has it and otherwise (MPS) in float32 with Neumaier
compensation across chunks.  This bench measures, on the planted TopK codes of
bench/correlate.py:

- the error of S against exact float64 sums (the sparse CPU path), relative,
  in units of float32's eps, for: the device path in float64, compensated
  float32, and plain float32 over the same chunks (what the compensation buys);
- the largest correlation difference |r - r_float64| of each;
- wall times of the sparse CPU path and of the device path.

Without a GPU (`--device cpu`, the default where there is none) the device path
runs on the CPU's torch: the errors are the same arithmetic; the times are not
a GPU's.  Run::

    .venv/bin/python bench/correlate_device.py [--positions 50000] [--width 1024] [--k 32] [--device auto]

Results are printed and saved to bench/results/correlate_device.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import torch
from correlate import planted_codes

from saeatlas.compare.correlate import (
    DEVICE_CHUNK,
    _csr_chunks,
    _device_cross_blocks,
    _sparse_cross_blocks,
    pearson_sparse,
)
from saeatlas.devices import resolve_device

EPS32 = float(np.finfo(np.float32).eps)


def cross_sums(blocks) -> np.ndarray:
    return np.concatenate([s for _, _, s in blocks])


def plain_float32(a, b, device: torch.device, chunk: int) -> np.ndarray:
    """S summed over the same chunks in float32 without compensation."""
    n, total = a.shape[0], torch.zeros(a.shape[1], b.shape[1], device=device)
    ca, cb = _csr_chunks(a), _csr_chunks(b)
    for first in range(0, n, chunk):
        last = min(first + chunk, n)
        total += ca(first, last, device, torch.float32).T @ cb(first, last, device, torch.float32)
    return total.cpu().double().numpy()


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--positions", type=int, default=50_000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=DEVICE_CHUNK)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    a, b = planted_codes(args.positions, args.width, args.k)
    n, d = args.positions, args.width
    exact, cpu_s = timed(lambda: cross_sums(_sparse_cross_blocks(a, b, d)))
    filled = exact > 0
    rows = {}
    variants = {
        "device float64": lambda: cross_sums(
            _device_cross_blocks(_csr_chunks(a), _csr_chunks(b), n, d, d, device, torch.float64, args.chunk)
        ),
        "device float32, compensated": lambda: cross_sums(
            _device_cross_blocks(_csr_chunks(a), _csr_chunks(b), n, d, d, device, torch.float32, args.chunk)
        ),
        "device float32, plain": lambda: plain_float32(a, b, device, args.chunk),
    }
    if device.type == "mps":
        del variants["device float64"]
    reference = pearson_sparse(a, b, top_m=1, dense=True).matrix
    for name, fn in variants.items():
        sums, seconds = timed(fn)
        rel = np.abs(sums - exact)[filled] / exact[filled]
        rows[name] = {
            "seconds": seconds,
            "max_rel_eps": float(rel.max() / EPS32),
            "mean_rel_eps": float(rel.mean() / EPS32),
        }
        if name != "device float32, plain":
            accumulate = torch.float64 if "64" in name else torch.float32
            forced = pearson_sparse(a, b, top_m=1, dense=True, device=device, accumulate=accumulate).matrix
            rows[name]["max_abs_corr_diff"] = float(np.nanmax(np.abs(forced.astype(np.float64) - reference)))
    result = {
        "positions": n,
        "width": d,
        "k": args.k,
        "chunk": args.chunk,
        "n_chunks": -(-n // args.chunk),
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "cpu_sparse_seconds": cpu_s,
        "variants": rows,
    }
    print(f"{n} positions, width {d}, k {args.k}, {result['n_chunks']} chunks of {args.chunk}, on {device}")
    print(f"sparse CPU path (float64, exact reference): {cpu_s:.2f} s")
    print(f"{'variant':32} {'seconds':>8} {'max rel err':>12} {'mean rel err':>13} {'max |dr|':>10}")
    for name, r in rows.items():
        dr = f"{r['max_abs_corr_diff']:.1e}" if "max_abs_corr_diff" in r else "-"
        print(f"{name:32} {r['seconds']:8.2f} {r['max_rel_eps']:9.2f} eps {r['mean_rel_eps']:10.3f} eps {dr:>10}")
    out = Path(__file__).parent / "results" / "correlate_device.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
