"""`saeatlas absorption` end to end on a tiny model, and its errors on bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from saeatlas.absorption.task import alphabetic_vocabulary
from saeatlas.cli import main
from saeatlas.models import load_tokenizer
from saeatlas.sae import SAEConfig, SparseAutoencoder, save_saelens


@pytest.fixture(scope="module")
def saes(tiny_gemma, tmp_path_factory):
    """Two random SAEs of the tiny model's width (a relu and a topk) and one of the wrong width."""
    root = tmp_path_factory.mktemp("absorption-saes")
    torch.manual_seed(0)
    for name, cfg in (
        ("relu", SAEConfig(arch="relu", d_in=32, d_sae=96)),
        ("topk", SAEConfig(arch="topk", d_in=32, d_sae=96, k=8)),
        ("wide", SAEConfig(arch="topk", d_in=48, d_sae=96, k=8)),
    ):
        save_saelens(SparseAutoencoder(cfg), root / name, metadata={"hook_name": "resid_post.1"})
    return root


def _args(model, saes, out, *extra):
    return [
        "absorption",
        "--model",
        str(model),
        "--hook",
        "resid_post.1",
        "--sae",
        str(saes / "relu"),
        "--sae",
        str(saes / "topk"),
        "--words",
        "300",
        "--min-letters",
        "5",
        "--min-probe-f1",
        "0.0",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_absorption_cli_writes_tables_charts_and_json(tiny_gemma, saes, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(_args(tiny_gemma, saes, out, "--variant", "both", "--max-candidates", "3")) == 0
    results = json.loads((out / "absorption.json").read_text())
    assert results["kind"] == "absorption" and results["version"] == 2 and results["hook"] == "resid_post.1"
    # 300 words asked, fewer in the tiny vocabulary: all of them
    vocabulary = alphabetic_vocabulary(load_tokenizer(str(tiny_gemma)))
    assert results["n_prompts"] + results["n_dropped"] == len(vocabulary) < 300
    assert results["n_train"] + results["n_test"] == results["n_prompts"]
    assert len(results["probes"]) == 26
    assert [s["name"] for s in results["saes"]] == ["relu", "topk"]
    topk = results["saes"][1]
    assert topk["l0_on_task"] == pytest.approx(8.0)
    for row in topk["letters"]:
        if row["n_true_positives"]:
            assert 0 <= row["absorption_fraction"] <= 1 and 0 <= row["full_absorption_rate"] <= 1
            assert row["ablation_scored"] <= min(3, row["ablation_candidates"])
        assert row["num_split_features"] == len(row["main_latents"]) >= 1
    with open(out / "topk.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["letter"] for r in rows] == [chr(ord("A") + i) for i in range(26)]
    assert {"absorption_fraction", "full_absorption_rate", "ablation_absorption_rate", "probe_f1"} <= set(rows[0])
    svg = (out / "topk.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") > 26
    printed = capsys.readouterr().out
    assert "absorption fraction" in printed and "mean probe F1" in printed


def test_absorption_cli_rejects_bad_input_with_one_line(tiny_gemma, saes, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    cases = [
        (["--sae", str(saes / "wide")], "d_in 48"),
        (["--sae", str(tmp_path / "missing")], "does not exist"),
        (["--min-probe-f1", "0.99"], "no letter has a probe F1 above 0.99"),
        (["--variant", "gradient"], "bad --variant = 'gradient': use one of projection, ablation, both"),
        (["--words", "50"], "bad --words = 50"),
        (["--words", "some"], "argument --words: invalid integer or all value: 'some'"),
        (["--max-k", "0"], "bad --max-k = 0"),
        (["--ig-steps", "0"], "bad --ig-steps = 0: use at least 1 (the paper uses 6)"),
        (["--hook", "blocks.1.hook_resid"], "bad hook point 'blocks.1.hook_resid'"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        assert main(_args(tiny_gemma, saes, out, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()  # nothing half-written
    assert (
        main(
            [
                "absorption",
                "--model",
                "no-such-model",
                "--hook",
                "resid_post.1",
                "--sae",
                str(saes / "relu"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
