"""Atomic writes and hashing: a file is either complete under its name or absent."""

from __future__ import annotations

import hashlib
import json
import math
import os
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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename."""
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
    _commit(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON (keys sorted: same object, same bytes)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Save `array` as .npy atomically; returns the sha256 of the written file."""
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    _commit(tmp, path)
    return sha256_file(path)


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
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
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
