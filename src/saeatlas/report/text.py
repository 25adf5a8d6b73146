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
    console.print(f"  model      {m['model']['spec']}  ({m['model']['model_type']}, {m['model']['n_layers']} layers, "
                  f"d_model {m['model']['d_model']}; {m['model']['identity']})")
    console.print(f"  tokenizer  {m['tokenizer']['class']}, vocab {m['tokenizer']['vocab_size']}, "
                  f"prefix {m['tokenizer']['prefix_ids']} ({m['tokenizer']['identity'][:23]}...)")
    console.print(f"  corpus     {m['corpus']['spec']} [{settings['split']} split, seed {settings['seed']}] "
                  f"({m['corpus']['identity']})")
    usable = sum(s["n_tokens_usable"] for s in m["shards"])
    n_windows = sum(s["n_windows"] for s in m["shards"])
    console.print(f"  tokens     {store.n_tokens:,} in {n_windows:,} windows of <= {settings['context']} "
                  f"({usable:,} usable: BOS/special and position 0 excluded by default)")
    if m.get("corpus_exhausted"):
        console.print(f"  note       the corpus ran out before the budget of {settings['tokens']:,} tokens")
    console.print(f"  shards     {store.n_shards}, dtype {store.dtype}, "
                  f"hashes {'verified' if verified else 'not checked'}")
    table = Table(show_edge=False)
    for column in ("hook", "shape", "on disk", "mean norm", "pos-0 norm"):
        table.add_column(column, justify="left" if column == "hook" else "right")
    for hook in store.hooks:
        files = [store.path / rel for s in m["shards"] for rel in s["files"] if rel.startswith(hook + "/")]
        stats = store.norm_stats(hook) if store.n_shards else {"mean_norm": float("nan"), "position0_mean_norm": float("nan")}
        table.add_row(
            hook,
            f"[{store.n_tokens:,}, {store.d_model}]",
            _size(sum(f.stat().st_size for f in files)),
            f"{stats['mean_norm']:.1f}",
            f"{stats['position0_mean_norm']:.1f}",
        )
    console.print(table)
