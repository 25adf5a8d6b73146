"""Extraction under torchrun (gloo, 2 processes on this CPU): the store is the same bytes as one process writes,
a kill -9 of either rank resumes to those bytes (with 2 ranks or 1 process), one job's ranks share its store lock
while a second job is refused, and a bad input is one line on every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TEXTS

from saeatlas import distributed
from saeatlas.cli import main
from saeatlas.config import ConfigError
from saeatlas.errors import SaeAtlasError

SRC = Path(__file__).parents[1] / "src"

WRAPPER = """
import importlib, os, signal, sys
from pathlib import Path

extract = importlib.import_module("saeatlas.data.extract")
write_shard = extract._write_shard
rank = int(os.environ.get("RANK", "0"))
log = Path(os.environ["SHARD_LOG"])
action, at_rank, after = os.environ.get("AT_SHARD", "none,-1,0").split(",")
written = 0


def logged(out, shard, *args, **kwargs):
    global written
    entry = write_shard(out, shard, *args, **kwargs)
    with open(log, "a") as fh:
        fh.write(f"{rank} {shard}\\n")
    written += 1
    if rank == int(at_rank) and written == int(after):
        if action == "stop":
            Path(os.environ["STOPPED_PID"]).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)
    return entry


extract._write_shard = logged
from saeatlas.cli import main

sys.exit(main(sys.argv[1:]))
"""
"""Runs the CLI in a torchrun worker, logging `rank shard` for every shard it writes; AT_SHARD=kill|stop,R,N
kills (kill -9) or stops (SIGSTOP, its pid written to STOPPED_PID) rank R right after its N-th shard's files."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist-corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(TEXTS[i % 5 :] + TEXTS[: i % 5])}) + "\n" for i in range(20)))
    return path


def _args(model: Path, corpus: Path, out: Path) -> list[str]:
    """Two windows a shard (about 19 shards, an odd number: the last round leaves rank 1 without one)."""
    return [
        "extract", "--model", str(model), "--hooks", "resid_post.0,mlp_out.3", "--corpus", str(corpus),
        "--split", "all", "--tokens", "600", "--context", "16", "--shard-windows", "2", "--batch-size", "1",
        "--out", str(out), "--quiet",
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _torchrun(nproc: int, target: list[str]) -> list[str]:
    """`torchrun --standalone --nproc-per-node N TARGET...` (--standalone: a free port of its own)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *target]


def _run(nproc: int, args: list[str], wrapper: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    target = [str(wrapper)] if wrapper else ["-m", "saeatlas"]
    return subprocess.run(
        _torchrun(nproc, [*target, *args]), check=False, env=_env(**env), capture_output=True, text=True, timeout=300
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tiny_gemma, corpus, tmp_path_factory) -> Path:
    """The store one process writes."""
    out = tmp_path_factory.mktemp("dist-reference") / "store"
    assert main(_args(tiny_gemma, corpus, out)) == 0
    return out


@pytest.fixture
def wrapper(tmp_path) -> Path:
    path = tmp_path / "wrapper.py"
    path.write_text(WRAPPER)
    return path


def test_what_crosses_to_the_other_ranks_and_one_process_answering_alone():
    bad = ConfigError("tokens", -1, "use an integer from 1 to 10")  # its __init__ takes more than the message
    sent = distributed.failure(bad)
    assert type(sent) is SaeAtlasError and str(sent) == str(bad) == "bad tokens = -1: use an integer from 1 to 10"
    bug = distributed.failure(ValueError("boom"))
    assert isinstance(bug, distributed.RankFailed) and str(bug) == "rank 0 failed: ValueError: boom"
    assert distributed.on_main(lambda: 7) == 7 and distributed.all_gather({"n": 1}) == [{"n": 1}]
    with distributed.alone():
        assert (distributed.rank(), distributed.world_size(), distributed.active()) == (0, 1, False)
    with pytest.raises(SaeAtlasError, match="^bad tokens"):
        distributed.raise_first([None, sent, bug])


def _shards_by_rank(log: Path) -> dict[int, list[int]]:
    by_rank: dict[int, list[int]] = {}
    for line in log.read_text().split("\n"):
        if line:
            rank, shard = map(int, line.split())
            by_rank.setdefault(rank, []).append(shard)
    return by_rank


@pytest.mark.slow
def test_two_ranks_write_the_store_one_process_writes_byte_for_byte(tiny_gemma, corpus, reference, wrapper, tmp_path):
    out, log = tmp_path / "store", tmp_path / "shards.log"
    done = _run(2, _args(tiny_gemma, corpus, out), wrapper, SHARD_LOG=str(log))
    assert done.returncode == 0, done.stderr
    n_shards = len(json.loads((reference / "manifest.json").read_text())["shards"])
    assert n_shards >= 9 and n_shards % 2 == 1
    # shard s on rank s % 2, each written once
    assert _shards_by_rank(log) == {0: list(range(0, n_shards, 2)), 1: list(range(1, n_shards, 2))}
    assert _tree(out) == _tree(reference)  # every file, the manifest included
    assert not Path(f"{out}.lock").exists()
    assert done.stdout.count("store holds") == 1  # only rank 0 prints the summary


@pytest.mark.slow
@pytest.mark.parametrize(("killed", "resume_nproc"), [(1, 2), (0, 1)])
def test_a_killed_rank_resumes_to_the_same_bytes(
    tiny_gemma, corpus, reference, wrapper, tmp_path, killed, resume_nproc
):
    """kill -9 of rank `killed` right after its 3rd shard's files (round 3: rounds 1-2 are listed, round 3's
    files lie unlisted); the same command with `resume_nproc` processes finishes the store byte-identical."""
    out, log = tmp_path / "store", tmp_path / "shards.log"
    args = _args(tiny_gemma, corpus, out)
    killed_run = _run(2, args, wrapper, SHARD_LOG=str(log), AT_SHARD=f"kill,{killed},3")
    assert killed_run.returncode != 0 and "Signal 9 (SIGKILL)" in killed_run.stderr
    partial = json.loads((out / "manifest.json").read_text())
    n_shards = len(json.loads((reference / "manifest.json").read_text())["shards"])
    assert not partial["complete"] and len(partial["shards"]) == 4 < n_shards
    assert _shards_by_rank(log)[killed][-1] == 4 + killed  # its shard of round 3 was written, not listed

    resumed = _run(resume_nproc, args) if resume_nproc > 1 else None
    if resumed is None:
        assert main(args) == 0
    else:
        assert resumed.returncode == 0, resumed.stderr
    assert _tree(out) == _tree(reference)


@pytest.mark.slow
def test_one_jobs_ranks_share_the_lock_and_a_second_job_is_refused(tiny_gemma, corpus, wrapper, tmp_path, capsys):
    out, pid_file = tmp_path / "store", tmp_path / "stopped.pid"
    args = _args(tiny_gemma, corpus, out)
    env = _env(SHARD_LOG=str(tmp_path / "shards.log"), AT_SHARD="stop,1,2", STOPPED_PID=str(pid_file))
    first = subprocess.Popen(
        _torchrun(2, [str(wrapper), *args]), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not pid_file.exists() or not pid_file.read_text():  # rank 1 stops after its 2nd shard (both wrote)
            assert first.poll() is None and time.monotonic() < deadline, "the first job ended before rank 1 stopped"
            time.sleep(0.2)
        holder = json.loads(Path(f"{out}.lock").read_text())["pid"]  # rank 0 holds it for the job
        assert holder != int(pid_file.read_text())

        assert main(args) == 2  # a second job, one process
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"store '{out}' is being written by saeatlas pid {holder}" in err[0]

        second = _run(2, args)  # a second job of 2 ranks: each rank says so in one line
        lines = [line for line in second.stderr.splitlines() if line.startswith("saeatlas: error:")]
        assert second.returncode != 0 and 1 <= len(lines) <= 2 and len(set(lines)) == 1
        assert f"is being written by saeatlas pid {holder}" in lines[0]
    finally:
        if pid_file.exists() and pid_file.read_text():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        first.wait(timeout=120)
    assert first.returncode != 0


@pytest.mark.slow
def test_a_bad_input_is_one_line_on_every_rank_and_no_rank_hangs(tiny_gemma, corpus, tmp_path):
    out = tmp_path / "store"
    args = _args(tiny_gemma, corpus, out)
    args[args.index("--hooks") + 1] = "resid_post.9"
    done = _run(2, args)
    lines = [line for line in done.stderr.splitlines() if line.startswith("saeatlas: error:")]
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert 1 <= len(lines) <= 2 and len(set(lines)) == 1 and "resid_post.9" in lines[0]
    assert f'File "{SRC}' not in done.stderr  # no traceback through saeatlas: torchrun's own report only
    assert not out.exists() and not Path(f"{out}.lock").exists()
