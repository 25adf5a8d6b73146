"""A full disk while writing a product: one line saying how much more space it needs, exit status 2, no
temporary files left behind, and the rerun after freeing space ends byte-identical to an uninterrupted run.

The full disk is simulated in-process (every committed temporary file counts against a budget; the commit
that passes it fails with ENOSPC, as a real write would) and made real in a subprocess with RLIMIT_FSIZE
(the kernel answers EFBIG).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXTS, cli_args

from saeatlas import fileio
from saeatlas.cli import main
from saeatlas.errors import SaeAtlasError
from saeatlas.fileio import write_bytes_atomic
from saeatlas.sae.synthetic import planted_features

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
}
NO_SPACE = re.compile(
    r"saeatlas: error: no space left on (\S+) writing (.+): it needs about ([\d.]+) MB more "
    r"\(free [\d.]+ [MG]B\); free space and rerun \(the work done so far resumes\)"
)


def _fill_disk_after(monkeypatch, budget: int) -> None:
    """Every file the atomic writers commit takes from `budget` bytes; the one that does not fit fails with
    ENOSPC (a real disk fails in the write, which the writers handle the same way)."""
    commit, used = fileio._commit, [0]

    def commit_or_fail(tmp: Path, path: Path) -> None:
        used[0] += tmp.stat().st_size
        if used[0] > budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        commit(tmp, path)

    monkeypatch.setattr(fileio, "_commit", commit_or_fail)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeatlas: error:"), err
    return err[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------- the atomic writers
def test_a_failed_atomic_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_bytes_atomic(path, b"old")
    _fill_disk_after(monkeypatch, 10)
    with pytest.raises(OSError) as err:
        write_bytes_atomic(path, b"x" * 100)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------- extract
def _extract_args(model: Path, corpus: Path, out: Path) -> list[str]:
    hooks = "resid_post.0,resid_post.1,resid_post.3"
    return cli_args(
        "extract",
        model=model,
        hooks=hooks,
        corpus=corpus,
        split="all",
        tokens=100000,
        context=64,
        shard_windows=4,
        dtype="float32",
        out=out,
    )


def test_full_disk_during_extract_is_one_line_and_the_rerun_matches(tiny_gemma, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(TEXTS[i % 5 :] + TEXTS[: i % 5])}) + "\n" for i in range(40))
    )
    reference, out = tmp_path / "reference", tmp_path / "store"
    assert main(_extract_args(tiny_gemma, corpus, reference)) == 0
    capsys.readouterr()
    with monkeypatch.context() as m:
        _fill_disk_after(m, _size(reference) // 3)
        assert main(_extract_args(tiny_gemma, corpus, out)) == 2
    line = _one_error_line(capsys)
    match = NO_SPACE.fullmatch(line)
    assert match and match[2] == f"store '{out}'", line
    # The estimate: the tokens left (at the rate of tokens per character seen so far) times what each takes.
    needed, left = float(match[3]) * 1e6, _size(reference) - _size(out)
    assert 0.5 * left < needed < 2 * left, (needed, left)
    assert _temporary_files(tmp_path) == []
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and partial["shards"]
    assert main(_extract_args(tiny_gemma, corpus, out)) == 0  # space freed: it resumes
    assert _tree(out) == _tree(reference)


# ---------------------------------------------------------------- train
def _train_args(x: Path, out: Path) -> list[str]:
    return cli_args(
        "train",
        activations=x,
        arch="topk",
        k=4,
        width=1024,
        steps=60,
        batch_size=256,
        seed=5,
        checkpoint_every=20,
        out=out,
    )


@pytest.fixture
def activations(tmp_path) -> Path:
    x, _ = planted_features(4096, n_features=256, d=64, active=4, seed=2)
    np.save(tmp_path / "x.npy", x.numpy())
    return tmp_path / "x.npy"


CHECKPOINT_BYTES = 3 * 4 * (2 * 64 * 1024 + 2 * 1024 + 64)
"""About the size of one checkpoint of `_train_args`' SAE (parameters and Adam's two moments, float32)."""


def test_full_disk_during_train_is_one_line_and_the_rerun_matches(activations, tmp_path, capsys, monkeypatch):
    reference, out = tmp_path / "reference", tmp_path / "sae"
    assert main(_train_args(activations, reference)) == 0
    capsys.readouterr()
    with monkeypatch.context() as m:
        _fill_disk_after(m, int(1.5 * CHECKPOINT_BYTES))  # the first checkpoint fits, the second does not
        assert main(_train_args(activations, out)) == 2
    line = _one_error_line(capsys)
    match = NO_SPACE.fullmatch(line)
    assert match and match[2] == f"SAE '{out}'", line
    assert 0.9 * CHECKPOINT_BYTES < float(match[3]) * 1e6 < 1.1 * CHECKPOINT_BYTES  # room for one more checkpoint
    assert _temporary_files(tmp_path) == []  # no .checkpoint.pt.tmp-* left
    assert not out.exists() and sorted(p.name for p in (tmp_path / "sae.partial").iterdir()) == [
        "checkpoint.pt",
        "settings.json",
    ]
    assert main(_train_args(activations, out)) == 0
    assert _tree(out) == _tree(reference) and not (tmp_path / "sae.partial").exists()


def test_full_disk_writing_the_sae_removes_its_temporary_folder(activations, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sae"
    args = [a if a != "20" else "0" for a in _train_args(activations, out)]  # no checkpoints: only the SAE
    with monkeypatch.context() as m:
        _fill_disk_after(m, 1000)  # settings.json fits, the SAE's cfg.json does not
        assert main(args) == 2
    line = _one_error_line(capsys)
    assert NO_SPACE.fullmatch(line)
    assert _temporary_files(tmp_path) == [] and not out.exists()
    assert main(args) == 0 and (out / "sae_weights.safetensors").is_file()


class _Usage:
    """What shutil.disk_usage says of a nearly full disk."""

    total, used, free = 10**9, 10**9 - 1000, 1000


def test_train_refuses_to_start_where_its_checkpoints_cannot_fit(activations, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sae"
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: _Usage())
    assert main(_train_args(activations, out)) == 2
    line = _one_error_line(capsys)
    assert re.fullmatch(
        rf"saeatlas: error: not enough space on \S+ for SAE '{re.escape(str(out))}': it needs about ([\d.]+) MB "
        r"\(free 0.001 MB\); free space or choose another --out",
        line,
    ), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# ---------------------------------------------------------------- a real limit: the kernel says EFBIG
def _limit_file_size(n_bytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))


@pytest.mark.slow
def test_file_size_limit_in_a_real_process_is_one_line_and_the_rerun_matches(activations, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "sae"
    cli = [sys.executable, "-m", "saeatlas.cli"]
    subprocess.run([*cli, *_train_args(activations, reference)], check=True, env=ENV)
    limited = subprocess.run(
        [*cli, *_train_args(activations, out)],
        check=False,
        env=ENV,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(CHECKPOINT_BYTES // 2),  # the first checkpoint is too large
    )
    assert limited.returncode == 2, limited.stderr
    assert limited.stderr.strip() == (
        f"saeatlas: error: a file of SAE '{out}' would pass the file size limit (`ulimit -f`): "
        "raise the limit and rerun (the work done so far resumes)"
    )
    assert _temporary_files(tmp_path) == [] and not out.exists()
    subprocess.run([*cli, *_train_args(activations, out)], check=True, env=ENV)
    assert _tree(out) == _tree(reference)


def test_an_estimate_that_fails_still_gives_the_line(tmp_path):
    def broken() -> int:
        raise KeyError("shards")

    needs = r"^no space left on \S+ writing study 'x': it needs more \(free"
    with pytest.raises(SaeAtlasError, match=needs), fileio.space_for(tmp_path, "study 'x'", broken):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.slow
def test_file_size_limit_during_a_real_extract_is_one_line_and_the_rerun_matches(tiny_gemma, tmp_path):
    """numpy's own `tofile` reports a short write without an errno; the store's writer must still see EFBIG."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(TEXTS[i % 5 :] + TEXTS[: i % 5])}) + "\n" for i in range(8)))
    reference, out = tmp_path / "reference", tmp_path / "store"
    assert main(_extract_args(tiny_gemma, corpus, reference)) == 0
    shard = reference / "resid_post.0" / "shard-00000.npy"
    cli = [sys.executable, "-m", "saeatlas.cli"]
    limited = subprocess.run(
        [*cli, *_extract_args(tiny_gemma, corpus, out)],
        check=False,
        env=ENV,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(shard.stat().st_size // 2),
    )
    assert limited.returncode == 2, limited.stderr
    assert limited.stderr.strip() == (
        f"saeatlas: error: a file of store '{out}' would pass the file size limit (`ulimit -f`): "
        "raise the limit and rerun (the work done so far resumes)"
    )
    assert _temporary_files(tmp_path) == []
    assert main(_extract_args(tiny_gemma, corpus, out)) == 0
    assert _tree(out) == _tree(reference)
