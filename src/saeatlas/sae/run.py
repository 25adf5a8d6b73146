"""`train` and `eval` as whole jobs: source -> SAE folder, with resume and metrics.

A run writes checkpoints to `<out>.partial/`; the SAE folder `<out>` appears
(atomically) only when training has finished, so a killed run never leaves a
half-written SAE behind, and the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import SaeAtlasError
from ..fileio import write_json_atomic
from .config import SAEConfig, TrainConfig
from .data_source import StoreSource, TensorSource, load_matrix
from .formats import save_saelens
from .metrics import evaluate
from .trainer import train_sae

EVAL_TOKENS = 65536


def open_source(activations: str | None, store: str | None, hook: str | None) -> TensorSource | StoreSource:
    """The training data named on the command line."""
    if bool(activations) == bool(store):
        raise SaeAtlasError("give exactly one of --activations FILE or --store DIR --hook HOOK")
    if activations:
        return load_matrix(activations)
    if not hook:
        raise SaeAtlasError("--store needs --hook (e.g. --hook resid_post.9)")
    return StoreSource(store, hook)


def _metadata(source) -> dict:
    if isinstance(source, StoreSource):
        m = source.store.manifest
        return {
            "model_name": m["model"]["spec"],
            "hook_name": source.hook,
            "context_size": m["settings"]["context"],
            "prepend_bos": bool(m["tokenizer"]["prefix_ids"]),
            "dataset_path": m["corpus"]["spec"],
            "store": str(source.store.path),
        }
    return {"dataset_path": source.name}


def eval_batches(source, n_tokens: int = EVAL_TOKENS, batch_size: int = 4096):
    """Up to `n_tokens` of `source` in batches (a fixed, seeded sample)."""
    n_tokens = min(n_tokens, source.n_tokens)
    batch_size = min(batch_size, n_tokens)
    return itertools.islice(source.batches(batch_size, seed=12345), max(1, n_tokens // batch_size))


def train_to_folder(
    cfg: SAEConfig, train: TrainConfig, source, out: str | Path, on_step: Callable[[dict], None] | None = None
) -> dict:
    """Train (or resume) and write a SAELens folder at `out`; returns the metrics."""
    out = Path(out)
    if out.exists():
        raise SaeAtlasError(f"output '{out}' already exists: choose another --out or delete it")
    if source.n_tokens < train.batch_size:
        raise SaeAtlasError(
            f"the activations hold {source.n_tokens} tokens, fewer than one batch ({train.batch_size}): lower --batch-size"
        )
    if cfg.d_in != source.d_in:
        raise SaeAtlasError(f"d_in {cfg.d_in} does not match the activations' width {source.d_in}")
    partial = out.with_name(out.name + ".partial")
    settings = {"sae": cfg.to_dict(), "train": train.to_dict(), "source": source.name}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if partial.exists():
        previous = json.loads((partial / "settings.json").read_text()) if (partial / "settings.json").is_file() else {}
        if previous.get("sha256") != digest:
            raise SaeAtlasError(
                f"'{partial}' holds an unfinished run with other settings: delete it or use another --out"
            )
    else:
        partial.mkdir(parents=True)
        write_json_atomic(partial / "settings.json", {"sha256": digest, **settings})
    sae, state = train_sae(cfg, source, train, checkpoint=partial / "checkpoint.pt", on_step=on_step)
    metrics = evaluate(sae, eval_batches(source))
    save_saelens(
        sae,
        out,
        metadata=_metadata(source),
        extra={"train": train.to_dict(), "input_scale": state.scale, "metrics": metrics},
    )
    shutil.rmtree(partial)
    return metrics
