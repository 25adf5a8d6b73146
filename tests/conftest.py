"""Shared fixtures: tiny Llama- and Gemma-shaped models built locally from a config, and small corpora.

No network: the tokenizers are small BPEs trained here on a few sentences, the weights are random
(seeded), and both are saved to a temporary folder that `load_model` reads like any Hugging Face model
folder.  What builds them lives in helpers.py; every fixture used by more than one test module is here.
"""

from __future__ import annotations

import os

# Before anything loads torch: passive OpenMP waiting (see saeatlas/__init__.py), no hub lookups.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
from helpers import TEXTS, build_tiny_model, build_tiny_neox, build_tiny_other_model


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
def tiny_neox(tmp_path_factory) -> Path:
    """A tiny random GPT-NeoX (Pythia's architecture), 4 layers, d_model 32, no BOS."""
    return build_tiny_neox(tmp_path_factory.mktemp("tiny-neox"))


@pytest.fixture(scope="session")
def tiny_other(tmp_path_factory) -> Path:
    """A tiny Llama with a different tokenizer (Metaspace BPE, 300 tokens, no BOS)."""
    return build_tiny_other_model(tmp_path_factory.mktemp("tiny-other"))


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A folder of small .txt documents (a local corpus)."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        body = " ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 4))
        (folder / f"doc{i:02d}.txt").write_text(body)
    return folder


@pytest.fixture(scope="session")
def long_corpus(tmp_path_factory) -> Path:
    """Eight documents of 3-10 sentences: several windows each."""
    folder = tmp_path_factory.mktemp("long-corpus")
    for i in range(8):
        (folder / f"doc{i}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(3 + i)))
    return folder


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where torch sees no CUDA device (they run with `pytest -m gpu` on one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
