"""SAE quality: the held-out figures of every SAE and, for the main ones, CE-loss recovered."""

from __future__ import annotations

from ..format import fmt, fmt_int, fmt_pct
from ..markup import as_is, not_run, record_table, section

ID, TITLE = "saes", "SAE quality"


# ---------------------------------------------------------------- data
def sae_rows(results: dict) -> list[dict]:
    """One record per SAE: its settings (label, hook, role, arch, k, d_sae, seed), held-out metrics (l0, fvu,
    explained_variance, cosine, dead_fraction, dense_fraction) and downstream figures (ce_loss_recovered,
    delta_lm_loss, kl_div, each with `<name>_se`, its standard error over documents, and n_documents); missing
    ones absent."""
    keys = ("label", "hook", "arch", "k", "d_sae", "seed")
    return [
        {
            **(s.get("metrics") or {}),
            **(s.get("downstream") or {}),
            **{k: s.get(k) for k in keys},
            "role": s.get("role", ""),
        }
        for s in results.get("saes") or []
    ]


# ---------------------------------------------------------------- markup
def _fixed(spec: str):
    return lambda v: fmt(v, spec)


SE_FIGURES = ("ce_loss_recovered", "delta_lm_loss", "kl_div")
"""Downstream figures shown with their standard error over documents (the column key is `<name> ± se`)."""


def _with_se(spec: str = ".3f"):
    """Formatter of a (value, standard error) pair: '0.912 ± 0.004' (the value alone without an error)."""

    def show(pair) -> str:
        value, se = pair if isinstance(pair, tuple) else (pair, None)
        text = fmt(value, spec)
        return text if se is None or text == fmt(None) else f"{text} ± {fmt(se, spec)}"

    return show


COLUMNS = [
    ("model", "label", as_is),
    ("hook", "hook", as_is),
    ("role", "role", as_is),
    ("arch", "arch", as_is),
    ("k", "k", fmt_int),
    ("d_sae", "d_sae", fmt_int),
    ("seed", "seed", fmt_int),
    ("L0", "l0", _fixed(".1f")),
    ("FVU", "fvu", fmt),
    ("expl. var.", "explained_variance", fmt),
    ("cosine", "cosine", fmt),
    ("dead", "dead_fraction", fmt_pct),
    ("dense", "dense_fraction", fmt_pct),
    ("CE-loss recovered", "ce_loss_recovered ± se", _with_se()),
    ("Δ LM loss", "delta_lm_loss ± se", _with_se()),
    ("KL", "kl_div ± se", _with_se(".4f")),
    ("documents", "n_documents", fmt_int),
]

INTRO = (
    "Held-out figures: L0 (active latents per token), FVU (fraction of variance unexplained), dead "
    "latents (never fire) and dense ones (fire on >10% of tokens); CE-loss recovered = (CE zero-ablated "
    "- CE with the SAE) / (CE zero-ablated - CE clean) with the SAE spliced into the model, on windows spread "
    "over every held-out document (the same text for every model), as means over documents ± one standard error "
    "over documents. With few documents (under 20) read ± as a rough guide: an approximate 95% interval is "
    "± t(documents − 1) standard errors (2.31 at 9 documents), and skewed per-document figures (KL, Δ LM loss) "
    "can need more. – : not evaluated."
)


def render(results: dict) -> str:
    rows = [{**r, **{f"{n} ± se": (r.get(n), r.get(f"{n}_se")) for n in SE_FIGURES}} for r in sae_rows(results)]
    if not rows:
        return not_run(ID, TITLE, "no SAEs in the results")
    return section(ID, TITLE, record_table(COLUMNS, rows, "sae-table"), INTRO)
