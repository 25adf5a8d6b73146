"""One writer per product: an advisory lock on a store, an SAE folder, a results folder or a study.

A writer holds `flock` on `<folder>.lock`, a small file beside the folder that names the holder (pid, host,
start time).  A second writer stops at once with one line naming that pid; readers take no lock.  The kernel
drops a flock when its process ends however it ends (exit, crash, kill -9), so a lock is never stale: a lock
file left by a killed writer is taken over by the next one.  The holder deletes the file when it is done.

Taking a lock the process already holds is a no-op (the study holds its folder while its stages take theirs).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import SaeAtlasError

try:
    import fcntl
except ImportError:  # not POSIX: no locks
    fcntl = None

SUFFIX = ".lock"
"""A product folder's lock file is the folder's name with this suffix, beside it."""

_held: dict[Path, int] = {}
"""Lock files this process holds -> their descriptors."""


def lock_file(folder: str | Path) -> Path:
    """The lock file of the product at `folder`: `<folder>.lock`, beside it."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(folder.name + SUFFIX) if folder.name else folder / SUFFIX


def is_lock_file(path: str | Path) -> bool:
    """Whether `path` is a product's lock file (not a product)."""
    return Path(path).name.endswith(SUFFIX)


@contextmanager
def writing(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the write lock of the product at `folder` (`what` it is, e.g. "store") for the block.

    SaeAtlasError at once, naming the holder's pid, if another process holds it."""
    path = lock_file(folder)
    if fcntl is None or path in _held:
        yield
        return
    fd = _acquire(path, Path(folder), what)
    _held[path] = fd
    try:
        yield
    finally:
        del _held[path]
        try:
            path.unlink(missing_ok=True)  # before unlocking: a writer that opened this file retries (see _acquire)
        finally:
            os.close(fd)


def _acquire(path: Path, folder: Path, what: str) -> int:
    """Open and lock `path` (created if missing); write the holder's facts into it; its descriptor."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SaeAtlasError(f"'{path.parent}' is a file, not a folder: choose another output folder") from None
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SaeAtlasError(_busy_message(folder, what, holder)) from None
        try:
            mine = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            mine = False
        if mine:  # else the holder released and deleted the file between our open and our lock: lock the new one
            break
        os.close(fd)
    facts = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "what": what}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(facts).encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only its holder goes unnamed
        pass
    return fd


def _open(path: Path) -> int:
    from .fileio import NO_SPACE, no_space_message

    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise SaeAtlasError(no_space_message(exc.errno, path.parent, f"the lock file {path}", None)) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR):
            raise SaeAtlasError(
                f"cannot create the lock file {path} ({exc.strerror}): write to a folder you can write to"
            ) from None
        raise


def _holder(fd: int) -> dict:
    """The facts the holder wrote into the lock file ({} if it has not written them yet)."""
    for _ in range(50):  # the holder writes them right after locking; give it a moment
        try:
            facts = json.loads(os.pread(fd, 4096, 0) or b"null")
        except (OSError, ValueError):
            facts = None
        if isinstance(facts, dict):
            return facts
        time.sleep(0.01)
    return {}


def _busy_message(folder: Path, what: str, holder: dict) -> str:
    if "pid" not in holder:
        return f"{what} '{folder}' is being written by another saeatlas process; wait for it to finish or stop it"
    started = time.localtime(holder.get("started", 0))
    fmt = "%H:%M" if started[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M"
    host = holder.get("host")
    on = f" on {host}" if host and host != socket.gethostname() else ""
    return (
        f"{what} '{folder}' is being written by saeatlas pid {holder['pid']}{on} since "
        f"{time.strftime(fmt, started)}; wait for it to finish or stop it"
    )


@contextmanager
def writing_once(folder: str | Path, what: str) -> Iterator[None]:
    """`writing` for one job of any number of torchrun ranks: rank 0 holds the lock for them all (so they do
    not refuse each other), and every rank stops with its one line when another job holds it."""
    from . import distributed

    with ExitStack() as held:
        distributed.on_main(lambda: held.enter_context(writing(folder, what)))
        yield
