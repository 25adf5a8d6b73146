"""Helpers shared by several test modules: the texts, the two small tokenizers, the tiny models.

Not a test module.  Test modules import from here (`from helpers import TEXTS`), never from each other;
the fixtures built from these live in conftest.py.  No network: the tokenizers are small BPEs trained
here on a few sentences and the model weights are random (seeded).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A second sentence follows here.",
    "In the beginning God created the heaven and the earth. And the earth was without form.",
    "Sparse autoencoders find features in the residual stream of language models.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "Hundreds of people have been forced to vacate their homes as strong winds pushed a fire.",
]

HOOK = "resid_post.1"
"""The hook the cross-model tests (alignment, compare CLI) extract."""


def train_tokenizer(add_bos: bool):
    """A small byte-level BPE (400 tokens) trained on TEXTS; `add_bos` prepends <bos> like Gemma's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def train_other_tokenizer():
    """A second small BPE unlike `train_tokenizer`'s: SentencePiece-style Metaspace pre-tokenizer, 300 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"], initial_alphabet=alphabet
    )
    tok.train_from_iterator(TEXTS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_model(folder: Path, family: str) -> Path:
    """Save a tiny random `family` ('llama' or 'gemma3') model + tokenizer to `folder`."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = train_tokenizer(add_bos=family == "gemma3")
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        config = Gemma3TextConfig(
            **common, head_dim=8, sliding_window=16, layer_types=["sliding_attention"] * 3 + ["full_attention"]
        )
        model = Gemma3ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_neox(folder: Path, seed: int = 2, hidden_size: int = 32) -> Path:
    """Save a tiny random GPT-NeoX (Pythia's architecture: parallel residual, partial rotary; 4 layers) with
    `train_tokenizer`'s tokenizer (no BOS, like Pythia's) to `folder`."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(add_bos=False)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=4,
        num_attention_heads=4,
        rotary_pct=0.25,
        max_position_embeddings=256,
        use_parallel_residual=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_other_model(folder: Path) -> Path:
    """Save a tiny random Llama with `train_other_tokenizer`'s tokenizer (2 layers, d_model 24, no BOS)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    tokenizer = train_other_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the Hugging Face cache
def hub_cache_put(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Put `files` (path in the repo -> local file) into the Hugging Face cache folder `cache` as model repo
    `repo_id`, in the hub's own on-disk layout, written with huggingface_hub's helpers: blobs named by their
    hash (sha256 for weights, as LFS names them; the git blob hash otherwise), snapshots/<commit>/ of relative
    symlinks, refs/main, and the tree listing huggingface_hub caches to know a snapshot is complete.
    Returns the snapshot folder."""
    import hashlib
    import shutil

    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        _create_symlink,
        repo_folder_name,
    )
    from huggingface_hub.utils.sha import git_hash

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(repo_id.encode() + b"".join(Path(f).read_bytes() for f in files.values())).hexdigest()
    entries = {}
    for name, source in sorted(files.items()):
        data = Path(source).read_bytes()
        lfs = name.endswith((".safetensors", ".bin", ".pt"))
        blob_id = git_hash(data)
        key = hashlib.sha256(data).hexdigest() if lfs else blob_id
        blob = storage / "blobs" / key
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(link), new_blob=False)
        entries[name] = TreeCacheEntry(
            size=len(data), blob_id=blob_id, lfs_sha256=key if lfs else None, lfs_size=len(data) if lfs else None
        )
    _cache_commit_hash_for_specific_revision(str(storage), "main", commit)
    write_tree_cache(str(storage), commit, entries)
    return storage / "snapshots" / commit


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under `folder` as {prefix + relative path: path}, for `hub_cache_put`."""
    return {prefix + p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def random_saelens_sae(folder: Path, d_in: int, d_sae: int, hook: str, seed: int, old_cfg: bool = False) -> Path:
    """A random TopK SAE saved as a SAELens folder; `old_cfg` rewrites its cfg.json as SAELens releases from
    before SAELens 6 ship it (hook_point at the top, activation_fn_str topk with its k, no architecture)."""
    import json

    import torch

    from saeatlas.sae import SAEConfig, SparseAutoencoder, save_saelens

    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=4), g)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    save_saelens(sae.eval(), folder, metadata={"hook_name": hook})
    if old_cfg:
        from saeatlas.models.hooks import transformer_lens_name

        cfg = {
            "model_name": "pythia-70m-deduped",
            "hook_point": transformer_lens_name(hook),
            "hook_point_layer": int(hook.rsplit(".", 1)[1]),
            "d_in": d_in,
            "d_sae": d_sae,
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 4},
            "normalize_activations": False,
            "dtype": "float32",
            "device": "cpu",
            "sae_lens_version": "3.13.0",
        }
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------- SAEs
def identity_sae(d: int):
    """A ReLU SAE of 2d latents with relu(x) - relu(-x) = x: a perfect reconstruction of d dimensions."""
    import torch

    from saeatlas.sae import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(arch="relu", d_in=d, d_sae=2 * d, k=1))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


# ---------------------------------------------------------------- stores
def tiny_store(model: Path, corpus: Path, out: Path, **settings) -> Path:
    """Extract a float32 store of `model` (at HOOK) over every document of `corpus` into `out`; `settings`
    override ExtractConfig's fields (its defaults otherwise, e.g. context 128)."""
    from saeatlas.data.config import ExtractConfig
    from saeatlas.data.extract import run_extract

    settings = {"hooks": [HOOK], "split": "all", "store_dtype": "float32", "model_dtype": "float32"} | settings
    run_extract(ExtractConfig(model=str(model), corpus=str(corpus), **settings), out)
    return out


# ---------------------------------------------------------------- command lines
def cli_args(verb: str, *positional: str, **flags) -> list[str]:
    """`saeatlas` arguments: [verb, *positional, --flag value, ..., --quiet] (underscores in a flag's name
    become dashes; paths and numbers are written with str)."""
    args = [verb, *map(str, positional)]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return [*args, "--quiet"]


# ---------------------------------------------------------------- kill -9 at a known step
STOP_AFTER = Path(__file__).with_name("stop_after.py")
"""Runner for the kill -9 tests: runs the saeatlas CLI and SIGSTOPs itself after the N-th shard or checkpoint."""


def stop_after_command(unit: str, n: int, cli_args: list[str]) -> list[str]:
    """The command that runs `saeatlas CLI_ARGS...` and stops itself right after the `n`-th `unit`."""
    return [sys.executable, str(STOP_AFTER), unit, str(n), "--", *cli_args]


def kill_when_stopped(proc) -> None:
    """Wait until `proc` (a Popen of `stop_after_command`) has stopped itself, then kill -9 it and reap it."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):  # it ended instead: reaped here, so tell Popen its status
        proc.returncode = os.waitstatus_to_exitcode(status)
        pytest.fail(f"the child ended (status {proc.returncode}) before the step it should stop at", pytrace=False)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
