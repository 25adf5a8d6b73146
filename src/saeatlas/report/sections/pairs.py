"""Matched latent pairs: cards of the most correlated pairs, each latent's top activating contexts side by
side, grouped by layer pair."""

from __future__ import annotations

from ...explore.study import REPORT_PORT, pair_fragment
from ..format import fmt
from ..markup import context_html, e, not_run, section
from .common import model_labels

ID, TITLE = "pairs", "Matched latent pairs"


# ---------------------------------------------------------------- data
def card_groups(cards: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    """((layer_a, layer_b), its cards) in the order the layer pairs first appear."""
    groups: dict[tuple, list] = {}
    for card in cards:
        groups.setdefault((card.get("hook_a"), card.get("hook_b")), []).append(card)
    return list(groups.items())


# ---------------------------------------------------------------- markup
def _card(card: dict, labels: tuple[str, str], number: int, fragment: str | None = None) -> str:
    sides = []
    for side, label, layer, idx in (
        ("a", labels[0], card.get("hook_a"), card.get("idx_a")),
        ("b", labels[1], card.get("hook_b"), card.get("idx_b")),
    ):
        contexts = card.get(side) or []
        items = "".join(context_html(c) for c in contexts) or '<li class="none note">no activating context</li>'
        sides.append(
            f'<div class="context side-{side}"><h4>{e(label)} {e(layer)} · latent {e(idx)}</h4><ol>{items}</ol></div>'
        )
    title = f"{e(labels[0])} #{e(card.get('idx_a'))} ⟷ {e(labels[1])} #{e(card.get('idx_b'))}"
    explore = (
        f'<a class="explore" href="http://127.0.0.1:{REPORT_PORT}/#{e(fragment)}" data-explore="{e(fragment)}">'
        "explore</a>"
        if fragment
        else ""
    )
    return (
        f'<article class="pair-card" id="pair-{number}"><header><span>{title}</span>'
        f'<span class="corr">r = {fmt(card.get("corr"))} {explore}</span></header>'
        f'<div class="sides">{"".join(sides)}</div></article>'
    )


INTRO = (
    "The most correlated matched pairs of each layer pair. Each side shows the latent's top activating "
    "contexts in its own model's text, the firing token highlighted and its activation at the left; "
    "↵ marks a newline, · a space-only token. With `saeatlas explore <study folder>` running (on its default "
    f"port, {REPORT_PORT}), each card's explore link opens the pair in the explorer (both latents' dashboards)."
)


def render(results: dict) -> str:
    cards = results.get("pair_cards") or []
    if not cards:
        return not_run(ID, TITLE, "no pair cards (the comparison was not run, or matched no pairs)")
    labels = model_labels(results)
    html, number = [], 0
    for (a, b), group in card_groups(cards):
        items = []
        for card in group:
            fragment = pair_fragment(results, a, b, card.get("idx_a"), card.get("idx_b"))
            items.append(_card(card, labels, number, fragment))
            number += 1
        title = f"{e(labels[0])} {e(a)} × {e(labels[1])} {e(b)}"
        html.append(f'<div class="pair-group"><h3>{title}</h3>{"".join(items)}</div>')
    return section(ID, TITLE, "".join(html), INTRO)
