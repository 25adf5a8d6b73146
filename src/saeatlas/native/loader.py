"""Build and load `kernels.c`: compiled once per machine with the system C compiler, loaded with ctypes.

On first use `kernels.c` is compiled with `$CC` (default `cc`, `-O3
-march=native -fopenmp`) into `<cache>/native/`, keyed by a hash of the
source, the flags and the compiler; later processes load the library.

Where no compiler works, or with `SAEATLAS_NATIVE=0`, `library()` is None and
every caller uses its torch implementation; the tests check both agree.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..fileio import cache_dir

log = logging.getLogger("saeatlas")

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c11", "-shared", "-fPIC"]

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "topk_rows_f32": [_ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _int],
    "topk_rows_bf16": [_ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr, _int],
    "latent_order": [_ptr, _i64, _i64, _ptr, _ptr],
    "scatter_by_latent": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _int],
    "code_dots": [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _int],
    "permuted_gram_dots": [_ptr, _ptr, _i64, _ptr, _i64, _ptr, _int],
}


def _compiler_identity(cc: str) -> str:
    done = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else ""


def _build(cc: str) -> Path | None:
    """Compile kernels.c into the cache (atomically); the library's path, or None if compiling fails."""
    source = SOURCE.read_bytes()
    identity = _compiler_identity(cc)
    if not identity:
        return None
    key = hashlib.sha256(
        b"\0".join([source, " ".join(FLAGS).encode(), identity.encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    target = cache_dir() / "native" / f"saeatlas-kernels-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    done = subprocess.run(
        [cc, *FLAGS, str(SOURCE), "-o", str(tmp), "-lm"], check=False, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        log.warning("saeatlas: compiling %s failed, using torch kernels instead:\n%s", SOURCE.name, done.stderr[-2000:])
        return None
    os.replace(tmp, target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, build failure, or SAEATLAS_NATIVE=0)."""
    if os.environ.get("SAEATLAS_NATIVE", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    try:
        path = _build(cc)
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("saeatlas: native kernels unavailable (%s), using torch kernels instead", exc)
        return None
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib
