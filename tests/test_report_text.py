"""The terminal tables of `saeatlas.report.text`, from a real study of two tiny models: every line fits in 80
columns (on an 80-column console and when stdout is not a terminal), and each row's key figures sit on the
same line as its label."""

from __future__ import annotations

import copy
import io
import re

import pytest
from report_fixture import LABELS, build_study_results
from rich.console import Console

from saeatlas.data.store import ActivationStore
from saeatlas.report.format import pair_label
from saeatlas.report.text import (
    Col,
    print_absorption,
    print_comparison,
    print_store_info,
    print_study_summary,
    print_table,
)

WIDTH = 80


@pytest.fixture(scope="module")
def built(tiny_llama, tiny_other, tmp_path_factory):
    root = tmp_path_factory.mktemp("text-study")
    return root, build_study_results(root, tiny_llama, tiny_other)


@pytest.fixture(scope="module")
def study(built) -> dict:
    return built[1]


def render(printer, *args, width: int = WIDTH, **kwargs) -> list[str]:
    """The lines `printer` writes on a console `width` columns wide (not a terminal); none longer."""
    buffer = io.StringIO()
    printer(*args, console=Console(file=buffer, width=width), **kwargs)
    lines = buffer.getvalue().splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, "\n".join(too_long)
    return lines


def cells(line: str) -> list[str]:
    """A table line's cells (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def row_lines(lines: list[str], *labels: str) -> list[str]:
    """The table lines whose first cells are `labels` (a row split over several tables has one line in each)."""
    n = len(labels)
    return [line for line in lines if cells(line)[:n] == list(labels)]


def on_its_line(lines: list[str], labels: tuple[str, ...], *figures: str) -> None:
    """Each figure is on one of the lines of the row labelled `labels`."""
    found = row_lines(lines, *labels)
    assert found, f"no row {labels}"
    for figure in figures:
        assert any(figure in line for line in found), f"{figure} not on the row {labels}: {found}"


def test_comparison_rows_carry_their_scores(study):
    compare = study["compare"]
    lines = render(print_comparison, compare)
    n_rows = 0
    for entry in compare["pairs"] + compare["skyline"]:
        for kind, body in entry.items():
            if kind in ("hook_a", "hook_b"):
                continue
            space = "decoder" if body["decoder"] else "activations"
            labels = (pair_label(entry["hook_a"], entry["hook_b"]), kind)
            figures = [str(body["n_pairs"]), f"{body['mean_max_corr']:.3f}", space]
            for measure in ("svcca", "rsa", "linear_cka"):
                s = body[space][measure]
                figures.append(f"{s['observed']:.3f} (z {s['z']:.0f}, ")
            on_its_line(lines, labels, *figures)
            n_rows += 1
    assert n_rows == len(compare["pairs"]) * 4 + len(compare["skyline"])  # real pair, random-init, shifted, neurons
    main = lines[: next(i for i, line in enumerate(lines) if line.startswith("The real pair against its controls"))]
    assert sum(cells(line)[:1] == ["layers"] for line in main) == 2  # split in two tables at 80 columns
    wide = render(print_comparison, compare, width=200)
    wide = wide[: next(i for i, line in enumerate(wide) if line.startswith("The real pair against its controls"))]
    assert sum(cells(line)[:1] == ["layers"] for line in wide) == 1  # one table where it fits


def test_the_real_pair_against_its_controls_is_a_table_of_its_own(study):
    compare = study["compare"]
    lines = render(print_comparison, compare)
    start = next(i for i, line in enumerate(lines) if line.startswith("The real pair against its controls"))
    below = lines[start:]
    tested = 0
    for entry in compare["pairs"]:
        figures = []
        for measure in ("svcca", "rsa", "linear_cka"):
            s = entry["sae"]["decoder"][measure]
            if "p_controls" not in s:
                continue
            q = s["q_controls"]
            figures.append("q<.001" if q < 0.001 else f"q {q:.3f}")
            figures += [f"{s[f'versus_{c}']['observed']:+.3f}" for c in ("random_init", "shifted")]
        if figures:
            on_its_line(below, (pair_label(entry["hook_a"], entry["hook_b"]),), *figures)
            tested += 1
    assert tested >= 1
    assert max(len(line) for line in lines) <= 80


def test_concept_rows_carry_their_scores(study):
    concepts = study["concepts"]
    lines = render(print_comparison, concepts)
    for e in concepts["entries"]:
        labels = (e["concept"], pair_label(e["hook_a"], e["hook_b"]))
        figures = [f"{e['n_latents_a']}/{e['n_latents_b']}"]
        for measure in ("svcca", "rsa", "linear_cka"):
            observed = e["decoder"][measure]["observed"]
            figures.append("-" if observed is None else f"{observed:.3f} (z ")
        on_its_line(lines, labels, *figures)
    assert any(e["decoder"]["svcca"]["observed"] is not None for e in concepts["entries"])


def test_absorption_letters_and_means(study):
    absorption = study["absorption"]
    assert len(absorption["saes"]) == 2
    for sae in absorption["saes"]:
        one = {**copy.deepcopy(absorption), "saes": [sae]}
        lines = render(print_absorption, one)
        for r in sae["letters"]:
            label = r["letter"] + ("" if r["qualifies"] else " †")
            figures = [f"{r['probe_f1']:.3f}", f"{r['k_sparse_f1']:.3f}"]
            if r["qualifies"]:
                figures += [f"{r['absorption_fraction']:.3f}", f"{r['full_absorption_rate']:.3f}"]
            on_its_line(lines, (label,), *figures)
        mean = sae["summary"]["mean_absorption_fraction"]
        assert any(line.startswith(sae["name"] + ":") for line in lines)
        assert f"absorption fraction {mean:.3f}" in " ".join(" ".join(lines).split())  # a wrapped paragraph
    lines = render(print_absorption, absorption, per_letter=False)
    assert not any(cells(line)[:1] == ["letter"] for line in lines)
    for sae in absorption["saes"]:
        s = sae["summary"]
        on_its_line(
            lines, (sae["name"],), f"{s['mean_num_split_features']:.3f}", f"{s['mean_absorption_fraction']:.3f}"
        )
        on_its_line(lines, (sae["name"],), f"{s['mean_full_absorption_rate']:.3f}")


def test_store_info(built):
    root, _ = built
    store = ActivationStore(root / "stores" / "a")
    lines = render(print_store_info, store, True)
    assert lines[0].startswith(str(store.path)) and "activation store v1, complete" in " ".join(lines[:2])
    for hook in store.hooks:
        on_its_line(
            lines, (hook,), f"[{store.n_tokens:,}, {store.d_model}]", f"{store.norm_stats(hook)['mean_norm']:.1f}"
        )
    assert any("hashes verified" in line for line in lines)


def test_study_summary(study):
    lines = render(print_study_summary, study["stages"], study)
    assert lines[0] == f"study '{study['study']['name']}': stages"
    for stage in study["stages"]:
        on_its_line(lines, (stage["name"],), "ran", f"{stage['seconds']:.1f}")
    for sae in study["saes"]:
        if sae["metrics"]:
            m = sae["metrics"]
            on_its_line(
                lines, (sae["label"], sae["hook"]), f"{m['l0']:.1f}", f"{m['fvu']:.3f}", f"{m['dead_fraction']:.1%}"
            )
            on_its_line(lines, (sae["label"], sae["hook"]), f"{sae['downstream']['ce_loss_recovered']:.3f}")
    first = study["compare"]["pairs"][0]
    svcca = first["sae"]["decoder"]["svcca"]["observed"]
    on_its_line(lines, (pair_label(first["hook_a"], first["hook_b"]), "sae"), f"{svcca:.3f}")
    for sae in study["absorption"]["saes"]:
        on_its_line(lines, (sae["name"],), f"{sae['summary']['mean_absorption_fraction']:.3f}")
    assert not any(cells(line)[:1] == ["letter"] for line in lines)  # the summary, not every letter
    bare = render(print_study_summary, [], {"study": {"name": "empty"}, "saes": [], "compare": None})
    assert bare[0] == "study 'empty': stages"


def test_without_a_terminal_the_tables_fit_in_80_columns(study, capsys, monkeypatch):
    """No console given and stdout not a terminal (a pipe, a file): rich's console is 80 columns wide."""
    monkeypatch.delenv("COLUMNS", raising=False)
    print_comparison(study["compare"])
    print_comparison(study["concepts"])
    print_absorption(study["absorption"])
    print_study_summary(study["stages"], study)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 100 and max(len(line) for line in lines) <= WIDTH
    first = study["compare"]["pairs"][0]
    on_its_line(lines, (pair_label(first["hook_a"], first["hook_b"]), "sae"), str(first["sae"]["n_pairs"]))


def test_a_long_first_column_is_shortened_and_a_wide_table_split():
    cols = [Col("name"), Col("a", True), Col("b", True)]
    rows = [["train " + LABELS["a"] * 6 + " resid_post.3 seed 0", "1.0", "2.0"], ["short", "3.0", "4.0"]]
    lines = render(print_table, cols, rows)
    assert len(rows[0][0]) + 10 > WIDTH and "…" in lines[2]
    assert lines[2].startswith("train tinyllama") and cells(lines[2])[1:] == ["1.0", "2.0"]
    assert cells(lines[3]) == ["short", "3.0", "4.0"]
    wide = [Col("key"), Col("k2")] + [Col(f"column {i}", True) for i in range(12)]
    rows = [["row", "one"] + [f"{i}.000" for i in range(12)], ["row", "two"] + [f"{i}.500" for i in range(12)]]
    lines = render(print_table, wide, rows, n_keys=2)
    tables = [line for line in lines if cells(line)[:2] == ["key", "k2"]]
    assert len(tables) == 2  # both tables repeat the two key columns
    on_its_line(lines, ("row", "one"), "0.000", "11.000")
    on_its_line(lines, ("row", "two"), "0.500", "11.500")
