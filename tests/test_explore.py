"""`saeatlas explore` against a real tiny study: the API's pairs, dashboards, logit effects, co-firing contexts,
filters and search checked against direct computations; the server's safety (no route reads a file a request
names, bad ids answer JSON errors, only GET, Host checked, CSP on every answer, the study folder untouched);
the CLI's bad inputs; and the static report's links into the explorer.

One tiny study (two tiny models with different tokenizers, every control, concepts, absorption) is run once
per module (`explore_fixture.build_explore_study`).
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from explore_fixture import build_explore_study

from saeatlas.cli import main
from saeatlas.explore.server import CONTENT_SECURITY_POLICY, make_server
from saeatlas.explore.study import StudyIndex, comparison_list


@pytest.fixture(scope="module")
def study(tiny_llama, tiny_other, tmp_path_factory) -> Path:
    return build_explore_study(tmp_path_factory.mktemp("explore"), tiny_llama, tiny_other)


@pytest.fixture(scope="module")
def server(study):
    srv = make_server(str(study), 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request, the path sent as is (no client-side normalising)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{server.server_address[1]}")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def api(server, path: str) -> dict:
    status, _, body = get(server, path)
    assert status == 200, body
    return json.loads(body)


def _results(study: Path) -> dict:
    return json.loads((study / "results.json").read_text())


def _strip(contexts: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "acts"} for c in contexts]


# ---------------------------------------------------------------- the API's content
def test_the_pair_list_is_every_comparisons_pairs_strongest_first(server, study):
    results = _results(study)
    comparisons = comparison_list(results)
    kinds = {(c["hook_a"], c["hook_b"], c["kind"]) for c in comparisons}
    assert ("resid_post.1", "resid_post.1", "neurons") in kinds and ("resid_post.2", "resid_post.2", "skyline") in kinds
    summary = api(server, "/api/study")
    assert [c["id"] for c in summary["comparisons"]] == list(range(len(comparisons)))
    for c in comparisons:
        got = api(server, f"/api/pairs?c={c['id']}&limit=500")
        expected = c["entry"]["pairs"]
        assert got["total"] == len(expected["idx_a"]) > 0
        assert sorted((p["idx_a"], p["idx_b"], p["corr"]) for p in got["pairs"]) == sorted(
            zip(expected["idx_a"], expected["idx_b"], expected["corr"], strict=True)
        )
        corr = [p["corr"] for p in got["pairs"]]
        assert corr == sorted(corr, reverse=True) and [p["rank"] for p in got["pairs"]] == list(range(1, len(corr) + 1))
    everything = api(server, "/api/pairs?c=all&limit=500&sort=corr")
    assert everything["total"] == sum(len(c["entry"]["pairs"]["idx_a"]) for c in comparisons if c["kind"] == "sae")
    assert [p["corr"] for p in everything["pairs"]] == sorted(p["corr"] for p in everything["pairs"])
    page = api(server, "/api/pairs?c=0&offset=3&limit=2")["pairs"]
    assert [p["rank"] for p in page] == [4, 5]


def test_the_pair_list_filters_by_correlation(server, study):
    corr = sorted(p["corr"] for p in api(server, "/api/pairs?c=0&limit=500")["pairs"])
    lo, hi = corr[len(corr) // 4], corr[3 * len(corr) // 4]
    got = api(server, f"/api/pairs?c=0&limit=500&min_corr={lo}&max_corr={hi}")["pairs"]
    assert [p["corr"] for p in got] == sorted((c for c in corr if lo <= c <= hi), reverse=True)
    assert api(server, f"/api/pairs?c=0&limit=500&min_corr={hi}")["total"] == sum(c >= hi for c in corr)
    for bad in ("abc", "nan", "2", "-1.5"):
        status, _, body = get(server, f"/api/pairs?c=0&min_corr={bad}")
        assert status == 400 and b"correlation from -1 to 1" in body


def test_opening_a_study_reads_no_sae_and_no_store(study, monkeypatch):
    """The page, the study summary and the pair lists come from results.json alone, so opening costs the same
    whatever the SAEs' width (nothing is loaded until a latent is shown)."""
    from saeatlas.data import store as store_module
    from saeatlas.sae import formats

    def refuse(*args, **kwargs):
        raise AssertionError("an SAE or a store was read while opening the study")

    monkeypatch.setattr(formats, "load_sae", refuse)
    monkeypatch.setattr(store_module.ActivationStore, "__init__", refuse)
    srv = make_server(str(study), 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert get(srv, "/")[0] == 200
        summary = api(srv, "/api/study")
        for c in summary["comparisons"]:
            assert api(srv, f"/api/pairs?c={c['id']}&limit=5")["total"] > 0
        assert api(srv, "/api/pairs?c=all&concept=animals")["total"] >= 0
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_pair_view_shows_top_contexts_histogram_frequency_and_co_firing(server, study):
    from saeatlas.compare.contexts import top_contexts, usable_rows
    from saeatlas.data.store import ActivationStore
    from saeatlas.explore.latents import TOP_N
    from saeatlas.sae.formats import load_sae

    index = StudyIndex(study)
    first = index.pairs(0)[0]
    view = api(server, f"/api/pair?c=0&a={first['idx_a']}&b={first['idx_b']}")
    assert view["corr"] == first["corr"] and view["rank"] == 1
    for side, spec in zip("ab", index.sides(0), strict=True):
        store, sae = ActivationStore(spec.store), load_sae(spec.sae)
        latent = first[f"idx_{side}"]
        d = view[side]
        assert _strip(d["top"]) == top_contexts(store, sae, spec.hook, [latent], n=TOP_N)[latent]
        # every context's shading holds its focus activation
        assert all(c["acts"][c["focus"]] == c["activation"] for c in d["top"])
        # the histogram counts every firing position once; frequency = firing / usable
        codes = sae.eval().encode(_acts(store, spec.hook)).detach().numpy()[:, latent]
        n_usable = len(usable_rows(store)[1])
        assert sum(d["histogram"]["counts"]) == d["n_fire"] == int((codes > 0).sum()) > 0
        assert d["n_usable"] == n_usable and d["frequency"] == pytest.approx(d["n_fire"] / n_usable)
        assert d["max"] == pytest.approx(float(codes.max()), rel=1e-5)
        for interval in d["intervals"]:
            assert all(interval["lo"] < c["activation"] <= interval["hi"] + 1e-6 for c in interval["contexts"])
    both = view["both"]
    assert 0 < both["n_both"] <= min(both["n_a"], both["n_b"]) and both["contexts"]
    for pair in both["contexts"]:  # aligned positions: both models read the same text up to the firing token
        a = "".join(pair["a"]["tokens"][: pair["a"]["focus"] + 1])
        b = "".join(pair["b"]["tokens"][: pair["b"]["focus"] + 1])
        assert a.endswith(b) or b.endswith(a)
        assert pair["a"]["activation"] > 0 and pair["b"]["activation"] > 0


def _acts(store, hook):
    """Activations of every usable row of `store`'s hook, [n_usable, d_model] float32."""
    import torch

    from saeatlas.compare.align import gather_rows
    from saeatlas.compare.contexts import usable_rows

    return torch.cat(list(gather_rows(store, hook, usable_rows(store)[1])))


def test_logit_effects_are_the_decoder_row_through_the_unembedding(server, study, tiny_other):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saeatlas.sae.formats import load_sae

    index = StudyIndex(study)
    first = index.pairs(0)[0]
    got = api(server, f"/api/logits?c=0&side=b&i={first['idx_b']}")
    w_u = AutoModelForCausalLM.from_pretrained(tiny_other).get_output_embeddings().weight.detach().float().numpy()
    direction = load_sae(index.sides(0)[1].sae).W_dec[first["idx_b"]].detach().float().numpy()
    effects = w_u @ direction  # [vocab]
    tokenizer = AutoTokenizer.from_pretrained(tiny_other)
    top = np.argsort(-effects, kind="stable")[:10]
    assert [t["id"] for t in got["positive"]] == top.tolist()
    assert [t["value"] for t in got["positive"]] == pytest.approx(effects[top].tolist(), rel=1e-5, abs=1e-7)
    assert [t["token"] for t in got["positive"]] == [tokenizer.decode([int(i)]) for i in top]
    assert got["negative"][0]["value"] == pytest.approx(float(effects.min()), rel=1e-5, abs=1e-7)


def test_filters_by_concept_and_absorption_role_and_the_latent_view(server, study):
    results = _results(study)
    summary = api(server, "/api/study")
    assert summary["concepts"] == sorted(CONCEPT_NAMES) and summary["letters"]
    entries = [
        e for e in results["concepts"]["entries"] if (e["hook_a"], e["hook_b"]) == ("resid_post.1", "resid_post.1")
    ]
    concept = max(entries, key=lambda e: e["n_pairs"])
    got = api(server, f"/api/pairs?c=0&limit=500&concept={concept['concept'].replace(' ', '%20')}")["pairs"]
    pairs = results["compare"]["pairs"][0]["sae"]["pairs"]
    expected = [
        (a, b)
        for a, b in zip(pairs["idx_a"], pairs["idx_b"], strict=True)
        if a in concept["latents_a"] or b in concept["latents_b"]
    ]
    assert sorted((p["idx_a"], p["idx_b"]) for p in got) == sorted(expected) and expected
    # absorption roles: model A's main SAE at resid_post.1 is the k = 4 SAE absorption scored
    (sae,) = [s for s in results["absorption"]["saes"] if s["k"] == 4]
    main_latents = {(i, letter["letter"]) for letter in sae["letters"] for i in letter["main_latents"]}
    roles = api(server, "/api/pairs?c=0&limit=500&role=any")["pairs"]
    assert roles and all(p["roles_a"] and not p["roles_b"] for p in roles)
    assert {(p["idx_a"], r["letter"]) for p in roles for r in p["roles_a"] if r["role"] in ("main", "split")} == {
        (a, letter) for a, letter in main_latents if a in pairs["idx_a"]
    }
    letter = roles[0]["roles_a"][0]["letter"]
    by_letter = api(server, f"/api/pairs?c=0&limit=500&letter={letter}")["pairs"]
    assert by_letter and all(any(r["letter"] == letter for r in p["roles_a"]) for p in by_letter)
    latent = api(server, f"/api/latent?c=0&side=a&i={roles[0]['idx_a']}")
    assert {p["idx"] for p in latent["partners"]} == {p["idx_b"] for p in roles if p["idx_a"] == roles[0]["idx_a"]}


CONCEPT_NAMES = ["animals", "weather", "creation", "function words"]


def test_search_ranks_latents_by_mean_activation_on_the_token(server, study):
    from saeatlas.compare.contexts import Texts, usable_rows
    from saeatlas.data.store import ActivationStore
    from saeatlas.sae.formats import load_sae

    got = api(server, "/api/search?c=0&q=%20Fox%20")
    spec = StudyIndex(study).sides(0)[0]
    store = ActivationStore(spec.store)
    index, usable = usable_rows(store)
    texts = Texts(store, index)
    where = [p for p, r in enumerate(usable) if texts.token(int(r)).strip().casefold() == "fox"]
    assert got["n_a"] == len(where) > 0
    codes = load_sae(spec.sae).eval().encode(_acts(store, spec.hook)).detach().numpy()[where]  # [m, d_sae]
    mean = codes.mean(0)
    assert [r["latent"] for r in got["a"]] == [int(i) for i in np.argsort(-mean, kind="stable")[:10] if mean[i] > 0]
    assert got["a"][0]["mean"] == pytest.approx(float(mean.max()), rel=1e-5)
    assert got["a"][0]["n_fire"] == int((codes[:, got["a"][0]["latent"]] > 0).sum())
    assert api(server, "/api/search?c=0&q=zzzqqq")["a"] == []


# ---------------------------------------------------------------- safety
@pytest.mark.parametrize(
    "path",
    [
        "/../results.json",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2fresults.json",
        "/etc/passwd",
        "//etc/passwd",
        "/results.json",
        "/stores/a/manifest.json",
        "/explore.js/../page.html",
        "/api/../results.json",
        "/api/pairs/../../results.json",
    ],
)
def test_request_paths_never_name_files(server, path):
    status, headers, body = get(server, path)
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert "error" in json.loads(body) and b"root:" not in body and b'"kind"' not in body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/pair?c=0&a=-1&b=0", 400),
        ("/api/pair?c=0&a=x&b=0", 400),
        ("/api/pair?c=0&a=1", 400),
        ("/api/pair?c=999&a=1&b=1", 404),
        ("/api/pair?c=0&a=47&b=999999", 404),
        ("/api/pair?c=2&a=0&b=999999", 404),  # the neurons control: not a matched pair
        ("/api/latent?c=2&side=a&i=999999", 404),  # past the last neuron
        ("/api/latent?c=0&side=c&i=1", 400),
        ("/api/latent?c=0&side=a&i=48", 404),
        ("/api/pairs?c=0&sort=evil", 400),
        ("/api/pairs?c=0&role=king", 400),
        ("/api/pairs?c=0&limit=0", 400),
        ("/api/search?c=0&q=", 400),
        ("/api/logits?c=0&side=a&i=99999", 404),
    ],
)
def test_bad_ids_are_json_errors(server, path, status):
    got, headers, body = get(server, path)
    assert got == status and headers["Content-Type"] == "application/json"
    message = json.loads(body)["error"]
    assert message and "\n" not in message and "Traceback" not in message


def test_every_answer_carries_the_policy_and_only_get_is_served(server):
    for path in ("/", "/explore.js", "/explore.css", "/api/study", "/nope"):
        _, headers, _ = get(server, path)
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = get(server, "/")
    assert status == 200 and b'<script src="/explore.js"' in body and b"http" not in body.split(b"<body>")[0]
    for method in ("POST", "PUT", "DELETE"):
        assert get(server, "/api/study", method)[0] == 405
    assert get(server, "/api/study", host="evil.example:80")[0] == 403  # DNS rebinding


def test_the_page_never_builds_markup_from_data():
    from importlib.resources import files

    script = files("saeatlas.explore").joinpath("explore.js").read_text()
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script and "document.write" not in script
    assert "http://" not in script and "https://" not in script


def test_tricky_text_comes_back_as_plain_token_strings(server):
    got = api(server, "/api/search?c=0&q=%3C")  # "<" of the corpus's <script> markup
    assert got["n_a"] == 4 and got["a"]  # <script>, </script>, <b>, </b>
    view = api(server, f"/api/latent?c=0&side=a&i={got['a'][0]['latent']}")
    tokens = [t for c in view["latent"]["top"] for t in c["tokens"]]
    assert any("<" in t for t in tokens)  # strings stay strings; the page shows them with textContent


def test_the_explorer_never_writes_into_the_study(server, study):
    before = {p: p.stat().st_mtime_ns for p in study.rglob("*")}
    first = StudyIndex(study).pairs(3)[0]
    for path in ("/api/study", "/api/pairs?c=all", f"/api/pair?c=3&a={first['idx_a']}&b={first['idx_b']}"):
        api(server, path)
    api(server, "/api/search?c=3&q=the")
    api(server, "/api/logits?c=3&side=a&i=0")
    after = {p: p.stat().st_mtime_ns for p in study.rglob("*")}
    assert before == after


def test_a_moved_study_opens_from_its_new_folder(study, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(study, moved)
    index = StudyIndex(moved)
    a, b = index.sides(0)
    assert moved.resolve() in a.store.parents and moved.resolve() in b.sae.parents
    with pytest.raises(Exception, match="outside the study"):
        index.path("/etc")


# ---------------------------------------------------------------- CLI
def _damaged(root: Path, study: Path, pairs=None, version=None) -> Path:
    """A copy of the study's results.json, its compare pairs or its version replaced."""
    results = _results(study)
    if pairs is not None:
        results["compare"]["pairs"] = pairs
    if version is not None:
        results["version"] = version
    (root / "results.json").write_text(json.dumps(results))
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root, study: root / "missing", "is not a folder"),
        (lambda root, study: root, "no results.json"),
        (lambda root, study: (root / "r.json").write_text("[]") and root / "r.json", "is not a folder"),
        (lambda root, study: _damaged(root, study, pairs="none"), "compare.pairs"),
        (lambda root, study: _damaged(root, study, version=99), "another saeatlas version"),
    ],
)
def test_cli_refuses_what_is_not_a_study(make, message, study, tmp_path, capsys):
    target = make(tmp_path, study)
    assert main(["explore", str(target), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_refuses_a_bad_or_busy_port(study, server, capsys):
    assert main(["explore", str(study), "--port", "70000", "--no-browser"]) == 2
    assert "out of range" in capsys.readouterr().err
    busy = server.server_address[1]
    assert main(["explore", str(study), "--port", str(busy), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot listen on 127.0.0.1:{busy}" in err and len(err.splitlines()) == 1


def test_cli_serves_until_ctrl_c(study, monkeypatch, capsys):
    from saeatlas.explore import server as module

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(module.ExploreServer, "serve_forever", interrupted)
    assert main(["explore", str(study), "--no-browser"]) == 0
    captured = capsys.readouterr()
    assert "http://127.0.0.1:" in captured.out and "stopped" in captured.err


def test_the_report_links_each_pair_card_into_the_explorer(study):
    import re

    report = (study / "report.html").read_text()
    links = re.findall(r'data-explore="view=pair&amp;c=(\d+)&amp;a=(\d+)&amp;b=(\d+)"', report)
    results = _results(study)
    assert len(links) == len(results["pair_cards"]) > 0
    index = StudyIndex(study)
    for c, a, b in links:
        assert index.pair(int(c), int(a), int(b)) is not None
    assert "saeatlas explore" in report


def test_the_default_port_is_the_one_the_report_links_to_or_a_free_one_when_taken(study):
    import socket

    from saeatlas.explore.study import REPORT_PORT

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", REPORT_PORT))
        held = True
    except OSError:  # someone else holds it: taken all the same
        held = False
    try:
        srv = make_server(str(study))
        assert srv.server_address[1] not in (REPORT_PORT, 0)
        srv.server_close()
    finally:
        holder.close()
    if held:  # it was free a moment ago: the explorer takes it
        srv = make_server(str(study))
        assert srv.server_address[1] == REPORT_PORT
        srv.server_close()


# ---------------------------------------------------------------- the controls' dashboards
def _control(study: Path, kind: str, hook_a: str = "resid_post.1", hook_b: str = "resid_post.1") -> dict:
    (c,) = [
        c for c in comparison_list(_results(study)) if (c["kind"], c["hook_a"], c["hook_b"]) == (kind, hook_a, hook_b)
    ]
    return c


def test_the_random_init_sae_is_rebuilt_as_compare_built_it(server, study):
    """Its codes at compare's aligned positions give the stored correlations of the control's listed pairs."""
    from saeatlas.compare.align import align_stores, gather_rows
    from saeatlas.compare.codes import encode_sparse
    from saeatlas.compare.contexts import top_contexts
    from saeatlas.compare.sides import limit_positions
    from saeatlas.data.store import ActivationStore
    from saeatlas.explore.latents import TOP_N
    from saeatlas.explore.views import Explorer
    from saeatlas.sae.formats import load_sae

    c = _control(study, "random_init")
    index = StudyIndex(study)
    spec_a, spec_b = index.sides(c["id"])
    assert spec_b.kind == "random_init" and spec_b.label == "b random-init SAE (control)"
    rebuilt = Explorer(index).random_init_sae(spec_b)
    real_b = load_sae(spec_b.sae)
    assert rebuilt.cfg.d_sae == real_b.cfg.d_sae and not np.allclose(rebuilt.W_dec.detach(), real_b.W_dec.detach())
    cfg = index.compare_config()
    store_a, store_b = ActivationStore(spec_a.store), ActivationStore(spec_b.store)
    align = limit_positions(align_stores(store_a, store_b), cfg.max_positions)
    codes_a = encode_sparse(load_sae(spec_a.sae).eval(), gather_rows(store_a, spec_a.hook, align.rows_a)).toarray()
    codes_b = encode_sparse(rebuilt.eval(), gather_rows(store_b, spec_b.hook, align.rows_b)).toarray()
    pairs = c["entry"]["pairs"]
    assert len(pairs["idx_a"]) >= 3
    for a, b, stored in list(zip(pairs["idx_a"], pairs["idx_b"], pairs["corr"], strict=True))[:5]:
        assert np.corrcoef(codes_a[:, a], codes_b[:, b])[0, 1] == pytest.approx(stored, abs=1e-5)
    # the pair view shows the rebuilt SAE's dashboard: its top contexts are top_contexts' with that SAE
    a, b = pairs["idx_a"][0], pairs["idx_b"][0]
    view = api(server, f"/api/pair?c={c['id']}&a={a}&b={b}")
    assert view["labels"] == ["a", "b random-init SAE (control)"] and view["b"]["kind"] == "random_init"
    assert _strip(view["b"]["top"]) == top_contexts(store_b, rebuilt, spec_b.hook, [b], n=TOP_N)[b]
    assert view["b"]["n_fire"] == sum(view["b"]["histogram"]["counts"]) > 0
    logits = api(server, f"/api/logits?c={c['id']}&side=b&i={b}")
    assert logits["positive"] and logits["positive"][0]["value"] >= logits["negative"][0]["value"]


def test_a_neuron_dashboard_is_its_raw_activations(server, study, tiny_llama):
    from transformers import AutoModelForCausalLM

    from saeatlas.compare.contexts import usable_rows
    from saeatlas.data.store import ActivationStore
    from saeatlas.explore.latents import BINS, TOP_N

    c = _control(study, "neurons")
    pairs = c["entry"]["pairs"]
    a, b = pairs["idx_a"][0], pairs["idx_b"][0]
    view = api(server, f"/api/pair?c={c['id']}&a={a}&b={b}")
    assert view["labels"] == ["a", "b"] and view["a"]["kind"] == view["b"]["kind"] == "neurons"
    spec = StudyIndex(study).sides(c["id"])[0]
    assert spec.kind == "neurons" and spec.sae is None
    store = ActivationStore(spec.store)
    values = _acts(store, spec.hook).numpy()[:, a]  # [n_usable] neuron a at every usable position
    d = view["a"]
    assert d["unit"] == "neuron" and d["fires"] == "positive"
    assert d["n_usable"] == len(usable_rows(store)[1]) == len(values)
    assert d["n_fire"] == int((values > 0).sum()) and d["frequency"] == pytest.approx(float((values > 0).mean()))
    assert d["max"] == pytest.approx(float(values.max())) and d["min"] == pytest.approx(float(values.min()))
    h = d["histogram"]
    assert h["signed"] and len(h["counts"]) == BINS and sum(h["counts"]) == len(values)
    assert h["edges"][0] == pytest.approx(float(values.min())) and h["edges"][-1] == pytest.approx(float(values.max()))
    top = np.sort(values)[::-1][:TOP_N]
    assert [x["activation"] for x in d["top"]] == pytest.approx(top.tolist(), rel=1e-6)
    assert all(x["acts"][x["focus"]] == pytest.approx(x["activation"]) for x in d["top"])
    for interval in d["intervals"]:
        assert all(interval["lo"] < x["activation"] <= interval["hi"] + 1e-6 for x in interval["contexts"])
    # logit effects of the unit direction e_a: column a of W_U
    w_u = AutoModelForCausalLM.from_pretrained(tiny_llama).get_output_embeddings().weight.detach().float().numpy()
    got = api(server, f"/api/logits?c={c['id']}&side=a&i={a}")
    column = w_u[:, a]
    assert [t["id"] for t in got["positive"]] == np.argsort(-column, kind="stable")[:10].tolist()
    assert got["positive"][0]["value"] == pytest.approx(float(column.max()), rel=1e-5)
    # co-firing: positions where both neurons are positive; search ranks neurons by their mean on the token
    both = view["both"]
    assert both["n_a"] >= both["n_both"] and both["n_aligned"] > 0
    found = api(server, f"/api/search?c={c['id']}&q=%20Fox%20")
    assert found["n_a"] > 0 and found["a"] and found["a"][0]["mean"] >= found["a"][-1]["mean"]
    latent = api(server, f"/api/latent?c={c['id']}&side=b&i={b}")
    assert (
        latent["label"] == "b"
        and latent["latent"]["unit"] == "neuron"
        and {p["idx"] for p in latent["partners"]} >= {a}
    )


def test_the_shifted_control_co_fires_on_the_shifted_alignment(server, study):
    from saeatlas.compare.align import align_stores
    from saeatlas.data.store import ActivationStore
    from saeatlas.explore.views import Explorer

    c = _control(study, "shifted")
    pairs = c["entry"]["pairs"]
    index = StudyIndex(study)
    spec_a, spec_b = index.sides(c["id"])
    store_a, store_b = ActivationStore(spec_a.store), ActivationStore(spec_b.store)
    shifted, plain = align_stores(store_a, store_b, shift=1), align_stores(store_a, store_b)
    assert len(shifted.rows_a) != len(plain.rows_a) or not np.array_equal(shifted.rows_b, plain.rows_b)
    explorer = Explorer(index)
    space_a, space_b = explorer.space(spec_a), explorer.space(spec_b)
    checked = 0
    for a, b in list(zip(pairs["idx_a"], pairs["idx_b"], strict=True))[:5]:
        both = api(server, f"/api/pair?c={c['id']}&a={a}&b={b}")["both"]
        assert both["n_aligned"] == len(shifted.rows_a)
        # activations at the shifted pairs of rows (usable rows -> their positions in each store's usable list)
        va = space_a.dense(a)[np.searchsorted(space_a.view.usable, shifted.rows_a)]
        vb = space_b.dense(b)[np.searchsorted(space_b.view.usable, shifted.rows_b)]
        assert both["n_both"] == int(((va > 0) & (vb > 0)).sum())
        checked += both["n_both"] > 0
    assert checked


def test_a_stored_saes_codes_are_kept_in_the_cache_for_the_next_explorer(study, tmp_path, monkeypatch):
    from saeatlas.explore import latents
    from saeatlas.explore.views import Explorer

    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    spec = StudyIndex(study).sides(0)[0]
    first = Explorer(StudyIndex(study)).space(spec).codes()[0]
    kept = list((tmp_path / "cache" / "explore").glob("*.npz"))
    assert len(kept) == 1 and first.nnz > 0

    encoded = []
    real = latents.store_codes
    monkeypatch.setattr(latents, "store_codes", lambda *a: encoded.append(1) or real(*a))
    again = Explorer(StudyIndex(study)).space(spec).codes()[0]
    assert not encoded and again.shape == first.shape and (again != first).nnz == 0
    kept[0].write_bytes(b"not an npz")  # a damaged cache file: encoded again, the same codes
    third = Explorer(StudyIndex(study)).space(spec).codes()[0]
    assert encoded == [1] and (third != first).nnz == 0
    assert not list(study.rglob("*.npz"))  # never into the study folder


def test_cli_refuses_a_device_that_is_not_here(study, capsys):
    assert main(["explore", str(study), "--device", "cuda:99", "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cuda:99" in err and len(err.splitlines()) == 1


@pytest.mark.gpu
def test_codes_encoded_on_the_gpu_match_the_cpu(study, tmp_path, monkeypatch):
    from saeatlas.explore.views import Explorer

    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    spec = StudyIndex(study).sides(0)[0]
    cpu = Explorer(StudyIndex(study)).space(spec).codes()[0].toarray()
    gpu = Explorer(StudyIndex(study), device="cuda").space(spec).codes()[0].toarray()
    # TopK: a latent at the k-th place may swap with its neighbour where the two sums round apart
    same = (gpu != 0) == (cpu != 0)
    assert same.mean() > 0.999
    both = (gpu != 0) & (cpu != 0)
    np.testing.assert_allclose(gpu[both], cpu[both], rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "cache" / "explore").glob("*.npz"))) == 2  # one per device type
