"""`saeatlas compare` and `saeatlas concepts` end to end on two tiny models with different tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import HOOK, tiny_store

from saeatlas.cli import main


@pytest.fixture(scope="module")
def setup(tiny_llama, tiny_other, long_corpus, tmp_path_factory):
    """Two stores (different tokenizers, windows by characters) and a TopK SAE per store."""
    root = tmp_path_factory.mktemp("compare-cli")
    for name, model in (("a", tiny_llama), ("b", tiny_other)):
        tiny_store(model, long_corpus, root / name, tokens=100_000, context=32, window_chars=60, batch_size=8)
        for tag, seed in (("", 0), ("seed1-", 1)):
            assert (
                main(
                    [
                        "train",
                        "--store",
                        str(root / name),
                        "--hook",
                        HOOK,
                        "--arch",
                        "topk",
                        "--k",
                        "4",
                        "--width",
                        "48",
                        "--steps",
                        "60",
                        "--batch-size",
                        "64",
                        "--seed",
                        str(seed),
                        "--quiet",
                        "--out",
                        str(root / f"sae-{name}-{tag}{HOOK}"),
                    ]
                )
                == 0
            )
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--store-a",
        str(root / "a"),
        "--store-b",
        str(root / "b"),
        "--saes-a",
        str(root / "sae-a-{hook}"),
        "--saes-b",
        str(root / "sae-b-{hook}"),
        "--hooks-a",
        "1",
        "--hooks-b",
        "blocks.1.hook_resid_post",
        "--out",
        str(out),
        "--n-permutations",
        "50",
        "--n-bootstrap",
        "5",
        "--threshold",
        "0.0",
        *extra,
    ]


def test_compare_writes_scores_nulls_controls_and_heatmaps(setup, tmp_path, capsys):
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                *_args(
                    setup,
                    out,
                    "--controls",
                    "random_init,neurons,shifted,skyline",
                    "--skyline-saes-a",
                    str(setup / "sae-a-seed1-{hook}"),
                ),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["version"] == 4 and results["kind"] == "compare"
    assert results["hooks_a"] == results["hooks_b"] == ["resid_post.1"]
    assert results["alignment"]["method"] == "char_offset" and results["alignment"]["n_positions"] > 100
    (entry,) = results["pairs"]
    assert set(entry) == {"hook_a", "hook_b", "sae", "random_init", "neurons", "shifted"}
    main_cmp = entry["sae"]
    assert main_cmp["n_pairs"] >= 5
    svcca = main_cmp["decoder"]["svcca"]
    assert 0 <= svcca["observed"] <= 1 and svcca["n_permutations"] == 50
    assert 1 / 51 <= svcca["p"] <= 1 and svcca["q"] is not None
    assert svcca["k"] == results["svcca_k"]
    assert not any("ci_lo" in s for s in main_cmp["decoder"].values())  # no calibrated interval: none given
    for control in ("random_init", "shifted"):
        versus = svcca[f"versus_{control}"]
        assert versus["se"] > 0 and 0 < versus["p"] < 1 and "lo" not in versus
    assert svcca["p_controls"] == max(svcca["versus_random_init"]["p"], svcca["versus_shifted"]["p"])
    seeds = entry["random_init"]["seed_scores"]["svcca"]  # 3 random-init SAEs, the one scored first
    assert len(seeds) == 3 and seeds[0] == entry["random_init"]["decoder"]["svcca"]["observed"]
    assert len(set(seeds)) == 3 and svcca["versus_random_init"]["n_seeds"] == 3
    assert svcca["versus_random_init"]["control"] == pytest.approx(np.mean(seeds))
    assert svcca["versus_random_init"]["observed"] == pytest.approx(svcca["observed"] - np.mean(seeds))
    assert 0 < svcca["q_controls"] <= 1
    assert all(len(s["n_pairs_folds"]) == 2 for s in main_cmp["activations"].values())
    assert set(main_cmp["decoder"]) == {"svcca", "pwcca", "rsa", "linear_cka", "mutual_knn", "svcca_legacy"}
    assert set(main_cmp["activations"]) == {"svcca", "linear_cka"}
    assert len(main_cmp["pairs"]["idx_a"]) == main_cmp["n_pairs"]
    assert results["skyline"][0]["skyline"]["n_pairs"] >= 5
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("hook_a,hook_b,comparison,space,measure")
    assert any(",skyline,decoder,svcca," in line for line in csv_lines)
    svg = (out / "heatmap-svcca.svg").read_text()
    assert svg.startswith("<svg") and "resid_post.1" in svg
    assert "aligned positions" in capsys.readouterr().out


def test_concepts_scores_each_concept(setup, tmp_path):
    concepts = tmp_path / "concepts.toml"
    concepts.write_text('animals = ["fox", "dog"]\nweather = ["winds", "fire"]\n')
    out = tmp_path / "concepts"
    assert main(["concepts", *_args(setup, out, "--concepts", str(concepts))]) == 0
    results = json.loads((out / "concepts.json").read_text())
    assert results["kind"] == "concepts" and [e["concept"] for e in results["entries"]] == ["animals", "weather"]
    for e in results["entries"]:
        assert e["n_latents_a"] >= 0 and e["n_pairs"] <= min(e["n_latents_a"], e["n_latents_b"]) or e["n_pairs"] == 0
    assert (out / "concepts.csv").is_file() and (out / "concepts-svcca.svg").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (("--saes-b", "/nonexistent/sae-{hook}"), "no SAE for resid_post.1"),
        (("--saes-b", "/nonexistent/sae-{hook"), "bad --saes-b = '/nonexistent/sae-{hook': expected '}'"),
        (("--hooks-a", "7"), "has no hook resid_post.7"),
        (("--hooks-a", "blocks.1.hook_resid_mid"), "bad hook point 'blocks.1.hook_resid_mid'"),
        (("--measures", "svcca,bogus"), "bad --measures = 'bogus'"),
        (("--method", "greedy"), "bad --method = 'greedy'"),
        (("--svcca-k", "0"), 'bad --svcca-k = 0: use a number of directions >= 1, or "variance"'),
        (("--permutations", "0"), "bad --permutations = 0"),
        (("--max-positions", "0"), "bad --max-positions = 0"),
        (("--k", "3"), "unrecognized arguments: --k 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, change, message):
    args = _args(setup, tmp_path / "out", "--controls", "")
    flag = args.index(change[0]) if change[0] in args else None
    if flag is not None:
        args[flag + 1] = change[1]
    else:
        args += list(change)
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_stores_of_different_texts_are_refused(setup, tiny_llama, tmp_path, capsys, text_corpus):
    other = tmp_path / "other-text"
    tiny_store(tiny_llama, text_corpus, other, tokens=2000, context=32, window_chars=60)
    args = _args(setup, tmp_path / "out", "--controls", "")
    args[args.index("--store-b") + 1] = str(other)
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no document (by key)" in err
