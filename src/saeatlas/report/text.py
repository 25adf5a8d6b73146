"""Plain-terminal summaries (rich tables) of saeatlas products."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..data.store import ActivationStore


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def print_store_info(store: ActivationStore, verified: bool, console: Console | None = None) -> None:
    """Print what an activation store holds: model, data, counts, hooks with shapes and norms."""
    console = console or Console(highlight=False, markup=False, soft_wrap=True)
    m = store.manifest
    settings = m["settings"]
    status = "complete" if m["complete"] else f"INCOMPLETE ({store.n_shards} shards; rerun extract to finish)"
    console.print(f"{store.path}  activation store v{m['version']}, {status}")
    console.print(
        f"  model      {m['model']['spec']}  ({m['model']['model_type']}, {m['model']['n_layers']} layers, "
        f"d_model {m['model']['d_model']}; {m['model']['identity']})"
    )
    console.print(
        f"  tokenizer  {m['tokenizer']['class']}, vocab {m['tokenizer']['vocab_size']}, "
        f"prefix {m['tokenizer']['prefix_ids']} ({m['tokenizer']['identity'][:23]}...)"
    )
    console.print(
        f"  corpus     {m['corpus']['spec']} [{settings['split']} split, seed {settings['seed']}] "
        f"({m['corpus']['identity']})"
    )
    usable = sum(s["n_tokens_usable"] for s in m["shards"])
    n_windows = sum(s["n_windows"] for s in m["shards"])
    console.print(
        f"  tokens     {store.n_tokens:,} in {n_windows:,} windows of <= {settings['context']} "
        f"({usable:,} usable: BOS/special and position 0 excluded by default)"
    )
    if m.get("corpus_exhausted"):
        console.print(f"  note       the corpus ran out before the budget of {settings['tokens']:,} tokens")
    console.print(
        f"  shards     {store.n_shards}, dtype {store.dtype}, hashes {'verified' if verified else 'not checked'}"
    )
    table = Table(show_edge=False)
    for column in ("hook", "shape", "on disk", "mean norm", "pos-0 norm"):
        table.add_column(column, justify="left" if column == "hook" else "right")
    for hook in store.hooks:
        files = [store.path / rel for s in m["shards"] for rel in s["files"] if rel.startswith(hook + "/")]
        stats = (
            store.norm_stats(hook)
            if store.n_shards
            else {"mean_norm": float("nan"), "position0_mean_norm": float("nan")}
        )
        table.add_row(
            hook,
            f"[{store.n_tokens:,}, {store.d_model}]",
            _size(sum(f.stat().st_size for f in files)),
            f"{stats['mean_norm']:.1f}",
            f"{stats['position0_mean_norm']:.1f}",
        )
    console.print(table)


def _cell(stats: dict) -> str:
    """'0.612 (z 41, q<.001)' from a measure's summary."""
    import math

    obs, z, q = stats.get("observed"), stats.get("z"), stats.get("q", stats.get("p"))
    if obs is None or not math.isfinite(obs):
        return "-"
    qs = "q<.001" if q is not None and q < 0.001 else f"q {q:.3f}" if q is not None else ""
    return f"{obs:.3f} (z {z:.0f}, {qs})"


def _layers(layer_a: str, layer_b: str) -> str:
    """'3 x 5' for resid_post.3 x resid_post.5 (hooks of one kind: just their layers), else the full names."""
    from .html import short_hooks

    return " x ".join(short_hooks([layer_a, layer_b])[0])


def print_comparison(results: dict, console: Console | None = None, measures=("svcca", "rsa", "linear_cka")) -> None:
    """The headline table of a compare (layer pairs x comparisons) or concepts (concepts x layer pairs) result."""
    console = console or Console(highlight=False, markup=False, soft_wrap=True)
    shown = [m for m in measures if m in results["config"]["measures"]]
    a, b = results["store_a"], results["store_b"]
    console.print(
        f"{a['model']} ({a['path']}) vs {b['model']} ({b['path']}): {results['alignment']['n_positions']:,} "
        f"aligned positions; matching {results['config']['method']}, threshold {results['config']['threshold']}, "
        f"{results['config']['n_permutations']} permutations"
    )
    table = Table(show_edge=False)
    if results["kind"] == "concepts":
        for column in ("concept", "layers", "latents A/B", "pairs", *shown):
            table.add_column(column)
        for e in results["entries"]:
            table.add_row(
                e["concept"],
                _layers(e["layer_a"], e["layer_b"]),
                f"{e['n_latents_a']}/{e['n_latents_b']}",
                str(e["n_pairs"]),
                *(_cell(e["decoder"][m]) for m in shown),
            )
    else:
        for column in ("layers", "comparison", "scored on", "pairs", "mean max r", *shown):
            table.add_column(column)
        for e in results["pairs"] + results.get("skyline", []):
            for kind, body in e.items():
                if kind in ("layer_a", "layer_b"):
                    continue
                space = "decoder" if body["decoder"] else "activations"  # neurons have no decoder rows
                table.add_row(
                    _layers(e["layer_a"], e["layer_b"]),
                    kind,
                    space,
                    str(body["n_pairs"]),
                    f"{body['mean_max_corr']:.3f}",
                    *(_cell(body[space].get(m, {})) for m in shown),
                )
    console.print(table)


def _num(x, fmt: str = ".3f") -> str:
    import math

    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def print_absorption(results: dict, console: Console | None = None, per_letter: bool = True) -> None:
    """Probe F1 and, per SAE, splitting and absorption (per letter unless `per_letter` is False), with the means
    over qualifying letters."""
    console = console or Console(highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"{results['model']} {results['hook']}: {results['n_prompts']} first-letter prompts "
        f"({results['n_train']} train / {results['n_test']} test), word token at "
        f"{results['word_position_from_end']} from the end; mean probe F1 {results['mean_probe_f1']:.3f}"
    )
    for sae in results["saes"]:
        rows = sae["letters"]
        keys = [k for k in ("absorption_fraction", "full_absorption_rate", "ablation_absorption_rate") if k in rows[0]]
        table = Table(
            show_edge=False,
            title=f"{sae['name']} ({sae['arch']}, width {sae['d_sae']}"
            f"{', k ' + str(sae['k']) if sae['k'] else ''}; L0 on the task "
            f"{sae['l0_on_task']:.1f})",
        )
        for column in (
            "letter",
            "probe F1",
            "TPs",
            "main latents",
            "split",
            "k-sparse F1",
            *(k.replace("_", " ") for k in keys),
        ):
            table.add_column(column)
        for r in rows:
            mark = "" if r["qualifies"] else " (F1 too low)"
            table.add_row(
                r["letter"] + mark,
                _num(r["probe_f1"]),
                str(r["n_true_positives"]),
                " ".join(map(str, r["main_latents"])),
                str(r["n_split"]),
                _num(r["k_sparse_f1"]),
                *(_num(r[k]) for k in keys),
            )
        if per_letter:
            console.print(table)
        s = sae["summary"]
        means = ", ".join(
            f"{k[len('mean_') :].replace('_', ' ')} {_num(v)}" for k, v in s.items() if k.startswith("mean_")
        )
        console.print(
            f"{sae['name']}: over {s['n_qualifying_letters']} letters with probe F1 > "
            f"{results['config']['min_probe_f1']}: {means}  ({sae['seconds']:.1f} s)"
        )
    if len(results["saes"]) > 1:
        table = Table(show_edge=False, title="SAEs side by side (means over qualifying letters)")
        keys = [
            k
            for k in (
                "mean_n_split",
                "mean_k_sparse_f1",
                "mean_absorption_fraction",
                "mean_full_absorption_rate",
                "mean_ablation_absorption_rate",
            )
            if k in results["saes"][0]["summary"]
        ]
        for column in ("SAE", "arch", "width", "k", "L0 on task", *(k[len("mean_") :].replace("_", " ") for k in keys)):
            table.add_column(column)
        for sae in results["saes"]:
            table.add_row(
                sae["name"],
                sae["arch"],
                str(sae["d_sae"]),
                str(sae["k"] or "-"),
                f"{sae['l0_on_task']:.1f}",
                *(_num(sae["summary"][k]) for k in keys),
            )
        console.print(table)
