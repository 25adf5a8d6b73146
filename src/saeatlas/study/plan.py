"""From a study to its stages: extraction, SAEs, their evaluation, comparison, concepts, pair cards, absorption.

Products, under the study's output folder:

    stores/<label>, stores/<label>-heldout      activation stores (train / eval split)
    saes/<label>/<hook>                          SAEs (SAELens layout); saes/<label>-seed<s>/, saes/<label>-k<k>/
    evals/<label>/metrics.json                   held-out metrics of every SAE, CE-loss recovered of the main ones
    compare/, concepts/, absorption/             results (JSON, CSV, SVG)
    cards/cards.json                             matched pairs with their top activating contexts
"""

from __future__ import annotations

from pathlib import Path

from ..compare.run import hook_name
from ..fileio import sha256_file, write_json_atomic
from .config import Study
from .stages import Stage


def _hooks(study: Study, label: str) -> list[str]:
    """Hooks to extract for a model: its layers, plus the absorption hook if absorption runs on it."""
    hooks = [hook_name(h) for h in study.model(label).layers]
    a = study.absorption
    if a is not None and a.model == label and hook_name(a.hook) not in hooks:
        hooks.append(hook_name(a.hook))
    return hooks


# ---------------------------------------------------------------- actions
def _extract(stage: Stage) -> dict:
    from ..config import ExtractConfig
    from ..data.extract import extract
    from ..progress import token_progress

    cfg = ExtractConfig(**{k: v for k, v in stage.settings.items() if k != "label"}).validate()
    with token_progress(stage.name, total=cfg.tokens) as advance:
        result = extract(cfg, stage.folder, progress=advance)
    return {"n_tokens": result.n_tokens, "tokens_per_second": result.tokens_per_second}


def _train(stage: Stage) -> dict:
    from ..progress import step_progress
    from ..sae.config import SAEConfig, TrainConfig
    from ..sae.data_source import StoreSource
    from ..sae.run import train_to_folder

    s = stage.settings
    source = StoreSource(stage.inputs[0].folder, s["hook"])
    cfg = SAEConfig(
        arch=s["arch"], d_in=source.d_in, d_sae=s["width"], k=s["k"], l1_coefficient=s["l1_coefficient"]
    ).validate()
    train = TrainConfig(steps=s["steps"], batch_size=s["batch_size"], seed=s["seed"]).validate()
    with step_progress(stage.name, total=train.steps) as on_step:
        metrics = train_to_folder(cfg, train, source, stage.folder, on_step=on_step)
    return {"metrics": {k: v for k, v in metrics.items() if k != "density_histogram"}}


def _pretrained(stage: Stage) -> dict:
    from ..sae.formats import load_sae

    sae = load_sae(stage.folder)
    return {"arch": sae.cfg.arch, "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in}


def _evaluate(stage: Stage) -> dict:
    """Held-out metrics of every SAE of a model, and CE-loss recovered of its main SAEs with the model loaded
    once; metrics.json maps each SAE folder to {hook, metrics, downstream (null: not spliced)}."""
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
    handle = load_model(s["spec"]) if s["ce_tokens"] else None
    out = {}
    with count_progress(stage.name, total=len(s["saes"]), unit="SAEs") as advance:
        for entry, sae_stage in zip(s["saes"], stage.inputs[1:]):
            hook, sae = entry["hook"], load_sae(sae_stage.folder)
            metrics = evaluate(sae, eval_batches(StoreSource(heldout, hook), s["heldout_tokens"]))
            metrics.pop("density_histogram", None)
            downstream = (
                spliced_metrics(handle, sae, hook, corpus=s["corpus"], n_tokens=s["ce_tokens"])
                if handle and entry["splice"]
                else None
            )
            out[str(sae_stage.folder)] = {"hook": hook, "metrics": metrics, "downstream": downstream}
            advance(1)
    stage.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.folder / "metrics.json", out)
    return out


def _compare_config(stage: Stage):
    from ..compare.config import CompareConfig

    s = dict(stage.settings)
    s.pop("concepts", None)
    s.pop("pair_cards", None)
    stores = {st.settings.get("label"): st for st in stage.inputs if st.name.startswith("extract")}
    return CompareConfig(
        store_a=str(stores[s.pop("a")].folder),
        store_b=str(stores[s.pop("b")].folder),
        sae_a=s.pop("sae_a"),
        sae_b=s.pop("sae_b"),
        skyline_sae_a=s.pop("skyline_sae_a"),
        **s,
    ).validate()


def _compare(stage: Stage) -> dict:
    from ..compare.run import compare_grid, n_comparisons, write_results
    from ..progress import count_progress

    cfg = _compare_config(stage)
    with count_progress(stage.name, total=n_comparisons(cfg), unit="comparisons") as advance:
        results = compare_grid(cfg, progress=advance)
    write_results(results, stage.folder)
    return {"seconds": results["seconds"]}


def _concepts(stage: Stage) -> dict:
    from ..compare.concepts import load_concepts
    from ..compare.run import concept_grid, write_results
    from ..progress import count_progress

    source = stage.settings["concepts"]
    cfg, concepts = _compare_config(stage), load_concepts(None if source == "builtin" else source)
    with count_progress(
        stage.name, total=len(cfg.layers_a) * len(cfg.layers_b) * len(concepts), unit="cells"
    ) as advance:
        results = concept_grid(cfg, concepts, progress=advance)
    write_results(results, stage.folder, prefix="concepts")
    return {"seconds": results["seconds"] if "seconds" in results else None}


def _cards(stage: Stage) -> dict:
    from .cards import pair_cards

    cards = pair_cards(stage.inputs[0].folder / "results.json", stage.settings["pair_cards"])
    stage.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.folder / "cards.json", cards)
    return {"n_cards": len(cards)}


def _absorption(stage: Stage) -> dict:
    from ..absorption import AbsorptionConfig, run_absorption, write_absorption

    s = stage.settings
    cfg = AbsorptionConfig(
        model=s["spec"],
        hook=s["hook"],
        saes=[str(i.folder) for i in stage.inputs],
        variant=s["variant"],
        words=s["words"],
        min_probe_f1=s["min_probe_f1"],
        min_letters=s["min_letters"],
    ).validate()
    results = run_absorption(cfg)
    write_absorption(results, stage.folder)
    return {"seconds": results["seconds"]}


# ---------------------------------------------------------------- the plan
def _file_fingerprint(folder: Path) -> dict:
    """sha256 of the weight files of a pretrained SAE folder (so replacing them reruns what depends on them)."""
    files = sorted(p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".pt", ".json"))
    return {p.name: sha256_file(p) for p in files}


def plan(study: Study, out: Path) -> list[Stage]:
    """Every stage of `study`, in an order that respects the inputs."""
    from ..compare.run import sae_folder

    d, s = study.data, study.sae
    stages: list[Stage] = []
    stores, heldout, saes = {}, {}, {}

    def add(stage: Stage) -> Stage:
        stages.append(stage)
        return stage

    def sae_stage(label: str, hook: str, seed: int, k: int, folder: Path) -> Stage:
        key = (label, hook, seed, k)
        if key not in saes:
            settings = {
                "hook": hook,
                "arch": s.arch,
                "k": k,
                "width": s.width,
                "steps": s.steps,
                "batch_size": s.batch_size,
                "seed": seed,
                "l1_coefficient": s.l1_coefficient,
            }
            saes[key] = add(Stage(f"train {label} {hook} seed {seed} k {k}", folder, settings, _train, [stores[label]]))
        return saes[key]

    for m in study.models:
        hooks = _hooks(study, m.label)
        common = {"model": m.spec, "hooks": hooks, "corpus": d.corpus, "context": d.context, "seed": d.seed}
        stores[m.label] = add(
            Stage(
                f"extract {m.label}",
                out / "stores" / m.label,
                {**common, "label": m.label, "tokens": d.tokens, "window_chars": d.window_chars},
                _extract,
            )
        )
        if d.heldout_tokens:
            heldout[m.label] = add(
                Stage(
                    f"extract {m.label} held-out",
                    out / "stores" / f"{m.label}-heldout",
                    {**common, "label": m.label, "tokens": d.heldout_tokens, "split": "eval"},
                    _extract,
                )
            )
    main_saes: dict[str, dict[str, Stage]] = {}
    for m in study.models:
        main_saes[m.label] = {}
        for hook in [hook_name(h) for h in m.layers]:
            if m.saes:
                folder = sae_folder(m.saes, hook)
                main_saes[m.label][hook] = add(
                    Stage(
                        f"pretrained {m.label} {hook}",
                        folder,
                        {"folder": str(folder), "files": _file_fingerprint(folder)},
                        _pretrained,
                    )
                )
            else:
                main_saes[m.label][hook] = sae_stage(m.label, hook, s.seed, s.k, out / "saes" / m.label / hook)
    if (c := study.compare) is not None:
        skyline = []
        if "skyline" in c.controls:
            a = study.model(c.a)
            skyline = [
                sae_stage(
                    c.a, hook_name(h), c.skyline_seed, s.k, out / "saes" / f"{c.a}-seed{c.skyline_seed}" / hook_name(h)
                )
                for h in a.layers
            ]
        template = {lab: (study.model(lab).saes or str(out / "saes" / lab / "{hook}")) for lab in (c.a, c.b)}
        settings = {
            "a": c.a,
            "b": c.b,
            "layers_a": study.model(c.a).layers,
            "layers_b": study.model(c.b).layers,
            "sae_a": template[c.a],
            "sae_b": template[c.b],
            "skyline_sae_a": str(out / "saes" / f"{c.a}-seed{c.skyline_seed}" / "{hook}") if skyline else None,
            "method": c.method,
            "threshold": c.threshold,
            "measures": c.measures,
            "svcca_k": c.svcca_k or None,
            "n_permutations": c.permutations,
            "n_bootstrap": c.bootstrap,
            "controls": c.controls,
            "seed": d.seed,
        }
        inputs = [stores[c.a], stores[c.b], *main_saes[c.a].values(), *main_saes[c.b].values()]
        # version 2: bootstrap intervals are basic (reverse-percentile) intervals
        compare = add(Stage("compare", out / "compare", settings, _compare, inputs + skyline, version=2))
        if c.concepts != "none":
            concept_settings = {
                **settings,
                "controls": [],
                "n_bootstrap": 0,
                "skyline_sae_a": None,
                "concepts": c.concepts,
            }
            add(Stage("concepts", out / "concepts", concept_settings, _concepts, inputs))
        if c.pair_cards:
            add(Stage("pair cards", out / "cards", {"pair_cards": c.pair_cards}, _cards, [compare]))
    if (a := study.absorption) is not None:
        m = study.model(a.model)
        hook = hook_name(a.hook)
        inputs = []
        for k in a.k_values:
            if k == s.k and hook in main_saes[m.label] and not m.saes:
                inputs.append(main_saes[m.label][hook])
            else:
                inputs.append(sae_stage(m.label, hook, s.seed, k, out / "saes" / f"{m.label}-k{k}" / hook))
        add(
            Stage(
                "absorption",
                out / "absorption",
                {
                    "spec": m.spec,
                    "hook": hook,
                    "variant": a.variant,
                    "words": a.words,
                    "k_values": a.k_values,
                    "min_probe_f1": a.min_probe_f1,
                    "min_letters": a.min_letters,
                },
                _absorption,
                inputs,
            )
        )
    if d.heldout_tokens:  # every SAE of a model on its held-out store; CE-loss recovered for the main ones
        for m in study.models:
            main = main_saes[m.label]  # hook -> stage
            others = [st for (label, *_), st in saes.items() if label == m.label and st not in main.values()]
            entries = [{"hook": hook, "splice": True} for hook in main] + [
                {"hook": st.settings["hook"], "splice": False} for st in others
            ]
            add(
                Stage(
                    f"evaluate {m.label} SAEs",
                    out / "evals" / m.label,
                    {
                        "spec": m.spec,
                        "saes": entries,
                        "heldout_tokens": d.heldout_tokens,
                        "ce_tokens": s.ce_tokens,
                        "corpus": d.corpus,
                    },
                    _evaluate,
                    [heldout[m.label], *main.values(), *others],
                )
            )
    return _ordered(stages)


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
