"""The report in a real browser: headless Chromium opens report.html from disk.

It fails on any console error, page error or request other than the report file itself (data: URIs
are fine), checks that the heatmaps, pair cards and tables are there and visible, that nothing spills
out sideways, and saves a full-page screenshot: to $SAEATLAS_SCREENSHOT if set (e.g.
`SAEATLAS_SCREENSHOT=runs/report-screenshot.png`), else into the test's temporary folder.

Needs Debian's Chromium (`apt-get install -y chromium`, /usr/bin/chromium, or $SAEATLAS_CHROMIUM) and
Playwright's Python package (`pip install playwright==1.65.2`, in the `test` extra) driving it;
Playwright's own browser download (`playwright install`) is never used.  `make test` installs both.
Without them the test fails and says how to install them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_fixture import build_study_results

from saeatlas.report.html import SECTIONS, write_report

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SAEATLAS_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1360, "height": 900}


def _browser_or_fail():
    """Playwright's sync API, or a failure that says how to install what is missing."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (Debian), "
            "or point SAEATLAS_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the Python package playwright is missing: `.venv/bin/pip install playwright==1.65.2` "
            "(no `playwright install`: the test drives the system Chromium)",
            pytrace=False,
        )
    return sync_playwright


@pytest.fixture(scope="module")
def report(tiny_llama, tiny_other, tmp_path_factory):
    """report.html of a study of two tiny models, and its results."""
    import json

    root = tmp_path_factory.mktemp("browser-study")
    results = build_study_results(root / "work", tiny_llama, tiny_other)
    out = root / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    return write_report(out), results


def test_report_opens_offline_without_errors_and_shows_everything(report, tmp_path):
    sync_playwright = _browser_or_fail()
    path, results = report
    url = path.resolve().as_uri()
    errors, requests = [], []
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            _check_content(page, results)
            shot = Path(os.environ.get("SAEATLAS_SCREENSHOT") or tmp_path / "report.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    others = [u for u in requests if u != url and not u.startswith("data:")]
    assert not others, f"the report made requests besides loading itself: {others}"
    assert requests.count(url) == 1
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_content(page, results: dict) -> None:
    """Sections, heatmaps, pair cards and tables present, visible and laid out."""
    for sid, title in SECTIONS:
        section = page.locator(f"section#{sid}")
        assert section.is_visible() and title in section.locator("h2").inner_text()
        assert "not run" not in section.inner_text()
    assert page.locator("#legacy-banner").count() == 0
    measures = results["compare"]["pairs"][0]["sae"]["decoder"]
    heatmaps = page.locator("section#heatmaps figure.heatmap svg")
    assert heatmaps.count() >= 2 * len(measures) + 2
    for measure in measures:
        for stat in ("value", "z"):
            figure = page.locator(
                f'section#heatmaps figure[data-space="decoder"][data-measure="{measure}"][data-stat="{stat}"] svg'
            )
            box = figure.bounding_box()
            assert figure.is_visible() and box["width"] > 200 and box["height"] > 150
            assert figure.locator("rect").count() >= len(results["compare"]["pairs"])
    cards = page.locator("section#pairs .pair-card")
    assert cards.count() == len(results["pair_cards"]) > 0
    first = cards.first
    assert first.locator(".context").count() == 2 and first.locator("mark").first.is_visible()
    mark = first.locator("mark").first.evaluate("m => getComputedStyle(m).backgroundColor")
    assert mark not in ("rgba(0, 0, 0, 0)", "transparent")  # the firing token is highlighted
    sides = [first.locator(".context").nth(i).bounding_box() for i in range(2)]
    assert sides[0]["x"] + sides[0]["width"] <= sides[1]["x"] + 1  # side by side
    tables = {
        "section#saes table": len(results["saes"]),
        "section#controls table.controls-table": 4,
        "section#concepts table": 4,
        "section#absorption table.absorption-letters": 26,
    }
    for selector, min_rows in tables.items():
        table = page.locator(selector)
        assert table.is_visible() and table.locator("tbody tr").count() >= min_rows, selector
    assert page.locator("section#absorption figure.bar-chart svg").count() >= 3
    assert page.locator("section#correlations figure.histogram svg").count() == len(results["compare"]["pairs"])
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the window"
