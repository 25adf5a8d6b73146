"""The atlas report: one self-contained HTML file rendered from a study's `results.json`.

Everything is inline: CSS (report.css, beside this file) in a <style> element, figures as inline SVG, no
JavaScript, no fonts, no links that a browser would fetch (a Content-Security-Policy forbids any fetch, so a
slip would show as a console error rather than a silent request).  Every string from the results is
HTML-escaped (`markup.e`); token strings show newlines, tabs and other control characters as visible symbols.

This module assembles the page; each section lives in `report/sections/`, in the order of `SECTIONS`.  Ids
are stable (the tests look for them): #glance, #study, #saes, #heatmaps, #correlations, #controls,
#concepts, #pairs, #absorption.  A section whose results are missing says "not run".
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from .. import __version__
from ..errors import SaeAtlasError
from ..fileio import read_json, space_for, write_bytes_atomic
from ..schema import checked_results
from .format import fmt, short_hooks  # noqa: F401  (short_hooks: public here as before; it lives in format.py)
from .markup import e
from .sections import MODULES

SECTIONS = [(m.ID, m.TITLE) for m in MODULES]
"""(id, title) of each section, in page order."""

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""No fetch of any kind: styles only inline, images only data: URIs."""


@functools.cache
def css() -> str:
    """The report's style sheet (report.css)."""
    return files(__package__).joinpath("report.css").read_text(encoding="utf-8")


def render_report(results: dict) -> str:
    """The whole report as one HTML document (a string), from a study results dict (results.json)."""
    name = (results.get("study") or {}).get("name") or "study"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>saeatlas report: {e(name)}</title><style>\n{css()}</style></head><body>",
        _top(results, name),
        _legacy_banner(results),
        _nav(),
        "<main>",
        *(m.render(results) for m in MODULES),
        (
            '</main><footer class="note" style="text-align:center;padding-bottom:24px">written by saeatlas '
            f"{e(__version__)} from results.json (version {e(results.get('version'))})</footer></body></html>"
        ),
    ]
    return "\n".join(parts)


def write_report(out_dir: str | Path) -> Path:
    """Read OUT_DIR/results.json and write OUT_DIR/report.html (atomically); returns the report's path."""
    out_dir = Path(out_dir)
    source = out_dir / "results.json"
    results = read_json(
        source,
        f"no results.json in '{out_dir}': run `saeatlas run` to make the study first",
        "run `saeatlas run` again to rewrite it",
    )
    if not isinstance(results, dict) or results.get("kind") != "study":
        kind = results.get("kind") if isinstance(results, dict) else type(results).__name__
        raise SaeAtlasError(f"{source} holds '{kind}' results, not a study's: give the output folder of `saeatlas run`")
    checked_results(results, "study", source, "run `saeatlas run` again to rewrite it")
    path = out_dir / "report.html"
    page = render_report(results).encode("utf-8")
    with space_for(out_dir, f"report '{path}'", lambda: len(page)):
        write_bytes_atomic(path, page)
    return path


def _top(results: dict, name: str) -> str:
    models = " vs ".join(f"{m.get('label')} ({m.get('name') or m.get('model')})" for m in results.get("models") or [])
    return (
        f'<header class="top"><h1>saeatlas report: {e(name)}</h1>'
        f"<p>{e(models)} · total {fmt(results.get('seconds'), '.0f')} s</p></header>"
    )


def _legacy_banner(results: dict) -> str:
    if not results.get("legacy"):
        return ""
    return (
        '<div id="legacy-banner" class="legacy" role="alert">LEGACY MODE: this comparison used the paper\'s '
        "legacy matching (method legacy_first: each A latent keeps its first pair in B order). It is kept only "
        "to reproduce the paper; its matches depend on latent order, so its scores are not a fair measure of "
        "similarity. Use many_to_one, mutual or assignment for new results.</div>"
    )


def _nav() -> str:
    return "<nav>" + "".join(f'<a href="#{sid}">{e(title)}</a>' for sid, title in SECTIONS) + "</nav>"
