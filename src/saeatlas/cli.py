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
    ext.add_argument("--batch-size", type=int, default=8)
    ext.add_argument("--shard-windows", type=int, default=512, help="windows per shard (unit of resume)")
    ext.add_argument("--dtype", default="bfloat16", help="storage dtype: bfloat16 (default) or float32")
    ext.add_argument("--model-dtype", default="bfloat16", help="compute dtype: bfloat16 (default) or float32")
    ext.add_argument("--quiet", action="store_true", help="no progress bar")

    info = verbs.add_parser("info", help="print what an activation store holds")
    info.add_argument("store", type=Path)
    info.add_argument("--no-verify", action="store_true", help="skip checking shard hashes")

    verbs.add_parser("models", help="list the packaged models and whether they are installed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="saeatlas: %(message)s", stream=sys.stderr)
    try:
        return {"extract": _extract, "info": _info, "models": _models}[args.verb](args)
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
