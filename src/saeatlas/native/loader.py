"""Build and load `kernels.c`: compiled once per machine with the system C compiler, loaded with ctypes.

On first use `kernels.c` is compiled with `$CC` (default `cc`, `-O3
-march=native -fopenmp`) into `<cache>/native/`, keyed by a hash of the
source, the flags, the compiler and what `-march=native` means on this CPU
(`library_key`); later processes load the library.

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
    "decode_backward": [_ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _int],
    "permuted_gram_dots": [_ptr, _ptr, _i64, _ptr, _i64, _ptr, _int],
}


def _run(args: list[str]) -> str | None:
    """stdout of a short compiler query, or None if it fails."""
    try:
        done = subprocess.run(args, check=False, input="", capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _compiler_identity(cc: str) -> str:
    out = _run([cc, "--version"])
    return out.splitlines()[0] if out else ""


def _macros(cc: str, *flags: str) -> set[str] | None:
    """The `#define` lines the preprocessor of `cc` starts with under `flags`, or None."""
    out = _run([cc, *flags, "-E", "-dM", "-x", "c", "-"])
    return None if out is None else {line for line in out.splitlines() if line.startswith("#define ")}


@functools.cache
def isa_description(cc: str) -> str:
    """What `-march=native` resolves to for `cc` on this CPU, computed once per process.

    For gcc and clang: the predefined macros that `-march=native` adds or
    changes against the compiler's default target, sorted, e.g. `__AVX2__
    __AVX512F__ __AMX_BF16__ ... __znver3__`: the instruction-set extensions
    the compiler may emit and the CPU it tunes for.  A library built for one
    CPU dies with SIGILL on another that lacks one of them, so a cache shared
    between machines must keep them apart.  Where the compiler cannot list its
    macros: the CPU flags of /proc/cpuinfo, else platform.processor().
    """
    default, native = _macros(cc), _macros(cc, "-march=native")
    if default is not None and native is not None:
        names = []
        for line in sorted(native - default):
            _, name, *value = line.split(None, 2)
            names.append(name if value in ([], ["1"]) else f"{name}={value[0]}")
        return "macros: " + " ".join(names)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return "cpuinfo: " + " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return "processor: " + platform.processor()


def library_key(cc: str) -> str | None:
    """16 hex digits naming the library `cc` builds here: a hash of kernels.c, FLAGS, the compiler's
    version line, the machine type and `isa_description(cc)`; None if `cc --version` fails."""
    identity = _compiler_identity(cc)
    if not identity:
        return None
    parts = [SOURCE.read_bytes(), " ".join(FLAGS), identity, platform.machine(), isa_description(cc)]
    return hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()[:16]


def _build(cc: str) -> Path | None:
    """Compile kernels.c into the cache (atomically); the library's path, or None if compiling fails."""
    key = library_key(cc)
    if key is None:
        return None
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
