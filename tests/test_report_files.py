"""The result files of `saeatlas.report.files` (JSON, CSV, SVG), from a real study of two tiny models."""

from __future__ import annotations

import csv
import io
import json

import pytest
from report_fixture import build_study_results

from saeatlas.report.files import (
    CSV_COLUMNS,
    LETTER_COLUMNS,
    PROBE_COLUMNS,
    write_absorption,
    write_compare,
    write_concepts,
)


@pytest.fixture(scope="module")
def study(tiny_llama, tiny_other, tmp_path_factory) -> dict:
    return build_study_results(tmp_path_factory.mktemp("files-study"), tiny_llama, tiny_other)


def read_csv(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_compare_files(study, tmp_path):
    compare = study["compare"]
    written = write_compare(compare, tmp_path / "compare")
    measures = compare["config"]["measures"]
    heatmaps = [f"heatmap-{m}{z}.svg" for m in measures for z in ("", "-z")]
    expected = ["results.json", "results.csv", *heatmaps, "heatmap-mean-max-corr.svg", "heatmap-n-pairs.svg"]
    assert [p.name for p in written] == expected
    assert sorted(p.name for p in (tmp_path / "compare").iterdir()) == sorted(expected)  # no temporary left
    assert json.loads((tmp_path / "compare" / "results.json").read_text()) == compare
    rows = read_csv(tmp_path / "compare" / "results.csv")
    assert list(rows[0]) == CSV_COLUMNS
    n_rows = sum(
        len(body[space])
        for e in compare["pairs"] + compare["skyline"]
        for kind, body in e.items()
        if kind not in ("hook_a", "hook_b")
        for space in ("decoder", "activations")
    )
    assert len(rows) == n_rows
    first = compare["pairs"][0]
    svcca = first["sae"]["decoder"]["svcca"]
    row = next(
        r
        for r in rows
        if (r["hook_a"], r["hook_b"], r["comparison"], r["space"], r["measure"])
        == (first["hook_a"], first["hook_b"], "sae", "decoder", "svcca")
    )
    assert float(row["observed"]) == pytest.approx(svcca["observed"], rel=1e-5)
    assert float(row["q"]) == pytest.approx(svcca["q"], rel=1e-5) and int(row["n_pairs"]) == first["sae"]["n_pairs"]
    assert {r["comparison"] for r in rows} == {"sae", "random_init", "shifted", "neurons", "skyline"}
    svg = (tmp_path / "compare" / "heatmap-svcca.svg").read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert f">{svcca['observed']:.3f}" in svg and "model A" in svg
    assert svg.count("<rect") >= len(compare["hooks_a"]) * len(compare["hooks_b"])
    n_svg = (tmp_path / "compare" / "heatmap-n-pairs.svg").read_text()
    assert f">{first['sae']['n_pairs']}</text>" in n_svg


def test_concept_files(study, tmp_path):
    concepts = study["concepts"]
    written = write_concepts(concepts, tmp_path / "concepts")
    measures = concepts["config"]["measures"]
    assert [p.name for p in written] == ["concepts.json", "concepts.csv", *(f"concepts-{m}.svg" for m in measures)]
    assert json.loads((tmp_path / "concepts" / "concepts.json").read_text()) == concepts
    rows = read_csv(tmp_path / "concepts" / "concepts.csv")
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(concepts["entries"]) * len(measures)
    assert {r["comparison"] for r in rows} == set(concepts["concepts"])
    scored = next(e for e in concepts["entries"] if e["decoder"]["svcca"]["observed"] is not None)
    row = next(
        r
        for r in rows
        if (r["comparison"], r["hook_a"], r["hook_b"], r["measure"])
        == (scored["concept"], scored["hook_a"], scored["hook_b"], "svcca")
    )
    assert float(row["observed"]) == pytest.approx(scored["decoder"]["svcca"]["observed"], rel=1e-5)
    unscored = next(e for e in concepts["entries"] if e["decoder"]["svcca"]["observed"] is None)
    row = next(
        r
        for r in rows
        if (r["comparison"], r["hook_a"], r["hook_b"], r["measure"])
        == (unscored["concept"], unscored["hook_a"], unscored["hook_b"], "svcca")
    )
    assert row["observed"] == ""  # None in the results: an empty cell
    svg = (tmp_path / "concepts" / "concepts-svcca.svg").read_text()
    assert f"{scored['decoder']['svcca']['observed']:.3f}" in svg and f"nan ({unscored['n_pairs']})" in svg
    assert all(c in svg for c in concepts["concepts"])


def test_absorption_files(study, tmp_path):
    absorption = study["absorption"]
    written = write_absorption(absorption, tmp_path / "absorption")
    names = [s["name"] for s in absorption["saes"]]
    assert [p.name for p in written] == [
        "absorption.json",
        "probes.csv",
        *(f"{n}.{ext}" for n in names for ext in ("csv", "svg")),
    ]
    assert json.loads((tmp_path / "absorption" / "absorption.json").read_text()) == absorption
    probes = read_csv(tmp_path / "absorption" / "probes.csv")
    assert list(probes[0]) == PROBE_COLUMNS and [p["letter"] for p in probes] == [chr(65 + i) for i in range(26)]
    for sae in absorption["saes"]:
        rows = read_csv(tmp_path / "absorption" / f"{sae['name']}.csv")
        assert list(rows[0]) == [c for c in LETTER_COLUMNS if c in sae["letters"][0]] and len(rows) == 26
        for row, letter in zip(rows, sae["letters"]):
            assert row["letter"] == letter["letter"] and row["main_latents"] == " ".join(
                map(str, letter["main_latents"])
            )
            if letter["absorption_fraction"] is not None:
                assert float(row["absorption_fraction"]) == pytest.approx(letter["absorption_fraction"], rel=1e-5)
        svg = (tmp_path / "absorption" / f"{sae['name']}.svg").read_text()
        assert f"Absorption per letter: {sae['name']}" in svg and "absorption fraction" in svg
        qualifying = [r for r in sae["letters"] if r["qualifies"]]
        assert svg.count("<rect") >= len(qualifying)  # a bar per qualifying letter and measure (0 is a flat bar)
