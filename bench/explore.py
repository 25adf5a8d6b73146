"""Time to first page and per-view latency of `saeatlas explore` over a finished study.

    python bench/explore.py [--study runs/study] [--repeats 3]

Starts the server in this process (port 0), then times over HTTP: the page and /api/study from the start
(time to first page), the pair list, the first view of the strongest pair (its two SAEs encode the store on
first use), the same view again (cached), a second pair of the same layer pair, a search, and the logit
effects (the first loads the model's unembedding); then, for the same layer pair, each control's strongest
pair, first and repeated (random_init: its SAE rebuilt and calibrated as compare built it; neurons: columns
read from the store; shifted: the shift=1 alignment); and the first pair view again in a new explorer (a new
session: the stored SAEs' codes come from the cache the first explorer filled; the bench keeps that cache in a
temporary folder, so every run's first view is cold).  Prints a table of seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def _get(base: str, path: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=600) as response:
        body = response.read()
    return time.perf_counter() - start, len(body)


def _wide_encodes(study: str, cid: int, widths: list[int]) -> list[tuple[str, float, str]]:
    """The cost that grows with width: one SAE's codes over a whole store (what a first view waits for, once per
    side), for random TopK SAEs of `widths` at the first comparison's A side (k as the study's SAE)."""
    import torch

    from saeatlas.compare.contexts import store_codes
    from saeatlas.explore.latents import StoreView
    from saeatlas.explore.study import StudyIndex
    from saeatlas.sae import SAEConfig, SparseAutoencoder, load_sae

    spec = StudyIndex(study).sides(cid)[0]
    view, real = StoreView(spec.store), load_sae(spec.sae)
    rows = []
    for d_sae in widths:
        cfg = SAEConfig(arch="topk", d_in=real.cfg.d_in, d_sae=d_sae, k=real.cfg.k)
        sae = SparseAutoencoder(cfg, torch.Generator().manual_seed(0))
        t = time.perf_counter()
        codes = store_codes(view.store, sae, spec.hook, view.usable)
        note = f"{len(view.usable)} tokens, {codes.nnz * 12 / 2**20:.0f} MiB of codes"
        rows.append((f"encode a store, random TopK SAE of {d_sae} latents", time.perf_counter() - t, note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="runs/study", help="a finished study folder (default: the demo's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--widths",
        type=int,
        nargs="*",
        default=[16384, 65536],
        help="also time the encode behind a first view with random TopK SAEs of these widths on the first store",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    from saeatlas.explore import latents
    from saeatlas.explore.server import make_server

    codes_cache = tempfile.mkdtemp(prefix="explore-bench-")
    latents.cache_dir = lambda: Path(codes_cache)  # the codes' cache only (compiled kernels stay where they are)

    server = make_server(args.study, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = server.url.rstrip("/")
    rows = []
    _get(base, "/")
    summary_s, _ = _get(base, "/api/study")
    rows.append(("first page (import, open study, page + /api/study)", time.perf_counter() - start, ""))
    rows.append(("  /api/study alone", summary_s, ""))
    study = json.loads(urllib.request.urlopen(base + "/api/study").read())
    cid = next(c["id"] for c in study["comparisons"] if c["kind"] == "sae")
    seconds, size = _get(base, f"/api/pairs?c={cid}&limit=50")
    rows.append((f"pair list (comparison {cid}, 50 rows)", seconds, f"{size} B"))
    pairs = json.loads(urllib.request.urlopen(f"{base}/api/pairs?c={cid}&limit=2").read())["pairs"]
    first, second = pairs[0], pairs[-1]
    path = f"/api/pair?c={cid}&a={first['idx_a']}&b={first['idx_b']}"
    seconds, size = _get(base, path)
    rows.append(("pair view, first (encodes both stores)", seconds, f"{size} B"))
    again = min(_get(base, path)[0] for _ in range(args.repeats))
    rows.append(("pair view, repeated (best of repeats)", again, ""))
    other = min(
        _get(base, f"/api/pair?c={cid}&a={second['idx_a']}&b={second['idx_b']}")[0] for _ in range(args.repeats)
    )
    rows.append(("another pair of the same layer pair", other, ""))
    seconds, _ = _get(base, f"/api/search?c={cid}&q=the")
    rows.append(("search 'the', first (token index)", seconds, ""))
    rows.append(("search 'the', repeated", min(_get(base, f"/api/search?c={cid}&q=the")[0] for _ in range(2)), ""))
    seconds, _ = _get(base, f"/api/logits?c={cid}&side=a&i={first['idx_a']}")
    rows.append(("logit effects, first (loads the unembedding)", seconds, ""))
    rows.append(("logit effects, repeated", _get(base, f"/api/logits?c={cid}&side=a&i={first['idx_a']}")[0], ""))
    sae = study["comparisons"][cid]
    for c in study["comparisons"]:
        if c["kind"] not in ("random_init", "neurons", "shifted") or (c["hook_a"], c["hook_b"]) != (
            sae["hook_a"],
            sae["hook_b"],
        ):
            continue
        top = json.loads(urllib.request.urlopen(f"{base}/api/pairs?c={c['id']}&limit=1").read())["pairs"]
        if not top:
            continue
        path = f"/api/pair?c={c['id']}&a={top[0]['idx_a']}&b={top[0]['idx_b']}"
        seconds, size = _get(base, path)
        rows.append((f"{c['kind']} control pair view, first", seconds, f"{size} B"))
        rows.append((f"{c['kind']} control pair view, repeated", min(_get(base, path)[0] for _ in range(2)), ""))
        if c["kind"] == "neurons":
            seconds, _ = _get(base, f"/api/logits?c={c['id']}&side=b&i={top[0]['idx_b']}")
            rows.append(("neuron logit effects, first (B's unembedding)", seconds, ""))
    server.shutdown()
    server.server_close()
    # a second explorer over the same study (a new session): the stored SAEs' codes come from the cache
    again = make_server(args.study, 0)
    threading.Thread(target=again.serve_forever, daemon=True).start()
    path = f"/api/pair?c={cid}&a={first['idx_a']}&b={first['idx_b']}"
    seconds, _ = _get(again.url.rstrip("/"), path)
    rows.append(("new explorer: the same pair view, first (codes from the cache)", seconds, ""))
    again.shutdown()
    shutil.rmtree(codes_cache, ignore_errors=True)
    rows += _wide_encodes(args.study, cid, args.widths)
    width = max(len(r[0]) for r in rows)
    print(f"saeatlas explore over {args.study}")
    print(f"{'view':<{width}}  {'seconds':>8}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:8.3f}  {note}")


if __name__ == "__main__":
    main()
