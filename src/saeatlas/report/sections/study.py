"""The study: its models and data, every setting, and the stages with their timings."""

from __future__ import annotations

from ..format import fmt, fmt_int
from ..markup import as_is, e, record_table, section, table

ID, TITLE = "study", "The study"


# ---------------------------------------------------------------- data
def model_rows(results: dict) -> list[dict]:
    """One record per model: label, model, name, d_model, corpus, n_tokens and its hooks (joined)."""
    return [{**m, "hooks": ", ".join(m.get("hooks") or [])} for m in results.get("models") or []]


def settings_groups(study: dict) -> list[tuple[str, list[tuple[str, object]]]]:
    """(group, [(setting, value)]) of the study's settings: its top-level settings as group 'study', then
    one group per table ([data], [sae], ...).  Lists are joined with ', ', None is '–'."""

    def items(values: dict) -> list[tuple[str, object]]:
        return [
            (k, ", ".join(map(str, v)) if isinstance(v, list) else ("–" if v is None else v))
            for k, v in values.items()
            if not isinstance(v, dict)
        ]

    top = {k: v for k, v in study.items() if not isinstance(v, (dict, list))}
    return [("study", items(top))] + [(k, items(v)) for k, v in study.items() if isinstance(v, dict)]


def stage_rows(results: dict) -> list[dict]:
    """One record per stage: name, what this run did ('ran' or 'done (skipped)'), seconds, key (12 digits)."""
    return [
        {
            "name": s.get("name"),
            "state": "ran" if s.get("state") == "ran" else "done (skipped)",
            "seconds": s.get("seconds"),
            "key": (s.get("key") or "")[:12],
        }
        for s in results.get("stages") or []
    ]


# ---------------------------------------------------------------- markup
MODEL_COLUMNS = [
    ("label", "label", as_is),
    ("model", "model", as_is),
    ("name", "name", as_is),
    ("d_model", "d_model", fmt_int),
    ("corpus", "corpus", as_is),
    ("tokens", "n_tokens", fmt_int),
    ("hooks", "hooks", as_is),
]
STAGE_COLUMNS = [
    ("stage", "name", as_is),
    ("this run", "state", as_is),
    ("seconds", "seconds", lambda v: fmt(v, ".1f")),
    ("key", "key", as_is),
]


def _settings_table(name: str, items: list[tuple[str, object]]) -> str:
    return f"<div><h4>[{e(name)}]</h4>{table(['setting', 'value'], [list(i) for i in items], 'settings-table')}</div>"


def _alignment_note(align: dict | None) -> str:
    if not align:
        return ""
    return (
        f'<p class="note">Aligned positions: {fmt_int(align.get("n_positions"))} in '
        f"{fmt_int(align.get('n_documents'))} documents (by {e(align.get('method'))}; usable tokens "
        f"A {fmt_int(align.get('usable_a'))}, B {fmt_int(align.get('usable_b'))}).</p>"
    )


def _stages_table(results: dict) -> str:
    rows = stage_rows(results)
    total = f'<p class="note">Total {fmt(results.get("seconds"), ".1f")} s.</p>'
    return record_table(STAGE_COLUMNS, rows) + total if rows else total


def render(results: dict) -> str:
    settings = "".join(_settings_table(name, items) for name, items in settings_groups(results.get("study") or {}))
    body = (
        f"<h3>Models and data</h3>{record_table(MODEL_COLUMNS, model_rows(results))}"
        f"{_alignment_note((results.get('compare') or {}).get('alignment'))}"
        f'<h3>Settings</h3><div class="settings">{settings}</div>'
        f"<h3>Stages</h3>{_stages_table(results)}"
    )
    return section(ID, TITLE, body)
