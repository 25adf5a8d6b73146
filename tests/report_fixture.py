"""A realistic study results dict (results.json, the current version) made from tiny models, for the report tests.

Every part comes from the real code path: two activation stores of tiny models with different tokenizers
(windows cut by characters so they align), TopK SAEs trained on two layers of each (plus a second seed of
model A's for the skyline and a k = 8 one for the sparsity sweep), held-out-style metrics and CE-loss
recovered, `run_compare` with every control, `run_concepts`, pair cards from `saeatlas.study.cards` (which
calls `top_contexts`), and `run_absorption` on model A with two SAEs.  A few seconds in all.

Not a test module: `tests/test_report_*.py` call `build_study_results` from a module-scoped fixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from helpers import TEXTS, tiny_store

HOOKS = {"a": ["resid_post.1", "resid_post.2"], "b": ["resid_post.0", "resid_post.1"]}
HOOKS_A, HOOKS_B = HOOKS["a"], HOOKS["b"]
LABELS = {"a": "tinyllama", "b": "tinyother"}
CONCEPTS = {
    "animals": ["fox", "dog"],
    "weather": ["winds", "fire"],
    "creation": ["heaven", "earth", "beginning"],
    "function words": ["the", "and", "of", "in", "to", "a", "is", "was"],
}
TRICKY = 'Markup like <script>alert("x")</script> & <b>bold</b>\nsits on a new line,\tafter a tab.'
CONTROLS = ["random_init", "neurons", "shifted", "skyline"]
SAE_ARGS = ["--arch", "topk", "--d-sae", "48", "--steps", "60", "--batch-size", "64", "--quiet"]


def sae_runs(side: str) -> list[tuple[str, int, int, str, str]]:
    """(hook, seed, k, folder name, role) of every SAE trained on one side's store."""
    runs = [(hook, 0, 4, f"{side}-{hook}", "main") for hook in HOOKS[side]]
    if side == "a":
        runs += [(hook, 1, 4, f"a-seed1-{hook}", "skyline") for hook in HOOKS["a"]]
        runs += [("resid_post.1", 0, 8, "a-k8-resid_post.1", "sparsity sweep")]
    return runs


@contextlib.contextmanager
def cache_at(folder: Path):
    """Point SAEATLAS_CACHE (absorption's activation cache) at `folder` for the duration."""
    old = os.environ.get("SAEATLAS_CACHE")
    os.environ["SAEATLAS_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SAEATLAS_CACHE", None)
        else:
            os.environ["SAEATLAS_CACHE"] = old


def write_corpus(folder: Path) -> Path:
    """Eight documents of 3-10 sentences (several windows each) and one with markup, quotes, a newline
    and a tab, so token strings that need escaping reach the report."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (folder / f"doc{i}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(3 + i)))
    (folder / "tricky.txt").write_text(f"{TEXTS[0]} {TRICKY} {TEXTS[2]}")
    return folder


class _Clock:
    """Stage timings in the study's `stages` format."""

    def __init__(self):
        self.stages: list[dict] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.stages.append(
            {
                "name": name,
                "key": hashlib.sha256(name.encode()).hexdigest()[:16],
                "state": "ran",
                "seconds": seconds,
                "seconds_when_made": seconds,
            }
        )


def _study(root: Path, models: dict[str, Path]) -> dict:
    from saeatlas.sae.config import SAEConfig, TrainConfig
    from saeatlas.study.config import (
        AbsorptionSettings,
        CompareSettings,
        DataSettings,
        ModelSettings,
        SAESettings,
        Study,
    )
    from saeatlas.study.run import study_settings

    return study_settings(
        Study(
            name="tiny-report",
            out=str(root),
            models=[ModelSettings(label=LABELS[s], model=str(models[s]), hooks=HOOKS[s]) for s in ("a", "b")],
            data=DataSettings(
                corpus=str(root / "corpus"), tokens=100_000, window_chars=60, context=32, heldout_tokens=0
            ),
            sae=SAESettings(
                train=TrainConfig(sae=SAEConfig(arch="topk", k=4, d_sae=48), steps=60, batch_size=64), ce_tokens=512
            ),
            compare=CompareSettings(
                label_a=LABELS["a"],
                label_b=LABELS["b"],
                threshold=0.0,
                n_permutations=50,
                n_bootstrap=5,
                controls=CONTROLS,
                concepts=[str(root / "concepts.json")],
                pair_cards=3,
            ),
            absorption=AbsorptionSettings(
                label=LABELS["a"],
                hook="resid_post.1",
                k_values=[4, 8],
                variant="both",
                words=300,
                min_probe_f1=0.0,
                min_letters=5,
            ),
        )
    )


def _extract_and_train(root: Path, models: dict[str, Path], clock: _Clock) -> None:
    from saeatlas.cli import main

    for side in ("a", "b"):
        store = root / "stores" / side
        with clock.stage(f"extract {LABELS[side]}"):
            tiny_store(
                models[side],
                root / "corpus",
                store,
                hooks=HOOKS[side],
                tokens=100_000,
                context=32,
                window_chars=60,
                batch_size=8,
            )
        for hook, seed, k, folder, _ in sae_runs(side):
            with clock.stage(f"train {LABELS[side]} {folder}"):
                assert (
                    main(
                        [
                            "train",
                            "--store",
                            str(store),
                            "--hook",
                            hook,
                            *SAE_ARGS,
                            "--k",
                            str(k),
                            "--seed",
                            str(seed),
                            "--out",
                            str(root / "saes" / folder),
                        ]
                    )
                    == 0
                )


def _sae_facts(root: Path, models: dict[str, Path], clock: _Clock) -> list[dict]:
    """Metrics on the store and CE-loss recovered on the corpus for the main SAEs (the study uses held-out
    text; the tiny corpus has none to spare)."""
    from saeatlas.data.store import ActivationStore
    from saeatlas.models import load_model
    from saeatlas.sae import evaluate, load_sae
    from saeatlas.sae.splice import spliced_metrics

    facts = []
    for side in ("a", "b"):
        store, handle = ActivationStore(root / "stores" / side), load_model(str(models[side]), dtype="float32")
        for hook, seed, _, folder, role in sae_runs(side):
            sae = load_sae(root / "saes" / folder)
            metrics = downstream = None
            if role == "main":
                with clock.stage(f"evaluate {LABELS[side]} {hook}"):
                    metrics = evaluate(sae, store.batches(hook, 256, shuffle=False))
                    downstream = spliced_metrics(
                        handle, sae, hook, corpus=str(root / "corpus"), split="all", n_tokens=512, context=32
                    )
            facts.append(
                {
                    "label": LABELS[side],
                    "hook": hook,
                    "seed": seed,
                    "arch": sae.cfg.arch,
                    "k": sae.cfg.k,
                    "d_sae": sae.cfg.d_sae,
                    "folder": str(root / "saes" / folder),
                    "role": role,
                    "trained_at": hook,
                    "train_metrics": None,
                    "metrics": metrics,
                    "downstream": downstream,
                }
            )
    return facts


def _model_facts(root: Path, models: dict[str, Path]) -> list[dict]:
    from saeatlas.data.store import ActivationStore

    facts = []
    for side in ("a", "b"):
        store = ActivationStore(root / "stores" / side)
        model = store.manifest["model"]
        facts.append(
            {
                "label": LABELS[side],
                "model": str(models[side]),
                "name": model.get("name", side),
                "n_layers": model.get("n_layers"),
                "d_model": store.d_model,
                "corpus": str(root / "corpus"),
                "n_tokens": store.n_tokens,
                "hooks": store.hooks,
            }
        )
    return facts


def _compare_cfg(root: Path, method: str, cls=None):
    """The comparison of the fixture's stores and SAEs (small nulls: 50 permutations, 5 bootstraps)."""
    from saeatlas.compare.config import CompareConfig

    extra = {"concepts": [str(root / "concepts.json")]} if cls is not None else {}
    return (cls or CompareConfig)(
        **extra,
        store_a=str(root / "stores" / "a"),
        store_b=str(root / "stores" / "b"),
        saes_a=str(root / "saes" / "a-{hook}"),
        saes_b=str(root / "saes" / "b-{hook}"),
        hooks_a=HOOKS_A,
        hooks_b=HOOKS_B,
        method=method,
        threshold=0.0,
        n_permutations=50,
        n_bootstrap=5,
        activation_positions=200,
        controls=CONTROLS,
        skyline_saes_a=str(root / "saes" / "a-seed1-{hook}"),
    )


def _absorption(root: Path, model_a: Path) -> dict:
    from saeatlas.absorption.config import AbsorptionConfig
    from saeatlas.absorption.run import run_absorption

    saes = [str(root / "saes" / "a-k8-resid_post.1"), str(root / "saes" / "a-resid_post.1")]
    cfg = AbsorptionConfig(
        model=str(model_a),
        hook="resid_post.1",
        saes=saes,
        variant="both",
        words=300,
        min_letters=5,
        min_probe_f1=0.0,
        max_candidates=3,
    )
    with cache_at(root / "cache"):
        return run_absorption(cfg, progress=False)


def build_study_results(root: Path, model_a: Path, model_b: Path, method: str = "many_to_one") -> dict:
    """The results dict `saeatlas run` would write for a study of two tiny models (strict JSON values).
    Runs on one torch thread: tiny matrices on two threads of a 2-core machine wait on each other."""
    from saeatlas.memory import one_torch_thread

    with one_torch_thread():
        return _build(Path(root), {"a": Path(model_a), "b": Path(model_b)}, method)


def _build(root: Path, models: dict[str, Path], method: str) -> dict:
    from saeatlas.compare.config import ConceptsConfig
    from saeatlas.compare.grid import run_compare, run_concepts
    from saeatlas.fileio import jsonable
    from saeatlas.report.files import write_compare
    from saeatlas.study.cards import pair_cards
    from saeatlas.study.run import RESULTS_VERSION

    t0, clock = time.perf_counter(), _Clock()
    write_corpus(root / "corpus")
    (root / "concepts.json").write_text(json.dumps(CONCEPTS))
    _extract_and_train(root, models, clock)
    saes = _sae_facts(root, models, clock)
    with clock.stage("compare"):
        compare = jsonable(run_compare(_compare_cfg(root, method)))
        write_compare(compare, root / "compare")
    with clock.stage("concepts"):
        concepts = jsonable(run_concepts(_compare_cfg(root, method, ConceptsConfig)))
    with clock.stage("pair cards"):
        cards = pair_cards(root / "compare" / "results.json", 3)
    with clock.stage("absorption"):
        absorption = jsonable(_absorption(root, models["a"]))
    results = {
        "version": RESULTS_VERSION,
        "kind": "study",
        "study": _study(root, models),
        "legacy": method == "legacy_first",
        "models": _model_facts(root, models),
        "saes": saes,
        "compare": compare,
        "concepts": concepts,
        "absorption": absorption,
        "pair_cards": cards,
        "stages": clock.stages,
        "seconds": time.perf_counter() - t0,
    }
    return json.loads(json.dumps(jsonable(results)))  # exactly what a reader of results.json gets
