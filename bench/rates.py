"""Benchmark: per-device rates of each stage, the inputs of docs/scaling.md's cost model.

What is measured, on whatever device `--device` names (default: the CPU), one stage after the other in this
process (model and data loaded before timing):

* **gemm**: best GFLOP/s of torch.mm into a preallocated output, square 2048, float32 and bfloat16: the
  device's practical peak, against which the other rates are read.
* **extract**: tokens/s of a whole `run_extract` (forward, hook copies, bf16 conversion, np.save, fsync,
  sha256, manifest) for each causal packaged model, once with one hook at the last layer and once with every
  layer's `resid_post` (what an all-layers study writes), into a fresh temporary folder.  Also the model's
  forward FLOPs per token (2 x its parameters outside the embedding) and so the achieved GFLOP/s, and the
  store's bytes per token and layer, and the tokens/s of one hook's training batches read back from it
  (`StoreSource`), first pass (every shard verified: sha256 of all its files) and second.
* **write**: MB/s of one store writer process on a Gemma-2-2B-wide hook file: bf16 conversion, np.save +
  fsync + rename + sha256, and sha256 alone.
* **train**: tokens/s of saeatlas's TopK `train_step` (k 32, batch 4096, bf16 encoder matmul with fp32
  master weights where the device has bf16) on Gaussian inputs held in memory, at several (d_in, d_sae);
  step 0 is a warm-up.  The executed FLOPs per token (2 d_in d_sae for the encoder, 8 k d_in for the sparse
  decoder and backward, as bench/train.py counts them) give the achieved GFLOP/s.  Adam touches all
  2 d_in d_sae weights every step, so a step is not only its GEMM.
* **correlate**: seconds of `pearson_sparse` (the comparison's latent-latent Pearson, float64 sums) on
  random TopK codes at several (positions, width, k).  Its cost has two terms: products
  (positions x k_a x k_b) and the scan of every [d_a, d_b] block for each latent's best partners; the two
  rates are fitted by least squares over the sizes and printed (ns per product, ns per matrix entry).
  `pearson_dense` (the neurons control, positions x d_a x d_b multiply-adds in float64) likewise.

The rates are per device (the whole CPU here; one GPU per rank under torchrun).  A run merges its stages into
bench/results/rates.json with the 1-minute load average as each stage started (the figures of a shared
machine are only as good as its quiet).  `--costs` prints docs/scaling.md's computed tables from that file and
the constants below (models, GPU datasheet peaks, assumed efficiencies).  Run::

    PYTHONPATH=src SAEATLAS_CACHE=/tmp/sacache HF_HUB_OFFLINE=1 python bench/rates.py \\
        [--device cpu] [--stages gemm,extract,write,train,correlate] [--tokens 8192] [--quick]
    PYTHONPATH=src python bench/rates.py --costs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

# isort: off
import saeatlas  # noqa: F401  (before torch: its threads then wait passively and keep both cores; saeatlas.threads)
import torch
# isort: on

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "rates.json"
MODELS = ("smollm2-135m", "gemma-3-270m")
K, BATCH = 32, 4096
TRAIN_SIZES = ((640, 4096), (640, 16384), (640, 65536), (2304, 16384), (2304, 65536), (4096, 16384))
CORRELATE_SIZES = (
    (20_000, 4096, 32),
    (200_000, 4096, 32),
    (20_000, 16_384, 32),
    (80_000, 16_384, 32),
    (20_000, 16_384, 64),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Best GFLOP/s of an n x n x n torch.mm in `dtype` into a preallocated output."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def forward_flops_per_token(handle) -> float:
    """2 x the parameters of the blocks (the body without its input embedding: extraction never runs the LM
    head); attention over a 128-token context adds under 2 %."""
    embed = handle.base.get_input_embeddings().weight.numel()
    return 2.0 * (sum(p.numel() for p in handle.base.parameters()) - embed)


def extract_rates(device: torch.device, tokens: int) -> list[dict]:
    from saeatlas.data.config import ExtractConfig
    from saeatlas.data.extract import run_extract
    from saeatlas.models.loading import load_model

    rows = []
    for name in MODELS:
        handle = load_model(name, device=str(device))
        flops = forward_flops_per_token(handle)
        last = [f"resid_post.{handle.n_layers - 1}"]
        every = [f"resid_post.{i}" for i in range(handle.n_layers)]
        for label, hooks in (("last layer", last), ("every layer", every)):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = ExtractConfig(model=name, hooks=hooks, corpus="wiki", tokens=tokens)
                run_extract(ExtractConfig(model=name, hooks=last, corpus="wiki", tokens=512), Path(tmp) / "w", handle)
                result = run_extract(cfg, Path(tmp) / "s", handle)
                layer_bytes = sum(f.stat().st_size for f in (Path(tmp) / "s" / hooks[0]).glob("*.npy"))
                reads = read_rates(Path(tmp) / "s", hooks[0])
            rate = result.tokens_per_second
            rows.append(
                {
                    "model": name,
                    "hooks": label,
                    "n_layers": handle.n_layers,
                    "d_model": handle.d_model,
                    "tokens": result.n_tokens_written,
                    "seconds": result.seconds,
                    "tokens_per_s": rate,
                    "forward_gflop_per_token": flops / 1e9,
                    "gflops": rate * flops / 1e9,
                    "bytes_per_token_layer": layer_bytes / result.n_tokens_written,
                    "read_tokens_per_s_first": reads[0],
                    "read_tokens_per_s_again": reads[1],
                }
            )
        del handle
    return rows


def write_rates(tokens: int = 16_384, d_model: int = 2304) -> dict:
    """MB/s of the store writer's per-shard work on a [tokens, d_model] float32 tensor (one hook file of a
    Gemma-2-2B-wide shard): conversion to bf16 bits (`to_storage`), np.save + fsync + rename + sha256 of the
    written file (`write_npy_atomic`), and sha256 alone (what a reader's first touch of a shard costs)."""
    from saeatlas.data.store import to_storage
    from saeatlas.fileio import sha256_file, write_npy_atomic

    acts = torch.randn(tokens, d_model)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        array = to_storage(acts, "bfloat16")
        t1 = time.perf_counter()
        write_npy_atomic(Path(tmp) / "shard.npy", array)
        t2 = time.perf_counter()
        sha256_file(Path(tmp) / "shard.npy")
        t3 = time.perf_counter()
    mb = array.nbytes / 1e6
    return {
        "tokens": tokens,
        "d_model": d_model,
        "megabytes": mb,
        "convert_mb_per_s": mb / (t1 - t0),
        "save_fsync_hash_mb_per_s": mb / (t2 - t1),
        "sha256_mb_per_s": mb / (t3 - t2),
        "writer_mb_per_s": mb / (t2 - t0),
    }


def read_rates(store: Path, hook: str, batch: int = 1024) -> list[float]:
    """Tokens/s of one hook's training batches (StoreSource: shuffled blocks, float32), twice through one
    reader: its first touch of each shard checks the sha256 of every file the shard holds (all hooks)."""
    from saeatlas.sae.data_source import StoreSource

    source = StoreSource(store, hook)
    n_batches = source.n_tokens // batch
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        for _, _ in zip(range(n_batches), source.batches(batch, seed=0), strict=False):
            pass
        rates.append(n_batches * batch / (time.perf_counter() - t0))
    return rates


def train_rates(device: torch.device, sizes, steps: int) -> list[dict]:
    from saeatlas.memory import reuse_freed_memory
    from saeatlas.sae.config import SAEConfig, TrainConfig
    from saeatlas.sae.data_source import TensorSource
    from saeatlas.sae.trainer import default_lr, init_sae, make_optimizer, train_step

    reuse_freed_memory()
    rows = []
    for d_in, d_sae in sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((steps + 1) * BATCH, d_in, generator=gen)
        cfg = SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=K)
        train = TrainConfig(sae=cfg, steps=steps + 1, batch_size=BATCH, warmup_steps=1, device=str(device))
        sae, state = init_sae(cfg, TensorSource(x[:8192]), train)
        sae.to(device)
        lr = default_lr(cfg)
        optimizer = make_optimizer(sae, lr)
        sae.train()
        times = []
        for step in range(steps + 1):
            xb = (x[step * BATCH : (step + 1) * BATCH] * state.scale).to(device)
            sync(device)
            t0 = time.perf_counter()
            train_step(sae, optimizer, xb, train, state, lr)
            sync(device)
            times.append(time.perf_counter() - t0)
            state.step += 1
        seconds = float(np.median(times[1:]))
        executed = 2 * d_in * d_sae + 8 * K * d_in
        rows.append(
            {
                "d_in": d_in,
                "d_sae": d_sae,
                "k": K,
                "batch": BATCH,
                "step_seconds": seconds,
                "tokens_per_s": BATCH / seconds,
                "gflops_executed": BATCH * executed / seconds / 1e9,
            }
        )
        del sae, optimizer, x
    return rows


def topk_codes(n: int, width: int, k: int, seed: int) -> sp.csr_array:
    """[n, width] CSR with k distinct latents per row, positive values (TopK-style codes)."""
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, width, size=(n, k))
    while True:  # redraw the rows whose latents repeat
        s = np.sort(cols, axis=1)
        bad = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not bad.any():
            break
        cols[bad] = rng.integers(0, width, size=(int(bad.sum()), k))
    values = rng.exponential(1.0, size=(n, k)).astype(np.float32)
    indptr = np.arange(0, n * k + 1, k)
    return sp.csr_array((values.ravel(), cols.ravel().astype(np.int32), indptr), shape=(n, width))


def correlate_rates(sizes) -> dict:
    from saeatlas.compare.correlate import pearson_dense, pearson_sparse

    rows = []
    for n, width, k in sizes:
        a, b = topk_codes(n, width, k, 1), topk_codes(n, width, k, 2)
        t0 = time.perf_counter()
        pearson_sparse(a, b, top_m=10)
        rows.append({"positions": n, "width": width, "k": k, "seconds": time.perf_counter() - t0})
    # seconds = products * t_product + width^2 * t_entry, least squares over the sizes
    design = np.array([[r["positions"] * r["k"] ** 2, r["width"] ** 2] for r in rows], dtype=np.float64)
    seconds = np.array([r["seconds"] for r in rows])
    (t_product, t_entry), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    for r, fit in zip(rows, design @ np.array([t_product, t_entry]), strict=True):
        r["fitted_seconds"] = float(fit)

    n, d_a, d_b = 20_000, 640, 576
    gen = np.random.default_rng(3)
    xa, xb = gen.standard_normal((n, d_a), dtype=np.float32), gen.standard_normal((n, d_b), dtype=np.float32)
    t0 = time.perf_counter()
    pearson_dense(xa, xb)
    dense_seconds = time.perf_counter() - t0
    return {
        "sparse": rows,
        "ns_per_product": t_product * 1e9,
        "ns_per_matrix_entry": t_entry * 1e9,
        "dense": {"positions": n, "d_a": d_a, "d_b": d_b, "seconds": dense_seconds},
        "dense_gflops_fp64": 2 * n * d_a * d_b / dense_seconds / 1e9,
    }


# ---------------------------------------------------------------- the arithmetic of docs/scaling.md (computed)
TOKENS_PER_LAYER = 10**8
COMPARE_POSITIONS = 10**6
"""Aligned positions the comparison uses (compare's max_positions): every position of a 10^8-token store would
make each of its correlations 100x dearer."""
STUDY_K = 32
STUDY_WIDTHS = (16_384, 65_536)


def correlations_per_pair(cfg) -> dict:
    """Correlations one layer pair of `compare` costs under CompareOptions `cfg` (skyline aside): each pair
    selection correlates once plus once per chance shift.  Selections on all positions: the real pair, each
    control but neurons, the random_init control's further seeds; on half the positions: the real pair's two
    cross-fitted halves and, per half-sample, the real pair and each headline control.  The neurons control
    (raw activations, `pearson_dense`): once on all positions, twice on halves (its scores are cross-fitted).
    `*_full` counts a half-position correlation as one half (products scale with positions; the [d_a, d_b]
    scan does not)."""
    from saeatlas.compare.scoring import HEADLINE_CONTROLS

    per_selection = 1 + (cfg.chance_shifts if cfg.method != "legacy_first" else 0)
    sparse_controls = [c for c in cfg.controls if c not in ("neurons", "skyline")]
    full = 1 + len(sparse_controls) + (cfg.random_init_seeds - 1) * ("random_init" in cfg.controls)
    half = 2 + cfg.n_bootstrap * (1 + len([c for c in HEADLINE_CONTROLS if c in cfg.controls]))
    dense = "neurons" in cfg.controls
    return {
        "sparse_calls": (full + half) * per_selection,
        "sparse_full": (full + half / 2) * per_selection,
        "dense_calls": 3 * per_selection * dense,
        "dense_full": 2 * per_selection * dense,
    }


FORWARD_MFU = 0.40
"""Assumed: bf16 forward of a HF model in eager mode, batches of 128-token windows, as a share of dense peak."""
GEMM_EFFICIENCY = 0.60
"""Assumed: the SAE encoder GEMM (batch x d_in x d_sae, bf16) as a share of dense peak."""
HBM_EFFICIENCY = 0.70
"""Assumed: memory-bound kernels (Adam, renorm, gathers, top-k, the correlation scan) as a share of HBM peak."""
FP64_EFFICIENCY = 0.60
"""Assumed: the neurons control's float64 GEMM as a share of FP64 tensor-core peak."""
PRODUCT_BYTES = 64
"""Assumed: one sparse product = one float64 atomic add into the [d_a, d_b] block in HBM (a 32-byte sector read
and written)."""
ENTRY_BYTES = 24
"""Assumed: per [d_a, d_b] entry per correlation, the float64 sum written and read, and one pass for top-m."""
NODE_FS_GBPS = 25.0
"""Assumed: what one node writes to or reads from the shared file system (one 200 Gb/s storage link)."""


@dataclass(frozen=True)
class BigModel:
    name: str
    n_layers: int
    d_model: int
    body_params: int
    """Parameters of the blocks and final norm: the forward's 2 FLOPs per parameter per token (no embedding
    lookup, no LM head: extraction stops at the last hooked layer)."""

    def forward_flops(self, layer: int | None = None) -> float:
        """FLOPs per token of a forward that stops after `layer` (None: every block)."""
        share = 1.0 if layer is None else (layer + 1) / self.n_layers
        return 2.0 * self.body_params * share

    @property
    def store_bytes_per_token(self) -> int:
        """bf16 resid_post of every layer."""
        return 2 * self.d_model * self.n_layers


BIG_MODELS = (
    # Gemma-2-2B: 2,614,341,888 parameters, of which the tied 256000 x 2304 embedding is 589,824,000.
    BigModel("Gemma-2-2B", 26, 2304, 2_024_517_888),
    # Llama-3-8B: 8,030,261,248 parameters, of which embedding and untied head are 128256 x 4096 each.
    BigModel("Llama-3-8B", 32, 4096, 6_979_588_096),
)


@dataclass(frozen=True)
class Gpu:
    """Public datasheet peaks (dense, no structured sparsity)."""

    name: str
    bf16_tflops: float
    fp64_tflops: float
    hbm_tbps: float


GPUS = (Gpu("H100 SXM", 989.0, 67.0, 3.35), Gpu("A100 SXM 80GB", 312.0, 19.5, 2.04))


def sae_flops_per_token(d_in: int, d_sae: int, k: int = STUDY_K) -> float:
    """Executed FLOPs per token of saeatlas's TopK step: the dense encoder, and the sparse decoder and
    backward over the k kept latents (bench/train.py's count)."""
    return 2.0 * d_in * d_sae + 8.0 * k * d_in


def gpu_sae_step_seconds(gpu: Gpu, d_in: int, d_sae: int, k: int = STUDY_K, batch: int = BATCH) -> float:
    """One TopK training step on `gpu` (roofline: GEMM time plus memory-bound time).  Memory: per weight
    (2 d_in d_sae, fp32) about 40 bytes (Adam reads weight, grad and two moments and writes three; the gradient
    is written; the decoder renorm reads and writes); per token the k decoder rows gathered three times
    (12 k d_in bytes) and the pre-activations written and read by top-k (8 d_sae bytes)."""
    gemm = 2.0 * batch * d_in * d_sae / (GEMM_EFFICIENCY * gpu.bf16_tflops * 1e12)
    traffic = 40.0 * 2 * d_in * d_sae + batch * (12.0 * k * d_in + 8.0 * d_sae)
    return gemm + traffic / (HBM_EFFICIENCY * gpu.hbm_tbps * 1e12)


def default_correlations() -> dict:
    from saeatlas.compare.config import CompareOptions

    return correlations_per_pair(CompareOptions())


def gpu_pair_seconds(gpu: Gpu, a: BigModel, b: BigModel, d_sae: int, n: int = COMPARE_POSITIONS) -> dict:
    """Seconds of one layer pair's comparison on `gpu` at compare's defaults: the [d_a, d_b] scans, the
    sparse products, the neurons control's float64 GEMMs."""
    calls = default_correlations()
    hbm = HBM_EFFICIENCY * gpu.hbm_tbps * 1e12
    scan = calls["sparse_calls"] * d_sae * d_sae * ENTRY_BYTES / hbm
    products = calls["sparse_full"] * n * STUDY_K**2 * PRODUCT_BYTES / hbm
    dense = calls["dense_full"] * 2.0 * n * a.d_model * b.d_model / (FP64_EFFICIENCY * gpu.fp64_tflops * 1e12)
    return {"scan": scan, "products": products, "neurons": dense}


def cpu_pair_seconds(rates: dict, a: BigModel, b: BigModel, d_sae: int, n: int = COMPARE_POSITIONS) -> dict:
    """The same on the measured CPU: the fitted ns per matrix entry and per product, pearson_dense's GFLOP/s."""
    calls = default_correlations()
    c = rates["correlate"]
    scan = calls["sparse_calls"] * d_sae * d_sae * c["ns_per_matrix_entry"] * 1e-9
    products = calls["sparse_full"] * n * STUDY_K**2 * c["ns_per_product"] * 1e-9
    dense = calls["dense_full"] * 2.0 * n * a.d_model * b.d_model / (c["dense_gflops_fp64"] * 1e9)
    return {"scan": scan, "products": products, "neurons": dense}


def cpu_train_gflops(rates: dict, d_sae: int) -> float:
    """Measured executed GFLOP/s of the CPU step at this width (the widest d_in measured)."""
    rows = [r for r in rates["train"] if r["d_sae"] == d_sae]
    return max(rows, key=lambda r: r["d_in"])["gflops_executed"]


def hours(seconds: float) -> str:
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.0f} d"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def study_costs(rates: dict) -> dict:
    """Every figure of docs/scaling.md's computed tables from the measured `rates` and the constants above."""
    T = TOKENS_PER_LAYER
    gemma, llama = BIG_MODELS
    out: dict = {"store": {}, "extract": {}, "train": {}, "compare": {}, "stream": {}}
    cpu_forward = np.mean([r["gflops"] for r in rates["extract"] if r["hooks"] == "last layer"]) * 1e9
    writer = rates["write"]["writer_mb_per_s"] * 1e6
    reader = max(r["read_tokens_per_s_again"] * r["bytes_per_token_layer"] for r in rates["extract"])
    out["measured"] = {"cpu_forward_gflops": cpu_forward / 1e9, "writer_mb_per_s": writer / 1e6}
    out["measured"]["reader_mb_per_s"] = reader / 1e6
    out["measured"]["sha256_mb_per_s"] = rates["write"]["sha256_mb_per_s"]
    for m in BIG_MODELS:
        out["store"][m.name] = {"bytes": T * m.store_bytes_per_token, "per_layer": T * 2 * m.d_model}
        compute = {"CPU": T * m.forward_flops() / cpu_forward}
        for gpu in GPUS:
            compute[gpu.name] = T * m.forward_flops() / (FORWARD_MFU * gpu.bf16_tflops * 1e12)
        out["extract"][m.name] = {
            "compute": compute,
            "writer": T * m.store_bytes_per_token / writer,
            "node_fs": T * m.store_bytes_per_token / (NODE_FS_GBPS * 1e9),
        }
        for d_sae in STUDY_WIDTHS:
            per_sae = {"CPU": T * sae_flops_per_token(m.d_model, d_sae) / (cpu_train_gflops(rates, d_sae) * 1e9)}
            for gpu in GPUS:
                per_sae[gpu.name] = T / BATCH * gpu_sae_step_seconds(gpu, m.d_model, d_sae)
            read = T * 2 * m.d_model / reader
            out["train"][(m.name, d_sae)] = {"per_sae": per_sae, "reader": read, "n_saes": m.n_layers}
            forwards = sum(m.forward_flops(layer) for layer in range(m.n_layers))  # one per SAE, to its depth
            out["stream"][(m.name, d_sae)] = {
                gpu.name: T * forwards / (FORWARD_MFU * gpu.bf16_tflops * 1e12) + m.n_layers * per_sae[gpu.name]
                for gpu in GPUS
            }
    n_pairs = gemma.n_layers * llama.n_layers
    for d_sae in STUDY_WIDTHS:
        pair = {"CPU": cpu_pair_seconds(rates, gemma, llama, d_sae)}
        for gpu in GPUS:
            pair[gpu.name] = gpu_pair_seconds(gpu, gemma, llama, d_sae)
        out["compare"][d_sae] = {"pair": pair, "n_pairs": n_pairs}
    return out


def study_totals(c: dict, gpu: str, n_gpus: int) -> dict:
    """The whole study (both models' all-layer stores, one SAE per layer and width, the comparison grid) on
    `n_gpus` GPUs of kind `gpu`, 8 to a node, each stage as long as its slowest bound: compute spread over the
    ranks, one writer / reader process per rank, the node's file system shared by its 8 ranks, and a
    training process's first touch of each shard hashing the files it reads (its layer's)."""
    nodes = max(1, n_gpus // 8)
    sha = c["measured"]["sha256_mb_per_s"] * 1e6
    extract = {}
    for m in BIG_MODELS:
        e = c["extract"][m.name]
        extract[m.name] = {
            "compute": e["compute"][gpu] / n_gpus,
            "writer": e["writer"] / n_gpus,
            "node_fs": e["node_fs"] / nodes,
        }
    train = {}
    for d_sae in STUDY_WIDTHS:
        for m in BIG_MODELS:
            t = c["train"][(m.name, d_sae)]
            one = {
                "compute": t["per_sae"][gpu],
                "reader": t["reader"],
                "hashing": c["store"][m.name]["bytes"] / m.n_layers / sha,
            }
            train[(m.name, d_sae)] = {k: v * t["n_saes"] / n_gpus for k, v in one.items()}
    compare = {d_sae: sum(v["pair"][gpu].values()) * v["n_pairs"] / n_gpus for d_sae, v in c["compare"].items()}
    return {"extract": extract, "train": train, "compare": compare}


def bound_cells(bounds: dict) -> list[str]:
    """[time of the slowest bound, its name (the other bounds' times in brackets)]."""
    name = max(bounds, key=bounds.get)
    others = ", ".join(f"{k} {hours(v)}" for k, v in bounds.items() if k != name)
    return [hours(bounds[name]), f"{name} ({others})"]


def print_costs(rates: dict) -> None:
    c = study_costs(rates)
    m = c["measured"]
    print(
        f"measured inputs: CPU forward {m['cpu_forward_gflops']:.0f} GFLOP/s, writer {m['writer_mb_per_s']:.0f} MB/s, "
        f"reader {m['reader_mb_per_s']:.0f} MB/s per process"
    )
    print_table(
        f"store at {TOKENS_PER_LAYER:.0e} tokens, every layer, bf16",
        ["model", "per layer (GB)", "all layers (TB)"],
        [[k, f"{v['per_layer'] / 1e9:.0f}", f"{v['bytes'] / 1e12:.1f}"] for k, v in c["store"].items()],
    )
    gpus = [g.name for g in GPUS]
    print_table(
        "extraction, every layer, one device: compute | one writer process | node file system at "
        f"{NODE_FS_GBPS:.0f} GB/s",
        ["model", "CPU compute", *[f"{g} compute" for g in gpus], "one writer", "node FS"],
        [
            [
                k,
                hours(v["compute"]["CPU"]),
                *[hours(v["compute"][g]) for g in gpus],
                hours(v["writer"]),
                hours(v["node_fs"]),
            ]
            for k, v in c["extract"].items()
        ],
    )
    print_table(
        f"SAE training, {TOKENS_PER_LAYER:.0e} tokens per SAE (k {STUDY_K}, batch {BATCH}): one SAE | all layers",
        [
            "model",
            "d_sae",
            "CPU one",
            *[f"{g} one" for g in gpus],
            "one reader",
            "CPU all",
            *[f"{g} all" for g in gpus],
        ],
        [
            [
                k[0],
                k[1],
                hours(v["per_sae"]["CPU"]),
                *[hours(v["per_sae"][g]) for g in gpus],
                hours(v["reader"]),
                hours(v["per_sae"]["CPU"] * v["n_saes"]),
                *[hours(v["per_sae"][g] * v["n_saes"]) for g in gpus],
            ]
            for k, v in c["train"].items()
        ],
    )
    print_table(
        "training without a store, every layer (one forward to each layer's depth per SAE), one GPU",
        ["model", "d_sae", *gpus],
        [[k[0], k[1], *[hours(v[g]) for g in gpus]] for k, v in c["stream"].items()],
    )
    gpu = GPUS[0].name
    rows = []
    for d_sae in STUDY_WIDTHS:
        for n_gpus in (1, 8, 32):
            t = study_totals(c, gpu, n_gpus)
            stages = [*t["extract"].values(), *(v for (_, w), v in t["train"].items() if w == d_sae)]
            compare = t["compare"][d_sae]
            as_measured = sum(max(b.values()) for b in stages) + compare
            compute_only = sum(b["compute"] for b in stages) + compare
            rows.append([d_sae, f"{n_gpus} x {gpu}", hours(as_measured), hours(compute_only)])
    print_table(
        "the whole study, stage after stage: with the store's writer, reader and hashing as measured | compute only",
        ["d_sae", "devices", "as measured", "compute only"],
        rows,
    )
    for n_gpus in (1, 8, 32):
        t = study_totals(c, gpu, n_gpus)
        rows = []
        for name, bounds in t["extract"].items():
            rows.append([f"extract {name}", *bound_cells(bounds)])
        for (name, d_sae), bounds in t["train"].items():
            rows.append([f"train {name}, d_sae {d_sae}, every layer", *bound_cells(bounds)])
        for d_sae, seconds in t["compare"].items():
            rows.append([f"compare grid, d_sae {d_sae}", hours(seconds), "compute"])
        print_table(f"the study on {n_gpus} x {gpu} (8 per node)", ["stage", "time", "bound"], rows)
    rows = []
    for d_sae, v in c["compare"].items():
        for dev, parts in v["pair"].items():
            total = sum(parts.values())
            rows.append(
                [
                    d_sae,
                    dev,
                    *[f"{parts[p]:.0f}" for p in ("scan", "products", "neurons")],
                    f"{total:.0f}",
                    hours(total * v["n_pairs"]),
                ]
            )
    print_table(
        f"comparison, Gemma-2-2B x Llama-3-8B, {COMPARE_POSITIONS:.0e} positions, k {STUDY_K}, default options",
        [
            "d_sae",
            "device",
            "scan s/pair",
            "products s/pair",
            "neurons s/pair",
            "total s/pair",
            f"grid of {v['n_pairs']} pairs",
        ],
        rows,
    )


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def main() -> None:
    from saeatlas.devices import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stages", default="gemm,extract,write,train,correlate")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per extraction")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per size")
    parser.add_argument("--quick", action="store_true", help="smallest sizes only (a smoke run)")
    parser.add_argument(
        "--costs", action="store_true", help="print docs/scaling.md's computed tables from the saved rates"
    )
    args = parser.parse_args()
    if args.costs:
        print_costs(json.loads(RESULTS.read_text()))
        return
    device = resolve_device(args.device)
    stages = args.stages.split(",")
    out: dict = {"device": str(device), "machine": platform.processor() or platform.machine()}
    if RESULTS.exists():  # keep the stages not rerun now (same device only)
        saved = json.loads(RESULTS.read_text())
        out = {**saved, **out} if saved.get("device") == out["device"] else out
    out["torch_threads"] = torch.get_num_threads()
    load = out.setdefault("load_1min", {})  # per stage as it started: how disturbed a shared machine's figures are
    if device.type == "cuda":
        out["machine"] = torch.cuda.get_device_name(device)

    if "gemm" in stages:
        load["gemm"] = os.getloadavg()[0]
        out["gemm_gflops"] = {str(dt): gemm_peak(device, dt) for dt in (torch.float32, torch.bfloat16)}
        print_table(
            "GEMM peak (2048^3, preallocated output)",
            ["dtype", "GFLOP/s"],
            [[k, f"{v:.0f}"] for k, v in out["gemm_gflops"].items()],
        )
    if "extract" in stages:
        load["extract"] = os.getloadavg()[0]
        out["extract"] = extract_rates(device, args.tokens)
        print_table(
            f"extraction ({args.tokens} wiki tokens, context 128, batch 8, bf16 model and store)",
            ["model", "hooks", "tok/s", "GFLOP/token", "GFLOP/s", "bytes/token/layer", "read tok/s: first, again"],
            [
                [
                    r["model"],
                    r["hooks"],
                    f"{r['tokens_per_s']:.0f}",
                    f"{r['forward_gflop_per_token']:.3f}",
                    f"{r['gflops']:.0f}",
                    f"{r['bytes_per_token_layer']:.1f}",
                    f"{r['read_tokens_per_s_first']:.0f}, {r['read_tokens_per_s_again']:.0f}",
                ]
                for r in out["extract"]
            ],
        )
    if "write" in stages:
        load["write"] = os.getloadavg()[0]
        w = out["write"] = write_rates()
        print_table(
            f"store writer, one bf16 hook file of {w['tokens']} x {w['d_model']} ({w['megabytes']:.0f} MB)",
            ["step", "MB/s"],
            [
                ["to_storage (bf16 bits)", f"{w['convert_mb_per_s']:.0f}"],
                ["np.save + fsync + rename + sha256", f"{w['save_fsync_hash_mb_per_s']:.0f}"],
                ["sha256 of the file alone", f"{w['sha256_mb_per_s']:.0f}"],
                ["writer, all of the above", f"{w['writer_mb_per_s']:.0f}"],
            ],
        )
    if "train" in stages:
        load["train"] = os.getloadavg()[0]
        sizes = TRAIN_SIZES[:1] if args.quick else TRAIN_SIZES
        out["train"] = train_rates(device, sizes, args.steps)
        print_table(
            f"TopK SAE training (k {K}, batch {BATCH}, Gaussian inputs in memory)",
            ["d_in", "d_sae", "s/step", "tok/s", "executed GFLOP/s"],
            [
                [
                    r["d_in"],
                    r["d_sae"],
                    f"{r['step_seconds']:.3f}",
                    f"{r['tokens_per_s']:.0f}",
                    f"{r['gflops_executed']:.0f}",
                ]
                for r in out["train"]
            ],
        )
    if "correlate" in stages:
        load["correlate"] = os.getloadavg()[0]
        sizes = CORRELATE_SIZES[:2] if args.quick else CORRELATE_SIZES
        out["correlate"] = correlate_rates(sizes)
        c = out["correlate"]
        print_table(
            "latent-latent Pearson (pearson_sparse, random TopK codes, float64 sums)",
            ["positions", "width", "k", "seconds", "fitted"],
            [
                [r["positions"], r["width"], r["k"], f"{r['seconds']:.2f}", f"{r['fitted_seconds']:.2f}"]
                for r in c["sparse"]
            ],
        )
        print(
            f"fit: {c['ns_per_product']:.2f} ns per product (positions x k_a x k_b), "
            f"{c['ns_per_matrix_entry']:.2f} ns per matrix entry (d_a x d_b)"
        )
        d = c["dense"]
        print(
            f"pearson_dense {d['positions']} x {d['d_a']} x {d['d_b']}: {d['seconds']:.2f} s, "
            f"{c['dense_gflops_fp64']:.1f} GFLOP/s"
        )
    print(f"\nload average (1 min) as each stage started: {load}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nsaved {RESULTS}")


if __name__ == "__main__":
    main()
