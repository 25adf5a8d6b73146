"""Run the `saeatlas` command line in this process and stop it (SIGSTOP) right after a known unit of work.

    python tests/stop_after.py shards N -- extract ...          stop once the manifest lists N finished shards
    python tests/stop_after.py checkpoints N -- train ...       stop right after the N-th training checkpoint

The kill -9 tests run their child through this script, wait until the child is stopped
(`helpers.kill_when_stopped`: os.waitpid with WUNTRACED), then SIGKILL it: the child dies at a known step
instead of wherever a polling parent happened to notice progress.  The wrapping happens only in this
process; nothing in src/ knows about it.  Not a test module.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def _stop() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)  # the parent sends SIGKILL while we sit here


def stop_after_shards(n: int) -> None:
    """Wrap the manifest write of `saeatlas.data.extract` (it appends each finished shard to the manifest)."""
    extract = importlib.import_module("saeatlas.data.extract")  # the module, even if a package re-exports a name

    write = extract.write_json_atomic

    @functools.wraps(write)
    def write_then_maybe_stop(path, obj, *args, **kwargs):
        write(path, obj, *args, **kwargs)
        if path.name == extract.MANIFEST and not obj.get("complete") and len(obj.get("shards", ())) == n:
            _stop()

    extract.write_json_atomic = write_then_maybe_stop


def stop_after_checkpoints(n: int) -> None:
    """Wrap `saeatlas.sae.trainer.save_checkpoint`, which the training loop calls every --checkpoint-every steps."""
    trainer = importlib.import_module("saeatlas.sae.trainer")

    save = trainer.save_checkpoint
    calls = 0

    @functools.wraps(save)
    def save_then_maybe_stop(*args, **kwargs):
        nonlocal calls
        save(*args, **kwargs)
        calls += 1
        if calls == n:
            _stop()

    trainer.save_checkpoint = save_then_maybe_stop


UNITS = {"shards": stop_after_shards, "checkpoints": stop_after_checkpoints}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in UNITS or argv[2] != "--":
        raise SystemExit(f"usage: stop_after.py {{{','.join(UNITS)}}} N -- SAEATLAS_ARGS...; got {argv}")
    UNITS[argv[0]](int(argv[1]))
    from saeatlas.cli import main as saeatlas_main

    return saeatlas_main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
