"""The explorer in a real browser: headless Chromium (as tests/test_report_browser.py) over a tiny study.

Fails on any console error, page error or request outside the explorer's own 127.0.0.1 address.  Checks
that sort, the layer-pair / concept / absorption-role filters and search work, that a permalink opened in a
fresh page shows the same view, that a pair's contexts on the page are `top_contexts`'s, that the corpus's
markup (`<script>`) shows as text, and that the controls' pairs (random-init SAE, neurons) open with dashboards.
"""

from __future__ import annotations

import os
import threading

import pytest
from explore_fixture import build_explore_study
from test_report_browser import CHROMIUM, VIEWPORT, _browser_or_fail

from saeatlas.explore.server import make_server
from saeatlas.explore.study import StudyIndex

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tiny_llama, tiny_other, tmp_path_factory):
    study = build_explore_study(tmp_path_factory.mktemp("explore-browser"), tiny_llama, tiny_other)
    server = make_server(str(study), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield study, server
    server.shutdown()
    server.server_close()


def _open(browser, url: str, errors: list, outside: list, origin: str):
    page = browser.new_page(viewport=VIEWPORT)
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith((origin, "data:")) else outside.append(r.url))
    page.goto(url, wait_until="load")
    _ready(page)
    return page


def _ready(page) -> None:
    """Wait until the view of the current fragment has rendered."""
    page.wait_for_function("() => document.body.dataset.ready === location.hash")
    page.wait_for_load_state("networkidle")


def test_the_explorer_in_chromium(served):
    from saeatlas.compare.contexts import top_contexts
    from saeatlas.data.store import ActivationStore
    from saeatlas.explore.latents import TOP_N
    from saeatlas.sae.formats import load_sae

    sync_playwright = _browser_or_fail()
    study, server = served
    origin = server.url.rstrip("/")
    index = StudyIndex(study)
    errors, outside = [], []
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = _open(browser, server.url, errors, outside, origin)
            rows = page.locator("#pairs-table tbody tr")
            total = sum(len(index.pairs(c["id"])) for c in index.comparisons if c["kind"] == "sae")
            assert f"{total} pairs" in page.locator("#pair-count").inner_text() and rows.count() == min(total, 50)
            corr = [float(v) for v in rows.evaluate_all("rs => rs.map(r => r.dataset.corr)")]
            assert corr == sorted(corr, reverse=True)

            # sort ascending, then filter by layer pair, concept, absorption role
            page.select_option("#f-sort", "corr")
            _ready(page)
            corr = [float(v) for v in rows.evaluate_all("rs => rs.map(r => r.dataset.corr)")]
            assert corr == sorted(corr) and "sort=corr" in page.url
            page.select_option("#f-c", "0")
            _ready(page)
            assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.c)")) == {"0"}
            assert rows.count() == min(len(index.pairs(0)), 50)
            page.select_option("#f-concept", "animals")
            _ready(page)
            animals = [p for p in index.pairs(0) if "animals" in p["concepts"]]
            assert rows.count() == len(animals) > 0
            page.select_option("#f-concept", "")
            _ready(page)
            page.select_option("#f-role", "any")
            _ready(page)
            roles = [p for p in index.pairs(0) if p["roles_a"] or p["roles_b"]]
            assert rows.count() == len(roles) > 0 and rows.first.locator(".tag.role").count() > 0
            page.select_option("#f-role", "")
            _ready(page)

            # filter by correlation: the median of the layer pair's correlations as the lower bound
            cut = sorted(p["corr"] for p in index.pairs(0))[len(index.pairs(0)) // 2]
            page.fill("#f-min_corr", f"{cut:.4f}")
            page.press("#f-min_corr", "Enter")
            _ready(page)
            assert "min_corr=" in page.url
            assert rows.count() == sum(p["corr"] >= float(f"{cut:.4f}") for p in index.pairs(0)) > 0

            # a pair: its contexts on the page are top_contexts's; back returns to the filtered list
            pair = index.pairs(0)[0]
            page.goto(f"{server.url}#view=pair&c=0&a={pair['idx_a']}&b={pair['idx_b']}")
            _ready(page)
            spec_a, spec_b = index.sides(0)
            for side, spec, latent in (("a", spec_a, pair["idx_a"]), ("b", spec_b, pair["idx_b"])):
                expected = top_contexts(ActivationStore(spec.store), load_sae(spec.sae), spec.hook, [latent], n=TOP_N)
                shown = page.locator(f".dashboard.side-{side} .top li.context")
                assert shown.count() == len(expected[latent]) > 0
                for i, context in enumerate(expected[latent]):
                    item = shown.nth(i)
                    text = "".join(context["tokens"]).replace("\n", "↵").replace("\t", "⇥")
                    assert item.locator(".tok").evaluate_all("ts => ts.map(t => t.textContent).join('')") == text
                    focus = context["tokens"][context["focus"]].replace("\n", "↵").replace("\t", "⇥")
                    assert item.locator("mark").text_content() == focus
                assert page.locator(f".dashboard.side-{side} .hist span").count() == 24
                page.wait_for_function(
                    f"() => document.querySelectorAll('.dashboard.side-{side} .logits li').length === 20"
                )
            assert page.locator("#pair-corr").inner_text() == f"r = {pair['corr']:.3f}"
            assert page.locator(".cofire li.context").count() > 0
            sides = [page.locator(".dashboard").nth(i).bounding_box() for i in range(2)]
            assert sides[0]["x"] + sides[0]["width"] <= sides[1]["x"] + 1  # side by side
            permalink = page.url
            page.go_back()
            _ready(page)
            assert page.locator("#pairs-table").is_visible() and "min_corr=" in page.url

            # a permalink opened fresh shows the same view
            fresh = _open(browser, permalink, errors, outside, origin)
            assert fresh.locator("h2").first.inner_text() == f"a #{pair['idx_a']} ⟷ b #{pair['idx_b']}"
            assert fresh.locator("#pair-corr").inner_text() == f"r = {pair['corr']:.3f}"
            assert fresh.locator(".dashboard.side-a .top li.context").count() > 0

            # search: the markup of the corpus shows as text, and nothing it holds runs
            fresh.fill("#search-box", "<")
            fresh.press("#search-box", "Enter")
            _ready(fresh)
            assert "view=search" in fresh.url and fresh.locator(".search-side.side-a .search-row").count() > 0
            fresh.locator(".search-side.side-a .search-row a").first.click()
            _ready(fresh)
            shown = fresh.locator(".dashboard .top").inner_text()
            assert "<" in shown and fresh.locator(".dashboard script, .dashboard b").count() == 0
            assert fresh.evaluate("document.scripts.length") == 1

            # the controls' pairs open like the others: the random-init SAE's and the raw neurons' dashboards
            kinds = {c["kind"]: c["id"] for c in index.comparisons if c["hook_a"] == c["hook_b"] == "resid_post.1"}
            fresh.goto(f"{server.url}#view=pairs&c={kinds['random_init']}")
            _ready(fresh)
            fresh.locator("#pairs-table tbody tr a").first.click()
            _ready(fresh)
            first = index.pairs(kinds["random_init"])[0]
            assert f"c={kinds['random_init']}&a={first['idx_a']}&b={first['idx_b']}" in fresh.url
            assert fresh.locator("#pair-control").inner_text() == "random-init SAE (control)"
            heading = fresh.locator(".dashboard.side-b h3").inner_text()
            assert heading == f"b random-init SAE (control) resid_post.1 · latent {first['idx_b']}"
            assert fresh.locator(".dashboard.side-b .top li.context").count() > 0
            fresh.wait_for_function("() => document.querySelectorAll('.dashboard.side-b .logits li').length === 20")
            neuron = index.pairs(kinds["neurons"])[0]
            fresh.goto(f"{server.url}#view=pair&c={kinds['neurons']}&a={neuron['idx_a']}&b={neuron['idx_b']}")
            _ready(fresh)
            assert fresh.locator(".dashboard.side-a h3").inner_text() == (
                f"a resid_post.1 · neuron {neuron['idx_a']} (control)"
            )
            assert fresh.locator("#pair-control").inner_text() == "neurons (control)"
            assert fresh.locator(".dashboard.side-a .top li.context").count() == TOP_N
            assert fresh.locator(".dashboard.side-a .hist span").count() == 24
            assert "value > 0" in fresh.locator(".dashboard.side-a .stats").inner_text()
            fresh.wait_for_function("() => document.querySelectorAll('.dashboard.side-a .logits li').length === 20")
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, f"the explorer made requests outside {origin}: {outside}"
