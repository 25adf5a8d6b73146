"""`saeatlas compare` under torchrun (gloo, 2 processes on this CPU): the layer pairs and their controls spread
over the ranks (`distributed.spread`), and results.json equals a one-process run's (wall time aside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_args, tiny_store

from saeatlas import distributed
from saeatlas.cli import main

SRC = Path(__file__).parents[1] / "src"
HOOKS_A = ["resid_post.1", "resid_post.2"]


@pytest.fixture(scope="module")
def setup(tiny_llama, tiny_other, long_corpus, tmp_path_factory):
    """Store a at two hooks and b at one (a 2 x 1 grid), a TopK SAE per hook."""
    root = tmp_path_factory.mktemp("distributed-compare")
    for name, model, hooks in (("a", tiny_llama, HOOKS_A), ("b", tiny_other, ["resid_post.1"])):
        tiny_store(model, long_corpus, root / name, hooks=hooks, tokens=20_000, context=32, window_chars=60)
        for hook in hooks:
            flags = {"store": root / name, "hook": hook, "k": 4, "d_sae": 48, "steps": 40, "batch_size": 64}
            assert main(cli_args("train", **flags, out=root / f"sae-{name}-{hook}")) == 0
    return root


def _compare_args(root: Path, out: Path) -> list[str]:
    flags = {
        "store_a": root / "a",
        "store_b": root / "b",
        "saes_a": root / "sae-a-{hook}",
        "saes_b": root / "sae-b-{hook}",
    }
    flags |= {"hooks_a": ",".join(HOOKS_A), "hooks_b": "1", "threshold": 0.0, "n_permutations": 30, "n_bootstrap": 3}
    return cli_args("compare", **flags, out=out)


def _without_seconds(doc):
    """The results document without its wall times (the whole run's and each comparison's)."""
    if isinstance(doc, dict):
        return {k: _without_seconds(v) for k, v in doc.items() if k != "seconds"}
    return [_without_seconds(v) for v in doc] if isinstance(doc, list) else doc


@pytest.mark.slow
def test_compare_on_two_ranks_equals_one_process(setup, tmp_path):
    # both runs in fresh processes on one thread each (torchrun's default): BLAS sums of other thread counts
    # differ in the last bit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    for name, command in (("one", [sys.executable]), ("two", torchrun)):
        run = subprocess.run(
            [*command, "-m", "saeatlas", *_compare_args(setup, tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    one, two = (_without_seconds(json.loads((tmp_path / n / "results.json").read_text())) for n in ("one", "two"))
    assert len(one["pairs"]) == 2 and two == one


def test_spread_alone_is_a_plain_loop_and_counts_nothing_elsewhere():
    assert distributed.spread([3, 1, 2], lambda x: x * x) == [9, 1, 4]
    assert distributed.elsewhere(5) == 0
    assert distributed.together(lambda: "done") == "done"
