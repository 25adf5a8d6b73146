"""The atlas report: one self-contained HTML file rendered from a study's `results.json`.

Everything is inline: CSS in a <style> element, figures as inline SVG, no JavaScript, no fonts, no links
that a browser would fetch (a Content-Security-Policy forbids any fetch, so a slip would show as a console
error rather than a silent request).  Every string from the results is HTML-escaped; token strings show
newlines, tabs and other control characters as visible symbols.

Sections (ids are stable: the tests look for them): #study, #saes, #heatmaps, #correlations, #controls,
#concepts, #pairs, #absorption.  A section whose results are missing says "not run".
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import SaeAtlasError
from ..fileio import write_bytes_atomic
from .figures import PALETTE, histogram_svg, interval_plot_svg
from .svg import bar_chart_svg, heatmap_svg, significance_stars

SECTIONS = [
    ("glance", "At a glance"),
    ("study", "The study"),
    ("saes", "SAE quality"),
    ("heatmaps", "Similarity across layers"),
    ("correlations", "Matched correlations"),
    ("controls", "Controls"),
    ("concepts", "Concept subspaces"),
    ("pairs", "Matched latent pairs"),
    ("absorption", "Absorption and splitting"),
]

COMPARISONS = {  # comparison kind -> (label in the report, short label for legends, colour)
    "sae": ("real pair: SAE A x SAE B", "real pair", PALETTE[0]),
    "skyline": ("skyline: SAE A x SAE A, other seed", "skyline (A, other seed)", PALETTE[1]),
    "random_init": ("random-init SAE for B", "random-init SAE B", PALETTE[2]),
    "shifted": ("B shifted one token", "B shifted", PALETTE[4]),
    "neurons": ("raw neurons", "raw neurons", PALETTE[3]),
}

CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #d9dee5; --bg: #f6f7f9; --accent: #2171b5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header.top { background: #17324d; color: #fff; padding: 18px 32px 14px; }
header.top h1 { margin: 0 0 4px; font-size: 22px; }
header.top p { margin: 0; color: #c9d6e3; }
nav { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
      padding: 6px 32px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
nav a { color: var(--accent); text-decoration: none; font-size: 13px; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 32px 48px; }
section { scroll-margin-top: 44px; background: #fff; border: 1px solid var(--line); border-radius: 6px;
          padding: 14px 22px 20px; margin: 18px 0; }
section h2 { margin: 0 0 8px; font-size: 19px; }
section h3 { margin: 18px 0 6px; font-size: 15px; }
p.intro, figcaption, .note { color: var(--muted); }
p.not-run { font-style: italic; color: var(--muted); padding: 6px 0; }
.legacy { background: #fff3cd; border: 2px solid #d39e00; color: #5c4500; border-radius: 6px;
          padding: 10px 16px; margin: 14px 32px 0; font-weight: 600; }
.table-wrap { overflow-x: auto; margin: 6px 0 10px; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 9px; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
th.group { text-align: center; border-left: 2px solid #fff; }
tbody tr:nth-child(even) { background: #fafbfc; }
.stars { color: #b2182b; font-weight: 700; }
.score .z { color: var(--muted); }
.figures { display: flex; flex-wrap: wrap; gap: 14px 22px; align-items: flex-start; }
.measure-table th, .measure-table td { padding: 3px 6px; }
.figures.measure figure svg { width: 300px; }
.figures.concepts { gap: 10px 8px; }
.figures.measure { display: grid; grid-template-columns: auto auto minmax(0, 1fr); align-items: center;
                   border-top: 1px solid #eef0f3; padding-top: 6px; }
figure { margin: 6px 0; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; max-width: 560px; }
.settings { display: flex; flex-wrap: wrap; gap: 10px 24px; align-items: flex-start; }
.settings table td:first-child { color: var(--muted); }
.pair-group { margin-top: 12px; }
.pair-card { border: 1px solid var(--line); border-radius: 6px; margin: 10px 0; background: #fcfcfd; }
.pair-card header { display: flex; justify-content: space-between; padding: 6px 12px; background: #eef1f5;
                    border-bottom: 1px solid var(--line); font-weight: 600; }
.pair-card .corr { color: var(--accent); }
.sides { display: grid; grid-template-columns: 1fr 1fr; }
.context { padding: 6px 12px 8px; min-width: 0; }
.context + .context { border-left: 1px solid var(--line); }
.context h4 { margin: 2px 0 4px; font-size: 12.5px; color: var(--muted); font-weight: 600; }
.context ol { margin: 0; padding: 0; list-style: none; }
.snippet { display: flex; gap: 8px; padding: 2px 0; border-top: 1px dotted #e3e6ea; }
.snippet:first-child { border-top: none; }
.act { flex: none; width: 52px; text-align: right; color: var(--muted); padding-top: 1px;
       font: 11.5px ui-monospace, Menlo, Consolas, monospace; }
.tokens { font: 12.5px/1.5 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word; }
.tokens mark { background: #ffd54f; color: #000; border-radius: 2px; outline: 1px solid #e0a800; }
.ws { color: #9aa3ad; }
"""


class Html(str):
    """Markup that is already safe (built here); anything else is escaped."""


# ---------------------------------------------------------------- small helpers
def _e(x) -> str:
    return x if isinstance(x, Html) else escape("" if x is None else str(x), quote=True)


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x, spec: str = ".3f") -> str:
    v = _num(x)
    return format(v, spec) if math.isfinite(v) else "–"


def _int(x) -> str:
    v = _num(x)
    return f"{int(v):,}" if math.isfinite(v) else "–"


def _pct(x) -> str:
    return _fmt(_num(x) * 100, ".1f") + "%" if math.isfinite(_num(x)) else "–"


_NUMERIC = re.compile(r"^[-+]?(\d[\d,]*(\.\d+)?(e[-+]?\d+)?%?|–)( †)?$")


def _is_numeric(cell) -> bool:
    if isinstance(cell, Html):
        return cell.startswith('<span class="score') or cell.startswith('<span class="none')
    return bool(_NUMERIC.match(str(cell)))


def _table(headers: list, rows: list[list], cls: str = "", groups: list[tuple[str, int]] | None = None) -> Html:
    """A table; columns whose every cell is a number (or –) are right-aligned.  groups: an optional first
    header row of (label, number of columns spanned)."""
    numeric = [bool(rows) and all(_is_numeric(r[i]) for r in rows) for i in range(len(headers))]
    align = ["" if n else ' class="text"' for n in numeric]
    top = "".join(f'<th colspan="{n}" class="group">{_e(g)}</th>' for g, n in groups or [])
    top = f"<tr>{top}</tr>" if top else ""
    head = "".join(f"<th{align[i]}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{align[i]}>{_e(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return Html(
        f'<div class="table-wrap"><table class="{cls}"><thead>{top}<tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _figure(svg: str, caption: str = "", cls: str = "", data: dict | None = None) -> Html:
    """An inline SVG figure (the xmlns attribute is dropped: inline SVG needs none)."""
    svg = svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)
    attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (data or {}).items())
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return Html(f'<figure class="{cls}"{attrs}>{svg}{cap}</figure>')


def _section(sid: str, body: str, intro: str = "") -> str:
    title = dict(SECTIONS)[sid]
    lead = f'<p class="intro">{_e(intro)}</p>' if intro else ""
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{lead}{body}</section>'


def _not_run(sid: str, why: str) -> str:
    return _section(sid, f'<p class="not-run">not run: {_e(why)}</p>')


def _score(s: dict | None) -> Html:
    """'0.612 (z 41.2) ***' with the null, p, q and interval in a tooltip."""
    if not s or not math.isfinite(_num(s.get("observed"))):
        return Html('<span class="none">–</span>')
    tip = (
        f"null {_fmt(s.get('null_mean'))} ± {_fmt(s.get('null_std'))}, p {_fmt(s.get('p'), '.3g')}, "
        f"q {_fmt(s.get('q'), '.3g')}"
    )
    if s.get("ci_lo") is not None:
        tip += f", 95% CI {_fmt(s.get('ci_lo'))} to {_fmt(s.get('ci_hi'))}"
    return Html(
        f'<span class="score" title="{_e(tip)}">{_fmt(s["observed"])} '
        f'<span class="z">(z {_fmt(s.get("z"), ".1f")})</span> '
        f'<span class="stars">{significance_stars(_num(s.get("q")))}</span></span>'
    )


def _labels(results: dict) -> tuple[str, str]:
    """The study's labels of model A and model B of the comparison."""
    cmp = (results.get("study") or {}).get("compare") or {}
    return cmp.get("a") or "A", cmp.get("b") or "B"


def short_hooks(hooks: list[str]) -> tuple[list[str], str]:
    """Hook names shortened to their layer numbers when they share one kind ('resid_post'), and that kind."""
    kinds = {h.rsplit(".", 1)[0] for h in hooks if "." in h}
    if len(kinds) == 1 and all("." in h for h in hooks):
        return [h.rsplit(".", 1)[1] for h in hooks], kinds.pop()
    return list(hooks), ""


def _grid_labels(grid: list[tuple[str, str]]) -> list[str]:
    """'3 × 5' for each (layer_a, layer_b), hooks shortened as by `short_hooks`."""
    short_a, _ = short_hooks([a for a, _ in grid])
    short_b, _ = short_hooks([b for _, b in grid])
    return [f"{x} × {y}" for x, y in zip(short_a, short_b)]


def _pair_name(layer_a: str, layer_b: str) -> str:
    return f"{layer_a} x {layer_b}"


# ---------------------------------------------------------------- tokens
_CONTROL = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def _token_html(token: str) -> str:
    """One token, escaped, with newlines / tabs / control characters as visible grey symbols (a newline
    also breaks the line after its symbol, as in the text)."""
    out = []
    for ch in token:
        if ch in _CONTROL:
            out.append(f'<span class="ws">{_CONTROL[ch]}</span>' + ("\n" if ch == "\n" else ""))
        elif ord(ch) < 32 or 127 <= ord(ch) < 160 or ch in "\u2028\u2029":
            out.append(f'<span class="ws">\\x{ord(ch):02x}</span>')
        else:
            out.append(escape(ch, quote=True))
    text = "".join(out)
    if token and not token.strip(" "):
        text = f'<span class="ws">{"·" * len(token)}</span>'  # a token of spaces only
    return text


def _context_html(ctx: dict) -> str:
    tokens, focus = ctx.get("tokens") or [], ctx.get("focus")
    body = "".join(f"<mark>{_token_html(t)}</mark>" if i == focus else _token_html(t) for i, t in enumerate(tokens))
    return (
        f'<li class="snippet"><span class="act" title="activation">{_fmt(ctx.get("activation"), ".2f")}</span>'
        f'<span class="tokens">{body}</span></li>'
    )


# ---------------------------------------------------------------- page
def render_report(results: dict) -> str:
    """The whole report as one HTML document (a string), from a study results dict (results.json)."""
    name = (results.get("study") or {}).get("name") or "study"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>saeatlas report: {_e(name)}</title><style>{CSS}</style></head><body>",
        _top(results, name),
        _legacy_banner(results),
        _nav(),
        "<main>",
        _glance_section(results),
        _study_section(results),
        _sae_section(results),
        _heatmap_section(results),
        _correlation_section(results),
        _controls_section(results),
        _concepts_section(results),
        _pairs_section(results),
        _absorption_section(results),
        f'</main><footer class="note" style="text-align:center;padding-bottom:24px">written by saeatlas '
        f"{_e(__version__)} from results.json (version {_e(results.get('version'))})</footer></body></html>",
    ]
    return "\n".join(parts)


def write_report(out_dir: str | Path) -> Path:
    """Read OUT_DIR/results.json and write OUT_DIR/report.html (atomically); returns the report's path."""
    out_dir = Path(out_dir)
    source = out_dir / "results.json"
    if not source.is_file():
        raise SaeAtlasError(f"no results.json in '{out_dir}': run `saeatlas run` to make the study first")
    try:
        results = json.loads(source.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SaeAtlasError(f"{source} is not valid JSON ({exc}): run `saeatlas run` again to rewrite it") from None
    if results.get("kind") != "study":
        raise SaeAtlasError(
            f"{source} holds '{results.get('kind')}' results, not a study's: give the output folder of `saeatlas run`"
        )
    path = out_dir / "report.html"
    write_bytes_atomic(path, render_report(results).encode("utf-8"))
    return path


def _top(results: dict, name: str) -> str:
    models = " vs ".join(f"{m.get('label')} ({m.get('name') or m.get('spec')})" for m in results.get("models") or [])
    return (
        f'<header class="top"><h1>saeatlas report: {_e(name)}</h1>'
        f"<p>{_e(models)} · total {_fmt(results.get('seconds'), '.0f')} s</p></header>"
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
    return "<nav>" + "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS) + "</nav>"


# ---------------------------------------------------------------- at a glance
HEADLINE_MEASURES = ("svcca", "rsa", "linear_cka")
"""Measures of the headline table (those the controls are scored with), when the comparison has them."""


def _headline_rows(compare: dict) -> list[list]:
    """Per measure: the real pair's best layer pair beside that pair's controls and its A layer's skyline."""
    skyline = {e["layer_a"]: e["skyline"] for e in compare.get("skyline") or []}
    grid = [(e["layer_a"], e["layer_b"]) for e in compare["pairs"]]
    short = dict(zip(grid, _grid_labels(grid)))
    rows = []
    for measure in HEADLINE_MEASURES:
        cells = [(e, (e["sae"].get("decoder") or {}).get(measure)) for e in compare["pairs"]]
        cells = [(e, sc) for e, sc in cells if sc and math.isfinite(_num(sc.get("observed")))]
        if not cells:
            continue
        values = [_num(sc["observed"]) for _, sc in cells]
        entry, best = max(cells, key=lambda c: _num(c[1]["observed"]))
        n_sig = sum(_num(sc.get("q")) < 0.05 for _, sc in cells)

        def control(body: dict | None) -> Html:
            return _score((body or {}).get("decoder", {}).get(measure)) if body else Html('<span class="none">–</span>')

        sky = skyline.get(entry["layer_a"])
        sky_value = _num(((sky or {}).get("decoder") or {}).get(measure, {}).get("observed"))
        ratio = _num(best["observed"]) / sky_value if math.isfinite(sky_value) and sky_value > 0 else math.nan
        rows.append(
            [
                measure,
                short[entry["layer_a"], entry["layer_b"]],
                _score(best),
                f"{_fmt(min(values))} to {_fmt(max(values))}",
                f"{n_sig} of {len(cells)}",
                control(entry.get("random_init")),
                control(entry.get("shifted")),
                control(sky),
                f"{ratio:.0%}" if math.isfinite(ratio) else "–",
            ]
        )
    return rows


def _glance_section(results: dict) -> str:
    parts = []
    compare = results.get("compare")
    if compare and compare.get("pairs"):
        a, b = _labels(results)
        rows = _headline_rows(compare)
        if rows:
            parts.append(
                _table(
                    [
                        "measure",
                        "best layers",
                        f"{a} x {b}",
                        "all layer pairs",
                        "q < .05",
                        "random-init B",
                        "B shifted",
                        f"skyline ({a} seeds)",
                        "of skyline",
                    ],
                    rows,
                    "headline-table",
                )
            )
    saes = [s for s in results.get("saes") or [] if s.get("metrics")]
    if saes:

        def span(values, fmt=_fmt) -> str:
            values = [v for v in values if math.isfinite(v)]
            return (
                "–"
                if not values
                else fmt(min(values))
                if min(values) == max(values)
                else f"{fmt(min(values))} to {fmt(max(values))}"
            )

        def metric(key: str, part: str = "metrics") -> list[float]:
            return [_num((s.get(part) or {}).get(key)) for s in saes]

        ce = metric("ce_loss_recovered", "downstream")
        parts.append(
            f'<p class="glance-line"><b>SAEs</b> ({len(saes)} evaluated): L0 {span(metric("l0"), lambda v: _fmt(v, ".1f"))}, '
            f"FVU {span(metric('fvu'))}, dead {span(metric('dead_fraction'), _pct)}, "
            f"CE-loss recovered {span(ce)}.</p>"
        )
    absorption = results.get("absorption")
    if absorption and absorption.get("saes"):
        items = [
            f"{_e(s.get('name'))} (k {_int(s.get('k'))}): split {_fmt((s.get('summary') or {}).get('mean_n_split'), '.2f')}, "
            f"absorption fraction {_fmt((s.get('summary') or {}).get('mean_absorption_fraction'))}, "
            f"full absorption {_fmt((s.get('summary') or {}).get('mean_full_absorption_rate'))}"
            for s in absorption["saes"]
        ]
        parts.append(f'<p class="glance-line"><b>Absorption</b> (means over letters): {"; ".join(items)}.</p>')
    if not parts:
        return _not_run("glance", "neither a comparison, SAEs nor absorption are in the results")
    intro = (
        "The headline figures. Similarity of the matched SAE decoder rows: the best layer pair's score "
        "(z against the random-pairing null, BH stars), the range over the grid and how many layer pairs "
        "reach q < .05; beside it that layer pair's controls and the same-model skyline of its A layer "
        "(hover a score for its null, p, q and interval). Details in the sections below."
    )
    return _section("glance", "".join(parts), intro)


# ---------------------------------------------------------------- the study
def _study_section(results: dict) -> str:
    study = results.get("study") or {}
    models = _table(
        ["label", "spec", "model", "d_model", "corpus", "tokens", "hooks"],
        [
            [
                m.get("label"),
                m.get("spec"),
                m.get("name"),
                _int(m.get("d_model")),
                m.get("corpus"),
                _int(m.get("n_tokens")),
                ", ".join(m.get("hooks") or []),
            ]
            for m in results.get("models") or []
        ],
    )
    settings = "".join(_settings_table(key, value) for key, value in study.items() if isinstance(value, dict))
    top = {k: v for k, v in study.items() if not isinstance(v, (dict, list))}
    settings = _settings_table("study", top) + settings
    body = (
        f"<h3>Models and data</h3>{models}{_alignment_note(results)}"
        f'<h3>Settings</h3><div class="settings">{settings}</div>'
        f"<h3>Stages</h3>{_stages_table(results)}"
    )
    return _section("study", body)


def _settings_table(name: str, values: dict) -> str:
    rows = [
        [k, ", ".join(map(str, v)) if isinstance(v, list) else ("–" if v is None else v)]
        for k, v in values.items()
        if not isinstance(v, dict)
    ]
    return f"<div><h4>[{_e(name)}]</h4>{_table(['setting', 'value'], rows, 'settings-table')}</div>"


def _alignment_note(results: dict) -> str:
    align = (results.get("compare") or {}).get("alignment")
    if not align:
        return ""
    return (
        f'<p class="note">Aligned positions: {_int(align.get("n_positions"))} in {_int(align.get("n_documents"))} '
        f"documents (by {_e(align.get('method'))}; usable tokens A {_int(align.get('usable_a'))}, "
        f"B {_int(align.get('usable_b'))}).</p>"
    )


def _stages_table(results: dict) -> str:
    stages = results.get("stages") or []
    rows = [
        [
            s.get("name"),
            "ran" if s.get("state") == "ran" else "done (skipped)",
            _fmt(s.get("seconds"), ".1f"),
            (s.get("key") or "")[:12],
        ]
        for s in stages
    ]
    total = f'<p class="note">Total {_fmt(results.get("seconds"), ".1f")} s.</p>'
    return _table(["stage", "this run", "seconds", "key"], rows) + total if rows else total


# ---------------------------------------------------------------- SAE quality
def _sae_section(results: dict) -> str:
    saes = results.get("saes") or []
    if not saes:
        return _not_run("saes", "no SAEs in the results")
    rows = []
    for s in saes:
        m, d = s.get("metrics") or {}, s.get("downstream") or {}
        rows.append(
            [
                s.get("label"),
                s.get("hook"),
                s.get("role", ""),
                s.get("arch"),
                _int(s.get("k")),
                _int(s.get("width")),
                _int(s.get("seed")),
                _fmt(m.get("l0"), ".1f"),
                _fmt(m.get("fvu")),
                _fmt(m.get("explained_variance")),
                _fmt(m.get("cosine")),
                _pct(m.get("dead_fraction")),
                _pct(m.get("dense_fraction")),
                _fmt(d.get("ce_loss_recovered")),
                _fmt(d.get("delta_lm_loss")),
                _fmt(d.get("kl_div"), ".4f"),
            ]
        )
    table = _table(
        [
            "model",
            "hook",
            "role",
            "arch",
            "k",
            "width",
            "seed",
            "L0",
            "FVU",
            "expl. var.",
            "cosine",
            "dead",
            "dense",
            "CE-loss recovered",
            "Δ LM loss",
            "KL",
        ],
        rows,
        "sae-table",
    )
    intro = (
        "Held-out figures: L0 (active latents per token), FVU (fraction of variance unexplained), dead "
        "latents (never fire) and dense ones (fire on >10% of tokens); CE-loss recovered = (CE zero-ablated "
        "- CE with the SAE) / (CE zero-ablated - CE clean) with the SAE spliced into the model. "
        "– : not evaluated."
    )
    return _section("saes", table, intro)


# ---------------------------------------------------------------- heatmaps
def _cells(compare: dict) -> dict[tuple[str, str], dict]:
    return {(e["layer_a"], e["layer_b"]): e for e in compare.get("pairs") or []}


def _grid(compare: dict, get) -> np.ndarray:
    """[n_layers_a, n_layers_b] of get(entry) over the layer grid (NaN where missing)."""
    cells = _cells(compare)
    values = [
        [_num(get(cells[(a, b)])) if (a, b) in cells else math.nan for b in compare["layers_b"]]
        for a in compare["layers_a"]
    ]
    return np.array(values, dtype=float).reshape(len(compare["layers_a"]), len(compare["layers_b"]))


def _heatmap(
    compare: dict, labels: tuple[str, str], values: np.ndarray, title: str, text=None, diverging: bool = False
) -> str:
    rows, kind_a = short_hooks(compare["layers_a"])
    cols, kind_b = short_hooks(compare["layers_b"])
    cell = max(48, min(72, 400 // max(len(cols), len(rows), 1)))
    return heatmap_svg(
        values,
        rows,
        cols,
        title,
        text,
        row_title=f"{labels[0]} {kind_a}".strip(),
        col_title=f"{labels[1]} {kind_b}".strip(),
        diverging=diverging,
        cell=cell,
    )


def _measure_numbers(compare: dict, space: str, measure: str) -> str:
    """Per layer pair: observed, null, z, p, q and the bootstrap interval of one measure."""
    rows = []
    labels = _grid_labels([(e["layer_a"], e["layer_b"]) for e in compare["pairs"]])
    for e, label in zip(compare["pairs"], labels):
        s = ((e.get("sae") or {}).get(space) or {}).get(measure) or {}
        ci = f"{_fmt(s.get('ci_lo'))}–{_fmt(s.get('ci_hi'))}" if s.get("ci_lo") is not None else "–"
        rows.append(
            [
                label,
                _fmt(s.get("observed")),
                f"{_fmt(s.get('null_mean'))} ± {_fmt(s.get('null_std'))}",
                _fmt(s.get("z"), ".1f"),
                _fmt(s.get("p"), ".3g"),
                _fmt(s.get("q"), ".3g"),
                ci,
            ]
        )
    return _table(["layers", "observed", "null", "z", "p", "q", "95% CI"], rows, "measure-table")


def _measure_heatmaps(compare: dict, labels: tuple[str, str], space: str, measure: str) -> str:
    score = lambda e: ((e.get("sae") or {}).get(space) or {}).get(measure) or {}
    cells = _cells(compare)
    starred = lambda s: _fmt(s.get("observed")) + significance_stars(_num(s.get("q")))
    text = [
        [starred(score(cells[(a, b)])) if (a, b) in cells else "" for b in compare["layers_b"]]
        for a in compare["layers_a"]
    ]
    z = _grid(compare, lambda e: score(e).get("z"))
    z_text = [["" if not math.isfinite(v) else f"{v:.1f}" for v in row] for row in z]
    data = {"measure": measure, "space": space}
    value_fig = _figure(
        _heatmap(compare, labels, _grid(compare, lambda e: score(e).get("observed")), measure, text),
        "",
        "heatmap",
        {**data, "stat": "value"},
    )
    z_fig = _figure(
        _heatmap(compare, labels, z, f"{measure}: z", z_text, diverging=True), "", "heatmap", {**data, "stat": "z"}
    )
    return value_fig + z_fig + _measure_numbers(compare, space, measure)


def _matching_heatmaps(compare: dict, labels: tuple[str, str]) -> str:
    n_pairs = _grid(compare, lambda e: e["sae"].get("n_pairs"))
    mmc = _grid(compare, lambda e: e["sae"].get("mean_max_corr"))
    return _figure(
        _heatmap(compare, labels, n_pairs, "matched pairs", [[_int(v) for v in r] for r in n_pairs]),
        "",
        "heatmap",
        {"measure": "n_pairs", "stat": "value"},
    ) + _figure(
        _heatmap(compare, labels, mmc, "mean max correlation"),
        "",
        "heatmap",
        {"measure": "mean_max_corr", "stat": "value"},
    )


def _heatmap_section(results: dict) -> str:
    compare = results.get("compare")
    if not compare or not compare.get("pairs"):
        return _not_run("heatmaps", "the comparison was not part of this study")
    labels, cfg = _labels(results), compare.get("config") or {}
    first = compare["pairs"][0]["sae"]
    html = [
        f"<h3>Matching ({_e(cfg.get('method'))}, r above {_fmt(cfg.get('threshold'), '.2f')})</h3>"
        f'<div class="figures">{_matching_heatmaps(compare, labels)}</div>'
    ]
    for space, heading in (
        ("decoder", "Decoder rows of the matched latents"),
        ("activations", "Activations of the matched latents"),
    ):
        figs = "".join(
            f'<div class="figures measure">{_measure_heatmaps(compare, labels, space, m)}</div>'
            for m in (first.get(space) or {})
        )
        html.append(f"<h3>{_e(heading)}</h3>{figs}" if figs else "")
    intro = (
        f"Each cell is one layer of {labels[0]} (rows) against one layer of {labels[1]} (columns). Per measure: "
        "the score with Benjamini-Hochberg stars across the grid (* q<.05, ** q<.01, *** q<.001), its z-score "
        f"against {_int(cfg.get('n_permutations'))} random pairings of the same latents, and the numbers "
        "(95% CI: basic bootstrap interval over documents, i.e. how stable the matching is; it corrects "
        "for the resamples' bias, so it can sit beside the score rather than around it)."
    )
    if results.get("legacy"):
        intro += " LEGACY MODE: matched with legacy_first (see the banner)."
    return _section("heatmaps", "".join(html), intro)


# ---------------------------------------------------------------- correlations
def _correlation_samples(entry: dict, skyline: dict | None) -> tuple[dict, list[str]]:
    """label -> matched correlations, and their colours, for one layer pair: the real pair and each control."""
    bodies = [(k, entry[k]) for k in ("sae", "random_init", "shifted", "neurons") if entry.get(k)]
    if skyline:
        bodies.insert(1, ("skyline", skyline))
    samples = {COMPARISONS[k][1]: (body.get("pairs") or {}).get("corr", []) for k, body in bodies}
    return samples, [COMPARISONS[k][2] for k, _ in bodies]


def _correlation_section(results: dict) -> str:
    compare = results.get("compare")
    if not compare or not compare.get("pairs"):
        return _not_run("correlations", "the comparison was not part of this study")
    skyline = {e["layer_a"]: e["skyline"] for e in compare.get("skyline") or []}
    threshold = _num((compare.get("config") or {}).get("threshold"))
    figs = []
    for entry in compare["pairs"]:
        samples, colours = _correlation_samples(entry, skyline.get(entry["layer_a"]))
        values = [v for s in samples.values() for v in s if v is not None]
        lo = min([0.0] + values + ([threshold] if math.isfinite(threshold) else []))
        svg = histogram_svg(
            samples,
            _pair_name(entry["layer_a"], entry["layer_b"]),
            "Pearson r of matched pairs",
            lo=lo,
            hi=1.0,
            colours=colours,
        )
        figs.append(_figure(svg, "", "histogram", {"layer-a": entry["layer_a"], "layer-b": entry["layer_b"]}))
    intro = (
        "Correlation of each matched latent pair over the aligned positions, for the real SAE pair and for "
        "the controls that play the null: the random-init SAE and the shifted tokens should match weakly, "
        "the skyline (another seed of A's SAE) strongly. Each curve is a fraction of its own pairs "
        f"(n in the legend); pairs need r above the threshold ({_fmt(threshold, '.2f')})."
    )
    return _section("correlations", f'<div class="figures">{"".join(figs)}</div>', intro)


# ---------------------------------------------------------------- controls
def _bodies(compare: dict, entry: dict) -> list[tuple[str, dict]]:
    """(kind, COMPARISON) of one layer pair: the real pair, the skyline of its A layer, the other controls."""
    skyline = {e["layer_a"]: e["skyline"] for e in compare.get("skyline") or []}
    bodies = [(k, entry[k]) for k in ("sae", "random_init", "shifted", "neurons") if entry.get(k)]
    if entry["layer_a"] in skyline:
        bodies.insert(1, ("skyline", skyline[entry["layer_a"]]))
    return bodies


def _control_rows(compare: dict, measure: str) -> list[dict]:
    """Interval-plot rows of one measure: per layer pair, the real pair and each control (decoder rows), then
    the real pair and the raw neurons on activations."""
    rows = []
    for entry in compare["pairs"]:
        bodies = _bodies(compare, entry)
        order = [(k, b, "decoder") for k, b in bodies if k != "neurons"]
        order += [(k, b, "activations") for k, b in bodies if k in ("sae", "neurons")]
        for kind, body, space in order:
            s = (body.get(space) or {}).get(measure)
            if s is None:
                continue
            rows.append(
                {
                    "group": _pair_name(entry["layer_a"], entry["layer_b"]),
                    "label": COMPARISONS[kind][0] + (" (activations)" if space == "activations" else ""),
                    "observed": _num(s.get("observed")),
                    "null_mean": _num(s.get("null_mean")),
                    "null_std": _num(s.get("null_std")),
                    "note": f"z {_fmt(s.get('z'), '.1f')} {significance_stars(_num(s.get('q')))}",
                    "colour": COMPARISONS[kind][2],
                }
            )
    return rows


def _controls_table(compare: dict, measures: list[str]) -> str:
    rows = []
    for entry in compare["pairs"]:
        for kind, body in _bodies(compare, entry):
            space = "activations" if kind == "neurons" else "decoder"
            rows.append(
                [
                    _pair_name(entry["layer_a"], entry["layer_b"]),
                    COMPARISONS[kind][0],
                    space,
                    _int(body.get("n_pairs")),
                    _fmt(body.get("mean_max_corr")),
                    _fmt(body.get("matched_corr_mean")),
                ]
                + [_score((body.get(space) or {}).get(m)) for m in measures]
            )
    return _table(
        ["layer pair", "comparison", "space", "pairs", "mean max r", "matched r"] + measures, rows, "controls-table"
    )


def _controls_section(results: dict) -> str:
    compare = results.get("compare")
    if not compare or not compare.get("pairs"):
        return _not_run("controls", "the comparison was not part of this study")
    if not any(k != "sae" for e in compare["pairs"] for k, _ in _bodies(compare, e)):
        return _not_run("controls", "no controls were asked for (compare.controls is empty)")
    measures = list((compare.get("config") or {}).get("control_measures") or ["svcca", "rsa", "linear_cka"])
    plots = [(m, _control_rows(compare, m)) for m in measures]
    figs = "".join(
        _figure(interval_plot_svg(rows, m, m), "", "controls-plot", {"measure": m}) for m, rows in plots if rows
    )
    intro = (
        "The real SAE pair beside its controls, scored the same way: dots are observed scores, grey bars "
        "their random-pairing null (mean ± 2 sd), stars BH q-values. Raw neurons have no decoder, so they "
        "(and the real pair beside them) are scored on activations."
    )
    return _section("controls", f'<div class="figures">{figs}</div>{_controls_table(compare, measures)}', intro)


# ---------------------------------------------------------------- concepts
def _concept_heatmaps(concepts: dict, names: list[str], grid: list[tuple[str, str]], measures: list[str]) -> list[str]:
    """A matched-pairs heatmap, then one per measure that scored anywhere (concept rows, layer-pair columns)."""
    cell = {(e["concept"], e["layer_a"], e["layer_b"]): e for e in concepts["entries"]}
    columns = _grid_labels(grid)
    size = 48 if len(grid) <= 6 else 44
    n = np.array([[_num((cell.get((c, a, b)) or {}).get("n_pairs")) for a, b in grid] for c in names], dtype=float)
    figs = [
        _figure(
            heatmap_svg(
                n,
                names,
                columns,
                "matched pairs",
                [[_int(v) for v in r] for r in n],
                col_title="layer A × layer B",
                cell=size,
            ),
            "",
            "heatmap concept-heatmap",
            {"measure": "n_pairs"},
        )
    ]
    for m in measures:
        get = lambda c, a, b: ((cell.get((c, a, b)) or {}).get("decoder") or {}).get(m) or {}
        values = np.array([[_num(get(c, a, b).get("observed")) for a, b in grid] for c in names], dtype=float)
        if not np.isfinite(values).any():
            continue
        text = [
            [
                _fmt(get(c, a, b).get("observed"), ".2f") + significance_stars(_num(get(c, a, b).get("q")))
                for a, b in grid
            ]
            for c in names
        ]
        figs.append(
            _figure(
                heatmap_svg(values, names, columns, m, text, col_title="layer A × layer B", cell=size),
                "",
                "heatmap concept-heatmap",
                {"measure": m},
            )
        )
    return figs


def _concepts_section(results: dict) -> str:
    concepts = results.get("concepts")
    if not concepts or not concepts.get("entries"):
        return _not_run("concepts", "concept subspaces were not part of this study")
    entries, measures = concepts["entries"], list((concepts.get("config") or {}).get("measures") or [])
    names = list(concepts.get("concepts") or dict.fromkeys(e["concept"] for e in entries))
    grid = list(dict.fromkeys((e["layer_a"], e["layer_b"]) for e in entries))
    figs = _concept_heatmaps(concepts, names, grid, measures)
    short = dict(zip(grid, _grid_labels(grid)))
    rows = [
        [
            e["concept"],
            short[(e["layer_a"], e["layer_b"])],
            _int(e.get("n_latents_a")),
            _int(e.get("n_latents_b")),
            _int(e.get("n_pairs")),
            _fmt(e.get("matched_corr_mean")),
        ]
        + [_score((e.get("decoder") or {}).get(m)) for m in measures]
        for e in entries
    ]
    table = _table(
        ["concept", "layers", "latents A", "latents B", "pairs", "matched r"] + measures, rows, "concepts-table"
    )
    intro = (
        "A latent belongs to a concept when one of its top activating tokens is one of the concept's keywords "
        "(in its own model's tokenizer); within each concept the latents are matched and scored against "
        "random pairings of the same latents (stars: BH q-values; – : too few pairs to score)."
    )
    return _section("concepts", f'<div class="figures concepts">{"".join(figs)}</div>{table}', intro)


# ---------------------------------------------------------------- pair cards
def _card(card: dict, labels: tuple[str, str], number: int) -> str:
    sides = []
    for side, label, layer, idx in (
        ("a", labels[0], card.get("layer_a"), card.get("idx_a")),
        ("b", labels[1], card.get("layer_b"), card.get("idx_b")),
    ):
        contexts = card.get(side) or []
        items = "".join(_context_html(c) for c in contexts) or '<li class="none note">no activating context</li>'
        sides.append(
            f'<div class="context side-{side}"><h4>{_e(label)} {_e(layer)} · latent {_e(idx)}</h4>'
            f"<ol>{items}</ol></div>"
        )
    title = f"{_e(labels[0])} #{_e(card.get('idx_a'))} ⟷ {_e(labels[1])} #{_e(card.get('idx_b'))}"
    return (
        f'<article class="pair-card" id="pair-{number}"><header><span>{title}</span>'
        f'<span class="corr">r = {_fmt(card.get("corr"))}</span></header>'
        f'<div class="sides">{"".join(sides)}</div></article>'
    )


def _pairs_section(results: dict) -> str:
    cards = results.get("pair_cards") or []
    if not cards:
        return _not_run("pairs", "no pair cards (the comparison was not run, or matched no pairs)")
    labels = _labels(results)
    groups: dict[tuple, list] = {}
    for card in cards:
        groups.setdefault((card.get("layer_a"), card.get("layer_b")), []).append(card)
    html, number = [], 0
    for (a, b), group in groups.items():
        items = []
        for card in group:
            items.append(_card(card, labels, number))
            number += 1
        title = f"{_e(labels[0])} {_e(a)} × {_e(labels[1])} {_e(b)}"
        html.append(f'<div class="pair-group"><h3>{title}</h3>{"".join(items)}</div>')
    intro = (
        "The most correlated matched pairs of each layer pair. Each side shows the latent's top activating "
        "contexts in its own model's text, the firing token highlighted and its activation at the left; "
        "↵ marks a newline, · a space-only token."
    )
    return _section("pairs", "".join(html), intro)


# ---------------------------------------------------------------- absorption
def _absorption_summary(absorption: dict) -> str:
    saes = absorption.get("saes") or []
    rows = []
    for s in saes:
        m = s.get("summary") or {}
        rows.append(
            [
                s.get("name"),
                s.get("arch"),
                _int(s.get("k")),
                _int(s.get("d_sae")),
                _fmt(s.get("l0_on_task"), ".1f"),
                _int(m.get("n_qualifying_letters")),
                _fmt(m.get("mean_n_split"), ".2f"),
                _fmt(m.get("mean_k_sparse_f1")),
                _fmt(m.get("mean_absorption_fraction")),
                _fmt(m.get("mean_full_absorption_rate")),
                _fmt(m.get("mean_ablation_absorption_rate")),
            ]
        )
    return _table(
        [
            "SAE",
            "arch",
            "k",
            "width",
            "L0 on task",
            "letters",
            "mean split",
            "k-sparse F1",
            "absorption fraction",
            "full absorption",
            "ablation absorption",
        ],
        rows,
        "absorption-summary",
    )


def _absorption_charts(absorption: dict) -> str:
    """Per-letter bars of each measure, one bar per SAE (letters that do not qualify: no bar)."""
    saes = absorption.get("saes") or []
    letters = [chr(ord("A") + i) for i in range(26)]
    by_letter = {s["name"]: {r["letter"]: r for r in s.get("letters") or []} for s in saes}
    charts = [
        ("absorption_fraction", "absorption fraction"),
        ("full_absorption_rate", "full absorption rate"),
        ("ablation_absorption_rate", "ablation absorption rate"),
        ("n_split", "splitting (main latents - 1)"),
    ]
    bar = max(4, min(9, 13 // max(len(saes), 1)))
    figs = []
    for key, title in charts:
        series = {
            name: [
                _num(rows[c].get(key)) if c in rows and rows[c].get("qualifies", True) else math.nan for c in letters
            ]
            for name, rows in by_letter.items()
        }
        finite = [v for s in series.values() for v in s if math.isfinite(v)]
        if not finite:
            continue
        y_max = max(1.0, max(finite)) if key == "n_split" else 1.0
        figs.append(
            _figure(bar_chart_svg(letters, series, title, y_max=y_max, bar=bar), "", "bar-chart", {"measure": key})
        )
    return f'<div class="figures">{"".join(figs)}</div>'


def _absorption_letters(absorption: dict) -> str:
    """One row per letter: the probe, then per SAE its splitting and absorption (header grouped by SAE)."""
    saes = absorption.get("saes") or []
    probes = {p["letter"]: p for p in absorption.get("probes") or []}
    ablation = any("ablation_absorption_rate" in r for s in saes for r in s.get("letters") or [])
    per_sae = ["split", "absorption", "full"] + (["ablation"] if ablation else []) + ["main latents"]
    headers = ["letter", "F1", "precision", "recall", "test words"] + per_sae * len(saes)
    groups = [("", 1), ("probe", 4)] + [(s["name"], len(per_sae)) for s in saes]
    rows = []
    for c in (chr(ord("A") + i) for i in range(26)):
        p = probes.get(c, {})
        row = [c, _fmt(p.get("f1")), _fmt(p.get("precision")), _fmt(p.get("recall")), _int(p.get("n_test"))]
        for s in saes:
            r = next((r for r in s.get("letters") or [] if r["letter"] == c), {})
            row += [
                _int(r.get("n_split")) + ("" if r.get("qualifies", True) else " †"),
                _fmt(r.get("absorption_fraction")),
                _fmt(r.get("full_absorption_rate")),
            ]
            row += [_fmt(r.get("ablation_absorption_rate"))] if ablation else []
            row += [" ".join(map(str, (r.get("main_latents") or [])[:5]))]
        rows.append(row)
    return _table(headers, rows, "absorption-letters", groups)


def _absorption_section(results: dict) -> str:
    absorption = results.get("absorption")
    if not absorption or not absorption.get("saes"):
        return _not_run("absorption", "absorption was not part of this study")
    a = absorption
    intro = (
        f"First-letter task on {a.get('model')} {a.get('hook')}: {_int(a.get('n_prompts'))} words "
        f"({_int(a.get('n_dropped'))} dropped), probes trained on {_int(a.get('n_train'))} and tested on "
        f"{_int(a.get('n_test'))}, mean probe F1 {_fmt(a.get('mean_probe_f1'))}. "
        "Letters whose probe F1 is too low († in the table) do not count and are left out of the charts."
    )
    body = (
        f"<h3>Per SAE</h3>{_absorption_summary(absorption)}<h3>Per letter</h3>{_absorption_charts(absorption)}"
        f"{_absorption_letters(absorption)}"
    )
    return _section("absorption", body, intro)
