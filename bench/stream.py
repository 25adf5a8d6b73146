"""Benchmark: SAE training from a model stream (no store) vs from a store of the same text, in one run.

Both train the same TopK SAE with `saeatlas.sae.trainer.train_sae` (no checkpoints, no folder written) on
the same text: the store is extracted in this run with `StreamConfig.extract_config` (the stream's own
windows, forward batches and dtype), so one pass of the stream holds exactly the store's usable tokens.  The
model is loaded once, before any timing, and shared.  Steps default to one pass of the text
(usable tokens // batch size), so the stream runs every forward pass once, as extraction does.  After a
warm-up forward pass, each of ``--repeats`` repeats times every row (the store first, then the stream; every
other repeat the other way round); the table shows each row's fastest repeat.  With --steps past one pass
the stream runs the model again on every pass, while the store is extracted once and read again: the store
wins from about two passes on.

Rows (tokens = SAE training tokens, steps x batch size, except for extraction, which counts stored tokens):

* ``extract``          run_extract into a fresh folder (the model + write loop, ExtractResult.seconds);
* ``store: train``     train_sae on StoreSource (data read from the store's memory-mapped shards);
* ``store: total``     extract + train: what a user without a store waits for;
* ``stream: setup``    ModelStreamSource's constructor (corpus read, every window tokenized once);
* ``stream: train``    train_sae on ModelStreamSource (forward passes and shuffle buffers included).

The ratio column holds each row's tokens/s against ``store: train``; the last line gives stream
(setup + train) against store total.  A 2-core machine shared with other work is noisy.

Run::

    cd /work/main && HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/stream.py \\
        [--model smollm2-135m] [--hook resid_post.8] [--tokens 32768] [--batch-size 1024] [--d-sae 4096]

Results are printed and saved to bench/results/stream.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from saeatlas.data.extract import run_extract
from saeatlas.models import load_model
from saeatlas.sae.config import SAEConfig, TrainConfig
from saeatlas.sae.data_source import StoreSource
from saeatlas.sae.stream_source import ModelStreamSource, StreamConfig
from saeatlas.sae.trainer import train_sae

RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_repeat(args, stream_cfg: StreamConfig, handle, swap: bool) -> dict[str, dict]:
    """One timing of each row; `swap` runs the stream before the store (machine drift hits both)."""
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        extracted = run_extract(stream_cfg.extract_config(args.hook), Path(tmp) / "store", handle=handle)
        rows["extract"] = {"tokens": extracted.n_tokens_written, "seconds": extracted.seconds, "steps": None}
        store = StoreSource(extracted.path, args.hook)
        steps = args.steps or max(1, store.n_tokens // args.batch_size)
        train = TrainConfig(
            sae=SAEConfig(arch="topk", d_sae=args.d_sae, k=args.k),
            steps=steps,
            batch_size=args.batch_size,
            checkpoint_every=0,
            warmup_steps=min(100, steps // 4),
        )
        n = steps * args.batch_size

        def from_store() -> None:
            _, seconds = timed(lambda: train_sae(train, store))
            rows["store: train"] = {"tokens": n, "seconds": seconds, "steps": steps}
            rows["store: total"] = {"tokens": n, "seconds": seconds + rows["extract"]["seconds"], "steps": steps}

        def from_stream() -> None:
            source, setup = timed(lambda: ModelStreamSource(stream_cfg, args.hook, handle=handle))
            assert source.n_tokens == store.n_tokens, (source.n_tokens, store.n_tokens)
            rows["stream: setup"] = {"tokens": source.n_tokens, "seconds": setup, "steps": None}
            _, seconds = timed(lambda: train_sae(train, source))
            rows["stream: train"] = {"tokens": n, "seconds": seconds, "steps": steps}

        for job in (from_stream, from_store) if swap else (from_store, from_stream):
            job()
    return rows


def main() -> None:
    import torch  # after saeatlas, which sets torch's OpenMP threads to wait passively (saeatlas/__init__.py)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="resid_post.8")
    ap.add_argument("--corpus", default="wiki")
    ap.add_argument("--tokens", type=int, default=32768, help="text budget (stored tokens)")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=None, help="default: one pass of the text")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--buffer-tokens", type=int, default=16384)
    ap.add_argument("--model-dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=2, help="the fastest of each row is shown")
    args = ap.parse_args()

    stream_cfg = StreamConfig(
        model=args.model,
        corpus=args.corpus,
        tokens=args.tokens,
        context=args.context,
        model_dtype=args.model_dtype,
        buffer_tokens=args.buffer_tokens,
    )
    handle = load_model(args.model, dtype=args.model_dtype)
    source, _ = timed(lambda: ModelStreamSource(stream_cfg, args.hook, handle=handle))
    next(source._usable_from(0))  # warm-up: the first forward pass sets up the kernels
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name, row in one_repeat(args, stream_cfg, handle, swap=repeat % 2 == 1).items():
            runs.setdefault(name, []).append(row)
    rows = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    steps = rows["store: train"]["steps"]
    base = rows["store: train"]["tokens"] / rows["store: train"]["seconds"]
    print(
        f"{args.model} {args.hook} (d_in {handle.d_model}), {args.corpus}, context {args.context}, "
        f"{source.n_tokens} usable tokens; TopK d_sae {args.d_sae} k {args.k}, batch {args.batch_size}, "
        f"{steps} steps, buffer {source.buffer_tokens}, {torch.get_num_threads()} threads, "
        f"fastest of {args.repeats} repeats"
    )
    print(f"{'':16}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}{'steps/s':>9}{'vs store train':>16}")
    for name, r in rows.items():
        r["tokens_per_second"] = r["tokens"] / r["seconds"]
        r["steps_per_second"] = r["steps"] / r["seconds"] if r["steps"] else None
        steps_text = f"{r['steps_per_second']:9.2f}" if r["steps"] else f"{'':9}"
        print(
            f"{name:16}{r['tokens']:9d}{r['seconds']:10.2f}{r['tokens_per_second']:11.0f}{steps_text}"
            f"{r['tokens_per_second'] / base:15.2f}x"
        )
    stream_total = rows["stream: setup"]["seconds"] + rows["stream: train"]["seconds"]
    ratio = rows["store: total"]["seconds"] / stream_total
    print(f"stream (setup + train) vs store (extract + train): {ratio:.2f}x the throughput")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"settings": vars(args), "steps": steps, "rows": rows, "ratio_total": ratio}, indent=1)
    )


if __name__ == "__main__":
    main()
