"""Atomic writes and hashing: a file is either complete under its name or absent; a full disk is one line.

A write that fails (a full disk, an interrupt) removes its temporary file.  `space_for` turns a full disk
(ENOSPC, EDQUOT, EFBIG) met while writing a product into a SaeAtlasError that says how much more space the
product needs; the products' writers resume, so freeing space and rerunning finishes the work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """Root of saeatlas' on-disk cache (`SAEATLAS_CACHE` or ~/.cache/saeatlas): converted models, compiled kernels."""
    return Path(os.environ.get("SAEATLAS_CACHE", Path.home() / ".cache" / "saeatlas")).expanduser()


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _commit(tmp: Path, path: Path) -> None:
    """fsync the temporary file, then rename it over the final name."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def removed_on_failure(tmp: Path) -> Iterator[None]:
    """Delete `tmp` (a temporary file or folder) if the block fails, then let the failure go on."""
    try:
        yield
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename."""
    tmp = _tmp_name(path)
    with removed_on_failure(tmp):
        tmp.write_bytes(data)
        _commit(tmp, path)


def json_bytes(obj: Any) -> bytes:
    """`obj` as indented JSON, keys sorted (same object, same bytes)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON (keys sorted: same object, same bytes)."""
    write_bytes_atomic(path, json_bytes(obj))


def write_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Save `array` as .npy atomically; returns the sha256 of the written file."""
    tmp = _tmp_name(path)
    with removed_on_failure(tmp):
        with open(tmp, "wb") as fh:
            np.save(_Writes(fh), array, allow_pickle=False)
        _commit(tmp, path)
    return sha256_file(path)


class _Writes:
    """A file seen only through its `write`: numpy then writes the array in chunks through Python's file object,
    whose errors carry their errno, instead of with `tofile`, whose short write on a full disk is an OSError
    without one ("12544 requested and 12256 written").  Same bytes."""

    def __init__(self, fh):
        self.write = fh.write


# ---------------------------------------------------------------- a full disk
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""The errnos of a write that found no room: the file system is full, the user's quota is, or a file would pass
the size limit (`ulimit -f`)."""


def megabytes(n_bytes: float) -> str:
    """'0.042 MB', '3.4 MB', '120 MB', '3.2 GB' (decimal units, as `df -H` shows them)."""
    if n_bytes >= 10e9:
        return f"{n_bytes / 1e9:.0f} GB"
    if n_bytes >= 1e9:
        return f"{n_bytes / 1e9:.1f} GB"
    if n_bytes >= 10e6:
        return f"{n_bytes / 1e6:.0f} MB"
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e6:.2g} MB"


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The mount point of the file system `path` (or its nearest existing ancestor) is on."""
    path = _existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes free for this user on the file system of `path` (or its nearest existing ancestor)."""
    return shutil.disk_usage(_existing(path)).free


def no_space_message(code: int, folder: Path, product: str, needed: int | None) -> str:
    """The one line for a write of `product` (e.g. "store 'runs/a'") at `folder` that failed with `code` (one of
    NO_SPACE); `needed`: about how many more bytes the product needs (None: unknown)."""
    where, free = mount_point(folder), free_bytes(folder)
    more = f"it needs about {megabytes(needed)} more" if needed is not None else "it needs more"
    resumes = "and rerun (the work done so far resumes)"
    if code == errno.EFBIG:
        return f"a file of {product} would pass the file size limit (`ulimit -f`): raise the limit {resumes}"
    if code == errno.EDQUOT:
        return f"disk quota exceeded on {where} writing {product}: {more}; free space or raise the quota {resumes}"
    return f"no space left on {where} writing {product}: {more} (free {megabytes(free)}); free space {resumes}"


@contextmanager
def space_for(folder: str | Path, product: str, needed: Callable[[], int | None] = lambda: None) -> Iterator[None]:
    """Turn a full disk met in the block (an OSError in NO_SPACE) into a one-line SaeAtlasError naming `product`
    (e.g. "store 'runs/a'") being written at `folder`, with `needed()`: about how many more bytes it needs
    (None: unknown).  The temporary file of the failed write is already gone (the atomic writers remove it)."""
    from .errors import SaeAtlasError

    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        try:
            more = needed()
        except (OSError, ValueError, KeyError):  # an estimate that fails must not hide the full disk
            more = None
        raise SaeAtlasError(no_space_message(exc.errno, Path(folder), product, more)) from None


def check_space(folder: str | Path, product: str, needed: int, fix: str) -> None:
    """Refuse to start a product that needs `needed` more bytes where fewer are free: SaeAtlasError, ending
    with `fix` (e.g. "free space or choose another --out")."""
    from .errors import SaeAtlasError

    free = free_bytes(Path(folder))
    if needed > free:
        raise SaeAtlasError(
            f"not enough space on {mount_point(Path(folder))} for {product}: it needs about {megabytes(needed)} "
            f"(free {megabytes(free)}); {fix}"
        )


def jsonable(x: Any) -> Any:
    """NaN/inf -> None and numpy scalars/arrays -> Python, so the JSON written is strict."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    return x


def read_json(path: Path, missing: str, fix: str, error: type[Exception] | None = None) -> Any:
    """The JSON document in `path`.  A missing file raises `error` (default SaeAtlasError) with `missing`; an
    unreadable one (not UTF-8, not JSON) says so, naming the file, followed by `fix`."""
    from .errors import SaeAtlasError

    error = error or SaeAtlasError
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{path} is not valid JSON ({str(exc).splitlines()[0]}): {fix}") from None


def check_writable(path: str | Path, what: str, kind: str = "folder") -> None:
    """SaeAtlasError (one line) unless saeatlas can create or write the `kind` ("folder" or "file") `path`,
    checked before any work: not a file where a folder goes (or the reverse), no file among its parents, and a
    probe file can be created in its nearest existing folder (read-only or full file systems, permissions)."""
    import tempfile

    from .errors import SaeAtlasError

    path = Path(path).expanduser()
    if path.exists() and (path.is_dir() != (kind == "folder")):
        raise SaeAtlasError(f"{what} '{path}' is {'a file' if kind == 'folder' else 'a folder'}: give a {kind} path")
    parent = _existing(path if path.is_dir() else path.parent)
    if not parent.is_dir():
        raise SaeAtlasError(f"{what} '{path}' is inside '{parent}', which is a file: give a path in a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".saeatlas-probe-"):
            pass
    except OSError as exc:
        raise SaeAtlasError(
            f"cannot write {what} '{path}': {exc.strerror or exc} in '{parent}'; choose a folder you can write to"
        ) from None


def read_json_or_none(path: Path) -> Any | None:
    """The JSON document in `path`, or None if there is none or it is damaged (for records a rerun rewrites:
    stage markers, caches)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
