"""From a study to its stages: extraction, SAEs, their evaluation, comparison, concepts, pair cards, absorption.

Products, under the study's output folder:

    stores/<label>, stores/<label>-heldout      activation stores (train / eval split)
    saes/<label>/<hook>                          SAEs (SAELens layout); saes/<label>-seed<s>/, saes/<label>-k<k>/
    evals/<label>/metrics.json                   held-out metrics of every SAE, CE-loss recovered of the main ones
    compare/, concepts/, absorption/             results (JSON, CSV, SVG)
    cards/cards.json                             matched pairs with their top activating contexts

`plan` calls one planner per stage kind; each stage carries its model label, hook and role, and its settings
(what its key hashes): the settings saeatlas 0.1 hashed for that kind, plus any other setting that differs
from its default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..absorption.config import AbsorptionOptions
from ..compare.config import CompareOptions
from ..config import flat_defaults, flat_fields, flat_values, pick
from ..fileio import sha256_file, write_json_atomic
from ..sae.config import TrainConfig
from .config import Study
from .paths import check_products
from .stages import Role, Stage

TRAIN_SETTINGS = ("arch", "k", "d_sae", "steps", "batch_size", "seed", "l1_coefficient")
"""SAE settings every train stage's key holds (the rest only when they differ from their default)."""
COMPARE_SETTINGS = ("method", "threshold", "measures", "svcca_k", "n_permutations", "n_bootstrap", "controls", "seed")
ABSORPTION_SETTINGS = ("variant", "words", "min_probe_f1", "min_letters")


def _settings(cfg, always: tuple[str, ...]) -> dict:
    """The flat settings of config `cfg` named in `always`, and every other one that differs from its default
    (a setting added after a product was made leaves its key alone until it is used)."""
    defaults = flat_defaults(type(cfg))
    derived = {
        n
        for n, (_, f, _) in flat_fields(type(cfg)).items()
        if f.metadata.get("setting") is False or f.metadata.get("runtime")
    }
    return {
        name: value
        for name, value in flat_values(cfg).items()
        if name not in derived and (name in always or value != defaults.get(name, object()))
    }


# ---------------------------------------------------------------- actions
def _extract(stage: Stage, progress: bool) -> dict:
    from ..data.config import ExtractConfig
    from ..data.extract import run_extract
    from ..progress import token_progress

    cfg = ExtractConfig(**{k: v for k, v in stage.settings.items() if k != "label"}, device=stage.device)
    with token_progress(stage.name, total=cfg.tokens, enabled=progress) as advance:
        result = run_extract(cfg, stage.folder, progress=advance)
    return {"n_tokens": result.n_tokens, "tokens_per_second": result.tokens_per_second}


def _train(stage: Stage, progress: bool) -> dict:
    from ..config import build_flat
    from ..progress import step_progress
    from ..sae.data_source import StoreSource
    from ..sae.run import train_to_folder

    settings = {k: v for k, v in stage.settings.items() if k not in ("hook", "stream")}
    cfg = build_flat(TrainConfig, {**settings, "device": stage.device})
    if "stream" in stage.settings:
        from ..devices import resolve_device
        from ..sae.stream_source import ModelStreamSource, StreamConfig

        stream = StreamConfig(**stage.settings["stream"])
        source = ModelStreamSource(stream, stage.hook, device=str(resolve_device(cfg.device)))
    else:
        source = StoreSource(stage.inputs[0].folder, stage.hook)
    with step_progress(stage.name, total=cfg.steps, enabled=progress) as on_step:
        result = train_to_folder(cfg, source, stage.folder, on_step=on_step)
    return {"metrics": {k: v for k, v in result.metrics.items() if k != "density_histogram"}}


def _pretrained(stage: Stage, progress: bool) -> dict:
    from ..sae.formats import load_sae

    sae = load_sae(stage.folder)
    return {"arch": sae.cfg.arch, "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in}


def _evaluate(stage: Stage, progress: bool) -> dict:
    """Held-out metrics of every SAE of a model, and CE-loss recovered of its main SAEs with the model loaded
    once; metrics.json maps each SAE folder to {hook, metrics, downstream (null: not spliced)}."""
    from ..devices import resolve_device
    from ..memory import reuse_freed_memory
    from ..models import load_model
    from ..progress import count_progress
    from ..sae.data_source import StoreSource
    from ..sae.formats import load_sae
    from ..sae.metrics import evaluate
    from ..sae.run import eval_batches
    from ..sae.splice import spliced_metrics

    s = stage.settings
    heldout = stage.inputs[0].folder
    reuse_freed_memory()  # the spliced forward passes allocate the same large logits every batch
    device = resolve_device(stage.device)
    handle = load_model(s["model"], device=device) if s["ce_tokens"] else None
    out = {}
    with count_progress(stage.name, total=len(s["saes"]), unit="SAEs", enabled=progress) as advance:
        advance(0)
        for entry, sae_stage in zip(s["saes"], stage.inputs[1:], strict=True):
            hook, sae = entry["hook"], load_sae(sae_stage.folder, device)
            metrics = evaluate(sae, eval_batches(StoreSource(heldout, hook), s["heldout_tokens"]))
            metrics.pop("density_histogram", None)
            downstream = (
                spliced_metrics(
                    handle,
                    sae,
                    hook,
                    corpus=s["corpus"],
                    n_tokens=s["ce_tokens"],
                    context=s["context"],
                    window_chars=s["window_chars"],
                    seed=s["seed"],
                )
                if handle and entry["splice"]
                else None
            )
            out[str(sae_stage.folder)] = {"hook": hook, "metrics": metrics, "downstream": downstream}
            advance(1)
    stage.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.folder / "metrics.json", out)
    return out


def compare_config(stage: Stage, concepts: bool = False):
    from ..compare.config import CompareConfig, ConceptsConfig

    s = stage.settings
    stores = {st.label: st.folder for st in stage.inputs if st.kind == "extract"}
    cls = ConceptsConfig if concepts else CompareConfig
    return cls(
        store_a=str(stores[s["label_a"]]),
        store_b=str(stores[s["label_b"]]),
        **pick(cls, {k: v for k, v in s.items() if k not in ("label_a", "label_b")}),
        device=stage.device,
    )


def _compare(stage: Stage, progress: bool) -> dict:
    from ..compare.grid import n_comparisons, run_compare
    from ..progress import count_progress
    from ..report.files import write_compare

    cfg = compare_config(stage)
    with count_progress(stage.name, total=n_comparisons(cfg), unit="comparisons", enabled=progress) as advance:
        results = run_compare(cfg, progress=advance)
    write_compare(results, stage.folder)
    return {"seconds": results["seconds"]}


def _concepts(stage: Stage, progress: bool) -> dict:
    from ..compare.grid import n_concept_cells, run_concepts
    from ..progress import count_progress
    from ..report.files import write_concepts

    cfg = compare_config(stage, concepts=True)
    with count_progress(stage.name, total=n_concept_cells(cfg), unit="cells", enabled=progress) as advance:
        results = run_concepts(cfg, progress=advance)
    write_concepts(results, stage.folder)
    return {"seconds": results["seconds"]}


def _cards(stage: Stage, progress: bool) -> dict:
    from .cards import pair_cards

    cards = pair_cards(stage.inputs[0].folder / "results.json", stage.settings["pair_cards"])
    stage.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.folder / "cards.json", cards)
    return {"n_cards": len(cards)}


def _absorption(stage: Stage, progress: bool) -> dict:
    from ..absorption import AbsorptionConfig, run_absorption
    from ..report.files import write_absorption

    s = stage.settings
    cfg = AbsorptionConfig(
        model=s["model"],
        hook=s["hook"],
        saes=[str(i.folder) for i in stage.inputs],
        **pick(AbsorptionOptions, s),
        device=stage.device,
    )
    results = run_absorption(cfg, progress=progress)
    write_absorption(results, stage.folder)
    return {"seconds": results["seconds"]}


# ---------------------------------------------------------------- planners, one per stage kind
def _file_fingerprint(folder: Path) -> dict:
    """sha256 of the weight files of a pretrained SAE folder (so replacing them reruns what depends on them)."""
    files = sorted(p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".pt", ".json"))
    return {p.name: sha256_file(p) for p in files}


class _Planner:
    """The stages of one study as they are planned: each kind's planner adds its stages here."""

    def __init__(self, study: Study, out: Path):
        self.study, self.out = study, out
        self.stages: list[Stage] = []
        self.stores: dict[str, Stage] = {}
        self.heldout: dict[str, Stage] = {}
        self.main: dict[str, dict[str, Stage]] = {}  # label -> hook -> the SAE compared and spliced
        self.trained: dict[tuple, Stage] = {}  # (label, hook, seed, k) -> train stage, each SAE once

    def add(self, stage: Stage) -> Stage:
        if stage.kind != "pretrained":  # the study owns every product but a pretrained SAE folder
            stage.root = self.out
        stage.device = self.study.device
        self.stages.append(stage)
        return stage

    def hooks(self, label: str) -> list[str]:
        """Hooks to extract for a model: its hooks, plus the absorption hook if absorption runs on it."""
        hooks = list(self.study.model(label).hooks)
        a = self.study.absorption
        if a is not None and a.label == label and a.hook not in hooks:
            hooks.append(a.hook)
        return hooks


def _plan_extract(p: _Planner) -> None:
    d = p.study.data
    for m in p.study.models:
        common = {
            "model": m.model,
            "hooks": p.hooks(m.label),
            "corpus": d.corpus,
            "context": d.context,
            "seed": d.seed,
            "label": m.label,
        }
        p.stores[m.label] = p.add(
            Stage(
                "extract",
                f"extract {m.label}",
                p.out / "stores" / m.label,
                {**common, "tokens": d.tokens, "window_chars": d.window_chars},
                _extract,
                label=m.label,
                role="train",
            )
        )
        if d.heldout_tokens:
            p.heldout[m.label] = p.add(
                Stage(
                    "extract",
                    f"extract {m.label} held-out",
                    p.out / "stores" / f"{m.label}-heldout",
                    {**common, "tokens": d.heldout_tokens, "split": "eval"},
                    _extract,
                    label=m.label,
                    role="heldout",
                )
            )


def _stream_settings(p: _Planner, label: str, cfg: TrainConfig) -> dict:
    """`[sae] source = "model"`: the model reads [data]'s text, cut as its store is, as far as training takes
    it (steps x batch_size tokens, at least the store's budget: the store's text comes first)."""
    d = p.study.data
    tokens = max(d.tokens, cfg.steps * cfg.batch_size)
    text = {"corpus": d.corpus, "tokens": tokens, "context": d.context, "window_chars": d.window_chars}
    return {"model": p.study.model(label).model, **text, "corpus_seed": d.seed}


def _train_stage(p: _Planner, label: str, hook: str, seed: int, k: int, role: Role) -> Stage:
    """The stage training `label`'s SAE at `hook` with `seed` and `k` (the rest as in [sae]), added once."""
    key = (label, hook, seed, k)
    if key not in p.trained:
        folder = {"main": label, "skyline": f"{label}-seed{seed}", "sparsity sweep": f"{label}-k{k}"}[role]
        base = p.study.sae.train
        cfg = dataclasses.replace(base, seed=seed, sae=dataclasses.replace(base.sae, k=k))
        settings = {"hook": hook, **_settings(cfg, TRAIN_SETTINGS)}
        if p.study.sae.source == "model":
            settings["stream"] = _stream_settings(p, label, cfg)
        p.trained[key] = p.add(
            Stage(
                "train",
                f"train {label} {hook} seed {seed} k {k}",
                p.out / "saes" / folder / hook,
                settings,
                _train,
                [] if "stream" in settings else [p.stores[label]],
                label=label,
                hook=hook,
                role=role,
            )
        )
    return p.trained[key]


def _plan_saes(p: _Planner) -> None:
    """The main SAE of every model and hook: trained, or a pretrained folder."""
    from ..sae.formats import sae_folder

    s = p.study.sae.train
    for m in p.study.models:
        p.main[m.label] = {}
        for hook in m.hooks:
            if m.saes:
                folder = sae_folder(m.saes, hook)
                p.main[m.label][hook] = p.add(
                    Stage(
                        "pretrained",
                        f"pretrained {m.label} {hook}",
                        folder,
                        {"folder": str(folder), "files": _file_fingerprint(folder)},
                        _pretrained,
                        label=m.label,
                        hook=hook,
                        role="pretrained",
                        records=p.out / "pretrained" / m.label / hook,  # not beside the user's folder
                    )
                )
            else:
                p.main[m.label][hook] = _train_stage(p, m.label, hook, s.seed, s.sae.k, "main")


def _plan_compare(p: _Planner) -> None:
    """The comparison, its concepts and its pair cards (with the skyline SAEs the skyline control needs)."""
    c = p.study.compare
    if c is None:
        return
    k = p.study.sae.train.sae.k
    a, b = p.study.model(c.label_a), p.study.model(c.label_b)
    skyline = (
        [_train_stage(p, a.label, hook, c.skyline_seed, k, "skyline") for hook in a.hooks]
        if "skyline" in c.controls
        else []
    )
    template = {m.label: m.saes or str(p.out / "saes" / m.label / "{hook}") for m in (a, b)}
    skyline_template = str(p.out / "saes" / f"{a.label}-seed{c.skyline_seed}" / "{hook}") if skyline else None
    settings = {
        "label_a": a.label,
        "label_b": b.label,
        "hooks_a": a.hooks,
        "hooks_b": b.hooks,
        "saes_a": template[a.label],
        "saes_b": template[b.label],
        "skyline_saes_a": skyline_template,
        **_settings(CompareOptions(**pick(CompareOptions, vars(c))), COMPARE_SETTINGS),
    }
    inputs = [p.stores[a.label], p.stores[b.label], *p.main[a.label].values(), *p.main[b.label].values()]
    # version 5: results version 4 (no interval of a difference, the test against the mean of 3 random-init
    # seeds); 4: activation scores cross-fitted, chance threshold, SVCCA k per grid, the headline test against
    # the controls and half-sample intervals (3: results name hooks `hook_a` / `hooks_a`; 2: basic intervals)
    compare = p.add(Stage("compare", "compare", p.out / "compare", settings, _compare, inputs + skyline, version=5))
    if c.concepts:
        concept_settings = {
            **settings,
            "controls": [],
            "n_bootstrap": 0,
            "skyline_saes_a": None,
            "concepts": c.concepts,
        }
        # version 4: the layer's selection rules within each concept (chance threshold, junk and overlap
        # filters; results version 4); 3: SVCCA k fixed for the whole concept grid and reported (results version 3)
        p.add(Stage("concepts", "concepts", p.out / "concepts", concept_settings, _concepts, inputs, version=4))
    if c.pair_cards:
        # version 3: the pairs come from the chance-thresholded matching of compare version 4
        p.add(
            Stage(
                "pair cards", "pair cards", p.out / "cards", {"pair_cards": c.pair_cards}, _cards, [compare], version=3
            )
        )


def _plan_absorption(p: _Planner) -> None:
    """Absorption on one hook, for a TopK SAE at each k (the main SAE where its k is one of them)."""
    a = p.study.absorption
    if a is None:
        return
    m, s = p.study.model(a.label), p.study.sae.train
    inputs = [
        p.main[m.label][a.hook]
        if k == s.sae.k and a.hook in p.main[m.label] and not m.saes
        else _train_stage(p, m.label, a.hook, s.seed, k, "sparsity sweep")
        for k in a.k_values
    ]
    options = AbsorptionOptions(**pick(AbsorptionOptions, vars(a)))
    settings = {"model": m.model, "hook": a.hook, "k_values": a.k_values, **_settings(options, ABSORPTION_SETTINGS)}
    # version 2: absorption.json version 2 (num_split_features = main latents, n_letters_qualified and a warning
    # where version 1 refused, the probe recipe)
    p.add(
        Stage(
            "absorption",
            "absorption",
            p.out / "absorption",
            settings,
            _absorption,
            inputs,
            label=m.label,
            hook=a.hook,
            version=2,
        )
    )


def _plan_evaluate(p: _Planner) -> None:
    """Every SAE of a model on its held-out store; CE-loss recovered for the main ones, on windows that
    `saeatlas.sae.splice.choose_windows` picks from the texts alone (the same for every model of the study)."""
    d = p.study.data
    if not d.heldout_tokens:
        return
    for m in p.study.models:
        main = p.main[m.label]
        others = [st for (label, *_), st in p.trained.items() if label == m.label and st not in main.values()]
        entries = [{"hook": hook, "splice": True} for hook in main] + [
            {"hook": st.hook, "splice": False} for st in others
        ]
        settings = {
            "model": m.model,
            "saes": entries,
            "heldout_tokens": d.heldout_tokens,
            "ce_tokens": p.study.sae.ce_tokens,
            "corpus": d.corpus,
            "context": d.context,
            "window_chars": d.window_chars,
            "seed": d.seed,
        }
        p.add(
            Stage(
                "evaluate",
                f"evaluate {m.label} SAEs",
                p.out / "evals" / m.label,
                settings,
                _evaluate,
                [p.heldout[m.label], *main.values(), *others],
                label=m.label,
                # version 2: the spliced text is windows spread over every held-out document, the same text for
                # every model; the figures are means over documents with their standard errors (`<name>_se`)
                version=2,
            )
        )


def plan(study: Study, out: Path) -> list[Stage]:
    """Every stage of `study`, in an order that respects the inputs."""
    p = _Planner(study, Path(out))
    for planner in (_plan_extract, _plan_saes, _plan_compare, _plan_absorption, _plan_evaluate):
        planner(p)
    check_products(((s.name, s.folder) for s in p.stages if s.root is not None), p.out)
    return _ordered(p.stages)


def _ordered(stages: list[Stage]) -> list[Stage]:
    """Stages with every input before its users (stable otherwise)."""
    done, order = set(), []

    def visit(stage: Stage) -> None:
        if id(stage) in done:
            return
        for i in stage.inputs:
            visit(i)
        done.add(id(stage))
        order.append(stage)

    for stage in stages:
        visit(stage)
    return order
