"""SAE training under torchrun (DDP, gloo, 2 processes on this CPU) equals one process on the same global
batches: weights within 1e-4 relative (reductions in another order), dead-latent and GBA statistics equal;
checkpoints resume with another number of ranks; a kill -9 of one rank, then the same command, resumes.

The maths of the split (rank slices, BatchTopK's global threshold) is also checked in this process, with the
world simulated by splitting a batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import HOOK, STOP_AFTER, kill_when_stopped, stop_after_command, tiny_store
from safetensors.torch import load_file

from saeatlas import distributed
from saeatlas.cli import main
from saeatlas.errors import SaeAtlasError
from saeatlas.locks import writing
from saeatlas.sae import SAEConfig, TrainConfig, train_sae
from saeatlas.sae.data_source import StoreSource, TensorSource
from saeatlas.sae.sparse import batch_topk_codes
from saeatlas.sae.trainer import check_world, rank_rows

SRC = Path(__file__).parents[1] / "src"
TOLERANCE = 1e-4
"""Largest relative difference (max |a - b| / max |a|) between 2 ranks' weights and one process's."""


# ---------------------------------------------------------------- in this process: the split's maths
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("repeated", [False, True])
def test_batch_topk_over_rank_slices_keeps_the_global_batch_codes(world, repeated):
    """Each simulated rank keeps its candidates above the threshold of all ranks' candidates (and its share of
    those tied at it): together the k * n codes of BatchTopK over the whole batch, even when one slice holds
    most of them.  With repeated rows (ties) the same values are kept, in the same number."""
    g = torch.Generator().manual_seed(0)
    n, d_sae, k = 32, 48, 3
    pre = torch.randn(n, d_sae, generator=g)
    pre[: n // world] += 2.0  # the first rank's slice holds more than its share of the batch's top values
    if repeated:  # a store repeats tokens: rows repeat, within and across slices
        pre[1::4] = pre[0]
    bias = torch.randn(d_sae, generator=g) * 0.1
    indices, values, offsets = batch_topk_codes(pre, k, bias)
    whole = {(int(r), int(i)): float(v) for r, i, v in zip(_rows(offsets, len(indices)), indices, values)}

    slices = pre.chunk(world)
    candidates = [(s + bias).reshape(-1).topk(k * n).values for s in slices]
    split = {}
    for r, s in enumerate(slices):
        i, v, o = batch_topk_codes(s, k, bias, world, r, gather=lambda mine: torch.cat(candidates))
        rows = _rows(o, len(i)) + r * (n // world)
        split |= {(int(row), int(j)): float(x) for row, j, x in zip(rows, i, v)}
    assert len(whole) == len(split) == k * n
    assert sorted(split.values()) == sorted(whole.values())
    if not repeated:
        assert split == whole
    assert sum(row < n // world for row, _ in whole) > k * n // world  # the uneven case was met


def _rows(offsets: torch.Tensor, m: int) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(offsets)), torch.cat([offsets, torch.tensor([m])]).diff())


def test_rank_slices_tile_the_global_batch_and_batch_size_must_split(monkeypatch):
    """Over 3 simulated ranks each batch of a source is cut in 3 slices of 4 rows that together make the
    one-process batch, at every step and past an epoch (36 tokens: 3 batches of 12 an epoch)."""
    source = TensorSource(torch.randn(36, 2, generator=torch.Generator().manual_seed(0)))
    whole = list(zip(range(7), source.batches(12, seed=1, start_step=1)))
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append([b for _, b in zip(range(7), source.batches(12, seed=1, start_step=1, part=rank_rows(12)))])
    for step, (_, batch) in enumerate(whole):
        assert [len(p[step]) for p in parts] == [4, 4, 4]
        assert torch.equal(torch.cat([p[step] for p in parts]), batch)
    check_world(12)
    with pytest.raises(SaeAtlasError, match="batch_size 13 does not split over 3 ranks: use a multiple of 3"):
        check_world(13)


# ---------------------------------------------------------------- 2 processes under torchrun
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _torchrun(*args: str, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *args]


@pytest.fixture(scope="module")
def store(tiny_llama, text_corpus, tmp_path_factory) -> Path:
    """876 tokens of width 32 at HOOK."""
    return tiny_store(tiny_llama, text_corpus, tmp_path_factory.mktemp("ddp") / "store")


ARCHS = ("topk", "batchtopk", "relu", "jumprelu", "gba")
SETTINGS = {"steps": 200, "batch_size": 64, "lr": 1e-3, "warmup_steps": 10, "seed": 5}
SETTINGS |= {"compute_dtype": "float32", "dead_after_tokens": 192, "checkpoint_every": 0}
"""float32 (no bfloat16 ties at BatchTopK's threshold); latents count as dead after 3 batches, so AuxK and the
dead counters work."""

DRIVER = """
import json, sys, torch
from pathlib import Path
from saeatlas import distributed
from saeatlas.sae import SAEConfig, TrainConfig, train_sae
from saeatlas.sae.data_source import StoreSource
from saeatlas.sae.run import training_device

store, hook, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
for arch in settings.pop("archs"):
    cfg = TrainConfig(sae=SAEConfig(arch=arch, d_sae=64, k=4), **settings)
    sae, state = train_sae(cfg, StoreSource(store, hook), device=training_device(cfg))
    torch.save({"sae": sae.state_dict(), "state": vars(state)}, f"{out}/{arch}-{distributed.rank()}.pt")
rank = distributed.rank()  # inside alone() this process answers rank 0 of 1
with distributed.alone():  # each rank its own SAE (seed 5 + rank), as a study spreading SAEs over ranks
    cfg = TrainConfig(sae=SAEConfig(arch="topk", d_sae=64, k=4), **(settings | {"seed": 5 + rank}))
    sae, state = train_sae(cfg, StoreSource(store, hook), checkpoint=Path(f"{out}/alone-{rank}.ckpt"))
    torch.save({"sae": sae.state_dict()}, f"{out}/alone-{rank}.pt")
distributed.shutdown()
"""


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


@pytest.mark.slow
def test_two_ranks_train_as_one_process(store, tmp_path):
    """topk, batchtopk, relu, jumprelu, gba: 200 steps of 64 tokens on 2 ranks (32 each) against one process;
    the weights within 1e-4, the dead-latent counters, GBA's counts and BatchTopK's threshold global."""
    (tmp_path / "driver.py").write_text(DRIVER)
    settings = json.dumps({**SETTINGS, "checkpoint_every": 50, "archs": ARCHS})
    run = subprocess.run(
        _torchrun(str(tmp_path / "driver.py"), str(store), HOOK, str(tmp_path), settings),
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for arch in ARCHS:
        dead: list[float] = []
        one, one_state = train_sae(
            TrainConfig(sae=SAEConfig(arch=arch, d_sae=64, k=4), **SETTINGS),
            StoreSource(store, HOOK),
            on_step=lambda metrics, dead=dead: dead.append(metrics["dead"]),
        )
        ranks = [torch.load(tmp_path / f"{arch}-{r}.pt", weights_only=True) for r in range(2)]
        for name, p in one.state_dict().items():
            assert torch.equal(ranks[0]["sae"][name], ranks[1]["sae"][name]), (arch, name)  # the ranks agree
            assert _relative(p, ranks[0]["sae"][name]) < TOLERANCE, (arch, name)
        for state in (r["state"] for r in ranks):
            assert state["step"] == 200
            # counted over the global batch: the one-process counts, not half of them
            assert torch.equal(state["tokens_since_fired"], one_state.tokens_since_fired), arch
        if arch in ("topk", "batchtopk"):  # (jumprelu's latents all fire here: its AuxK is not met)
            assert max(dead) > 0, "no latent died: AuxK was not tested"
        if arch == "gba":
            assert torch.equal(ranks[0]["state"]["gba_fired"], one_state.gba_fired)
        if arch == "batchtopk":
            threshold = ranks[0]["state"]["batchtopk_threshold"]
            assert threshold == ranks[1]["state"]["batchtopk_threshold"]
            assert abs(threshold - one_state.batchtopk_threshold) < TOLERANCE * one_state.batchtopk_threshold

    # under distributed.alone() each rank trained its own SAE, bit for bit as one process does, and wrote its checkpoint
    for r in range(2):
        settings = SETTINGS | {"seed": 5 + r, "checkpoint_every": 50}
        alone, _ = train_sae(
            TrainConfig(sae=SAEConfig(arch="topk", d_sae=64, k=4), **settings), StoreSource(store, HOOK)
        )
        theirs = torch.load(tmp_path / f"alone-{r}.pt", weights_only=True)["sae"]
        assert all(torch.equal(p, theirs[name]) for name, p in alone.state_dict().items()), r
        assert torch.load(tmp_path / f"alone-{r}.ckpt", weights_only=True)["state"]["step"] == 200


def _train_args(store: Path, out: Path) -> list[str]:
    args = ["train", "--store", str(store), "--hook", HOOK, "--arch", "topk", "--k", "4", "--width", "64"]
    args += ["--steps", "300", "--batch-size", "64", "--lr", "1e-3", "--seed", "5", "--dtype", "float32"]
    return [*args, "--dead-after-tokens", "1024", "--checkpoint-every", "25", "--out", str(out), "--quiet"]


def _weights(folder: Path) -> dict:
    return load_file(folder / "sae_weights.safetensors")


def _close(a: Path, b: Path) -> None:
    one, other = _weights(a), _weights(b)
    for name, p in one.items():
        assert _relative(p, other[name]) < TOLERANCE, name


def _stopped_descendant(root: int, timeout: float = 300) -> int:
    """The pid of a process below `root` that has stopped itself (SIGSTOP), waiting up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _descendants(root):
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                    return pid
            except (FileNotFoundError, IndexError):
                pass
        time.sleep(0.2)
    pytest.fail("no rank stopped itself after its checkpoint", pytrace=False)


def _descendants(root: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@pytest.mark.slow
def test_kill_one_rank_then_rerun_and_resume_across_world_sizes(store, tmp_path):
    """A 2-rank run whose rank 0 is killed (kill -9) after its 3rd checkpoint: the same command resumes it to
    the bytes of an uninterrupted 2-rank run; its checkpoint resumed by one process, and a one-process
    checkpoint resumed by 2 ranks, end within 1e-4 of an uninterrupted one-process run."""
    env = _env()
    assert main(_train_args(store, tmp_path / "one")) == 0
    subprocess.run(_torchrun("-m", "saeatlas", *_train_args(store, tmp_path / "two")), env=env, check=True)
    _close(tmp_path / "one", tmp_path / "two")

    # kill -9 of one rank mid-run, then the same command
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(str(STOP_AFTER), "checkpoints", "3", "--", *_train_args(store, killed)), env=env)
    os.kill(_stopped_descendant(proc.pid), 9)
    assert proc.wait(timeout=300) != 0
    checkpoint = tmp_path / "killed.partial" / "checkpoint.pt"
    assert checkpoint.exists() and not killed.exists(), "the run was not killed mid-training"
    assert torch.load(checkpoint, weights_only=True)["state"]["step"] == 75
    shutil.copytree(tmp_path / "killed.partial", tmp_path / "to-one.partial")
    subprocess.run(_torchrun("-m", "saeatlas", *_train_args(store, killed)), env=env, check=True)
    assert not (tmp_path / "killed.partial").exists()
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (killed / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    # the 2-rank checkpoint (step 75) resumed by one process
    assert main(_train_args(store, tmp_path / "to-one")) == 0
    _close(tmp_path / "one", tmp_path / "to-one")

    # a one-process checkpoint (step 75) resumed by 2 ranks
    to_two = tmp_path / "to-two"
    kill_when_stopped(subprocess.Popen(stop_after_command("checkpoints", 3, _train_args(store, to_two)), env=env))
    assert torch.load(tmp_path / "to-two.partial" / "checkpoint.pt", weights_only=True)["state"]["step"] == 75
    subprocess.run(_torchrun("-m", "saeatlas", *_train_args(store, to_two)), env=env, check=True)
    _close(tmp_path / "one", to_two)


@pytest.mark.slow
def test_a_second_job_is_refused_while_one_job_s_ranks_share_the_lock(store, tmp_path):
    """Another holder of the SAE folder's lock stops both ranks with the one line (the 2-rank runs above take
    it without refusing each other)."""
    out = tmp_path / "sae"
    with writing(out, "SAE folder"):
        run = subprocess.run(
            _torchrun("-m", "saeatlas", *_train_args(store, out)),
            env=_env(),
            capture_output=True,
            text=True,
            check=False,
        )
    assert run.returncode != 0
    # each rank says it once (their lines may interleave on the shared stderr)
    message = f"saeatlas: error: SAE folder '{out}' is being written by saeatlas pid {os.getpid()} since "
    assert run.stderr.count(message) == 2 and run.stderr.count("saeatlas: error:") == 2, run.stderr[-2000:]
    assert not out.exists() and not (tmp_path / "sae.partial").exists()
