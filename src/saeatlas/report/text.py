"""Terminal summaries (rich tables) of saeatlas products, legible at 80 columns and in a file.

A table never wraps a cell: its columns take their widest cell, long headers break over two lines, and a
table wider than the console is first narrowed by shortening its first column's names (an ellipsis in the
middle), then split into several tables that each repeat the row labels (e.g. layers and comparison) and
take as many of the other columns as fit.  Paragraphs wrap at words with a hanging indent.  Without a
terminal (stdout piped to a file) rich's console is 80 columns wide, so the output fits there too.
Numbers come from `report.format`; a missing one is '-'.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..data.store import ActivationStore
from .format import fmt, fmt_int, fmt_pct, fmt_size, pair_label, q_text, score_text, shorten

MISSING = "-"
"""A missing number in the terminal."""
MIN_LABEL = 16
"""A table's first column is never shortened below this many characters."""
GAP = 2
"""Spaces between two columns."""


def _console(console: Console | None) -> Console:
    return console or Console(highlight=False, markup=False, soft_wrap=True)


def _num(x, spec: str = ".3f") -> str:
    return fmt(x, spec, MISSING)


def _score(stats: dict | None) -> str:
    """' 0.612 (z 41, q<.001)': observed values of a left-aligned column line up (signs included)."""
    return score_text(stats, MISSING, width=6)


# ---------------------------------------------------------------- paragraphs and tables
def say(console: Console, text: str | list[str], indent: str = "  ") -> None:
    """Print a paragraph wrapped to the console's width, its continuation lines indented.

    text: a string, wrapped at words; or a list of phrases joined by spaces and wrapped only between them,
    so that a figure stays on the line of its name ('absorption fraction 0.667').  A word or phrase longer
    than a line (e.g. a path) is broken.
    """
    width = console.width
    phrases = [text] if isinstance(text, str) else text
    lines, line = [], ""
    for phrase in filter(None, phrases):
        if line and cell_len(f"{line} {phrase}") > width:
            lines.append(line)
            line = indent + phrase
        else:
            line = f"{line} {phrase}" if line else phrase
    lines.append(line)
    for line in lines:
        for part in textwrap.wrap(line, width=width, subsequent_indent=indent, break_on_hyphens=False) or [""]:
            console.print(Text(part), soft_wrap=True)


@dataclass(frozen=True)
class Col:
    """A column of a terminal table: its header ('\\n' breaks it over two lines) and alignment."""

    header: str
    right: bool = False


def _width(col: Col, cells: list[str]) -> int:
    return max([cell_len(line) for line in col.header.split("\n")] + [cell_len(c) for c in cells])


def _span(widths: list[int]) -> int:
    """Width of a table whose columns are `widths` wide."""
    return sum(widths) + GAP * (len(widths) - 1)


def _chunks(widths: list[int], n_keys: int, width: int) -> list[list[int]]:
    """Column indices of each table: the first `n_keys` columns in every one, then as many of the others, in
    order, as fit in `width` (at least one each)."""
    keys, chunks, current = list(range(n_keys)), [], []
    for i in range(n_keys, len(widths)):
        if current and _span([widths[j] for j in keys + current + [i]]) > width:
            chunks.append(keys + current)
            current = []
        current.append(i)
    return chunks + [keys + current]


def print_table(cols: list[Col], rows: list[list[str]], n_keys: int = 1, console: Console | None = None) -> None:
    """Print rows (cells as text) under `cols`, fitted to the console's width: one row a line.

    Too wide: the first column's cells are shortened (down to MIN_LABEL characters) if that makes the
    table fit; otherwise it is split into tables that each repeat the first `n_keys` columns.
    """
    console = _console(console)
    rows = [[str(c) for c in r] for r in rows]
    widths = [_width(col, [r[i] for r in rows]) for i, col in enumerate(cols)]
    excess = _span(widths) - console.width
    if 0 < excess <= widths[0] - MIN_LABEL and not cols[0].right:
        widths[0] -= excess
        rows = [[shorten(r[0], widths[0]), *r[1:]] for r in rows]
    for n, chunk in enumerate(_chunks(widths, n_keys, console.width)):
        if n:
            console.print()
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, padding=(0, 1))
        for i in chunk:
            table.add_column(
                Text(cols[i].header),
                justify="right" if cols[i].right else "left",
                no_wrap=True,
                overflow="ellipsis",
                min_width=widths[i],
            )
        for r in rows:
            table.add_row(*(Text(r[i]) for i in chunk))
        console.print(table)


# ---------------------------------------------------------------- activation stores
def print_store_info(store: ActivationStore, verified: bool, console: Console | None = None) -> None:
    """Print what an activation store holds: model, data, counts, hooks with shapes and norms."""
    console = _console(console)
    m = store.manifest
    settings = m["settings"]
    status = "complete" if m["complete"] else f"INCOMPLETE ({store.n_shards} shards; rerun extract to finish)"
    indent = " " * 13
    say(console, [str(store.path), f" activation store v{m['version']}, {status}"])
    say(
        console,
        f"  model      {m['model']['spec']}  ({m['model']['model_type']}, {m['model']['n_layers']} layers, "
        f"d_model {m['model']['d_model']}; {m['model']['identity']})",
        indent,
    )
    say(
        console,
        f"  tokenizer  {m['tokenizer']['class']}, vocab {m['tokenizer']['vocab_size']}, "
        f"prefix {m['tokenizer']['prefix_ids']} ({m['tokenizer']['identity'][:23]}...)",
        indent,
    )
    say(
        console,
        f"  corpus     {m['corpus']['spec']} [{settings['split']} split, seed {settings['seed']}] "
        f"({m['corpus']['identity']})",
        indent,
    )
    usable = sum(s["n_tokens_usable"] for s in m["shards"])
    n_windows = sum(s["n_windows"] for s in m["shards"])
    say(
        console,
        f"  tokens     {store.n_tokens:,} in {n_windows:,} windows of <= {settings['context']} "
        f"({usable:,} usable: BOS/special and position 0 excluded by default)",
        indent,
    )
    if m.get("corpus_exhausted"):
        say(console, f"  note       the corpus ran out before the budget of {settings['tokens']:,} tokens", indent)
    say(
        console,
        f"  shards     {store.n_shards}, dtype {store.dtype}, hashes {'verified' if verified else 'not checked'}",
        indent,
    )
    rows = []
    for hook in store.hooks:
        files = [store.path / rel for s in m["shards"] for rel in s["files"] if rel.startswith(hook + "/")]
        stats = store.norm_stats(hook) if store.n_shards else {}
        rows.append(
            [
                hook,
                f"[{store.n_tokens:,}, {store.d_model}]",
                fmt_size(sum(f.stat().st_size for f in files)),
                _num(stats.get("mean_norm"), ".1f"),
                _num(stats.get("position0_mean_norm"), ".1f"),
            ]
        )
    cols = [Col("hook"), Col("shape", True), Col("on disk", True), Col("mean norm", True), Col("pos-0 norm", True)]
    print_table(cols, rows, console=console)


# ---------------------------------------------------------------- comparisons
def comparison_rows(results: dict, measures: list[str]) -> list[list[str]]:
    """One row per (layer pair, comparison) of compare results, skylines last: layers, comparison, the space
    it is scored on, pairs, mean max r, then each measure's score ('0.612 (z 41, q<.001)')."""
    rows = []
    for e in results["pairs"] + results.get("skyline", []):
        for kind, body in e.items():
            if kind in ("hook_a", "hook_b"):
                continue
            space = "decoder" if body["decoder"] else "activations"  # neurons have no decoder rows
            rows.append(
                [
                    pair_label(e["hook_a"], e["hook_b"]),
                    kind,
                    space,
                    fmt_int(body.get("n_pairs"), MISSING),
                    _num(body.get("mean_max_corr")),
                    *(_score(body[space].get(m)) for m in measures),
                ]
            )
    return rows


def headline_rows(results: dict, measures: list[str]) -> list[list[str]]:
    """One row per layer pair whose real pair was tested against its controls: layers, then per measure
    'q 0.003 (+0.212 +0.180)': the BH q of the test that the real pair beats both random_init and shifted
    (half-sample test, "q_controls") and the observed real minus each control, in the results' order
    (`versus_random_init`, `versus_shifted`)."""
    rows = []
    for e in results["pairs"]:
        scores = [(e.get("sae") or {}).get("decoder", {}).get(m) or {} for m in measures]
        if not any("p_controls" in s for s in scores):
            continue
        cells = []
        for s in scores:
            diffs = " ".join(fmt(s[k].get("observed"), "+.3f", MISSING) for k in s if k.startswith("versus_"))
            cells.append(f"{q_text(s.get('q_controls'), MISSING)} ({diffs})" if "p_controls" in s else MISSING)
        rows.append([pair_label(e["hook_a"], e["hook_b"]), *cells])
    return rows


def concept_rows(results: dict, measures: list[str]) -> list[list[str]]:
    """One row per (concept, layer pair) of concepts results: concept, layers, latents of A/B, pairs, then
    each measure's score."""
    return [
        [
            e["concept"],
            pair_label(e["hook_a"], e["hook_b"]),
            f"{e['n_latents_a']}/{e['n_latents_b']}",
            fmt_int(e.get("n_pairs"), MISSING),
            *(_score(e["decoder"].get(m)) for m in measures),
        ]
        for e in results["entries"]
    ]


def print_comparison(results: dict, console: Console | None = None, measures=("svcca", "rsa", "linear_cka")) -> None:
    """The headline table of a compare (layer pairs x comparisons) or concepts (concepts x layer pairs) result:
    each row's pairs and scores (observed, z against the random-pairing null, BH q)."""
    console = _console(console)
    shown = [m for m in measures if m in results["config"]["measures"]]
    a, b, cfg = results["store_a"], results["store_b"], results["config"]
    say(
        console,
        [
            f"{a['model']} ({a['path']}) vs",
            f"{b['model']} ({b['path']}):",
            f"{results['alignment']['n_positions']:,} aligned positions;",
            f"matching {cfg['method']},",
            f"threshold {cfg['threshold']},",
            f"{cfg['n_permutations']} permutations;",
            "scores: observed",
            "(z against the random-pairing null,",
            "BH q-value)",
        ],
    )
    if results["kind"] == "concepts":
        cols = [Col("concept"), Col("layers"), Col("latents\nA/B", True), Col("pairs", True)]
        rows = concept_rows(results, shown)
    else:
        cols = [Col("layers"), Col("comparison"), Col("scored\non"), Col("pairs", True), Col("mean\nmax r", True)]
        rows = comparison_rows(results, shown)
    print_table(cols + [Col(m) for m in shown], rows, n_keys=2, console=console)
    headline = headline_rows(results, shown) if results["kind"] != "concepts" else []
    if headline:
        say(
            console,
            [
                "The real pair against its controls",
                f"({cfg['n_bootstrap']} random halves of the documents, each re-selected):",
                "BH q of the test that it beats both random_init and shifted",
                "(real minus random_init, real minus shifted)",
            ],
        )
        print_table([Col("layers")] + [Col(m) for m in shown], headline, n_keys=1, console=console)


# ---------------------------------------------------------------- absorption
ABSORPTION_KEYS = ("absorption_fraction", "full_absorption_rate", "ablation_absorption_rate")
"""Per-letter absorption measures, in table order (those the results have)."""
MEAN_KEYS = ("mean_num_split_features", "mean_k_sparse_f1", *(f"mean_{k}" for k in ABSORPTION_KEYS))
"""An SAE's means over the qualifying letters, in table order (those the results have)."""
HEADERS = {
    "absorption_fraction": "absorption\nfraction",
    "full_absorption_rate": "full\nabsorption",
    "ablation_absorption_rate": "ablation\nabsorption",
    "num_split_features": "split\nfeatures",
    "k_sparse_f1": "k-sparse\nF1",
}
"""Column headers of per-letter figures and (with 'mean_') of the means."""


def _latents(ids: list, n: int = 5) -> str:
    """The first n latent ids, '…' when there are more."""
    return " ".join(map(str, ids[:n])) + (" …" if len(ids) > n else "")


def letter_rows(sae: dict) -> list[list[str]]:
    """One row per letter of one absorption SAE: letter ('†': the probe does not qualify), probe F1, its true
    positives, the main latents, their number (num_split_features), k-sparse F1, then each absorption measure."""
    keys = [k for k in ABSORPTION_KEYS if k in sae["letters"][0]]
    return [
        [
            r["letter"] + ("" if r["qualifies"] else " †"),
            _num(r["probe_f1"]),
            str(r["n_true_positives"]),
            _latents(r["main_latents"]),
            str(r["num_split_features"]),
            _num(r["k_sparse_f1"]),
            *(_num(r[k]) for k in keys),
        ]
        for r in sae["letters"]
    ]


def sae_rows(results: dict) -> list[list[str]]:
    """One row per absorption SAE: name, arch, d_sae, k, L0 on the task, then its means."""
    keys = [k for k in MEAN_KEYS if k in results["saes"][0]["summary"]]
    return [
        [
            sae["name"],
            sae["arch"],
            str(sae["d_sae"]),
            str(sae["k"] or MISSING),
            _num(sae["l0_on_task"], ".1f"),
            *(_num(sae["summary"][k]) for k in keys),
        ]
        for sae in results["saes"]
    ]


def print_absorption(results: dict, console: Console | None = None, per_letter: bool = True) -> None:
    """Probe F1 and, per SAE, splitting and absorption (per letter unless `per_letter` is False), with the means
    over qualifying letters."""
    console = _console(console)
    say(
        console,
        [
            f"{results['model']} {results['hook']}:",
            f"{results['n_prompts']} first-letter prompts",
            f"({results['n_train']} train / {results['n_test']} test),",
            f"word token at {results['word_position_from_end']} from the end;",
            f"mean probe F1 {_num(results['mean_probe_f1'])}",
        ],
    )
    min_f1 = results["config"]["min_probe_f1"]
    if results.get("warning"):
        say(console, f"warning: {results['warning']}")
    for sae in results["saes"]:
        if per_letter:
            console.print()
            say(
                console,
                f"{sae['name']} ({sae['arch']}, d_sae {sae['d_sae']}{', k ' + str(sae['k']) if sae['k'] else ''}; "
                f"L0 on the task {_num(sae['l0_on_task'], '.1f')})",
            )
            keys = [k for k in ABSORPTION_KEYS if k in sae["letters"][0]]
            cols = [Col("letter"), Col("probe\nF1", True), Col("TPs", True), Col("main\nlatents")]
            cols += [Col(HEADERS[k], True) for k in ("num_split_features", "k_sparse_f1", *keys)]
            print_table(cols, letter_rows(sae), console=console)
            if not all(r["qualifies"] for r in sae["letters"]):
                say(console, f"† probe F1 not above {min_f1}: the letter does not count in the means")
        s = sae["summary"]
        means = [f"{k[len('mean_') :].replace('_', ' ')} {_num(v)}" for k, v in s.items() if k.startswith("mean_")]
        say(
            console,
            [
                f"{sae['name']}:",
                f"over {s['n_letters_qualified']} letters with probe F1 > {min_f1}:",
                *(m + "," for m in means[:-1]),
                *means[-1:],
                f"({sae['seconds']:.1f} s)",
            ],
        )
    if len(results["saes"]) > 1:
        console.print()
        say(console, "SAEs side by side (means over qualifying letters)")
        keys = [k for k in MEAN_KEYS if k in results["saes"][0]["summary"]]
        cols = [Col("SAE"), Col("arch"), Col("d_sae", True), Col("k", True), Col("L0 on\ntask", True)]
        cols += [Col(HEADERS[k[len("mean_") :]], True) for k in keys]
        print_table(cols, sae_rows(results), console=console)


# ---------------------------------------------------------------- a study
def stage_rows(stages: list[dict]) -> list[list[str]]:
    """One row per stage: name, what this run did, seconds now and when its product was made."""
    return [
        [
            t["name"],
            "ran" if t["state"] == "ran" else "skipped (done)",
            _num(t.get("seconds"), ".1f"),
            _num(t.get("seconds_when_made"), ".1f"),
        ]
        for t in stages
    ]


def sae_quality_rows(results: dict) -> list[list[str]]:
    """One row per evaluated SAE: model, hook, role, k, seed, held-out L0, FVU, dead fraction, CE-loss
    recovered."""
    rows = []
    for s in results.get("saes") or []:
        if not s.get("metrics"):
            continue
        m, dn = s["metrics"], s.get("downstream") or {}
        rows.append(
            [
                s["label"],
                s["hook"],
                s.get("role") or "",
                *(MISSING if s.get(c) is None else str(s[c]) for c in ("k", "seed")),
                _num(m.get("l0"), ".1f"),
                _num(m.get("fvu")),
                fmt_pct(m.get("dead_fraction"), MISSING),
                _num(dn.get("ce_loss_recovered")),
            ]
        )
    return rows


def print_study_summary(stages: list[dict], results: dict, console: Console | None = None) -> None:
    """What a study run did and found: the stages with their timings, the SAEs' held-out quality, the
    comparison's headline table and the absorption summary (those the results have).

    stages: the run's stage records (name, state, seconds, seconds_when_made); results: its results.json.
    The caller says where the results and the report are.
    """
    console = _console(console)
    say(console, f"study '{(results.get('study') or {}).get('name', '')}': stages")
    cols = [Col("stage"), Col("this run"), Col("seconds", True), Col("when made", True)]
    print_table(cols, stage_rows(stages), console=console)
    saes = sae_quality_rows(results)
    if saes:
        console.print()
        say(console, "SAE quality (held-out)")
        cols = [Col("model"), Col("hook"), Col("role"), Col("k", True), Col("seed", True), Col("L0", True)]
        cols += [Col("FVU", True), Col("dead", True), Col("CE-loss\nrecovered", True)]
        print_table(cols, saes, n_keys=2, console=console)
    if results.get("compare"):
        console.print()
        print_comparison(results["compare"], console)
    if results.get("absorption"):
        console.print()
        print_absorption(results["absorption"], console, per_letter=False)
