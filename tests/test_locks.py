"""One writer per product: a second extract, train or study into the same folder stops at once with one line
naming the holder's pid; the lock dies with its holder (kill -9); racing writers leave the winner's product
byte-identical to a solo run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXTS, cli_args, stop_after_command

from saeatlas import locks
from saeatlas.cli import main
from saeatlas.errors import SaeAtlasError
from saeatlas.locks import is_lock_file, lock_file, writing
from saeatlas.sae.synthetic import planted_features

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
}
HOLD = """
import sys
from saeatlas.locks import writing
with writing(sys.argv[1], "test"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(folder: Path) -> subprocess.Popen:
    """A process that holds `folder`'s lock until its stdin closes (or it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait() == 0


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeatlas: error:"), err
    return err[0]


def _busy(line: str, what: str, folder: Path, pid: int) -> None:
    assert line.startswith(f"saeatlas: error: {what} '{folder}' is being written by saeatlas pid {pid} since ")
    assert line.endswith("; wait for it to finish or stop it")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_stopped(proc: subprocess.Popen) -> None:
    """Wait until a `stop_after_command` child has stopped itself (SIGSTOP) at its known step."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the child ended (status {status}) before the step it should stop at"


# ---------------------------------------------------------------- the lock itself
def test_lock_file_sits_beside_the_folder_names_its_holder_and_goes_with_it(tmp_path):
    folder = tmp_path / "store"
    assert lock_file(folder) == tmp_path / "store.lock" and is_lock_file(lock_file(folder))
    with writing(folder, "store"):
        facts = json.loads(lock_file(folder).read_text())
        assert facts["pid"] == os.getpid() and facts["what"] == "store"
        with writing(folder, "store"):  # the same process again: a no-op, not a deadlock
            pass
        assert lock_file(folder).exists()
    assert not lock_file(folder).exists() and not folder.exists()


def test_a_held_lock_stops_another_process_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "sae"
    holder = _holder(folder)
    with pytest.raises(SaeAtlasError) as err, writing(folder, "SAE folder"):
        pass
    _busy(f"saeatlas: error: {err.value}", "SAE folder", folder, holder.pid)
    holder.kill()  # kill -9: no clean-up runs, the lock file stays behind ...
    assert holder.wait() == -signal.SIGKILL
    assert lock_file(folder).exists()
    with writing(folder, "SAE folder"):  # ... and the next writer takes it over
        assert json.loads(lock_file(folder).read_text())["pid"] == os.getpid()
    assert not lock_file(folder).exists()


# ---------------------------------------------------------------- the writers, against a held lock
def _extract_args(model: Path, corpus: Path, out: Path) -> list[str]:
    return cli_args(
        "extract",
        model=model,
        hooks="resid_post.0,resid_post.3",
        corpus=corpus,
        split="all",
        tokens=100000,
        context=32,
        shard_windows=2,
        dtype="float32",
        out=out,
    )


def _train_args(x: Path, out: Path) -> list[str]:
    return cli_args(
        "train",
        activations=x,
        arch="topk",
        k=3,
        width=64,
        steps=200,
        batch_size=256,
        seed=5,
        checkpoint_every=25,
        out=out,
    )


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(TEXTS[i % 5 :] + TEXTS[: i % 5])}) + "\n" for i in range(8)))
    return path


@pytest.fixture
def activations(tmp_path) -> Path:
    x, _ = planted_features(4096, n_features=64, d=16, active=3, seed=2)
    np.save(tmp_path / "x.npy", x.numpy())
    return tmp_path / "x.npy"


def test_extract_into_a_held_store_stops_then_runs_once_the_holder_is_killed(tiny_gemma, corpus, tmp_path, capsys):
    out = tmp_path / "store"
    holder = _holder(out)
    assert main(_extract_args(tiny_gemma, corpus, out)) == 2
    _busy(_one_error_line(capsys), "store", out, holder.pid)
    assert not out.exists()  # it stopped before touching anything
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main(_extract_args(tiny_gemma, corpus, out)) == 0
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert not lock_file(out).exists()


def test_train_into_a_held_sae_folder_stops(activations, tmp_path, capsys):
    out = tmp_path / "sae"
    holder = _holder(out)
    assert main(_train_args(activations, out)) == 2
    _busy(_one_error_line(capsys), "SAE folder", out, holder.pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae.lock", "x.npy"]  # no SAE, no .partial
    _release(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_a_second_study_into_the_same_folder_stops(tmp_path, capsys):
    out = tmp_path / "study"
    holder = _holder(out)
    assert main(["run", "--out", str(out), "--quiet"]) == 2
    _busy(_one_error_line(capsys), "study", out, holder.pid)
    assert not out.exists()
    _release(holder)


# ---------------------------------------------------------------- real races: the loser stops, the winner is intact
@pytest.mark.slow
def test_racing_extracts_the_loser_stops_the_winner_matches_a_solo_run(tiny_gemma, corpus, tmp_path, capsys):
    reference, raced = tmp_path / "reference", tmp_path / "raced"
    assert main(_extract_args(tiny_gemma, corpus, reference)) == 0
    capsys.readouterr()
    # The first writer stops itself (SIGSTOP) right after its first shard, holding the lock mid-store.
    first = subprocess.Popen(stop_after_command("shards", 1, _extract_args(tiny_gemma, corpus, raced)), env=ENV)
    _wait_stopped(first)
    assert main(_extract_args(tiny_gemma, corpus, raced)) == 2
    _busy(_one_error_line(capsys), "store", raced, first.pid)
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait() == 0
    assert _tree(raced) == _tree(reference)
    assert not lock_file(raced).exists()


@pytest.mark.slow
def test_racing_trains_the_loser_stops_the_winner_matches_a_solo_run(activations, tmp_path, capsys):
    reference, raced = tmp_path / "reference", tmp_path / "raced"
    assert main(_train_args(activations, reference)) == 0
    capsys.readouterr()
    first = subprocess.Popen(stop_after_command("checkpoints", 1, _train_args(activations, raced)), env=ENV)
    _wait_stopped(first)
    assert main(_train_args(activations, raced)) == 2
    _busy(_one_error_line(capsys), "SAE folder", raced, first.pid)
    assert (tmp_path / "raced.partial" / "checkpoint.pt").is_file()  # the winner's checkpoint, untouched
    os.kill(first.pid, signal.SIGCONT)
    assert first.wait() == 0
    assert _tree(raced) == _tree(reference)
    assert not (tmp_path / "raced.partial").exists() and not lock_file(raced).exists()


@pytest.mark.parametrize(
    "code, message",
    [
        (errno.EROFS, r"^cannot create the lock file .*store\.lock \(Read-only file system\): write to a folder you"),
        (errno.ENOSPC, r"^no space left on \S+ writing the lock file .*store\.lock: it needs more \(free .*\); free"),
    ],
)
def test_a_folder_that_cannot_hold_the_lock_file_is_one_line(tmp_path, monkeypatch, code, message):
    def refuse(path, *args):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(locks.os, "open", refuse)
    with pytest.raises(SaeAtlasError, match=message), writing(tmp_path / "store", "store"):
        pass
