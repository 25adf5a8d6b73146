"""bench/rates.py's arithmetic, which docs/scaling.md's figures come from: the sizes it starts from, and the
number of correlations a layer pair of `compare` costs, counted on a real run."""

from __future__ import annotations

import collections
import importlib.util
import sys
from pathlib import Path

import pytest

import saeatlas as sa
from saeatlas.compare import scoring


def _rates():
    path = Path(__file__).resolve().parents[1] / "bench" / "rates.py"
    spec = importlib.util.spec_from_file_location("bench_rates", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_study_sizes_are_the_models_and_the_stores():
    rates = _rates()
    gemma, llama = rates.BIG_MODELS
    assert gemma.body_params == 2_614_341_888 - 256_000 * 2304  # tied embedding
    assert llama.body_params == 8_030_261_248 - 2 * 128_256 * 4096  # embedding and head
    assert gemma.store_bytes_per_token == 26 * 2304 * 2 and llama.store_bytes_per_token == 32 * 4096 * 2
    costs = rates.study_costs(_saved_rates())
    assert costs["store"]["Gemma-2-2B"]["bytes"] == 11_980_800_000_000
    assert costs["store"]["Llama-3-8B"]["bytes"] == 26_214_400_000_000
    assert gemma.forward_flops(12) == pytest.approx(gemma.forward_flops() / 2)
    assert rates.sae_flops_per_token(2304, 16384) == 2 * 2304 * 16384 + 8 * 32 * 2304


def test_the_cpu_pair_cost_is_the_counted_calls_times_the_fitted_rates():
    rates = _rates()
    gemma, llama = rates.BIG_MODELS
    saved = _saved_rates()
    pair = rates.cpu_pair_seconds(saved, gemma, llama, 16384, n=10**6)
    assert pair["scan"] == pytest.approx(1340 * 16384**2 * 2e-9)
    assert pair["products"] == pytest.approx(720 * 10**6 * 32**2 * 3e-9)
    assert pair["neurons"] == pytest.approx(40 * 2 * 10**6 * 2304 * 4096 / 10e9)


def _saved_rates() -> dict:
    """A rates.json with round numbers."""
    extract = [
        {"hooks": h, "gflops": 100.0, "read_tokens_per_s_again": 1000.0, "bytes_per_token_layer": 1000.0}
        for h in ("last layer", "every layer")
    ]
    train = [{"d_in": 640, "d_sae": w, "gflops_executed": 100.0} for w in (16384, 65536)]
    return {
        "extract": extract,
        "write": {"writer_mb_per_s": 100.0, "sha256_mb_per_s": 1000.0},
        "train": train,
        "correlate": {"ns_per_matrix_entry": 2.0, "ns_per_product": 3.0, "dense_gflops_fp64": 10.0},
    }


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama, tiny_gemma, long_corpus, tmp_path_factory):
    """Two tiny stores of the same text and a TopK SAE on one hook of each."""
    tmp = tmp_path_factory.mktemp("pair")
    common = {"corpus": str(long_corpus), "split": "all", "tokens": 3000, "context": 32, "window_chars": 60}
    stores = {}
    for label, model, hook in (("a", tiny_llama, "resid_post.1"), ("b", tiny_gemma, "resid_post.2")):
        stores[label] = sa.run_extract(sa.ExtractConfig(model=str(model), hooks=[hook], **common), tmp / label)
        cfg = sa.TrainConfig(sae=sa.SAEConfig(arch="topk", k=4, d_sae=48), steps=30, batch_size=64)
        sa.write_sae(sa.run_train(cfg, sa.StoreSource(stores[label].path, hook)), tmp / "saes" / label / hook)
    return stores, tmp / "saes"


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {},  # compare's defaults, which the docs' figures use
        {"chance_shifts": 3, "n_bootstrap": 2, "random_init_seeds": 2, "controls": ["random_init", "neurons"]},
    ],
)
def test_correlations_per_pair_are_what_compare_runs(tiny_pair, options, monkeypatch):
    stores, saes = tiny_pair
    calls = collections.Counter()
    positions = collections.Counter()
    for kind, name in (("sparse", "pearson_sparse"), ("dense", "pearson_dense")):
        original = getattr(scoring, name)

        def counted(a, b, *args, _kind=kind, _original=original, **kwargs):
            calls[_kind] += 1
            positions[_kind] += a.shape[0]
            return _original(a, b, *args, **kwargs)

        monkeypatch.setattr(scoring, name, counted)
    cfg = sa.CompareConfig(
        store_a=str(stores["a"].path),
        store_b=str(stores["b"].path),
        saes_a=str(saes / "a"),
        saes_b=str(saes / "b"),
        hooks_a=[1],
        hooks_b=[2],
        n_permutations=20,
        **options,
    )
    n = sa.run_compare(cfg)["pairs"][0]["sae"]["n_positions"]
    expected = _rates().correlations_per_pair(cfg)
    assert calls["sparse"] == expected["sparse_calls"] and calls["dense"] == expected["dense_calls"]
    # Halves of the documents are half the positions only on average; the shifted control has one fewer per
    # document.
    assert positions["sparse"] / n == pytest.approx(expected["sparse_full"], rel=0.1)
    assert positions["dense"] / n == pytest.approx(expected["dense_full"], rel=0.1)
