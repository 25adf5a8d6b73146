"""`saeatlas run` under torchrun (gloo, 2 processes on this CPU): the stages spread over the ranks in waves, and
the products, stage records and results.json equal a one-process run's (timings aside)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TEXTS

from saeatlas.study.run import assign, waves
from saeatlas.study.stages import Stage

SRC = Path(__file__).parents[1] / "src"
TIMINGS = frozenset({"seconds", "seconds_when_made", "tokens_per_second"})
"""JSON keys that hold wall times: the only thing a run on 2 ranks may change."""


def _stage(name: str, *inputs: Stage) -> Stage:
    return Stage("train", name, Path(name), {}, lambda stage, progress: {}, list(inputs))


def test_waves_hold_stages_whose_inputs_are_in_earlier_waves_and_pending_ones_go_round_robin():
    a, b = _stage("a"), _stage("b")
    ta, tb, tb2 = _stage("ta", a), _stage("tb", b), _stage("tb2", b)
    compare = _stage("compare", a, b, ta, tb)
    cards = _stage("cards", compare)
    absorption = _stage("absorption", ta, tb2)
    stages = [a, b, ta, tb, tb2, compare, cards, absorption]
    assert waves(stages) == [[0, 1], [2, 3, 4], [5, 7], [6]]
    assert assign([2, 3, 4], 2) == {2: 0, 3: 1, 4: 0}
    assert assign([5, 7], 4) == {5: 0, 7: 1}


STUDY = """
name = "tiny"
[data]
corpus = "{corpus}"
tokens = 3000
window_chars = 60
context = 32
heldout_tokens = 600
[[models]]
label = "a"
model = "{model_a}"
hooks = ["resid_post.1", "blocks.2.hook_resid_post"]
[[models]]
label = "b"
model = "{model_b}"
hooks = [1]
[sae]
k = 4
d_sae = 48
steps = 40
batch_size = 64
ce_tokens = 128
[compare]
label_a = "a"
label_b = "b"
threshold = 0.0
n_permutations = 30
n_bootstrap = 3
controls = ["random_init", "neurons", "shifted", "skyline"]
pair_cards = 2
[absorption]
label = "a"
hook = "resid_post.1"
k_values = [2, 4]
words = 150
min_probe_f1 = 0.0
min_letters = 3
"""
"""Every stage kind: 4 extractions, SAEs of 2 hooks, 2 seeds and 2 k, compare with its controls, concepts, pair
cards, absorption, evaluations, report."""


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]

WRAPPER = """
import importlib, os, signal, sys

run = importlib.import_module("saeatlas.study.run")
run_stage = run.run_stage
rank, after = int(os.environ.get("RANK", "0")), int(os.environ["KILL_RANK1_AFTER"])
made = 0


def run_then_maybe_die(*args, **kwargs):
    global made
    result = run_stage(*args, **kwargs)
    made += result[1] == "ran"
    if rank == 1 and made == after:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


run.run_stage = run_then_maybe_die
from saeatlas.cli import main

sys.exit(main(sys.argv[1:]))
"""
"""Runs the CLI in a torchrun worker; rank 1 kills itself (kill -9) right after making its KILL_RANK1_AFTER-th
stage."""


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # as torchrun sets for its workers: the same float sums in both runs
        "SAEATLAS_CACHE": str(cache),
        "KILL_RANK1_AFTER": "3",
    }
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)


def _timeless(x, drop: frozenset[str] = TIMINGS):
    if isinstance(x, dict):
        return {k: _timeless(v, drop) for k, v in x.items() if k not in drop}
    if isinstance(x, list):
        return [_timeless(v, drop) for v in x]
    return x


def _products(folder: Path, drop: frozenset[str] = TIMINGS) -> dict[str, object]:
    """Every file of a study folder: JSON documents without their wall times (the keys in `drop`), other files as
    bytes (run.log and report.html, which print the wall times, left out: the report is rendered from
    results.json)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in ("run.log", "report.html"):
            rel = str(path.relative_to(folder))
            out[rel] = _timeless(json.loads(path.read_text()), drop) if path.suffix == ".json" else path.read_bytes()
    return out


@dataclass
class Setup:
    study: Path
    out: Path
    """Where every run of the study writes (stage keys hash the products' paths); a test first clears it."""
    cache: Path
    reference: Path
    """The one-process run's products (moved here from `out`)."""

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return _run([*cmd, "run", str(self.study), "--out", str(self.out), "--quiet"], self.cache)


@pytest.fixture(scope="module")
def setup(tiny_llama, tiny_other, tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("dist-study")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(2 + i % 5)))
    study = root / "study.toml"
    study.write_text(STUDY.format(corpus=corpus, model_a=tiny_llama, model_b=tiny_other))
    setup = Setup(study, root / "out", root / "cache", root / "one-process")
    one = setup.run([sys.executable, "-m", "saeatlas"])
    assert one.returncode == 0, one.stderr
    setup.out.rename(setup.reference)
    return setup


@pytest.mark.slow
def test_a_study_on_two_ranks_equals_one_process(setup):
    shutil.rmtree(setup.out, ignore_errors=True)
    two = setup.run([*TORCHRUN, "-m", "saeatlas"])
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("study 'tiny': stages") == 1  # only rank 0 prints the summary
    products, reference = _products(setup.out), _products(setup.reference)
    assert sorted(products) == sorted(reference) and len(products) > 60
    assert [name for name in products if products[name] != reference[name]] == []
    # every stage ran once, on one of the ranks, and both ranks had work
    results = json.loads((setup.out / "results.json").read_text())
    assert len(results["stages"]) == 16 and {t["state"] for t in results["stages"]} == {"ran"}
    finished = [line for line in (setup.out / "run.log").read_text().splitlines() if "finished in" in line]
    by_rank = {r: sum(f" rank {r} " in line for line in finished) for r in (0, 1)}
    assert len(finished) == by_rank[0] + by_rank[1] == 17 and by_rank[1] >= 5  # and the report, on rank 0

    again = setup.run([*TORCHRUN, "-m", "saeatlas"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (done)") == 17 and _products(setup.out) == products


@pytest.mark.slow
def test_a_rank_killed_mid_study_then_the_same_command_ends_as_one_process_does(setup, tmp_path):
    """Rank 1 dies (kill -9) right after its 3rd stage, a training, while rank 0 works on its own stage of that
    wave; the same command on 2 ranks finishes the study with the one-process run's products."""
    shutil.rmtree(setup.out, ignore_errors=True)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    killed = setup.run([*TORCHRUN, str(wrapper)])
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr
    assert not (setup.out / "results.json").exists()
    made = [line for line in (setup.out / "run.log").read_text().splitlines() if " rank 1 " in line]
    assert sum("finished in" in line for line in made) == 3 and "train " in [m for m in made if "finished" in m][-1]

    resumed = setup.run([*TORCHRUN, "-m", "saeatlas"])
    assert resumed.returncode == 0, resumed.stderr
    states = {t["name"]: t["state"] for t in json.loads((setup.out / "results.json").read_text())["stages"]}
    assert list(states.values()).count("done") >= 3 and "ran" in states.values()
    # stage states aside (done now, ran in one go), the same products and records
    drop = TIMINGS | {"state"}
    assert _products(setup.out, drop) == _products(setup.reference, drop)
