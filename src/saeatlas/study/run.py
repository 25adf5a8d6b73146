"""`saeatlas run` and `saeatlas status`: a study's stages, done in order, skipped when done, with a log.

The last stage assembles `results.json` (version `RESULTS_VERSION`, schema in the README) from every product
and renders `report.html` from it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..fileio import jsonable, write_bytes_atomic, write_json_atomic
from .config import Study
from .plan import plan
from .stages import Stage, run_stage

RESULTS_VERSION = 1


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _model_facts(study: Study, stages: list[Stage]) -> list[dict]:
    from ..data.store import ActivationStore

    facts = []
    for m in study.models:
        stage = next(s for s in stages if s.name == f"extract {m.label}")
        store = ActivationStore(stage.folder)
        facts.append(
            {
                "label": m.label,
                "spec": m.spec,
                "name": store.manifest["model"].get("name", m.spec),
                "d_model": store.d_model,
                "corpus": study.data.corpus,
                "n_tokens": store.n_tokens,
                "hooks": store.hooks,
            }
        )
    return facts


def _sae_facts(stages: list[Stage]) -> list[dict]:
    """Every trained or pretrained SAE with its training metrics and, where evaluated, held-out figures."""
    from ..sae.formats import load_sae, read_metadata

    evals = {}  # SAE folder -> {hook, metrics, downstream}
    for stage in stages:
        if stage.name.startswith("evaluate "):
            evals.update(_read_json(stage.folder / "metrics.json") or {})
    facts = []
    for stage in stages:
        if not stage.name.startswith(("train ", "pretrained ")):
            continue
        words = stage.name.split()
        label, hook = words[1], words[2]
        sae = load_sae(stage.folder)
        seed = stage.settings.get("seed")
        record = stage.record() or {}
        role = _role(stage, label)
        figures = evals.get(str(stage.folder))
        facts.append(
            {
                "label": label,
                "hook": hook,
                "seed": seed,
                "arch": sae.cfg.arch,
                "k": sae.cfg.k,
                "width": sae.cfg.d_sae,
                "folder": str(stage.folder),
                "role": role,
                "trained_at": read_metadata(stage.folder).get("hook_name"),
                "train_metrics": (record.get("summary") or {}).get("metrics"),
                "metrics": figures["metrics"] if figures else None,
                "downstream": figures["downstream"] if figures else None,
            }
        )
    return facts


def _role(stage: Stage, label: str) -> str:
    """main (compared and evaluated), skyline (another seed), sparsity sweep (other k), or pretrained."""
    if stage.name.startswith("pretrained"):
        return "pretrained"
    parent = stage.folder.parent.name
    return "main" if parent == label else "skyline" if parent.startswith(f"{label}-seed") else "sparsity sweep"


def assemble_results(study: Study, out: Path, stages: list[Stage], timings: list[dict]) -> dict:
    """results.json: the study, its models and SAEs, and every stage's results."""
    compare = _read_json(out / "compare" / "results.json")
    return {
        "version": RESULTS_VERSION,
        "kind": "study",
        "study": study.to_dict(),
        "legacy": bool(compare and compare["config"]["method"] == "legacy_first"),
        "models": _model_facts(study, stages),
        "saes": _sae_facts(stages),
        "compare": compare,
        "concepts": _read_json(out / "concepts" / "concepts.json"),
        "absorption": _read_json(out / "absorption" / "absorption.json"),
        "pair_cards": _read_json(out / "cards" / "cards.json") or [],
        "stages": timings,
        "seconds": sum(float(t.get("seconds_when_made") or 0.0) for t in timings),
    }


def _report_stage(study: Study, out: Path, stages: list[Stage], timings: list[dict]) -> Stage:
    def action(stage: Stage) -> dict:
        from ..report.html import render_report

        results = assemble_results(study, out, stages, timings)
        write_json_atomic(out / "results.json", jsonable(results))
        write_bytes_atomic(out / "report.html", render_report(jsonable(results)).encode())
        return {"report": str(out / "report.html")}

    return Stage("report", out / "report.html", {"version": RESULTS_VERSION}, action, list(stages))


def _log_to(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("saeatlas").addHandler(handler)
    logging.getLogger("saeatlas").setLevel(logging.INFO)
    return handler


def run_study(study: Study, out: str | Path, console: Console | None = None) -> dict:
    """Run every stage not yet done; returns {stages: [...], report: path, seconds}."""
    out = Path(out)
    console = console or Console(stderr=True, highlight=False)
    handler = _log_to(out)
    write_bytes_atomic(out / "study.toml", _study_toml(study).encode())
    started = time.perf_counter()
    try:
        stages = plan(study, out)
        timings = []
        n = len(stages) + 1  # and the report, which needs the others' timings

        def run(i: int, stage: Stage) -> None:
            console.rule(f"[{i}/{n}] {stage.name}")
            _, state, seconds = run_stage(stage)
            timings.append(
                {
                    "name": stage.name,
                    "key": stage.key,
                    "state": state,
                    "seconds": seconds,
                    "seconds_when_made": (stage.record() or {}).get("seconds", seconds),
                }
            )

        for i, stage in enumerate(stages, 1):
            run(i, stage)
        run(n, _report_stage(study, out, stages, timings))
    finally:
        logging.getLogger("saeatlas").removeHandler(handler)
        handler.close()
    return {
        "stages": timings,
        "report": str(out / "report.html"),
        "results": str(out / "results.json"),
        "seconds": time.perf_counter() - started,
    }


def study_status(study: Study, out: str | Path) -> list[dict]:
    """Each stage's state (done, stale, partial, missing) without running anything."""
    out = Path(out)
    try:
        stages = plan(study, out)
    except Exception as exc:  # noqa: BLE001 - a pretrained SAE folder missing is a state worth showing
        return [{"name": "plan", "state": f"cannot plan: {exc}", "key": "", "folder": ""}]
    rows = [{"name": s.name, "state": s.state(), "key": s.key, "folder": str(s.folder)} for s in stages]
    report = _report_stage(study, out, stages, [])
    rows.append({"name": "report", "state": report.state(), "key": report.key, "folder": str(report.folder)})
    return rows


def _study_toml(study: Study) -> str:
    """The study as TOML (the settings actually used), written beside the results."""
    lines = ["# the study as run by saeatlas", f"name = {json.dumps(study.name)}", f"out = {json.dumps(study.out)}"]

    def table(name: str, values: dict) -> None:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)

    settings = study.to_dict()
    table("data", settings["data"])
    for m in settings["models"]:
        lines.append("\n[[models]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in m.items() if v is not None)
    table("sae", settings["sae"])
    for section in ("compare", "absorption"):
        if settings[section] is not None:
            table(section, settings[section])
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def print_summary(study: Study, summary: dict, console: Console | None = None) -> None:
    """Stage timings, the headline figures, and where the report is."""
    console = console or Console(highlight=False, soft_wrap=True)
    table = Table(title=f"study '{study.name}': stages", show_edge=False)
    for column in ("stage", "this run", "seconds", "when made"):
        table.add_column(column)
    for t in summary["stages"]:
        table.add_row(
            t["name"],
            "ran" if t["state"] == "ran" else "skipped (done)",
            f"{t['seconds']:.1f}",
            f"{t['seconds_when_made']:.1f}",
        )
    console.print(table)
    results = json.loads(Path(summary["results"]).read_text())
    _print_headlines(results, console)
    console.print(f"total {summary['seconds']:.1f} s; results {summary['results']}; report {summary['report']}")


def _print_headlines(results: dict, console: Console) -> None:
    from ..report.text import print_absorption, print_comparison

    saes = Table(title="SAE quality (held-out)", show_edge=False)
    for column in ("model", "hook", "role", "k", "seed", "L0", "FVU", "dead", "CE-loss recovered"):
        saes.add_column(column)
    for s in results["saes"]:
        if s["metrics"]:
            m, dn = s["metrics"], s["downstream"] or {}
            saes.add_row(
                s["label"],
                s["hook"],
                s["role"],
                *("-" if s[c] is None else str(s[c]) for c in ("k", "seed")),
                f"{m['l0']:.1f}",
                f"{m['fvu']:.3f}",
                f"{m['dead_fraction']:.1%}",
                f"{dn['ce_loss_recovered']:.3f}" if dn else "-",
            )
    console.print(saes)
    if results["compare"]:
        print_comparison(results["compare"], console)
    if results["absorption"]:
        print_absorption(results["absorption"], console, per_letter=False)
