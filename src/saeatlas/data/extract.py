"""`extract`: corpus -> tokens -> model activations -> activation store, resumable.

The window stream is a pure function of the settings, and each shard is a
fixed run of windows batched from its own start, so a run killed at any point
and started again with the same settings rewrites nothing that was complete
and ends byte-identical to an uninterrupted run.

That also lets torchrun's ranks (`torchrun --nproc-per-node N -m saeatlas
extract ...`) write any shard: they take the shards in turn and the store is
the same bytes as one process writes; a job killed on any rank resumes with
the same, another or no number of ranks (the shards of its last, unlisted
round are written again, to the same bytes).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..devices import resolve_device
from ..errors import CorpusError, StoreError
from ..fileio import check_space, sha256_file, space_for, write_bytes_atomic, write_json_atomic, write_npy_atomic
from ..locks import writing_once
from ..models import HookPoint, ModelHandle, capture, load_model, parse_hooks
from .config import ExtractConfig
from .corpus import Document, corpus_identity, load_documents
from .store import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_DTYPE,
    MANIFEST,
    ActivationStore,
    activations_path,
    documents_path,
    index_path,
    read_manifest,
    storage_dtype,
    to_storage,
)
from .tokens import EXCLUDED_BY_DEFAULT, Window, pack_windows, pad_windows

log = logging.getLogger("saeatlas")


@dataclass
class ExtractResult:
    """What one `extract` call did."""

    path: Path
    n_tokens: int
    """Tokens in the finished store."""
    n_tokens_written: int
    """Tokens computed by this call (0 when the store was already complete)."""
    seconds: float
    """Wall time of the model + write loop of this call."""

    @property
    def store(self) -> ActivationStore:
        """The finished store, for reading."""
        return ActivationStore(self.path)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens_written / self.seconds if self.seconds > 0 else float("nan")


ProgressFn = Callable[[int], None]
"""Called after each batch with the number of tokens it computed."""


def run_extract(
    cfg: ExtractConfig, out: str | Path, handle: ModelHandle | None = None, progress: ProgressFn | None = None
) -> ExtractResult:
    """Write (or resume, or confirm) the activation store for `cfg` at `out`.

    Unlike the other jobs, extraction writes as it goes: a store is too large to hold in memory, and its
    shards are the unit of resume.  `progress(n_tokens)` is called with 0 once the inputs are checked (so a
    progress bar opens only after any input error), then after every batch.

    Under torchrun every rank calls this with the same arguments: the ranks take the shards in turn (shard s on
    rank s % world), rank 0 holds the store's lock, lists the finished shards in the manifest and reports
    progress; the store is the same bytes as one process writes.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"output '{out}' is a file: choose a folder path for --out")
    device = resolve_device(cfg.device)  # a device that is not here: one line, before the lock or any folder
    if not distributed.is_main():
        progress = None
    with writing_once(out, "store"):  # before the resume step, which deletes the temporary files it finds
        with distributed.main_first():  # a conversion into the model cache is made once
            handle = handle or load_model(cfg.model, dtype=cfg.model_dtype, device=device)
        points = parse_hooks(cfg.hooks, handle.n_layers)
        documents = load_documents(cfg.corpus, split=cfg.split, eval_fraction=cfg.eval_fraction, seed=cfg.seed)
        fresh_manifest = _new_manifest(cfg, handle, points, documents)

        def needed() -> int:
            return _bytes_left(fresh_manifest, cfg, documents)

        with space_for(out, f"store '{out}'", needed):
            manifest = distributed.on_main(lambda: _start(out, fresh_manifest, cfg, documents))
            return _extract(cfg, out, handle, points, documents, manifest, progress)


def _start(out: Path, manifest: dict, cfg: ExtractConfig, documents: list[Document]) -> dict:
    """The manifest to extract from (`manifest`, or the one of the run to resume), after checking the space."""

    def check(manifest: dict) -> None:  # refuse only where clearly too little is free: the estimate is rough
        needed = _bytes_left(manifest, cfg, documents) // 2
        check_space(out, f"store '{out}'", needed, "free space or choose another --out")

    fresh = not out.exists() or not any(out.iterdir())
    if fresh:
        check(manifest)
    manifest = _resume_or_start(out, manifest)
    if not fresh and not manifest["complete"]:
        check(manifest)  # with the rate of tokens per character measured on the shards written
    return manifest


def _extract(
    cfg: ExtractConfig,
    out: Path,
    handle: ModelHandle,
    points: list[HookPoint],
    documents: list[Document],
    manifest: dict,
    progress: ProgressFn | None,
) -> ExtractResult:
    """Extract the shards `manifest` does not list yet, appending each to it, and finish the store.

    The shards go in rounds of one per rank; after each round the ranks gather their manifest entries (or the
    error one of them met, which every rank then raises) and rank 0 lists them, so a killed job resumes from the
    last whole round.  Every rank walks the whole window stream (tokenizing is cheap next to the model) and
    runs the model only on its own shards."""
    if manifest["complete"]:
        return ExtractResult(out, manifest["n_tokens"], 0, 0.0)
    if progress:
        progress(sum(s["n_tokens"] for s in manifest["shards"]))
    windows = _budgeted(
        pack_windows(
            ((i, d.text) for i, d in enumerate(documents)),
            handle.tokenizer,
            cfg.context,
            *handle.special_tokens,
            pack_documents=cfg.pack_documents,
            window_chars=cfg.window_chars,
        ),
        cfg.tokens,
    )
    done_windows = sum(s["n_windows"] for s in manifest["shards"])
    shards = _chunks(itertools.islice(windows, done_windows, None), cfg.shard_windows)
    rank, main = distributed.rank(), distributed.is_main()
    last_doc = manifest["shards"][-1]["last_doc_id"] if manifest["shards"] else -1
    written, start = 0, time.perf_counter()
    for round_windows in _chunks(shards, distributed.world_size()):
        before = _last_docs_before(round_windows, last_doc)
        entry, failed = None, None
        if rank < len(round_windows):
            try:
                entry = _write_shard(
                    out, len(manifest["shards"]) + rank, round_windows[rank], handle, points, cfg, documents,
                    before[rank], progress,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here
                entry, failed = distributed.failure(exc), exc
        entries = distributed.all_gather(entry)
        if failed is not None:
            raise failed
        distributed.raise_first(entries)
        entries = entries[: len(round_windows)]
        manifest["shards"].extend(entries)
        if main:
            write_json_atomic(out / MANIFEST, manifest)
        written += sum(e["n_tokens"] for e in entries)
        if progress:
            progress(sum(e["n_tokens"] for i, e in enumerate(entries) if i != rank))
        last_doc = entries[-1]["last_doc_id"]
    seconds = time.perf_counter() - start
    manifest = distributed.on_main(lambda: _finish(out, manifest, cfg))
    return ExtractResult(out, manifest["n_tokens"], written, seconds)


def _last_docs_before(shards: list[list[Window]], last_doc: int) -> list[int]:
    """For each of consecutive `shards`, the last document id of the windows before it (`last_doc` before the
    first): the documents a shard writes are the ones after that, so any rank can write any shard."""
    before = []
    for windows in shards:
        before.append(last_doc)
        last_doc = max(last_doc, *(int(w.doc_ids.max()) for w in windows))
    return before


TOKENS_PER_CHAR = 0.3
"""Tokens per character of text assumed before a store has any shard (English with a BPE: about 0.25)."""


def _bytes_left(manifest: dict, cfg: ExtractConfig, documents: list[Document]) -> int:
    """About how many more bytes the store needs: the tokens still to extract (the budget left, or
    fewer where the corpus runs out first at the rate of tokens per character seen so far) times what a token
    takes (its activations at every hook, its index record, its share of the documents' text)."""
    shards = manifest["shards"]
    done = sum(s["n_tokens"] for s in shards)
    next_doc = shards[-1]["last_doc_id"] + 1 if shards else 0
    chars_done = sum(len(d.text) for d in documents[:next_doc])
    chars_left = sum(len(d.text) for d in documents[next_doc:])
    per_char = done / chars_done if done and chars_done else TOKENS_PER_CHAR
    tokens_left = min(cfg.tokens - done, math.ceil(chars_left * per_char))
    value_bytes = storage_dtype(manifest["dtype"]).itemsize
    per_token = len(manifest["hooks"]) * manifest["model"]["d_model"] * value_bytes + INDEX_DTYPE.itemsize
    per_token += 1 / per_char  # the documents' text
    return max(0, math.ceil(tokens_left * per_token))


# ---------------------------------------------------------------- manifest
def _new_manifest(cfg: ExtractConfig, handle: ModelHandle, points: list[HookPoint], documents: list[Document]) -> dict:
    prefix, suffix = handle.special_tokens
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "complete": False,
        "settings": cfg.manifest_settings(),
        "model": {
            "spec": cfg.model,
            "name": handle.name,
            "identity": handle.identity,
            "kind": handle.kind,
            "model_type": handle.model.config.model_type,
            "n_layers": handle.n_layers,
            "d_model": handle.d_model,
        },
        "tokenizer": {
            "identity": handle.tokenizer_identity,
            "class": type(handle.tokenizer).__name__,
            "prefix_ids": list(prefix),
            "suffix_ids": list(suffix),
            "vocab_size": len(handle.tokenizer),
        },
        "corpus": {"spec": cfg.corpus, "identity": corpus_identity(cfg.corpus), "n_documents": len(documents)},
        "hooks": [p.name for p in points],
        "dtype": cfg.store_dtype,
        "flags": {"special": 1, "first_position": 2, "excluded_by_default": EXCLUDED_BY_DEFAULT},
        "shards": [],
    }
    identity = {k: manifest[k] for k in ("version", "settings", "model", "tokenizer", "corpus", "hooks", "dtype")}
    manifest["settings_sha256"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return manifest


def _resume_or_start(out: Path, fresh: dict) -> dict:
    """The manifest to continue from: the existing one (verified) or `fresh`."""
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / MANIFEST, fresh)
        return fresh
    old = read_manifest(out)
    if old.get("settings_sha256") != fresh["settings_sha256"]:
        raise StoreError(
            f"output folder '{out}' holds a different run (model {old['model']['spec']}, hooks "
            f"{','.join(old['hooks'])}, corpus {old['corpus']['spec']}): choose another --out or delete it"
        )
    for stale in out.rglob(".*.tmp-*"):  # half-written files of a killed run
        stale.unlink()
    store = ActivationStore(out, allow_incomplete=True)
    for shard in range(store.n_shards):
        try:
            store.verify_shard(shard)
        except StoreError:
            log.warning("shard %d of %s is damaged; extracting from it again", shard, out)
            old["shards"] = old["shards"][:shard]
            old["complete"] = False
            write_json_atomic(out / MANIFEST, old)
            break
    return old


def _finish(out: Path, manifest: dict, cfg: ExtractConfig) -> dict:
    """Mark the store complete (the totals into the manifest); the finished manifest."""
    shards = manifest["shards"]
    n_tokens = sum(s["n_tokens"] for s in shards)
    if n_tokens == 0:
        shutil.rmtree(out)
        raise CorpusError(f"corpus '{cfg.corpus}' ({cfg.split} split) produced no tokens: use a corpus with text")
    manifest.update(
        complete=True,
        n_tokens=n_tokens,
        n_tokens_usable=sum(s["n_tokens_usable"] for s in shards),
        n_windows=sum(s["n_windows"] for s in shards),
        n_documents_read=shards[-1]["last_doc_id"] + 1,
        corpus_exhausted=n_tokens < cfg.tokens,
    )
    write_json_atomic(out / MANIFEST, manifest)
    if n_tokens < cfg.tokens:
        log.warning("corpus '%s' ran out at %d tokens (asked for %d)", cfg.corpus, n_tokens, cfg.tokens)
    return manifest


# ---------------------------------------------------------------- windows
def _budgeted(windows: Iterable[Window], budget: int) -> Iterator[Window]:
    """Windows until `budget` tokens; the last one is cut to meet it exactly."""
    left = budget
    for window in windows:
        if left <= 0:
            return
        if len(window) > left:
            window = window.slice(0, left)
        left -= len(window)
        yield window


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# ---------------------------------------------------------------- one shard
def _forward_batch(handle: ModelHandle, points: list[HookPoint], batch: list[Window]) -> dict[str, torch.Tensor]:
    """Activations of the real tokens of `batch`, `{hook: [n_tokens, d_model]}` in window order."""
    ids, mask = pad_windows(batch, handle.tokenizer.pad_token_id or 0)
    acts = capture(handle, points, ids.to(handle.device), mask.to(handle.device))
    keep = mask.bool().to(handle.device)
    return {name: tensor[keep].cpu() for name, tensor in acts.items()}


def _index_records(windows: list[Window]) -> np.ndarray:
    records = np.zeros(sum(len(w) for w in windows), dtype=INDEX_DTYPE)
    records["token_id"] = np.concatenate([w.token_ids for w in windows])
    records["doc_id"] = np.concatenate([w.doc_ids for w in windows])
    records["position"] = np.concatenate([np.arange(len(w), dtype=np.int32) for w in windows])
    spans = np.concatenate([w.char_spans for w in windows])
    records["char_start"], records["char_end"] = spans[:, 0], spans[:, 1]
    records["flags"] = np.concatenate([w.flags for w in windows])
    return records


def _write_shard(
    out: Path,
    shard: int,
    windows: list[Window],
    handle: ModelHandle,
    points: list[HookPoint],
    cfg: ExtractConfig,
    documents: list[Document],
    previous_last: int,
    progress: ProgressFn | None = None,
) -> dict:
    """Compute and write one shard, whose windows follow windows up to document `previous_last`; returns its
    manifest entry."""
    per_hook: dict[str, list[np.ndarray]] = {p.name: [] for p in points}
    for start in range(0, len(windows), cfg.batch_size):
        batch = windows[start : start + cfg.batch_size]
        for name, acts in _forward_batch(handle, points, batch).items():
            per_hook[name].append(to_storage(acts, cfg.store_dtype))
        if progress:
            progress(sum(len(w) for w in batch))
    files = {}
    for name, parts in per_hook.items():
        (out / name).mkdir(exist_ok=True)
        files[activations_path(name, shard)] = write_npy_atomic(
            out / activations_path(name, shard), np.concatenate(parts)
        )
    records = _index_records(windows)
    (out / "index").mkdir(exist_ok=True)
    files[index_path(shard)] = write_npy_atomic(out / index_path(shard), records)
    last_doc = int(records["doc_id"].max())
    lines = [
        json.dumps({"doc_id": i, "key": documents[i].key, "text": documents[i].text}, ensure_ascii=False)
        for i in range(previous_last + 1, last_doc + 1)
    ]
    (out / "documents").mkdir(exist_ok=True)
    write_bytes_atomic(out / documents_path(shard), "".join(line + "\n" for line in lines).encode())
    files[documents_path(shard)] = sha256_file(out / documents_path(shard))
    return {
        "index": shard,
        "n_windows": len(windows),
        "n_tokens": len(records),
        "n_tokens_usable": int(((records["flags"] & EXCLUDED_BY_DEFAULT) == 0).sum()),
        "last_doc_id": max(last_doc, previous_last),
        "files": files,
    }
