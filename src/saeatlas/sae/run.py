"""The SAE jobs: `run_train` (data -> TrainResult) with its writer `write_sae`, and `run_eval`.

`train_to_folder` is what the `train` verb and the study do: checkpoints in `<out>.partial/`, the SAE folder
`<out>` written (atomically) only when training has finished, so a killed run never leaves a half-written
SAE behind, and the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..devices import resolve_device
from ..errors import SaeAtlasError
from ..fileio import check_space, read_json_or_none, space_for, write_json_atomic
from ..locks import writing_once
from .config import EvalConfig, TrainConfig
from .data_source import StoreSource, TensorSource, load_matrix
from .formats import load_sae, read_metadata, resolve_sae, save_saelens
from .metrics import evaluate
from .model import SparseAutoencoder
from .stream_source import ModelStreamSource
from .trainer import check_activations, check_world, sae_config_for, train_sae

Data = TensorSource | StoreSource | ModelStreamSource | torch.Tensor | np.ndarray
"""Training or evaluation activations: a [n_tokens, d_in] matrix, or a source (`StoreSource(store, hook)`,
`ModelStreamSource(stream_config, hook)`)."""


def activation_source(
    activations: str | Path | None = None, store: str | Path | None = None, hook: str | None = None
) -> TensorSource | StoreSource:
    """The activations the `train` and `eval` verbs name: a .npy / .safetensors matrix, or one hook of a store."""
    if bool(activations) == bool(store):
        raise SaeAtlasError("give exactly one of --activations FILE or --store DIR --hook HOOK")
    if activations:
        return load_matrix(activations)
    if not hook:
        raise SaeAtlasError("--store needs --hook (e.g. --hook resid_post.9)")
    return StoreSource(store, hook)


def as_source(data: Data) -> TensorSource | StoreSource:
    """A source from whatever `Data` is given."""
    if isinstance(data, (TensorSource, StoreSource, ModelStreamSource)):
        return data
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.asarray(data, dtype=np.float32))
    if isinstance(data, torch.Tensor):
        return TensorSource(data)
    raise SaeAtlasError(
        f"cannot read activations from a {type(data).__name__}: give a [n_tokens, d_in] matrix "
        "or a StoreSource(store, hook)"
    )


def _metadata(source) -> dict:
    if isinstance(source, ModelStreamSource):
        return source.metadata()
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


EVAL_TOKENS = EvalConfig.tokens
"""Tokens the training data's metrics are measured on at the end of training."""


def eval_batches(source, n_tokens: int = EVAL_TOKENS, batch_size: int = 4096):
    """Up to `n_tokens` of `source` in batches (a fixed, seeded sample)."""
    n_tokens = min(n_tokens, source.n_tokens)
    batch_size = min(batch_size, n_tokens)
    return itertools.islice(source.batches(batch_size, seed=12345), max(1, n_tokens // batch_size))


@dataclass
class TrainResult:
    """What `run_train` returns; `write_sae` saves it as a SAELens folder."""

    sae: SparseAutoencoder
    """The trained SAE, on raw activations (the input scale folded in), in eval mode."""
    config: TrainConfig
    """The settings it was trained with (`config.sae.d_in` set from the data)."""
    metrics: dict | None
    """Reconstruction and sparsity on (a sample of) the training data: `saeatlas.sae.metrics.evaluate` (None on
    the ranks other than 0 under torchrun)."""
    input_scale: float
    """The factor that scaled the activations to mean norm sqrt(d_in) during training."""
    metadata: dict
    """Where the activations came from (model, hook, context, dataset), for the SAE's cfg.json."""


def training_device(cfg: TrainConfig) -> torch.device:
    """The device `cfg.device` names here (SaeAtlasError if it is not here), the process group joined under
    torchrun, and the batch size checked against the number of ranks: before any work."""
    device = resolve_device(cfg.device)
    distributed.init(device)
    check_world(cfg.batch_size)
    return device


def run_train(
    cfg: TrainConfig,
    data: Data,
    checkpoint: str | Path | None = None,
    on_step: Callable[[dict | None], None] | None = None,
) -> TrainResult:
    """Train `cfg.sae` on `data` with `cfg`'s optimisation; `checkpoint` is a folder for resumable checkpoints
    (None: none; locked while training).  `on_step(None)` is called once the inputs are checked, then `on_step(metrics)` every step.
    Under torchrun the ranks train together (see `train_sae`; inside `distributed.alone()` one rank trains alone);
    rank 0 alone writes and evaluates (the others' `metrics` are None)."""
    device = training_device(cfg)
    source = as_source(data)
    if source.n_tokens < cfg.batch_size:
        raise SaeAtlasError(
            f"the activations hold {source.n_tokens} tokens, fewer than one batch ({cfg.batch_size}): lower batch_size"
        )
    cfg = dataclasses.replace(cfg, sae=sae_config_for(cfg.sae, source.d_in))
    if checkpoint is None:
        return _train(cfg, source, None, on_step, device)
    folder = Path(checkpoint)
    with writing_once(folder, "checkpoint folder"):
        with distributed.main_first():  # rank 0 creates the folder, the others find it
            checkpoint_file = _checkpoint_folder(folder, cfg, source) / "checkpoint.pt"
        return _train(cfg, source, checkpoint_file, on_step, device)


def _train(cfg: TrainConfig, source, checkpoint_file: Path | None, on_step, device: torch.device) -> TrainResult:
    if on_step:
        on_step(None)
    sae, state = train_sae(cfg, source, checkpoint=checkpoint_file, on_step=on_step, device=device)
    metrics = evaluate(sae, eval_batches(source)) if distributed.is_main() else None
    return TrainResult(sae, cfg, metrics, state.scale, _metadata(source))


def _bytes_left(cfg: TrainConfig, partial: Path | None = None, weights: bool = False) -> int:
    """About how many more bytes training `cfg` (its `sae.d_in` set) needs: room for a checkpoint beside the
    last one (the SAE's parameters and Adam's two moments, float32, and the dead-latent counters) and, with
    `weights`, for the finished SAE's weights; less what the checkpoint folder `partial` holds already."""
    d_in, d_sae = cfg.sae.d_in, cfg.sae.d_sae
    n_params = 2 * d_in * d_sae + 2 * d_sae + d_in  # W_enc, W_dec, b_enc, b_dec, a threshold
    sae_bytes = 4 * n_params
    checkpoint = 3 * sae_bytes + 8 * 3 * d_sae if cfg.checkpoint_every else 0
    need = max(2 * checkpoint, checkpoint + (sae_bytes if weights else 0))
    held = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file()) if partial and partial.is_dir() else 0
    return max(0, need - held)


def _checkpoint_folder(folder: Path, cfg: TrainConfig, source) -> Path:
    """The checkpoint folder, created with a record of the settings, or an existing one of the same run."""
    settings = {"sae": cfg.sae.to_dict(), "train": cfg.optimisation(), "source": source.name}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if folder.exists():
        previous = read_json_or_none(folder / "settings.json")
        if not isinstance(previous, dict) or previous.get("sha256") != digest:
            raise SaeAtlasError(
                f"'{folder}' holds an unfinished run with other settings: delete it or train into another folder"
            )
    else:
        folder.mkdir(parents=True)
        write_json_atomic(folder / "settings.json", {"sha256": digest, **settings})
    return folder


def write_sae(result: TrainResult, out: str | Path) -> Path:
    """Save a trained SAE as a SAELens folder (atomically), with its settings and metrics in cfg.json."""
    extra = {"train": result.config.optimisation(), "input_scale": result.input_scale, "metrics": result.metrics}
    return save_saelens(result.sae, out, metadata=result.metadata, extra=extra)


def train_to_folder(
    cfg: TrainConfig, data: Data, out: str | Path, on_step: Callable[[dict | None], None] | None = None
) -> TrainResult:
    """Train (or resume, from `<out>.partial/`) and write the SAE folder `out`; it must not exist yet.  One
    writer at a time (a second stops at once); a full disk, at the start or on the way, is one line saying
    how much more space it needs."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    training_device(cfg)
    with writing_once(out, "SAE folder"):
        if out.exists():
            raise SaeAtlasError(f"output '{out}' already exists: choose another --out or delete it")
        source = as_source(data)
        cfg = dataclasses.replace(cfg, sae=sae_config_for(cfg.sae, source.d_in))

        def needed() -> int:
            return _bytes_left(cfg, partial, weights=True)

        check_space(out.parent, f"SAE '{out}'", needed(), "free space or choose another --out")
        fresh = not partial.exists()
        distributed.barrier()  # every rank has looked before rank 0 creates the checkpoint folder
        main = distributed.is_main()
        try:
            with space_for(out.parent, f"SAE '{out}'", needed):
                result = run_train(cfg, source, checkpoint=partial, on_step=on_step)
                if main:
                    write_sae(result, out)
        except BaseException:
            if main and fresh and partial.is_dir() and not (partial / "checkpoint.pt").exists():
                shutil.rmtree(partial)  # nothing to resume: leave no folder that blocks the corrected rerun
            raise
        if main:
            shutil.rmtree(partial)
        distributed.barrier()  # the SAE folder is written before any rank returns
        return result


@dataclass
class EvalResult:
    """What `run_eval` returns."""

    hook: str | None
    """The hook the SAE reads (from the config, else the SAE's cfg.json)."""
    metrics: dict | None
    """Reconstruction and sparsity on the activations (`saeatlas.sae.metrics.evaluate`); None without data."""
    downstream: dict | None
    """The SAE spliced into `config.model` (`saeatlas.sae.splice.spliced_metrics`); None without a model."""


def run_eval(
    cfg: EvalConfig,
    sae: str | Path | SparseAutoencoder,
    data: Data | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Metrics of an SAE (a folder or a loaded SAE) on `data` and, with `cfg.model`, spliced into the model.
    `progress(n)` counts the steps done: 0 once the inputs are checked, 1 per metric group."""
    from ..devices import resolve_device
    from ..models import load_model
    from .splice import spliced_metrics

    device = resolve_device(cfg.device)  # a device that is not here: one line, before any work
    if not isinstance(sae, SparseAutoencoder):
        sae = resolve_sae(sae, cfg.hook)  # a pretrained name: its folder in the Hugging Face cache
    meta = read_metadata(sae) if not isinstance(sae, SparseAutoencoder) else {}
    folder = sae if not isinstance(sae, SparseAutoencoder) else "the SAE"
    sae = sae.to(device) if isinstance(sae, SparseAutoencoder) else load_sae(sae, device)
    if data is None and not cfg.model:
        raise SaeAtlasError(
            "give activations to evaluate on (--activations FILE or --store DIR --hook HOOK) "
            "and/or a model to splice into (--model)"
        )
    hook = cfg.hook or meta.get("hook_name")
    source = as_source(data) if data is not None else None
    if source is not None and source.d_in != sae.cfg.d_in:
        raise SaeAtlasError(f"SAE '{folder}' expects d_in {sae.cfg.d_in}, the activations have {source.d_in}")
    if source is not None:  # FVU divides by the activations' variance: zeros or overflowing values make it noise
        check_activations(source.sample(min(source.n_tokens, 8192), seed=0), source.name)
    if cfg.model and not hook:
        raise SaeAtlasError(f"SAE '{folder}' does not name its hook: pass --hook (e.g. resid_post.9)")
    handle = load_model(cfg.model, device=device) if cfg.model else None
    if handle is not None and handle.d_model != sae.cfg.d_in:
        raise SaeAtlasError(f"SAE '{folder}' has d_in {sae.cfg.d_in} but {cfg.model} has d_model {handle.d_model}")
    progress = progress or (lambda n: None)
    progress(0)
    metrics = evaluate(sae, eval_batches(source, cfg.tokens)) if source is not None else None
    if source is not None:
        progress(1)
    downstream = None
    if handle is not None:
        corpus = cfg.corpus or meta.get("dataset_path") or "wiki"
        downstream = spliced_metrics(handle, sae, hook, corpus=corpus, n_tokens=cfg.ce_tokens)
        progress(1)
    return EvalResult(hook, metrics, downstream)
