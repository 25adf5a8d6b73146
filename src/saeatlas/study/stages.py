"""Stages with products on disk, keyed by a hash of their own settings and of their inputs' keys.

A stage writes its product at `folder` (a store, an SAE folder, a results folder).  Beside it,
`<folder>.started.json` records the key when work begins and `<folder>.stage.json` the key, a summary and
the time when it ends.  A rerun skips a stage whose `.stage.json` holds the current key; a stage started
under the current key but not finished resumes (the store and the trainer resume on their own); a product
made under another key is stale: it is deleted and made again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from ..fileio import jsonable, read_json_or_none, write_json_atomic
from ..schema import StageRecord, StartedRecord, schema_problem

log = logging.getLogger("saeatlas.study")
State = Literal["done", "stale", "partial", "missing"]
Kind = Literal[
    "extract", "train", "pretrained", "evaluate", "compare", "concepts", "pair cards", "absorption", "report"
]
Role = Literal["train", "heldout", "main", "skyline", "sparsity sweep", "pretrained"]

KEY_NAMES: dict[str, dict[str, str]] = {
    "train": {"d_sae": "width"},
    "evaluate": {"model": "spec"},
    "absorption": {"model": "spec"},
    "compare": {
        "label_a": "a",
        "label_b": "b",
        "hooks_a": "layers_a",
        "hooks_b": "layers_b",
        "saes_a": "sae_a",
        "saes_b": "sae_b",
        "skyline_saes_a": "skyline_sae_a",
    },
}
"""Settings renamed since saeatlas 0.1 enter a stage's key under their 0.1 name (per stage kind), so products
made by 0.1 keep their keys and are not made again for a rename."""
KEY_NAMES["concepts"] = KEY_NAMES["compare"]


def _key_settings(kind: str, settings: dict) -> dict:
    """`settings` as saeatlas 0.1 hashed them: renamed keys under their old names, and the values that replaced
    0.1's sentinels (svcca_k "variance" was None; one concept source was a string) spelled the old way."""
    names = KEY_NAMES.get(kind, {})
    out = {}
    for name, value in settings.items():
        if name == "svcca_k" and value == "variance":
            value = None
        elif name == "concepts" and isinstance(value, list) and len(value) == 1:
            value = value[0]
        out[names.get(name, name)] = value
    return out


@dataclass(eq=False)
class Stage:
    """One unit of work of a study."""

    kind: Kind
    """What sort of work it is."""
    name: str
    """What it is, for people, e.g. `train gemma resid_post.3 seed 0 k 32` (part of the key)."""
    folder: Path
    """Where its product goes."""
    settings: dict
    """Everything of its own that changes its product (JSON-able)."""
    action: Callable[[Stage, bool], dict]
    """`action(stage, progress)` makes the product at `folder` (resuming where it can; live bars when `progress`);
    returns a JSON-able summary."""
    inputs: list[Stage] = field(default_factory=list)
    label: str | None = None
    """The model label the product belongs to (None for stages of the whole study)."""
    hook: str | None = None
    """The hook of an SAE's stage."""
    role: Role | None = None
    """What a store (train, heldout) or an SAE (main, skyline, sparsity sweep, pretrained) is for."""
    version: int = 1
    """Of the code that makes the product: bumped when a saeatlas release changes what the same settings give,
    so products made by the older code are made again."""
    root: Path | None = None
    """The study's output folder when the study owns the product (a stale one may be deleted, only inside it);
    None for a product it only reads (a pretrained SAE folder)."""
    records: Path | None = None
    """Where the stage records go, as `<records>.stage.json` (default: beside `folder`)."""
    device: str = "auto"
    """Where it runs (the study's `device`); not part of the key: the product is the same on every device."""

    @cached_property
    def key(self) -> str:
        """sha256 of the name, settings, code version and the inputs' keys (16 hex digits)."""
        settings = jsonable(_key_settings(self.kind, self.settings))
        facts = {"name": self.name, "settings": settings, "inputs": [s.key for s in self.inputs]}
        if self.version != 1:  # version 1 leaves the keys of products made before versions existed unchanged
            facts["version"] = self.version
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def done_file(self) -> Path:
        base = self.records or self.folder
        return base.with_name(base.name + ".stage.json")

    @property
    def started_file(self) -> Path:
        base = self.records or self.folder
        return base.with_name(base.name + ".started.json")

    def record(self) -> dict | None:
        """The finished record if it holds the current key and the product is still there (a product deleted
        by hand is made again, not read as missing by the stages after it)."""
        record = _read(self.done_file, StageRecord)
        return record if record and record.get("key") == self.key and self.folder.exists() else None

    def state(self) -> State:
        if self.record() is not None:
            return "done"
        done, started = _read(self.done_file, StageRecord), _read(self.started_file, StartedRecord)
        for path, read in ((self.done_file, done), (self.started_file, started)):
            if isinstance(read, Damaged):
                log.warning("%s is damaged (%s); making its stage again", path, read.problem)
        if done or (started and started.get("key") != self.key):
            return "stale"
        return "partial" if started else "missing"


class Damaged(dict):
    """What a record that is there but damaged (not JSON, or fields of the wrong type) reads as: a record with
    no key, so its stage is stale; `problem` says what is wrong."""

    def __init__(self, problem: str):
        super().__init__(key=None)
        self.problem = problem


def _read(path: Path, schema) -> dict | None:
    """The record at `path` if it fits `schema`; None if there is none; `Damaged` if it is unreadable or its
    fields are wrong."""
    if not path.exists():
        return None
    record = read_json_or_none(path)
    problem = "not JSON" if record is None else schema_problem(record, schema)
    return record if problem is None else Damaged(problem)


def _clear(stage: Stage) -> None:
    """Delete a stale product and its markers (and a trainer's `.partial` checkpoint folder); only a product the
    study owns, inside its output folder, with a stage record that reads (else just the records go)."""
    record = _read(stage.done_file, StageRecord) or _read(stage.started_file, StartedRecord)
    owned = stage.root is not None and stage.root.resolve() in stage.folder.resolve().parents
    if owned and record and isinstance(record.get("key"), str):
        for path in (stage.folder, stage.folder.with_name(stage.folder.name + ".partial")):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif stage.root is not None:
        log.warning(
            "%s: not deleting %s (no readable record of this study); making it again in place", stage.name, stage.folder
        )
    stage.done_file.unlink(missing_ok=True)
    stage.started_file.unlink(missing_ok=True)


def run_stage(stage: Stage, progress: bool = True, inputs_remade: bool = False) -> tuple[dict, str, float]:
    """Make the stage's product unless it is done: (summary, 'done' | 'ran', seconds spent now).
    inputs_remade: an input was made again under its old key (its product had been deleted), so this stage is
    made again too, though its key holds."""
    record = stage.record()
    if record is not None and not inputs_remade:
        log.info("%s: done (key %s, %.1f s when it ran)", stage.name, stage.key, record.get("seconds", 0.0))
        return record["summary"], "done", 0.0
    state = "stale" if record is not None else stage.state()
    if state == "stale":
        log.info("%s: settings or inputs changed; making it again", stage.name)
        _clear(stage)
    elif state == "partial":
        log.info("%s: resuming", stage.name)
    stage.folder.parent.mkdir(parents=True, exist_ok=True)
    stage.started_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.started_file, {"key": stage.key, "name": stage.name})
    started = time.perf_counter()
    summary = jsonable(stage.action(stage, progress))
    seconds = time.perf_counter() - started
    write_json_atomic(
        stage.done_file,
        {
            "key": stage.key,
            "name": stage.name,
            "settings": jsonable(stage.settings),
            "inputs": [s.key for s in stage.inputs],
            "summary": summary,
            "seconds": seconds,
        },
    )
    stage.started_file.unlink(missing_ok=True)
    log.info("%s: finished in %.1f s", stage.name, seconds)
    return summary, "ran", seconds
