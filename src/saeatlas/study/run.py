"""`saeatlas run` and `saeatlas status`: a study's stages, done in order, skipped when done, with a log.

The last stage assembles `results.json` (version `RESULTS_VERSION`, schema in the README) from every product
and renders `report.html` from it.

Under torchrun (`torchrun --nproc-per-node N -m saeatlas run study.toml`) the stages go to the ranks whole, in
waves of stages independent of one another (`_run_waves`); products, records and results.json are the ones a
single process makes (wall times aside).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from rich.console import Console

from .. import distributed
from ..devices import resolve_device
from ..fileio import jsonable, read_json, space_for, write_bytes_atomic, write_json_atomic
from ..locks import writing
from ..schema import EvalMetrics, PairCards, checked, checked_results
from .config import Study
from .paths import check_out
from .plan import plan
from .preflight import preflight
from .stages import Stage, run_stage

RESULTS_VERSION = 4
"""Version of the study's results.json (README, \"Study results\"); 2: `d_sae` and `model` as everywhere else;
3: each SAE's `downstream` figures are means over held-out documents with `<name>_se`, and say which documents
(`n_documents`, `documents`, `n_windows`, `documents_available`); 4: its compare and concepts documents are
comparison results version 4."""


RERUN = "rerun the study to make it again"


def _read_json(path: Path, schema):
    """A stage's document, checked against `schema` (or, for "compare", "concepts" and "absorption", its
    results kind and version), or None when the stage was not part of the study."""
    if not path.is_file():
        return None
    doc = read_json(path, "", RERUN)
    if isinstance(schema, str):
        return checked_results(doc, schema, path, f"delete it and {RERUN}")
    return checked(doc, schema, path, f"delete it and {RERUN}")


def _model_facts(study: Study, stages: list[Stage]) -> list[dict]:
    from ..data.store import ActivationStore

    facts = []
    for m in study.models:
        stage = next(s for s in stages if s.kind == "extract" and s.label == m.label and s.role == "train")
        store = ActivationStore(stage.folder)
        facts.append(
            {
                "label": m.label,
                "model": m.model,
                "name": store.manifest["model"].get("name", m.model),
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
        if stage.kind == "evaluate":
            evals.update(_read_json(stage.folder / "metrics.json", EvalMetrics) or {})
    facts = []
    for stage in stages:
        if stage.kind not in ("train", "pretrained"):
            continue
        sae = load_sae(stage.folder)
        record = stage.record() or {}
        figures = evals.get(str(stage.folder))
        facts.append(
            {
                "label": stage.label,
                "hook": stage.hook,
                "seed": stage.settings.get("seed"),
                "arch": sae.cfg.arch,
                "k": sae.cfg.k,
                "d_sae": sae.cfg.d_sae,
                "folder": str(stage.folder),
                "role": stage.role,
                "trained_at": read_metadata(stage.folder).get("hook_name"),
                "train_metrics": (record.get("summary") or {}).get("metrics"),
                "metrics": figures["metrics"] if figures else None,
                "downstream": figures["downstream"] if figures else None,
            }
        )
    return facts


def assemble_results(study: Study, out: Path, stages: list[Stage], timings: list[dict]) -> dict:
    """results.json: the study, its models and SAEs, and every stage's results."""
    compare = _read_json(out / "compare" / "results.json", "compare")
    return {
        "version": RESULTS_VERSION,
        "kind": "study",
        "study": study.to_dict(),
        "legacy": bool(compare and compare["config"]["method"] == "legacy_first"),
        "models": _model_facts(study, stages),
        "saes": _sae_facts(stages),
        "compare": compare,
        "concepts": _read_json(out / "concepts" / "concepts.json", "concepts"),
        "absorption": _read_json(out / "absorption" / "absorption.json", "absorption"),
        "pair_cards": _read_json(out / "cards" / "cards.json", PairCards) or [],
        "stages": timings,
        "seconds": sum(float(t.get("seconds_when_made") or 0.0) for t in timings),
    }


def _report_stage(study: Study, out: Path, stages: list[Stage], timings: list[dict]) -> Stage:
    def action(stage: Stage, progress: bool) -> dict:
        from ..report.html import render_report

        results = assemble_results(study, out, stages, timings)
        write_json_atomic(out / "results.json", jsonable(results))
        write_bytes_atomic(out / "report.html", render_report(jsonable(results)).encode())
        return {"report": str(out / "report.html")}

    return Stage("report", "report", out / "report.html", {"version": RESULTS_VERSION}, action, list(stages), root=out)


class _LogFile(logging.FileHandler):
    """run.log: a line that cannot be written (a full disk) is lost, not printed as a logging error."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass


def _log_to(out: Path) -> logging.Handler:
    out.mkdir(parents=True, exist_ok=True)
    handler = _LogFile(out / "run.log")  # appended to by every rank, a line at a time
    rank = f"rank {distributed.rank()} " if distributed.active() else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {rank}%(name)s: %(message)s"))
    logging.getLogger("saeatlas").addHandler(handler)
    logging.getLogger("saeatlas").setLevel(logging.INFO)
    return handler


def run_study(
    study: Study, out: str | Path | None = None, progress: bool = True, console: Console | None = None
) -> dict:
    """Run every stage not yet done (in `out`, default the study's own); returns {stages: [...], report: path,
    results: path, seconds}.  `progress`: live bars and a rule line per stage on stderr.  One run holds the
    study's lock (a second `saeatlas run` into `out` stops at once); a full disk met outside a product's own
    writer is one line too.

    Under torchrun every rank calls this with the same arguments; the stages are spread over the ranks (see
    `_run_waves`), rank 0 holds the lock, writes results.json and the report and speaks."""
    resolve_device(study.device)  # a device that is not here: one line, before anything is written
    out = out if out is not None else study.out
    with contextlib.ExitStack() as held:

        def start() -> Path:
            checked = check_out(out)  # before the lock file goes beside it
            held.enter_context(writing(checked, "study"))
            return checked

        out = distributed.on_main(start)
        with space_for(out, f"study '{out}'"):
            return _run_study(study, out, progress and distributed.is_main(), console)


def _run_study(study: Study, out: Path, progress: bool, console: Console | None) -> dict:
    stages = plan(study, out)  # refuses colliding products before anything is written
    preflight(study)
    console = console or Console(stderr=True, highlight=False, quiet=not progress)
    handler = _log_to(out)
    if distributed.is_main():
        write_bytes_atomic(out / "study.toml", _study_toml(study).encode())
    started = time.perf_counter()
    try:
        timings, remade = _run_waves(stages, progress, console)
        report = _report_stage(study, out, stages, timings)

        def make_report() -> dict:
            console.rule(f"[{len(stages) + 1}/{len(stages) + 1}] {report.name}")
            return _timing(report, *run_stage(report, progress, bool(remade))[1:])

        timings.append(distributed.on_main(make_report))  # the others return once it is written
    finally:
        logging.getLogger("saeatlas").removeHandler(handler)
        handler.close()
    return {
        "stages": timings,
        "report": str(out / "report.html"),
        "results": str(out / "results.json"),
        "seconds": time.perf_counter() - started,
    }


def _timing(stage: Stage, state: str, seconds: float) -> dict:
    """A stage's line in results.json's `stages`."""
    return {
        "name": stage.name,
        "key": stage.key,
        "state": state,
        "seconds": seconds,
        "seconds_when_made": (stage.record() or {}).get("seconds", seconds),
    }


def waves(stages: list[Stage]) -> list[list[int]]:
    """The stages (indices into `stages`, inputs first) in waves: a stage's wave is one after its latest
    input's, so the stages of a wave are independent of one another."""
    wave: dict[int, int] = {}
    for stage in stages:
        wave[id(stage)] = 1 + max((wave[id(s)] for s in stage.inputs), default=-1)
    out: list[list[int]] = [[] for _ in range(max(wave.values(), default=-1) + 1)]
    for i, stage in enumerate(stages):
        out[wave[id(stage)]].append(i)
    return out


def assign(pending: list[int], world: int) -> dict[int, int]:
    """Stage index -> the rank that runs it: the stages with work to do in turn over the ranks (round-robin)."""
    return {i: n % world for n, i in enumerate(pending)}


SPREAD_STAGES = ("compare",)
"""Stages that, under torchrun, run on every rank at once with their work spread inside (the comparison's layer
pairs and controls: `compare.grid.run_compare`) instead of whole on one rank."""


def _run_shared(stage: Stage, progress: bool, again: bool) -> dict:
    """One SPREAD_STAGES stage on this rank: rank 0 runs it as one process would (and writes its product and
    record); the others compute their share of its spread steps.  Returns its timing (rank 0's)."""
    if distributed.is_main():
        _, state, seconds = run_stage(stage, progress, again)
        timing = _timing(stage, state, seconds)
    else:
        from ..compare.grid import run_compare
        from .plan import compare_config

        run_compare(compare_config(stage))
        timing = None
    return distributed.all_gather(timing)[0]


def _run_waves(stages: list[Stage], progress: bool, console: Console) -> tuple[list[dict], set[str]]:
    """Run the stages wave by wave (`waves`); under torchrun each wave's stages with work to do go round-robin
    to the ranks, each run whole on its rank (`distributed.alone`), and the ranks gather their outcomes (or the
    error one met, which all then raise) before the next wave.  Alone: every stage here, in waves.  The timings
    come back in the order of `stages`, the same as one process gives; with the keys of the stages made."""
    n = len(stages) + 1  # and the report, which needs the others' timings
    rank, world = distributed.rank(), distributed.world_size()
    timings: dict[int, dict] = {}
    remade: set[str] = set()  # keys of the stages made in this run
    for wave in waves(stages):
        again = {i: any(s.key in remade for s in stages[i].inputs) for i in wave}
        # read on rank 0 alone: a stage another rank finishes early must not change what a slower rank reads
        pending = distributed.on_main(
            lambda wave=wave, again=again: [i for i in wave if again[i] or not stages[i].record()]
        )
        shared = [i for i in pending if stages[i].kind in SPREAD_STAGES and world > 1]
        owner = {i: 0 for i in wave} | assign([i for i in pending if i not in shared], world)
        mine, failed = [], None
        for i in wave:
            if i in shared:
                continue
            console.rule(f"[{i + 1}/{n}] {stages[i].name}" + (f" (rank {owner[i]})" if owner[i] != rank else ""))
            if owner[i] != rank:
                continue
            try:
                with distributed.alone():
                    _, state, seconds = run_stage(stages[i], progress, again[i])
            except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here
                mine, failed = distributed.failure(exc), exc
                break
            mine.append((i, _timing(stages[i], state, seconds)))
        outcomes = distributed.all_gather(mine)
        if failed is not None:
            raise failed
        distributed.raise_first(outcomes)
        for i in shared:  # every rank at once, its work spread inside (rank 0 writes)
            console.rule(f"[{i + 1}/{n}] {stages[i].name} (all ranks)")
            outcomes.append([(i, distributed.together(lambda i=i, a=again[i]: _run_shared(stages[i], progress, a)))])
        for i, timing in (pair for ranks in outcomes for pair in ranks):
            timings[i] = timing
            if timing["state"] == "ran":
                remade.add(timing["key"])
    return [timings[i] for i in range(len(stages))], remade


def study_status(study: Study, out: str | Path) -> list[dict]:
    """Each stage's state (done, stale, partial, missing) without running anything."""
    out = check_out(out)
    stages = plan(study, out)
    preflight(study)
    rows = [{"name": s.name, "state": s.state(), "key": s.key, "folder": str(s.folder)} for s in stages]
    report = _report_stage(study, out, stages, [])
    rows.append({"name": "report", "state": report.state(), "key": report.key, "folder": str(report.folder)})
    return rows


def study_settings(study: Study) -> dict:
    """Every setting of the study, each table flat (as written in the study file)."""
    from ..config import flat_fields, flat_values

    def flat(section) -> dict | None:
        if section is None:
            return None
        derived = {
            n
            for n, (_, f, _) in flat_fields(type(section)).items()
            if f.metadata.get("setting") is False or f.metadata.get("runtime")
        }
        return {k: v for k, v in flat_values(section).items() if k not in derived}

    return {
        "name": study.name,
        "out": study.out,
        "data": flat(study.data),
        "models": [flat(m) for m in study.models],
        "sae": flat(study.sae),
        "compare": flat(study.compare),
        "absorption": flat(study.absorption),
    }


def _study_toml(study: Study) -> str:
    """The study as TOML (every setting actually used), written beside the results."""
    settings = study_settings(study)
    lines = ["# the study as run by saeatlas", f"name = {json.dumps(study.name)}", f"out = {json.dumps(study.out)}"]

    def table(header: str, values: dict) -> None:
        lines.append(f"\n{header}")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)

    table("[data]", settings["data"])
    for m in settings["models"]:
        table("[[models]]", m)
    table("[sae]", settings["sae"])
    for section in ("compare", "absorption"):
        if settings[section] is not None:
            table(f"[{section}]", settings[section])
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def print_status(study: Study, out: str | Path, console: Console | None = None) -> None:
    """`saeatlas status`: each stage, its state and key, one line each."""
    from ..report.text import Col, print_table, say

    console = console or Console(highlight=False, markup=False, soft_wrap=True)
    say(console, [f"study '{study.name}'", f"in {out}:"])
    rows = [[row["name"], row["state"], row["key"]] for row in study_status(study, out)]
    print_table([Col("stage"), Col("state"), Col("key")], rows, console=console)


def print_summary(summary: dict, console: Console | None = None) -> None:
    """Stage timings, the headline figures, and where the report is (legible at 80 columns)."""
    from ..report.text import print_study_summary, say

    console = console or Console(highlight=False, markup=False, soft_wrap=True)
    results = read_json(summary["results"], f"{summary['results']} is missing", "rerun the study")
    checked_results(results, "study", summary["results"], "rerun the study")
    print_study_summary(summary["stages"], results, console)
    say(
        console, [f"total {summary['seconds']:.1f} s;", f"results {summary['results']};", f"report {summary['report']}"]
    )
