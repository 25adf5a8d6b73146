"""`--device` on every verb and `device` in the study: a device that is here gives the same products as the
default; one that is not is one line and exit 2 before anything is written.  The accelerator path of the
correlation sums (compensated float32 where a device has no float64) runs here on the CPU against float64.
Tests marked `gpu` run the jobs on CUDA against the CPU (skipped without one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers import HOOK, TEXTS, cli_args, tiny_store

from saeatlas.absorption.config import AbsorptionConfig
from saeatlas.cli import main
from saeatlas.compare.config import CompareConfig, ConceptsConfig
from saeatlas.compare.correlate import (
    _csr_chunks,
    _device_cross_blocks,
    _sparse_cross_blocks,
    neumaier_add,
    pearson_dense,
    pearson_sparse,
)
from saeatlas.data.config import ExtractConfig
from saeatlas.devices import resolve_device
from saeatlas.errors import SaeAtlasError
from saeatlas.sae.config import EvalConfig, TrainConfig
from saeatlas.study.config import StudyError, parse_study

VERBS = ("extract", "train", "eval", "compare", "concepts", "absorption")
MISSING = ("cuda", "cuda:3", "mps", "gpu")
"""Devices this machine lacks (no GPU here) or that are no device name at all."""
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
TIMINGS = frozenset({"seconds", "seconds_when_made", "tokens_per_second", "started", "finished", "elapsed", "time"})


# ---------------------------------------------------------------- the setting
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_shows_device_with_auto_as_its_default(verb, capsys):
    assert main([verb, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--device" in text and "(default: auto)" in text.split("--device", 1)[1]


@pytest.mark.parametrize(
    "cfg",
    [
        lambda device: ExtractConfig(model="m", hooks=["resid_post.1"], device=device),
        lambda device: TrainConfig(device=device),
        lambda device: EvalConfig(device=device),
        lambda device: CompareConfig(
            store_a="a", store_b="b", saes_a="a/{hook}", saes_b="b/{hook}", hooks_a=[1], hooks_b=[1], device=device
        ),
        lambda device: ConceptsConfig(
            store_a="a", store_b="b", saes_a="a/{hook}", saes_b="b/{hook}", hooks_a=[1], hooks_b=[1], device=device
        ),
        lambda device: AbsorptionConfig(model="m", hook="resid_post.1", saes=["s"], device=device),
    ],
)
def test_the_device_changes_no_record(cfg):
    """Records, manifests and stage keys are built from to_dict(): the device is not in it."""
    assert cfg("auto").device == "auto" and cfg("cpu").to_dict() == cfg("auto").to_dict() == cfg("cuda:1").to_dict()
    assert "device" not in cfg("cpu").to_dict()


def test_auto_resolves_to_the_cpu_here():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_study_has_one_device_key_at_the_top(tiny_llama):
    text = _study_text(tiny_llama, tiny_llama, Path("c"), device="cpu")
    assert parse_study(text).device == "cpu"
    assert parse_study(text.replace('device = "cpu"\n', "")).device == "auto"
    with pytest.raises(StudyError, match=r"bad 'device' = 'gpu': use auto, cpu, cuda, cuda:N or mps"):
        parse_study(text.replace('device = "cpu"', 'device = "gpu"'))
    for table in ("sae", "compare", "absorption"):  # one device for every stage: no per-table key
        with pytest.raises(StudyError, match=rf"unknown key '{table}.device'"):
            parse_study(text.replace(f"[{table}]\n", f'[{table}]\ndevice = "cpu"\n'))


# ---------------------------------------------------------------- a device that is not here
def _missing_args(verb: str, root: Path, device: str) -> list[str]:
    """Arguments of `verb` whose inputs need not exist: the device is checked before any of them is read."""
    out = root / "out"
    if verb == "extract":
        return cli_args(verb, model=root / "no-model", hooks="resid_post.1", out=out, device=device)
    if verb == "train":
        return cli_args(verb, activations=root / "x.npy", out=out, device=device, steps=1)
    if verb == "eval":
        return cli_args(verb, root / "no-sae", activations=root / "x.npy", device=device)
    if verb in ("compare", "concepts"):
        sides = {"store_a": root / "a", "store_b": root / "b", "saes_a": root / "{hook}", "saes_b": root / "{hook}"}
        return cli_args(verb, **sides, hooks_a=1, hooks_b=1, out=out, device=device)
    return cli_args(verb, model=root / "no-model", hook="resid_post.1", sae=root / "no-sae", out=out, device=device)


def _verb_device_cases():
    for verb in VERBS:
        for device in MISSING:
            yield pytest.param(verb, device, id=f"{verb}-{device}")


@no_cuda
@pytest.mark.parametrize(("verb", "device"), list(_verb_device_cases()))
def test_a_device_that_is_not_here_is_one_line_and_exit_2_before_anything_is_written(verb, device, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((64, 8), np.float32))
    before = sorted(tmp_path.rglob("*"))
    assert main(_missing_args(verb, tmp_path, device)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("saeatlas: error: ")
    if device == "gpu":
        assert "bad --device = 'gpu': use auto, cpu, cuda, cuda:N or mps" in err
    else:
        assert f"device '{device}' is not available here" in err and "use --device cpu or auto" in err
    assert sorted(tmp_path.rglob("*")) == before


@no_cuda
def test_a_study_on_a_device_that_is_not_here_stops_before_anything_is_written(
    tiny_llama, many_documents, tmp_path, capsys
):
    study = tmp_path / "study.toml"
    study.write_text(_study_text(tiny_llama, tiny_llama, many_documents, device="cuda"))
    assert main(["run", str(study), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "saeatlas: error: device 'cuda' is not available here (no CUDA GPU): use --device cpu or auto\n"
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]
    # `status` runs nothing, so it needs no device: it answers on any machine
    assert main(["status", str(study), "--out", str(tmp_path / "out")]) == 0
    assert "missing" in capsys.readouterr().out


@no_cuda
def test_the_python_api_refuses_a_missing_device_too(tmp_path):
    from saeatlas.absorption import run_absorption
    from saeatlas.compare.grid import run_compare, run_concepts
    from saeatlas.sae.run import run_eval

    sides = {"store_a": "a", "store_b": "b", "saes_a": "{hook}", "saes_b": "{hook}", "hooks_a": [1], "hooks_b": [1]}
    sides["device"] = "cuda"
    jobs = [
        lambda: run_compare(CompareConfig(**sides)),
        lambda: run_concepts(ConceptsConfig(**sides)),
        lambda: run_absorption(AbsorptionConfig(model="m", hook="resid_post.1", saes=["s"], device="mps")),
        lambda: run_eval(EvalConfig(device="cuda:0"), tmp_path / "no-sae"),
    ]
    for job in jobs:
        with pytest.raises(SaeAtlasError, match=r"is not available here"):
            job()


# ---------------------------------------------------------------- the same products on cpu and auto
def _json_without(value, names: frozenset):
    if isinstance(value, dict):
        return {k: _json_without(v, names) for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [_json_without(v, names) for v in value]
    return value


def _products(folder: Path, ignore: frozenset = TIMINGS) -> dict[str, object]:
    """{relative path: bytes, or the parsed JSON without the keys `ignore` (timings)} of every file under `folder`,
    the folder's own path spelled OUT (products name the files they point at)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes().replace(str(folder).encode(), b"OUT")
        out[str(path.relative_to(folder))] = _json_without(json.loads(data), ignore) if path.suffix == ".json" else data
    return out


@pytest.fixture(scope="module")
def inputs(tiny_llama, tiny_other, long_corpus, tmp_path_factory):
    """Two small stores of models with different tokenizers and a TopK SAE on each."""
    root = tmp_path_factory.mktemp("devices")
    for name, model in (("a", tiny_llama), ("b", tiny_other)):
        tiny_store(model, long_corpus, root / name, tokens=6000, context=32, window_chars=60, batch_size=8)
        sae = root / f"sae-{name}-{HOOK}"
        assert (
            main(cli_args("train", store=root / name, hook=HOOK, k=4, d_sae=48, steps=30, batch_size=64, out=sae)) == 0
        )
    return root


@pytest.fixture(scope="module")
def many_documents(tmp_path_factory) -> Path:
    """40 short documents: enough for an eval split (held-out text) as well as a train split."""
    folder = tmp_path_factory.mktemp("many-documents")
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(2 + i % 5)))
    return folder


def _verb_args(verb: str, root: Path, out: Path, model: Path, corpus: Path) -> list[str]:
    """A small run of `verb` on the fixture's inputs writing to `out` (eval prints instead)."""
    if verb == "extract":
        return cli_args(verb, model=model, corpus=corpus, hooks=HOOK, tokens=2000, context=32, split="all", out=out)
    if verb == "train":
        return cli_args(verb, store=root / "a", hook=HOOK, k=4, d_sae=48, steps=20, batch_size=64, out=out)
    if verb == "eval":
        args = {"store": root / "a", "tokens": 2000, "model": model, "corpus": corpus, "ce_tokens": 256}
        return cli_args(verb, root / f"sae-a-{HOOK}", **args)
    if verb in ("compare", "concepts"):
        sides = {"store_a": root / "a", "store_b": root / "b"}
        sides |= {"saes_a": root / "sae-a-{hook}", "saes_b": root / "sae-b-{hook}", "hooks_a": 1, "hooks_b": 1}
        return cli_args(verb, **sides, out=out, n_permutations=20, n_bootstrap=2, threshold=0.0)
    return cli_args(
        verb, model=model, hook=HOOK, sae=root / f"sae-a-{HOOK}", words=150, min_letters=1, min_probe_f1=0.0, out=out
    )


@pytest.mark.slow
@pytest.mark.parametrize("verb", VERBS)
def test_device_cpu_and_auto_give_the_same_products_as_the_default(
    verb, inputs, tiny_llama, many_documents, tmp_path, monkeypatch, capsys
):
    """No flag (the default, auto), --device auto and --device cpu: the same files byte for byte (JSON without
    its timings); eval, which writes nothing, prints the same figures."""
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    seen = []
    for device in (None, "auto", "cpu"):
        out = tmp_path / f"out-{device}"
        args = _verb_args(verb, inputs, out, tiny_llama, many_documents)
        assert main(args if device is None else [*args, "--device", device]) == 0
        printed = capsys.readouterr().out
        seen.append(printed.replace(str(out), "OUT") if verb == "eval" else _products(out))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0]  # something was compared


def _study_text(model_a: Path, model_b: Path, corpus: Path, device: str | None = None) -> str:
    head = f'device = "{device}"\n' if device else ""
    return f"""name = "devices"
{head}[data]
corpus = "{corpus}"
tokens = 1500
context = 32
window_chars = 60
heldout_tokens = 512
[[models]]
label = "a"
model = "{model_a}"
hooks = [1]
[[models]]
label = "b"
model = "{model_b}"
hooks = [1]
[sae]
k = 4
d_sae = 32
steps = 15
batch_size = 64
ce_tokens = 64
[compare]
label_a = "a"
label_b = "b"
threshold = 0.0
n_permutations = 10
n_bootstrap = 0
controls = []
concepts = []
pair_cards = 0
[absorption]
label = "a"
hook = 1
k_values = [4]
words = 150
min_probe_f1 = 0.0
min_letters = 1
"""


@pytest.mark.slow
def test_a_study_on_cpu_and_auto_gives_the_same_products_and_keys(
    tiny_llama, tiny_other, many_documents, tmp_path, monkeypatch
):
    from saeatlas.study.plan import plan
    from saeatlas.study.run import run_study

    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    studies = {d: parse_study(_study_text(tiny_llama, tiny_other, many_documents, d)) for d in ("auto", "cpu")}
    keys = {d: [stage.key for stage in plan(study, tmp_path / "out")] for d, study in studies.items()}
    assert keys["auto"] == keys["cpu"]  # the device is in no stage's key
    runs = {}
    for device, study in studies.items():
        run_study(study, tmp_path / device, progress=False)
        products = _products(tmp_path / device, TIMINGS | {"key"})
        # logs and the report carry times; stage records and keys hash the output folder's path (above: equal)
        runs[device] = {n: v for n, v in products.items() if not n.endswith((".log", ".html", "stage.json"))}
    assert runs["auto"].keys() == runs["cpu"].keys()
    for name in runs["auto"]:
        assert runs["auto"][name] == runs["cpu"][name], name
    # products made on one device count as done on another: "cpu" in the "auto" folder makes nothing again
    summary = run_study(studies["cpu"], tmp_path / "auto", progress=False)
    assert {s["state"] for s in summary["stages"]} == {"done"}


# ---------------------------------------------------------------- compensated float32 cross sums
def _topk_like_codes(n: int, d: int, k: int, rng: np.random.Generator) -> sp.csr_array:
    """[n, d] float32 codes with k nonzeros per row: a few frequent latents and a long tail, heavy-tailed
    values (exponential, times a per-latent scale spanning two decades), as trained TopK SAEs fire."""
    weights = rng.zipf(1.3, d).astype(np.float64)
    weights /= weights.sum()
    # k distinct latents per row drawn with probabilities `weights` (the Gumbel top-k trick)
    keys = np.log(weights) + rng.gumbel(size=(n, d))
    cols = np.argpartition(-keys, k, axis=1)[:, :k].reshape(-1)
    scale = 10 ** rng.uniform(-1, 1, d)
    vals = (rng.exponential(1.0, n * k) * scale[cols]).astype(np.float32)
    return sp.csr_array((vals, (np.repeat(np.arange(n), k), cols)), shape=(n, d))


FLOAT32_BOUND = 1.0 * np.finfo(np.float32).eps
"""Largest relative error of the compensated float32 cross sums allowed against float64 (measured below: 0.61
eps; plain float32 sums over the same 235 chunks of 256 positions: 6.9 eps, growing with the number of chunks:
12.5 eps over 938 chunks of 64, where the compensated sums err by 0.49 eps)."""


def test_compensated_float32_cross_sums_agree_with_float64_within_one_eps():
    rng = np.random.default_rng(0)
    n, chunk = 60_000, 256
    a, b = _topk_like_codes(n, 200, 8, rng), _topk_like_codes(n, 160, 8, rng)
    cpu = torch.device("cpu")
    exact = next(_sparse_cross_blocks(a, b, 200))[2]  # [200, 160] float64
    blocks = _device_cross_blocks(_csr_chunks(a), _csr_chunks(b), n, 200, 160, cpu, torch.float32, chunk=chunk)
    compensated = np.concatenate([s for _, _, s in blocks])
    filled = exact > 0
    rel = np.abs(compensated - exact)[filled] / exact[filled]
    assert filled.sum() > 5000 and rel.max() <= FLOAT32_BOUND
    # plain float32 sums over the same chunks drift further: the compensation is what keeps the bound
    plain = torch.zeros(200, 160)
    for first in range(0, n, chunk):
        last = min(first + chunk, n)
        plain += _csr_chunks(a)(first, last, cpu, torch.float32).T @ _csr_chunks(b)(first, last, cpu, torch.float32)
    assert (np.abs(plain.double().numpy() - exact)[filled] / exact[filled]).max() > 4 * FLOAT32_BOUND


def test_neumaier_keeps_what_plain_float32_addition_drops():
    total, compensation = torch.zeros(3), torch.zeros(3)
    for x in (torch.full((3,), 1.0), *[torch.full((3,), 1e-8)] * 10_000):
        neumaier_add(total, compensation, x)
    assert torch.allclose((total.double() + compensation.double()), torch.full((3,), 1.0001, dtype=torch.float64))
    assert float(torch.full((1,), 1.0) + 1e-8) == 1.0  # plain float32: each 1e-8 is lost


@pytest.mark.parametrize("accumulate", [torch.float64, torch.float32])
def test_the_device_path_matches_the_cpu_path_on_codes_and_neurons(accumulate):
    """The accelerator path run on the CPU: the same bests and candidates as the sparse CPU path; code
    correlations within 1e-12 (float64) and 1e-6 (compensated float32)."""
    rng = np.random.default_rng(1)
    a, b = _topk_like_codes(5000, 90, 6, rng), _topk_like_codes(5000, 70, 6, rng)
    alive = np.flatnonzero(np.diff(a.tocsc().indptr) > 1)[:20]  # A latents that fire (twice or more)
    b = sp.csr_array(sp.hstack([b, a[:, alive] * 2.0]))  # planted partners: B 70..89 = 2 x those A latents
    tol = 1e-12 if accumulate == torch.float64 else 1e-6
    cpu = torch.device("cpu")
    ref = pearson_sparse(a, b, top_m=3, dense=True)
    got = pearson_sparse(a, b, top_m=3, dense=True, device=cpu, accumulate=accumulate)
    np.testing.assert_array_equal(got.best_a_for_b, ref.best_a_for_b)
    np.testing.assert_array_equal(got.cand_b_for_a, ref.cand_b_for_a)
    assert np.nanmax(np.abs(got.matrix - ref.matrix)) <= max(tol, 1e-7)  # the matrix is float32
    np.testing.assert_allclose(got.best_corr_for_b, ref.best_corr_for_b, atol=tol, rtol=0)
    assert np.allclose(ref.best_corr_for_b[70:], 1.0) and list(ref.best_a_for_b[70:]) == list(alive)
    x = rng.normal(size=(3000, 12)).astype(np.float32) + 50  # a large mean: the shift keeps it from cancelling
    y = np.concatenate([x[:, :5] * 3, rng.normal(size=(3000, 4)).astype(np.float32)], axis=1)
    ref, got = pearson_dense(x, y, top_m=2), pearson_dense(x, y, top_m=2, device=cpu, accumulate=accumulate)
    np.testing.assert_array_equal(got.best_a_for_b, ref.best_a_for_b)
    # float32: the shifted neurons are rounded to float32 before the sums (about 1e-7 each), hence 1e-5 here
    assert np.abs(got.matrix - ref.matrix).max() <= (1e-12 if accumulate == torch.float64 else 1e-5)


@pytest.mark.parametrize("measure", ["svcca", "pwcca", "linear_cka", "procrustes", "rsa", "mutual_knn"])
def test_the_device_kernels_of_the_nulls_give_the_cpu_nulls(measure):
    """The nulls' batched kernels forced onto the device path (here the CPU's torch, float64): the same
    permutations, so the same null to 1e-12 (CKA both ways: cross products and Gram overlaps)."""
    from saeatlas.compare.stats import _FAST_NULLS, _kernels_on, _null_linear_cka, permutation_null

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 16))
    Y = X[:, :12] @ rng.normal(size=(12, 14)) + 0.5 * rng.normal(size=(120, 14))
    kwargs = {"k": 8} if measure in ("svcca", "pwcca") else {}
    ref = permutation_null(measure, X, Y, n_permutations=40, seed=5, **kwargs)
    with _kernels_on(torch.device("cpu")):  # permutation_null itself keeps the CPU on its numpy path
        got = _FAST_NULLS[measure](X, Y, 40, 5, **kwargs)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert ref.std() > 0
    if measure == "linear_cka":
        with _kernels_on(torch.device("cpu")):
            gram = _null_linear_cka(X, Y, 40, 5, _path="gram")
        np.testing.assert_allclose(gram, ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- on a CUDA GPU (`pytest -m gpu`)
def _compare_results(root: Path, out: Path, device: str) -> dict:
    args = _verb_args("compare", root, out, Path(), Path())
    assert main([*args, "--device", device]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.gpu
def test_compare_on_cuda_equals_the_cpu(inputs, tmp_path):
    """Same pairs; scores within 1e-5 (SAE encodes in float32 on both; the cross sums in float64)."""
    cpu, gpu = (_compare_results(inputs, tmp_path / d, d) for d in ("cpu", "cuda"))
    for kind in ("sae", "random_init", "neurons", "shifted"):
        c, g = cpu["pairs"][0][kind], gpu["pairs"][0][kind]
        assert c["pairs"] == g["pairs"], kind
        for measure, score in c["decoder"].items():
            assert g["decoder"][measure]["observed"] == pytest.approx(score["observed"], abs=1e-5, nan_ok=True)
            assert g["decoder"][measure]["p"] == score["p"]


@pytest.mark.gpu
def test_correlation_sums_on_cuda_equal_the_cpu_in_float64():
    rng = np.random.default_rng(2)
    a, b = _topk_like_codes(20_000, 300, 8, rng), _topk_like_codes(20_000, 250, 8, rng)
    ref = pearson_sparse(a, b, top_m=5, dense=True)
    for accumulate in (None, torch.float32):  # float64 (CUDA has it), and the compensated float32 of MPS
        got = pearson_sparse(a, b, top_m=5, dense=True, device=torch.device("cuda"), accumulate=accumulate)
        np.testing.assert_array_equal(got.best_a_for_b, ref.best_a_for_b)
        assert np.nanmax(np.abs(got.matrix - ref.matrix)) <= 1e-6


@pytest.mark.gpu
def test_extract_on_cuda_equals_the_cpu(tiny_llama, long_corpus, tmp_path):
    """float32 model: the stored activations within 1e-4 relative of the CPU's; the same tokens and shards."""
    from saeatlas.data.store import ActivationStore

    stores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        tiny_store(tiny_llama, long_corpus, out, tokens=2000, context=32, device=device)
        stores[device] = ActivationStore(out)
    cpu, gpu = stores["cpu"], stores["cuda"]
    assert cpu.n_tokens == gpu.n_tokens and cpu.n_shards == gpu.n_shards
    for shard in range(cpu.n_shards):
        np.testing.assert_array_equal(cpu.index(shard)["token_id"], gpu.index(shard)["token_id"])
        x_cpu, x_gpu = cpu.raw_activations(HOOK, shard), gpu.raw_activations(HOOK, shard)
        np.testing.assert_allclose(x_gpu, x_cpu, rtol=1e-4, atol=1e-4 * float(np.abs(x_cpu).max()))


@pytest.mark.gpu
def test_absorption_on_cuda_equals_the_cpu(inputs, tiny_llama, tmp_path, monkeypatch):
    """float32 model: the task's activations within float32 rounding, so the probes' F1 within 1e-3 and the
    summary figures within 1e-3 of the CPU's."""
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        args = _verb_args("absorption", inputs, out, tiny_llama, Path())
        assert main([*args, "--model-dtype", "float32", "--min-probe-f1", "0.0", "--device", device]) == 0
        results[device] = json.loads((out / "absorption.json").read_text())
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu["mean_probe_f1"] == pytest.approx(cpu["mean_probe_f1"], abs=1e-3)
    for c, g in zip(cpu["saes"], gpu["saes"], strict=True):
        for key, value in c["summary"].items():
            assert g["summary"][key] == pytest.approx(value, abs=1e-3, nan_ok=True), key
