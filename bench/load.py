"""Under load: each main stage alone, beside one and beside two busy processes (`yes > /dev/null`).

torch's OpenMP threads used to spin while they waited; beside another busy process a spinning thread holds the
core the working one needs, and JumpReLU training ran at 11 % of its solo speed beside one `yes` (the fair
share of a 2-core machine is 50 %).  saeatlas.threads.share_cores (run on `import saeatlas`) fixes it for
every entry point; this bench checks it.

Stages, each timed in a fresh process started the way a user starts it:

* extract: `saeatlas extract` of the packaged smollm2-135m (wiki, --tokens, two hooks);
* train: each architecture (relu, topk, batchtopk, jumprelu, gba, mp) at d_in 64, 1024 latents, 400 steps of
  512 (k 32), on random activations;
* compare: `saeatlas compare` of two hooks of the extracted store with SAEs trained on them (few permutations
  and half-samples, so that it takes seconds).

Entry points: `cli` (`from saeatlas.cli import main`, what the console script does: saeatlas loads before
torch) and `api` (`import torch` first, then the saeatlas function).  The time is that of the stage's call
inside the process (not Python's start or `import torch`).  Each stage runs alone, beside 1 and beside 2 busy
processes, interleaved, `--repeats` times (medians); the table gives % of solo speed (alone / beside) and marks
the target: at least 40 % beside one busy process.  The machine should be otherwise idle.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/load.py [--entries cli,api] [--stages extract,train,compare]
        [--archs relu,topk,...] [--repeats 1] [--tokens 8192] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "gba", "mp")
TARGET = 40.0
"""% of solo speed beside one busy process."""
HOOKS = ("resid_post.3", "resid_post.6")

CLI = """
import json, sys, time
from saeatlas.cli import main
import torch
t = time.perf_counter()
assert main(json.loads(sys.argv[1])) == 0
print(json.dumps({"seconds": time.perf_counter() - t, "threads": torch.get_num_threads()}))
"""
API = """
import json, sys, time
import torch
import numpy as np
import saeatlas
kind, args = sys.argv[1], json.loads(sys.argv[2])
if kind == "train":
    from saeatlas import SAEConfig, TrainConfig, run_train
    data = np.load(args.pop("activations"), mmap_mode="r")
    cfg = TrainConfig(sae=SAEConfig(**args.pop("sae")), **args)
    t = time.perf_counter()
    run_train(cfg, data)
elif kind == "extract":
    from saeatlas import ExtractConfig, run_extract
    out = args.pop("out")
    t = time.perf_counter()
    run_extract(ExtractConfig(**args), out)
else:
    from saeatlas import CompareConfig, run_compare
    t = time.perf_counter()
    run_compare(CompareConfig(**args))
print(json.dumps({"seconds": time.perf_counter() - t, "threads": torch.get_num_threads()}))
"""
COMPARE = {"n_permutations": 100, "n_bootstrap": 2, "chance_shifts": 4, "random_init_seeds": 1}


def run(command: list[str], busy: int) -> dict:
    """Run `command` (it prints a JSON line with "seconds") beside `busy` `yes > /dev/null` processes."""
    others = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(busy)]
    try:
        time.sleep(0.2 if busy else 0)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        for proc in others:
            proc.kill()
            proc.wait()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def commands(stage: str, entry: str, work: Path, tokens: int, steps: int = 400) -> list[str]:
    """The command that runs `stage` ("extract", "train <arch>" or "compare") through `entry` in a fresh process."""
    py = sys.executable
    out = work / f"out-{os.getpid()}-{time.monotonic_ns()}"
    if stage == "extract":
        settings = {"model": "smollm2-135m", "corpus": "wiki", "tokens": tokens, "hooks": list(HOOKS)}
        cli = ["extract", "--model", "smollm2-135m", "--corpus", "wiki", "--tokens", str(tokens)]
        cli += ["--hooks", ",".join(HOOKS), "--out", str(out), "--quiet"]
        api = ["extract", json.dumps(settings | {"out": str(out)})]
    elif stage.startswith("train"):
        arch = stage.split()[1]
        cli = ["train", "--activations", str(work / "x.npy"), "--arch", arch, "--width", "1024", "--k", "32"]
        cli += ["--steps", str(steps), "--batch-size", "512", "--checkpoint-every", "0", "--out", str(out), "--quiet"]
        sae = {"arch": arch, "d_sae": 1024, "k": 32}
        api = ["train", json.dumps({"activations": str(work / "x.npy"), "sae": sae, "steps": steps, "batch_size": 512})]
    else:
        store, saes = str(work / "store"), str(work / "sae-{hook}")
        cli = ["compare", "--store-a", store, "--store-b", store, "--saes-a", saes, "--saes-b", saes]
        cli += ["--hooks-a", HOOKS[0], "--hooks-b", HOOKS[1], "--out", str(out), "--quiet"]
        for name, value in COMPARE.items():
            cli += [f"--{name.replace('_', '-')}", str(value)]
        settings = {"store_a": store, "store_b": store, "saes_a": saes, "saes_b": saes}
        settings |= {"hooks_a": [HOOKS[0]], "hooks_b": [HOOKS[1]], **COMPARE}
        api = ["compare", json.dumps(settings)]
    return [py, "-c", CLI, json.dumps(cli)] if entry == "cli" else [py, "-c", API, *api]


def prepare(work: Path, tokens: int, stages: list[str]) -> None:
    """Random activations for training; for compare, a store of smollm2-135m and SAEs on its two hooks."""
    import numpy as np

    np.save(work / "x.npy", np.random.default_rng(0).standard_normal((400 * 512, 64)).astype(np.float32))
    if "compare" in stages:
        py = [sys.executable, "-m", "saeatlas"]
        subprocess.run(
            [*py, "extract", "--model", "smollm2-135m", "--corpus", "wiki", "--tokens", str(tokens)]
            + ["--hooks", ",".join(HOOKS), "--out", str(work / "store"), "--quiet"],
            check=True,
        )
        for hook in HOOKS:
            subprocess.run(
                [*py, "train", "--store", str(work / "store"), "--hook", hook, "--width", "1024", "--k", "32"]
                + ["--steps", "100", "--batch-size", "256", "--out", str(work / f"sae-{hook}"), "--quiet"],
                check=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", default="cli,api")
    parser.add_argument("--stages", default="extract,train,compare")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of the extract stage")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the train stages")
    args = parser.parse_args()
    stages = []
    for stage in args.stages.split(","):
        stages += [f"train {a}" for a in args.archs.split(",")] if stage == "train" else [stage]
    entries = args.entries.split(",")
    with tempfile.TemporaryDirectory(prefix="saeatlas-load-") as tmp:
        work = Path(tmp)
        prepare(work, args.tokens, stages)
        times: dict[tuple[str, str, int], list[float]] = {}
        threads: dict[tuple[str, str], int] = {}
        for _ in range(args.repeats):
            for stage in stages:
                for entry in entries:
                    for busy in (0, 1, 2):
                        figures = run(commands(stage, entry, work, args.tokens, args.steps), busy)
                        times.setdefault((stage, entry, busy), []).append(figures["seconds"])
                        threads[stage, entry] = figures["threads"]
                        print(f"{stage:16s} {entry:4s} beside {busy}: {figures['seconds']:7.2f} s", flush=True)
    print(f"\n% of solo speed = alone / beside; target: >= {TARGET:.0f} % beside one busy process")
    print(
        f"{'stage':16s} {'entry':5s} {'threads':>7s} {'alone':>7s} {'beside 1':>9s} {'beside 2':>9s}  % beside 1   % beside 2"
    )
    for stage in stages:
        for entry in entries:
            alone, one, two = (statistics.median(times[stage, entry, b]) for b in (0, 1, 2))
            share1, share2 = 100 * alone / one, 100 * alone / two
            mark = "ok" if share1 >= TARGET else "MISS"
            print(
                f"{stage:16s} {entry:5s} {threads[stage, entry]:7d} {alone:7.2f} {one:9.2f} {two:9.2f}"
                f"  {share1:6.0f} {mark:4s}  {share2:6.0f}"
            )


if __name__ == "__main__":
    main()
