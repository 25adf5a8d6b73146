"""HTML building blocks of the report: a safe-string type, escaping, tables, figures, sections, scores and
token strings.

Everything from the results goes through `e` (HTML-escaped) unless it is already `Html`, i.e. built here
from escaped parts.  Token strings show newlines, tabs and other control characters as visible symbols.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from html import escape

from .format import DASH, fmt, num, significance_stars, star_q


class Html(str):
    """Markup that is already safe (built here); anything else is escaped."""


NONE = Html(f'<span class="none">{DASH}</span>')
"""A score cell without a score."""


def e(x) -> str:
    """x as HTML text: escaped (quotes too) unless it is already `Html`; None is empty."""
    return x if isinstance(x, Html) else escape("" if x is None else str(x), quote=True)


# ---------------------------------------------------------------- tables
_NUMERIC = re.compile(r"^[-+]?(\d[\d,]*(\.\d+)?(e[-+]?\d+)?%?|–)( †)?$")


def _is_numeric(cell) -> bool:
    if isinstance(cell, Html):
        return cell.startswith(('<span class="score', '<span class="none'))
    return bool(_NUMERIC.match(str(cell)))


def table(headers: list, rows: list[list], cls: str = "", groups: list[tuple[str, int]] | None = None) -> Html:
    """A table; columns whose every cell is a number (or –) are right-aligned.  groups: an optional first
    header row of (label, number of columns spanned)."""
    numeric = [bool(rows) and all(_is_numeric(r[i]) for r in rows) for i in range(len(headers))]
    align = ["" if n else ' class="text"' for n in numeric]
    top = "".join(f'<th colspan="{n}" class="group">{e(g)}</th>' for g, n in groups or [])
    top = f"<tr>{top}</tr>" if top else ""
    head = "".join(f"<th{align[i]}>{e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{align[i]}>{e(c)}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return Html(
        f'<div class="table-wrap"><table class="{cls}"><thead>{top}<tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


Column = tuple[str, str, Callable]
"""(header, key of a record, formatter of the record's value) of one table column."""


def record_table(columns: list[Column], records: list[dict], cls: str = "") -> Html:
    """A `table` of records (dicts of raw values), one row each, each cell formatted by its column."""
    rows = [[show(r.get(key)) for _, key, show in columns] for r in records]
    return table([header for header, _, _ in columns], rows, cls)


def as_is(x):
    """A column formatter that leaves the value as it is (text, escaped by `table`)."""
    return x


# ---------------------------------------------------------------- figures and sections
def figure(svg: str, caption: str = "", cls: str = "", data: dict | None = None) -> Html:
    """An inline SVG figure (the xmlns attribute is dropped: inline SVG needs none); data: data-* attributes."""
    svg = svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)
    attrs = "".join(f' data-{k}="{e(v)}"' for k, v in (data or {}).items())
    cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
    return Html(f'<figure class="{cls}"{attrs}>{svg}{cap}</figure>')


def section(sid: str, title: str, body: str, intro: str = "") -> str:
    """<section id=sid> with its title, an optional introduction paragraph and `body` (markup)."""
    lead = f'<p class="intro">{e(intro)}</p>' if intro else ""
    return f'<section id="{sid}"><h2>{e(title)}</h2>{lead}{body}</section>'


def not_run(sid: str, title: str, why: str) -> str:
    """A section that says why its results are missing."""
    return section(sid, title, f'<p class="not-run">not run: {e(why)}</p>')


def score(s: dict | None, stars: bool = True) -> Html:
    """'0.612 (pairing z 41.2) ***' with the tests and interval in a tooltip; `NONE` without an observed value.

    Stars: the headline test (the real pair beats its random-init and shifted controls, q_controls) where the
    score has it, else the random-pairing test (q); `stars=False` for none (a control beside the real pair,
    whose random-pairing stars would read as evidence)."""
    if not s or not math.isfinite(num(s.get("observed"))):
        return NONE
    tip = (
        f"random pairing: null {fmt(s.get('null_mean'))} ± {fmt(s.get('null_std'))}, p {fmt(s.get('p'), '.3g')}, "
        f"q {fmt(s.get('q'), '.3g')}"
    )
    if s.get("k") is not None:
        tip += f"; k {s['k']} directions"
    for control in ("random_init", "shifted"):
        v = s.get(f"versus_{control}")
        if v:
            tip += f"; minus {control}: {fmt(v.get('observed'), '+.3f')}"
    if "p_controls" in s:
        tip += f"; beats both controls: p {fmt(s.get('p_controls'), '.3g')}, q {fmt(s.get('q_controls'), '.3g')}"
    if s.get("ci_lo") is not None:
        tip += f"; 95% CI {fmt(s.get('ci_lo'))} to {fmt(s.get('ci_hi'))}"
    q = star_q(s) if stars else None
    return Html(
        f'<span class="score" title="{e(tip)}">{fmt(s["observed"])} '
        f'<span class="z">(pairing z {fmt(s.get("z"), ".1f")})</span> '
        f'<span class="stars">{significance_stars(q)}</span></span>'
    )


# ---------------------------------------------------------------- tokens
_CONTROL = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def token_html(token: str) -> str:
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


def context_html(ctx: dict) -> str:
    """One top activating context as a list item: its activation, then its tokens with the focus marked."""
    tokens, focus = ctx.get("tokens") or [], ctx.get("focus")
    body = "".join(f"<mark>{token_html(t)}</mark>" if i == focus else token_html(t) for i, t in enumerate(tokens))
    return (
        f'<li class="snippet"><span class="act" title="activation">{fmt(ctx.get("activation"), ".2f")}</span>'
        f'<span class="tokens">{body}</span></li>'
    )
