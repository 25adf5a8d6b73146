"""The HTML atlas report (rendered from a real study of two tiny models) and each latent's top contexts."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from helpers import tiny_store
from report_fixture import HOOKS_A, HOOKS_B, TRICKY, _compare_cfg, build_study_results

from saeatlas.cli import main
from saeatlas.compare.contexts import top_contexts
from saeatlas.compare.grid import run_compare
from saeatlas.data.store import ActivationStore
from saeatlas.data.tokens import EXCLUDED_BY_DEFAULT
from saeatlas.errors import SaeAtlasError
from saeatlas.fileio import jsonable
from saeatlas.report.html import SECTIONS, render_report, write_report
from saeatlas.report.markup import token_html
from saeatlas.sae import SAEConfig, SparseAutoencoder, load_sae

# Every test here reads the module fixture `built`: a whole tiny study (two stores, seven SAEs, compare, concepts,
# absorption): 3-4 s on this 2-core machine when idle, 9-18 s while another job ran.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tiny_llama, tiny_other, tmp_path_factory):
    root = tmp_path_factory.mktemp("report-study")
    return root, build_study_results(root, tiny_llama, tiny_other)


@pytest.fixture(scope="module")
def study(built) -> dict:
    return built[1]


@pytest.fixture(scope="module")
def page(study) -> str:
    return render_report(study)


def sections(html: str) -> dict[str, str]:
    """section id -> its inner HTML (sections do not nest)."""
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', html, flags=re.DOTALL))


# ---------------------------------------------------------------- the report
def test_every_section_is_there_in_order_with_its_results(study, page):
    found = sections(page)
    assert list(found) == [sid for sid, _ in SECTIONS]
    assert "not run" not in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # the study: models, settings, stages
    s = found["study"]
    assert all(m["label"] in s and f"{m['n_tokens']:,}" in s for m in study["models"])
    assert "many_to_one" in s and all(st["name"] in s for st in study["stages"])
    # SAE quality: the held-out figures of every main SAE
    s = found["saes"]
    for sae in study["saes"]:
        if sae["metrics"]:
            assert f"{sae['metrics']['fvu']:.3f}" in s and f"{sae['downstream']['ce_loss_recovered']:.3f}" in s


def test_heatmaps_show_every_measure_with_significance_and_z(study, page):
    s = sections(page)["heatmaps"]
    compare = study["compare"]
    first = compare["pairs"][0]["sae"]
    for space in ("decoder", "activations"):
        for measure in first[space]:
            for stat in ("value", "z"):
                assert len(re.findall(f'data-measure="{measure}" data-space="{space}" data-stat="{stat}"', s)) == 1
    assert s.count('<figure class="heatmap"') == 2 * (len(first["decoder"]) + len(first["activations"])) + 2
    svcca = first["decoder"]["svcca"]
    assert f"{svcca['observed']:.3f}" in s and f"{svcca['z']:.1f}" in s and f"{svcca['q']:.3g}" in s
    # the stars are the BH q-values' (any significant cell shows its stars in the heatmap)
    starred = [e["sae"]["activations"]["linear_cka"] for e in compare["pairs"]]
    assert any(c["q"] < 0.05 for c in starred)
    assert any(f"{c['observed']:.3f}*" in s for c in starred if c["q"] < 0.05)


def test_at_a_glance_shows_the_best_layer_pair_beside_its_controls_and_skyline(study, page):
    s = sections(page)["glance"]
    compare = study["compare"]
    skyline = {e["hook_a"]: e["skyline"] for e in compare["skyline"]}
    rows = re.findall(r"<tr>(.*?)</tr>", s.split('class="headline-table"')[1].split("</table>")[0], flags=re.DOTALL)[1:]
    labels = study["study"]["compare"]
    assert f"{labels['label_a']} x {labels['label_b']}" in s  # the study's labels head the real pair's column
    assert [re.search(r"<td[^>]*>(\w+)</td>", r).group(1) for r in rows] == ["svcca", "rsa", "linear_cka"]
    for measure, row in zip(["svcca", "rsa", "linear_cka"], rows):
        best = max(compare["pairs"], key=lambda e: e["sae"]["decoder"][measure]["observed"])
        observed = best["sae"]["decoder"][measure]["observed"]
        ceiling = skyline[best["hook_a"]]["decoder"][measure]["observed"]
        for value in (
            observed,
            best["random_init"]["decoder"][measure]["observed"],
            best["shifted"]["decoder"][measure]["observed"],
            ceiling,
        ):
            assert f"{value:.3f}" in row
        assert f"{observed / ceiling:.0%}" in row
    ce = [sae["downstream"]["ce_loss_recovered"] for sae in study["saes"] if sae.get("downstream")]
    assert f"CE-loss recovered {min(ce):.3f}" in s
    absorption = study["absorption"]["saes"][0]["summary"]["mean_absorption_fraction"]
    assert f"absorption fraction {absorption:.3f}" in s


def test_correlations_and_controls_sit_beside_the_real_pair(study, page):
    found = sections(page)
    compare = study["compare"]
    n_pairs = len(compare["pairs"])
    assert found["correlations"].count('<figure class="histogram"') == n_pairs
    legend = f"real pair (n={compare['pairs'][0]['sae']['n_pairs']}, mean "
    assert legend in found["correlations"]
    assert f"random-init SAE B (n={compare['pairs'][0]['random_init']['n_pairs']}" in found["correlations"]
    s = found["controls"]
    assert s.count('<figure class="controls-plot"') == 3  # svcca, rsa, linear_cka
    rows = re.findall(r"<tr><td", s.split('class="controls-table"')[1])
    assert len(rows) == n_pairs * 5  # real pair, skyline, random-init, shifted, neurons
    neurons = compare["pairs"][0]["neurons"]["activations"]["svcca"]["observed"]
    assert f"{neurons:.3f}" in s


def test_concepts_table_and_heatmaps(study, page):
    s = sections(page)["concepts"]
    entries = study["concepts"]["entries"]
    scored = [e for e in entries if e["decoder"]["svcca"]["observed"] is not None]
    assert scored, "the fixture should score at least one concept"
    assert f"{scored[0]['decoder']['svcca']['observed']:.3f}" in s
    assert len(re.findall(r"<tr><td", s)) == len(entries)
    assert 'data-measure="n_pairs"' in s and 'data-measure="svcca"' in s


def test_pair_cards_show_both_sides_with_the_firing_token_marked(study, page):
    s = sections(page)["pairs"]
    cards = study["pair_cards"]
    assert cards and s.count('<article class="pair-card"') == len(cards)
    assert s.count('<div class="context side-a">') == s.count('<div class="context side-b">') == len(cards)
    n_contexts = sum(len(c["a"]) + len(c["b"]) for c in cards)
    assert n_contexts > 0 and s.count("<mark>") == n_contexts
    first = cards[0]["a"][0]
    assert f"<mark>{token_html(first['tokens'][first['focus']])}</mark>" in s
    assert f"r = {cards[0]['corr']:.3f}" in s


def test_absorption_per_letter_table_and_charts(study, page):
    s = sections(page)["absorption"]
    absorption = study["absorption"]
    letters_table = s.split('class="absorption-letters"')[1]
    assert len(re.findall(r"<tr><td", letters_table)) == 26
    assert s.count('<figure class="bar-chart"') >= 3
    for sae in absorption["saes"]:
        assert sae["name"] in s and f"{sae['summary']['mean_absorption_fraction']:.3f}" in s


def test_token_strings_are_escaped_and_whitespace_is_visible(study):
    results = copy.deepcopy(study)
    tokens = ["<script>", "alert(1)", "</script>", " & ", '"q"', "\n", "\t", "  ", "\x07"]
    results["pair_cards"][0]["a"][0] = {"tokens": tokens, "focus": 0, "activation": 1.5}
    results["models"][0]["label"] = "<b>model</b>"
    html = render_report(results)
    assert "<script" not in html and "<b>model</b>" not in html
    assert "<mark>&lt;script&gt;</mark>" in html and "&lt;/script&gt;" in html
    assert "&amp;" in html and "&quot;q&quot;" in html and "&lt;b&gt;model&lt;/b&gt;" in html
    assert '<span class="ws">↵</span>' in html and '<span class="ws">⇥</span>' in html
    assert '<span class="ws">··</span>' in html and '<span class="ws">\\x07</span>' in html


def test_no_external_resources(page):
    """Nothing is fetched: the only URLs are the pair cards' explore links, anchors that navigate to the local
    explorer when clicked (never loaded by the report)."""
    from saeatlas.explore.study import REPORT_PORT

    explore = re.compile(
        rf'<a class="explore" href="http://127\.0\.0\.1:{REPORT_PORT}/#view=pair&amp;c=\d+&amp;a=\d+&amp;b=\d+"'
    )
    assert len(explore.findall(page)) > 0
    rest = explore.sub("<a", page)
    assert "http://" not in rest and "https://" not in rest
    for attr in re.findall(r'\b(?:src|href|xlink:href|action|srcset|poster)\s*=\s*"([^"]*)"', rest):
        assert attr.startswith(("#", "data:")), attr
    assert "url(" not in page and "@import" not in page and "<script" not in page
    assert "default-src 'none'" in page  # the browser refuses any fetch


def test_missing_results_degrade_to_not_run(study):
    results = copy.deepcopy(study)
    results.update(compare=None, concepts=None, absorption=None, pair_cards=[])
    found = sections(render_report(results))
    for sid in ("heatmaps", "correlations", "controls", "concepts", "pairs", "absorption"):
        assert '<p class="not-run">not run' in found[sid], sid
    assert "not run" not in found["study"] and "not run" not in found["saes"]
    bare = sections(render_report({"version": 1, "kind": "study"}))
    assert list(bare) == [sid for sid, _ in SECTIONS]
    no_controls = copy.deepcopy(study)
    for entry in no_controls["compare"]["pairs"]:
        for kind in ("random_init", "neurons", "shifted"):
            entry.pop(kind)
    no_controls["compare"]["skyline"] = []
    found = sections(render_report(no_controls))
    assert "not run" in found["controls"] and "not run" not in found["heatmaps"]


def test_legacy_mode_is_flagged(built, study):
    root, _ = built
    assert 'id="legacy-banner"' not in render_report(study)
    legacy = copy.deepcopy(study)
    legacy["compare"] = json.loads(json.dumps(jsonable(run_compare(_compare_cfg(root, "legacy_first")))))
    legacy["legacy"] = legacy["compare"]["legacy"]["method"]
    html = render_report(legacy)
    assert legacy["legacy"] is True and 'id="legacy-banner"' in html and "LEGACY MODE" in html
    assert "legacy_first" in sections(html)["heatmaps"]


def test_write_report_and_the_cli(study, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(study))
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html" and path.read_text(encoding="utf-8") == render_report(study)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results.json"]  # no temporary left
    path.unlink()
    assert main(["report", str(tmp_path)]) == 0 and path.is_file()
    with pytest.raises(SaeAtlasError, match="no results.json"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "results.json").write_text(json.dumps({"kind": "compare"}))
    with pytest.raises(SaeAtlasError, match="not a study"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{")
    assert main(["report", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- top contexts
def _reference(store: ActivationStore, sae, hook: str, latent: int, n: int):
    """Naive: dense codes of every usable row, the n largest (ties: lower row first)."""
    index = np.concatenate([store.index(s) for s in range(store.n_shards)])
    acts = torch.cat([store.activations(hook, s).float() for s in range(store.n_shards)])
    usable = np.flatnonzero((index["flags"] & EXCLUDED_BY_DEFAULT) == 0)
    with torch.no_grad():
        codes = sae.eval().encode(acts[usable])[:, latent].numpy()
    order = np.lexsort((np.arange(len(codes)), -codes))
    return [(int(usable[i]), float(codes[i])) for i in order[:n] if codes[i] > 0], index


def test_top_contexts_match_a_naive_reference_and_join_to_the_text(built):
    root, _ = built
    store = ActivationStore(root / "stores" / "b")
    hook = HOOKS_B[1]
    sae = load_sae(root / "saes" / f"b-{hook}")
    docs = {d: r["text"] for d, r in store.documents().items()}
    latents = [0, 5, 17, 47]
    out = top_contexts(store, sae, hook, latents, n=3, width=6, after=2)
    assert list(out) == latents
    for latent in latents:
        expected, index = _reference(store, sae, hook, latent, 3)
        assert len(out[latent]) == len(expected)
        for ctx, (row, value) in zip(out[latent], expected):
            assert ctx["activation"] == pytest.approx(value, rel=1e-5)
            rec = index[row]
            first = row - ctx["focus"]
            last = first + len(ctx["tokens"]) - 1
            # the window: width tokens before (fewer at the window's start), `after` after (fewer at its end)
            assert ctx["focus"] == min(6, int(rec["position"]))
            assert index["position"][first] == rec["position"] - ctx["focus"]
            assert last - row == 2 or last + 1 == len(index) or index["position"][last + 1] == 0
            # the tokens join up to exactly the document's text
            text = docs[int(rec["doc_id"])]
            assert "".join(ctx["tokens"]) == text[index["char_start"][first] : index["char_end"][last]]
            assert ctx["tokens"][ctx["focus"]].strip() in text[rec["char_start"] : rec["char_end"]]


def test_top_contexts_of_a_silent_latent_and_bad_input(built):
    root, _ = built
    store = ActivationStore(root / "stores" / "a")
    hook = HOOKS_A[0]
    sae = load_sae(root / "saes" / f"a-{hook}")
    with torch.no_grad():
        sae.b_enc[3] = -1e6  # never among the top k
    out = top_contexts(store, sae, hook, [3, 4], n=2)
    assert out[3] == [] and len(out[4]) == 2
    with pytest.raises(SaeAtlasError, match="no hook 'resid_post.3'"):
        top_contexts(store, sae, "resid_post.3", [0])
    with pytest.raises(SaeAtlasError, match="latent 48 is out of range"):
        top_contexts(store, sae, hook, [48])
    with pytest.raises(SaeAtlasError, match="d_in 24"):
        top_contexts(store, load_sae(root / "saes" / f"b-{HOOKS_B[0]}"), hook, [0])


def test_contexts_of_markup_text_with_bos_render_escaped(tiny_gemma, study, tmp_path):
    """A model that adds <bos>, on a document full of markup: <bos> (no text span) is decoded with the
    tokenizer and never a focus; the text tokens join up to the document's text; the report escapes them."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "tricky.txt").write_text(f"{TRICKY} {TRICKY}")
    tiny_store(
        tiny_gemma,
        tmp_path / "corpus",
        tmp_path / "store",
        hooks=["resid_post.1"],
        tokens=3000,
        context=16,
        batch_size=8,
    )
    store = ActivationStore(tmp_path / "store")
    text = store.documents()[0]["text"]
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=32, d_sae=16, k=4))
    out = top_contexts(store, sae, "resid_post.1", range(16), n=3, width=20)
    contexts = [c for cs in out.values() for c in cs]
    assert all(len(cs) <= 3 for cs in out.values()) and len(contexts) > 16
    assert all(c["tokens"][0] == "<bos>" and c["focus"] >= 1 for c in contexts)  # <bos> is never a focus
    assert all("".join(c["tokens"][1:]) in text for c in contexts)
    marked = [c for c in contexts if "<" in "".join(c["tokens"])]
    assert marked
    results = copy.deepcopy(study)
    results["pair_cards"] = [{**results["pair_cards"][0], "a": marked, "b": []}]
    html = render_report(results)
    assert "<script" not in html and "&lt;bos&gt;" in html
    for c in marked:  # each context's text before its focus, escaped, as one run
        assert "".join(token_html(t) for t in c["tokens"][: c["focus"]]) in html
    assert "no activating context" in html  # the empty side
