"""OpenMP wait policy: the same SAE training steps with torch's default (spinning) and passive waiting.

saeatlas sets OMP_WAIT_POLICY=PASSIVE on import (src/saeatlas/__init__.py).  This runs 300 training steps of
a TopK SAE (d_in 64, 1024 latents, batches of 512) in fresh processes, alternating the policies, and prints
each time and the ratio.  Run it idle and beside a job that keeps the cores busy (e.g. `stress -c 2`):

    .venv/bin/python bench/omp_wait.py [--repeats 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STEPS = """
import os
if os.environ["OMP_WAIT_POLICY"] == "default":
    del os.environ["OMP_WAIT_POLICY"]
import time, torch
from saeatlas.sae.config import SAEConfig
from saeatlas.sae.model import SparseAutoencoder
torch.manual_seed(0)
sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=64, d_sae=1024, k=5))
opt = torch.optim.Adam(sae.parameters(), 1e-3)
x = torch.randn(512, 64)
t = time.perf_counter()
for _ in range({steps}):
    loss = (sae.decode(sae.encode(x)) - x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(time.perf_counter() - t)
"""


def timed(policy: str, steps: int) -> float:
    """Seconds for `steps` training steps in a fresh process with OMP_WAIT_POLICY=`policy` ("default": unset,
    which `import saeatlas` would then set, so the steps set it back to the OpenMP runtime's default first)."""
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    out = subprocess.run(
        [sys.executable, "-c", STEPS.format(steps=steps)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"default": [], "PASSIVE": []}
    for _ in range(args.repeats):
        for policy, seconds in times.items():
            seconds.append(timed(policy, args.steps))
            print(f"{policy:8s} {seconds[-1]:7.2f} s", flush=True)
    default, passive = (statistics.median(times[p]) for p in ("default", "PASSIVE"))
    print(f"median default {default:.2f} s, PASSIVE {passive:.2f} s: passive is {default / passive:.2f}x as fast")


if __name__ == "__main__":
    main()
