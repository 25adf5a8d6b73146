"""The Python API has one shape: each job takes its config and returns its result; a writer saves it.  The
README's notebook example, on tiny local models."""

from __future__ import annotations

import json

import saeatlas as sa


def test_the_readme_example_runs_on_tiny_models(tiny_llama, tiny_gemma, text_corpus, tmp_path):
    common = {"corpus": str(text_corpus), "split": "all", "tokens": 3000, "context": 32, "window_chars": 60}
    llama = sa.run_extract(
        sa.ExtractConfig(model=str(tiny_llama), hooks=["blocks.1.hook_resid_post"], **common), tmp_path / "llama"
    )
    gemma = sa.run_extract(sa.ExtractConfig(model=str(tiny_gemma), hooks=[2], **common), tmp_path / "gemma")
    assert isinstance(llama, sa.ExtractResult) and llama.store.hooks == ["resid_post.1"]
    assert gemma.store.hooks == ["resid_post.2"]
    for store, hook in ((llama.store, "resid_post.1"), (gemma.store, "resid_post.2")):
        cfg = sa.TrainConfig(sae=sa.SAEConfig(arch="topk", k=4, d_sae=48), steps=30, batch_size=64)
        result = sa.run_train(cfg, sa.StoreSource(store.path, hook))
        assert isinstance(result, sa.TrainResult) and result.config.sae.d_in == store.d_model
        assert result.metrics["l0"] == 4.0 and result.metadata["hook_name"] == hook
        folder = sa.write_sae(result, tmp_path / "saes" / store.path.name / hook)
        assert sa.load_sae(folder).cfg == result.config.sae
        assert (
            json.loads((folder / "cfg.json").read_text())["metadata"]["hook_name"]
            == f"blocks.{hook[-1]}.hook_resid_post"
        )

    evaluated = sa.run_eval(
        sa.EvalConfig(tokens=512), tmp_path / "saes" / "llama" / "resid_post.1", sa.StoreSource(llama.store.path, 1)
    )
    assert isinstance(evaluated, sa.EvalResult) and evaluated.hook == "resid_post.1" and evaluated.downstream is None
    assert evaluated.metrics["n_tokens"] == 512

    cfg = sa.CompareConfig(
        store_a=str(llama.store.path),
        store_b=str(gemma.store.path),
        saes_a=str(tmp_path / "saes" / "llama" / "{hook}"),
        saes_b=str(tmp_path / "saes" / "gemma"),  # a folder of one folder per hook
        hooks_a=[1],
        hooks_b=["model.layers.2"],
        n_permutations=20,
        n_bootstrap=0,
        controls=[],
        threshold=0.0,
    )
    results = sa.run_compare(cfg)
    (pair,) = results["pairs"]
    assert (pair["hook_a"], pair["hook_b"]) == ("resid_post.1", "resid_post.2")
    assert set(pair["sae"]["decoder"]["svcca"]) >= {"observed", "null_mean", "z", "p", "q"}
    written = sa.write_compare(results, tmp_path / "compare")
    assert [p.name for p in written[:2]] == ["results.json", "results.csv"]
    assert json.loads((tmp_path / "compare" / "results.json").read_text())["config"]["hooks_b"] == ["resid_post.2"]
