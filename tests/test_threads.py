"""torch's threads on a shared machine (saeatlas.threads.share_cores): after each entry point, no thread of the
process spins while it waits, whether saeatlas or torch was imported first, and every core is kept where
saeatlas loads first.

Each case runs in a fresh process, since libgomp reads its wait policy once, when torch loads.  `spin_ms` runs
a parallel op on every torch thread and then sleeps: a libgomp thread that spins burns about 4 ms of CPU in
each 20 ms sleep, one that sleeps (or no second thread) well under 0.1 ms.  CPU time, not wall time: another
busy process can only lower the spinning figure, not raise the passive one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every case starts Python and torch in a fresh process

SPIN_MS = """
import resource, time
import torch

def spin_ms(rounds=20, pause=0.02):
    x = torch.ones(1 << 20)
    busy = 0.0
    for _ in range(rounds):
        x.add_(1.0)  # 1M elements: a parallel region on every intra-op thread
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(pause)
        after = resource.getrusage(resource.RUSAGE_SELF)
        busy += after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return 1000 * busy / rounds
"""
REPORT = """
import json, os
from saeatlas.threads import share_cores
print(json.dumps({"shared": share_cores(), "threads": torch.get_num_threads(), "spin_ms": spin_ms(),
                  "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""
SPINNING_MS = 1.0
"""CPU milliseconds per 20 ms sleep above which a thread spun (spinning: about 4; passive: about 0.06)."""

API_TRAIN = """
import numpy as np
from saeatlas import SAEConfig, TrainConfig, run_train
x = np.random.default_rng(0).standard_normal((2048, 16)).astype(np.float32)
run_train(TrainConfig(sae=SAEConfig(arch="jumprelu", d_sae=64, k=4), steps=5, batch_size=256), x)
"""
CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")

two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs for a second thread")


def _run(code: str, report: str = REPORT, **env: str) -> dict:
    """`code`, then `spin_ms` and `report`, in a fresh Python without the user's OpenMP choices (but `env`)."""
    environ = {k: v for k, v in os.environ.items() if k not in CHOICES} | env
    done = subprocess.run(
        [sys.executable, "-c", code + SPIN_MS + report], env=environ, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@two_cores
def test_probe_sees_spinning_threads():
    """The control: torch without saeatlas spins (else the passive figures below would prove nothing)."""
    figures = _run(
        "", report='print(__import__("json").dumps({"threads": torch.get_num_threads(), "spin_ms": spin_ms()}))'
    )
    assert figures["threads"] >= 2
    assert figures["spin_ms"] > SPINNING_MS, figures


@two_cores
def test_cli_waits_passively_on_every_core(tmp_path):
    """`saeatlas train` (the console script and `python -m saeatlas` load saeatlas before torch)."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2048, 16)).astype(np.float32))
    args = ["train", "--activations", str(tmp_path / "x.npy"), "--arch", "jumprelu", "--width", "64", "--k", "4"]
    args += ["--steps", "5", "--batch-size", "256", "--out", str(tmp_path / "sae"), "--quiet"]
    figures = _run(f"from saeatlas.cli import main\nassert main({args!r}) == 0\n")
    assert figures["shared"] == "passive"
    assert figures["policy"] == "PASSIVE"
    assert figures["threads"] == len(os.sched_getaffinity(0))
    assert figures["spin_ms"] < SPINNING_MS, figures


@two_cores
def test_api_before_torch_waits_passively_on_every_core():
    figures = _run("import saeatlas\n" + API_TRAIN)
    assert figures["shared"] == "passive"
    assert figures["threads"] == len(os.sched_getaffinity(0))
    assert figures["spin_ms"] < SPINNING_MS, figures


@two_cores
@pytest.mark.parametrize("entry", ["train", "study"])
def test_api_after_torch_runs_one_thread(entry):
    """The Python API after `import torch` (run_train, or run_study's import): libgomp already spins."""
    code = API_TRAIN if entry == "train" else "from saeatlas import load_study, run_study\n"
    figures = _run("import torch\n" + code)
    assert figures["shared"] == "one thread"
    assert figures["threads"] == 1
    assert figures["spin_ms"] < SPINNING_MS, figures


@two_cores
@pytest.mark.parametrize(("env", "threads"), [({"OMP_WAIT_POLICY": "PASSIVE"}, 0), ({"OMP_NUM_THREADS": "2"}, 2)])
def test_user_choices_after_torch_are_kept(env, threads):
    figures = _run("import torch\nimport saeatlas\n", **env)
    assert figures["shared"] == "user"
    assert figures["threads"] == (threads or len(os.sched_getaffinity(0)))
    if "OMP_WAIT_POLICY" in env:
        assert figures["spin_ms"] < SPINNING_MS, figures


def test_the_tests_wait_passively():
    """This process: conftest.py sets OMP_WAIT_POLICY before anything loads torch."""
    from saeatlas.threads import share_cores

    assert share_cores() in ("user", "passive")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
