"""Native kernels: the ctypes wrappers refuse arguments that would make C read the wrong memory, and the
compiled library is cached under a key that includes the CPU's instruction set."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from saeatlas import native
from saeatlas.native import loader, wrappers


def _codes(m=12, n=4, n_latents=5, d=3):
    """Valid arguments of the sparse kernels: latents [m], rows [m], coeff [m], x [n, d], b [n_latents, d]."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randint(0, n_latents, (m,), generator=g)
    rows = torch.randint(0, n, (m,), generator=g)
    starts = torch.zeros(n_latents + 1, dtype=torch.int64)
    order = torch.arange(m)
    return latents, (starts, order), rows, torch.rand(m, generator=g), torch.rand(n, d), torch.rand(n_latents, d)


def _gram(n=6, m=3):
    A = np.eye(n, dtype=np.float32)
    P = np.stack([np.random.default_rng(i).permutation(n) for i in range(m)]).astype(np.int32)
    return A, A.copy(), P


_, GROUPING, ROWS, COEFF, X, B = _codes()
A, BB, P = _gram()
META = torch.empty(12, dtype=torch.int64, device="meta")


BAD_CALLS = {
    # topk_rows
    "topk x dtype": (lambda: native.topk_rows(torch.zeros(2, 8, dtype=torch.float64), 2), TypeError, "x must be"),
    "topk x int": (lambda: native.topk_rows(torch.zeros(2, 8, dtype=torch.int64), 2), TypeError, "float32 or bfloat16"),
    "topk x array": (lambda: native.topk_rows(np.zeros((2, 8), np.float32), 2), TypeError, "x must be a torch.Tensor"),
    "topk x view": (lambda: native.topk_rows(torch.zeros(8, 8).t(), 2), ValueError, "x must be contiguous"),
    "topk x strided": (lambda: native.topk_rows(torch.zeros(2, 16)[:, ::2], 2), ValueError, "x must be contiguous"),
    "topk x 1-D": (lambda: native.topk_rows(torch.zeros(8), 2), ValueError, r"x must have shape \[\*, \*\]"),
    "topk x 3-D": (lambda: native.topk_rows(torch.zeros(2, 2, 8), 2), ValueError, r"x must have shape"),
    "topk x meta": (lambda: native.topk_rows(torch.zeros(2, 8, device="meta"), 2), ValueError, "dense CPU tensor"),
    "topk x sparse": (lambda: native.topk_rows(torch.zeros(2, 8).to_sparse(), 2), ValueError, "dense CPU tensor"),
    "topk k 0": (lambda: native.topk_rows(torch.zeros(2, 8), 0), ValueError, r"k = 0 must lie in \[1, 8\]"),
    "topk k > width": (lambda: native.topk_rows(torch.zeros(2, 8), 9), ValueError, r"k = 9 must lie in \[1, 8\]"),
    "topk k float": (lambda: native.topk_rows(torch.zeros(2, 8), 2.0), TypeError, "k must be an integer"),
    "topk bias shape": (lambda: native.topk_rows(torch.zeros(2, 8), 2, torch.zeros(7)), ValueError, r"bias .*\[8\]"),
    "topk bias 2-D": (lambda: native.topk_rows(torch.zeros(2, 8), 2, torch.zeros(1, 8)), ValueError, "bias must have"),
    "topk bias meta": (
        lambda: native.topk_rows(torch.zeros(2, 8), 2, torch.zeros(8, device="meta")),
        ValueError,
        "bias must be a dense CPU tensor",
    ),
    # latent_order
    "order dtype": (
        lambda: native.latent_order(torch.zeros(5, dtype=torch.int32), 3),
        TypeError,
        "latents must be int64",
    ),
    "order view": (
        lambda: native.latent_order(torch.zeros(10, dtype=torch.int64)[::2], 3),
        ValueError,
        "latents must be contiguous",
    ),
    "order 2-D": (
        lambda: native.latent_order(torch.zeros(2, 5, dtype=torch.int64), 3),
        ValueError,
        r"latents must have shape \[\*\]",
    ),
    "order meta": (lambda: native.latent_order(META, 3), ValueError, "dense CPU tensor"),
    "order n_latents": (
        lambda: native.latent_order(torch.zeros(5, dtype=torch.int64), -1),
        ValueError,
        "n_latents = -1",
    ),
    # scatter_by_latent
    "scatter starts shape": (
        lambda: native.scatter_by_latent(GROUPING, ROWS, COEFF, X, 4),
        ValueError,
        r"starts must have shape \[5\], not \[6\]",
    ),
    "scatter order dtype": (
        lambda: native.scatter_by_latent((GROUPING[0], GROUPING[1].int()), ROWS, COEFF, X, 5),
        TypeError,
        "order must be int64",
    ),
    "scatter rows shape": (
        lambda: native.scatter_by_latent(GROUPING, ROWS[:-1], COEFF, X, 5),
        ValueError,
        r"rows must have shape \[12\], not \[11\]",
    ),
    "scatter rows view": (
        lambda: native.scatter_by_latent(GROUPING, torch.zeros(24, dtype=torch.int64)[::2], COEFF, X, 5),
        ValueError,
        "rows must be contiguous",
    ),
    "scatter coeff dtype": (
        lambda: native.scatter_by_latent(GROUPING, ROWS, COEFF.bfloat16(), X, 5),
        TypeError,
        "coeff must be float32, not bfloat16",
    ),
    "scatter coeff shape": (
        lambda: native.scatter_by_latent(GROUPING, ROWS, COEFF[:5], X, 5),
        ValueError,
        r"coeff must have shape \[12\]",
    ),
    "scatter x dtype": (
        lambda: native.scatter_by_latent(GROUPING, ROWS, COEFF, X.double(), 5),
        TypeError,
        "x must be float32",
    ),
    "scatter x view": (
        lambda: native.scatter_by_latent(GROUPING, ROWS, COEFF, torch.zeros(3, 4).t(), 5),
        ValueError,
        "x must be contiguous",
    ),
    "scatter x 1-D": (
        lambda: native.scatter_by_latent(GROUPING, ROWS, COEFF, X.reshape(-1), 5),
        ValueError,
        r"x must have shape \[\*, \*\]",
    ),
    # decode_backward
    "decode grad dtype": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF, X.bfloat16(), B),
        TypeError,
        "grad must be float32",
    ),
    "decode grad view": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF, torch.zeros(3, 4).t(), B),
        ValueError,
        "grad must be contig",
    ),
    "decode w width": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF, X, B[:, :2]),
        ValueError,
        r"w must have shape \[\*, 3\]",
    ),
    "decode w view": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF, X, torch.zeros(3, 5).t()),
        ValueError,
        "w must be contiguous",
    ),
    "decode w rows": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF, X, B[:4]),
        ValueError,
        r"starts must have shape \[5\]",
    ),
    "decode rows dtype": (
        lambda: native.decode_backward(GROUPING, ROWS.int(), COEFF, X, B),
        TypeError,
        "rows must be int64",
    ),
    "decode rows shape": (
        lambda: native.decode_backward(GROUPING, ROWS[:3], COEFF, X, B),
        ValueError,
        r"rows must have shape \[12\]",
    ),
    "decode values dtype": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF.double(), X, B),
        TypeError,
        "values must be float32",
    ),
    "decode values shape": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF[:5], X, B),
        ValueError,
        r"values must have shape \[12\]",
    ),
    "decode meta": (
        lambda: native.decode_backward(GROUPING, ROWS, COEFF, X, torch.zeros(5, 3, device="meta")),
        ValueError,
        "w must be a dense CPU tensor",
    ),
    # permuted_gram_dots
    "gram A dtype": (lambda: native.permuted_gram_dots(A.astype(np.float64), BB, P), TypeError, "A must be float32"),
    "gram A tensor": (lambda: native.permuted_gram_dots(torch.zeros(6, 6), BB, P), TypeError, "A must be a numpy"),
    "gram A square": (lambda: native.permuted_gram_dots(A[:, :5].copy(), BB, P), ValueError, "A must be square"),
    "gram A 1-D": (lambda: native.permuted_gram_dots(A.ravel(), BB, P), ValueError, r"A must have shape \[\*, \*\]"),
    "gram A fortran": (lambda: native.permuted_gram_dots(np.asfortranarray(A), BB, P), ValueError, "C-contiguous"),
    "gram B shape": (
        lambda: native.permuted_gram_dots(A, BB[:5, :5].copy(), P),
        ValueError,
        r"B must have shape \[6, 6\]",
    ),
    "gram B view": (
        lambda: native.permuted_gram_dots(A, np.eye(12, dtype=np.float32)[::2, ::2], P),
        ValueError,
        "B must",
    ),
    "gram B byte order": (lambda: native.permuted_gram_dots(A, BB.astype(">f4"), P), TypeError, "B must be float32"),
    "gram P dtype": (lambda: native.permuted_gram_dots(A, BB, P.astype(np.int64)), TypeError, "P must be int32"),
    "gram P width": (
        lambda: native.permuted_gram_dots(A, BB, P[:, :5].copy()),
        ValueError,
        r"P must have shape \[\*, 6\]",
    ),
    "gram P view": (
        lambda: native.permuted_gram_dots(A, BB, np.repeat(P, 2, axis=0)[::2]),
        ValueError,
        "P must be C-con",
    ),
    "gram P range": (lambda: native.permuted_gram_dots(A, BB, P + 1), ValueError, r"entries must lie in \[0, 6\)"),
    "gram P negative": (lambda: native.permuted_gram_dots(A, BB, P - 1), ValueError, r"found \[-1, 4\]"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_wrappers_refuse_what_c_would_misread(case, monkeypatch):
    """Every check fires before the library is touched (so it runs without a compiler too)."""
    monkeypatch.setattr(wrappers, "library", lambda: pytest.fail("the kernel was reached"))
    call, error, match = BAD_CALLS[case]
    with pytest.raises(error, match=match):
        call()


def test_valid_calls_reach_the_kernel_and_a_missing_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(wrappers, "library", lambda: None)
    latents, grouping, rows, coeff, x, b = _codes()
    calls = [
        lambda: native.topk_rows(torch.zeros(2, 8, dtype=torch.bfloat16), 8, torch.zeros(8, dtype=torch.float64)),
        lambda: native.topk_rows(torch.zeros(2, 8), np.int64(1)),
        lambda: native.latent_order(latents, 5),
        lambda: native.scatter_by_latent(grouping, rows, coeff, x, 5),
        lambda: native.decode_backward(grouping, rows, coeff, x, b),
        lambda: native.permuted_gram_dots(*_gram()),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="native kernels are not loaded"):
            call()


def test_wrappers_agree_with_torch_and_numpy():
    """The checked wrappers still compute what they did (against plain torch / NumPy)."""
    if native.library() is None:
        pytest.skip("no working C compiler: the native kernels are not built")
    g = torch.Generator().manual_seed(1)
    m, n, n_latents, d = 40, 9, 7, 5
    latents = torch.randint(0, n_latents, (m,), generator=g)
    rows = torch.randint(0, n, (m,), generator=g)
    coeff, x, b = torch.rand(m, generator=g), torch.rand(n, d, generator=g), torch.rand(n_latents, d, generator=g)
    grouping = native.latent_order(latents, n_latents)
    S = torch.zeros(n, n_latents).index_put_((rows, latents), coeff, accumulate=True)
    out, colsum = native.scatter_by_latent(grouping, rows, coeff, x, n_latents)
    torch.testing.assert_close(out, S.t() @ x)
    torch.testing.assert_close(colsum, S.sum(0))
    grad_values, grad_b = native.decode_backward(grouping, rows, coeff, x, b)
    torch.testing.assert_close(grad_values, (x[rows] * b[latents]).sum(1))
    torch.testing.assert_close(grad_b, S.t() @ x)
    # One pass computes what the two products compute apart, to the bit: the same sums in the same order.
    assert torch.equal(grad_b, out)
    values, columns = native.topk_rows(x, 2, b[0])
    torch.testing.assert_close(values.sort(1).values, (x + b[0]).topk(2).values.sort(1).values)
    torch.testing.assert_close(values, (x + b[0]).gather(1, columns))
    A = np.random.default_rng(0).random((6, 6), dtype=np.float32)
    A, Bm = (A + A.T).astype(np.float32), np.eye(6, dtype=np.float32) + 1
    Pm = np.stack([np.random.default_rng(i).permutation(6) for i in range(3)]).astype(np.int32)
    expected = [float((A.astype(np.float64) * Bm[np.ix_(p, p)]).sum()) for p in Pm]
    np.testing.assert_allclose(native.permuted_gram_dots(A, Bm, Pm), expected, rtol=1e-6)


# ---------------------------------------------------------------- the library's cache key
def _fake_compiler(monkeypatch, isa: str, version: str = "cc (test) 12.2.0") -> None:
    monkeypatch.setattr(loader, "_compiler_identity", lambda cc: version)
    monkeypatch.setattr(loader, "isa_description", lambda cc: isa)


def test_library_key_changes_with_the_instruction_set(monkeypatch):
    _fake_compiler(monkeypatch, "macros: __AVX2__ __FMA__ __znver3__")
    avx2 = loader.library_key("cc")
    assert loader.library_key("cc") == avx2 and len(avx2) == 16
    _fake_compiler(monkeypatch, "macros: __AVX2__ __AVX512F__ __FMA__ __znver4__")
    assert loader.library_key("cc") != avx2
    _fake_compiler(monkeypatch, "macros: __AVX2__ __FMA__ __znver3__", version="cc (test) 13.1.0")
    assert loader.library_key("cc") != avx2
    _fake_compiler(monkeypatch, "macros: __AVX2__ __FMA__ __znver3__")
    assert loader.library_key("cc") == avx2


def test_isa_description_is_what_march_native_adds(monkeypatch):
    """The macros -march=native adds or changes, sorted; those it removes or leaves alone are not listed."""
    default = ["#define __SSE2__ 1", "#define __k8 1", "#define __BIGGEST_ALIGNMENT__ 16", "#define __STDC__ 1"]
    native_ = ["#define __SSE2__ 1", "#define __BIGGEST_ALIGNMENT__ 64", "#define __STDC__ 1"]
    native_ += ["#define __AVX2__ 1", "#define __AMX_BF16__ 1", "#define __znver4__ 1"]
    outputs = {False: "\n".join(default), True: "\n".join(native_)}
    monkeypatch.setattr(loader, "_run", lambda args: outputs["-march=native" in args])
    loader.isa_description.cache_clear()
    try:
        assert loader.isa_description("cc") == "macros: __AMX_BF16__ __AVX2__ __BIGGEST_ALIGNMENT__=64 __znver4__"
        monkeypatch.setattr(loader, "_run", lambda args: None)  # a compiler that cannot list its macros
        assert loader.isa_description("cc") == "macros: __AMX_BF16__ __AVX2__ __BIGGEST_ALIGNMENT__=64 __znver4__"
        loader.isa_description.cache_clear()
        assert loader.isa_description("cc").startswith(("cpuinfo: ", "processor: "))
    finally:
        loader.isa_description.cache_clear()


def test_the_same_machine_gets_the_same_key():
    cc = shutil.which("cc")
    if cc is None or not loader._compiler_identity(cc):
        pytest.skip("no C compiler")
    loader.isa_description.cache_clear()
    try:
        first, key = loader.isa_description(cc), loader.library_key(cc)
        loader.isa_description.cache_clear()  # asked again, not just cached
        assert loader.isa_description(cc) == first and loader.library_key(cc) == key
    finally:
        loader.isa_description.cache_clear()
    assert first.startswith("macros: ")
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() == "x86_64" and cpuinfo.is_file() and " avx2 " in cpuinfo.read_text():
        assert "__AVX2__" in first.split()


def test_each_instruction_set_gets_its_own_library(tmp_path, monkeypatch):
    cc = shutil.which("cc")
    if cc is None or not loader._compiler_identity(cc):
        pytest.skip("no C compiler")
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path))
    monkeypatch.setattr(loader, "isa_description", lambda cc: "macros: __AVX2__")
    avx2 = loader._build(cc)
    assert avx2 == tmp_path / "native" / f"saeatlas-kernels-{loader.library_key(cc)}.so" and avx2.is_file()
    monkeypatch.setattr(loader, "isa_description", lambda cc: "macros: __AVX2__ __AVX512F__")
    avx512 = loader._build(cc)
    assert avx512 != avx2 and avx512.is_file()
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == sorted([avx2.name, avx512.name])
