"""Shared fixtures: tiny Llama- and Gemma-shaped models built locally from a config.

No network: the tokenizer is a small BPE trained here on a few sentences, the
weights are random (seeded), and both are saved to a temporary folder that
`load_model` reads like any Hugging Face model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A second sentence follows here.",
    "In the beginning God created the heaven and the earth. And the earth was without form.",
    "Sparse autoencoders find features in the residual stream of language models.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "Hundreds of people have been forced to vacate their homes as strong winds pushed a fire.",
]


def _train_tokenizer(add_bos: bool):
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


def build_tiny_model(folder: Path, family: str) -> Path:
    """Save a tiny random `family` ('llama' or 'gemma3') model + tokenizer to `folder`."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _train_tokenizer(add_bos=family == "gemma3")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma"), "gemma3")


@pytest.fixture(params=["llama", "gemma3"])
def tiny_model(request, tiny_llama, tiny_gemma) -> Path:
    return tiny_llama if request.param == "llama" else tiny_gemma


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A folder of small .txt documents (a local corpus)."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        body = " ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 4))
        (folder / f"doc{i:02d}.txt").write_text(body)
    return folder
