"""The command line as a whole: flags derived from the configs (one name per setting, the configs' defaults),
hidden 0.1 aliases, errors that name what the user typed, --quiet everywhere, a quick `import saeatlas`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from saeatlas.absorption.config import AbsorptionConfig
from saeatlas.cli import VERBS, main
from saeatlas.compare.config import CompareConfig, ConceptsConfig
from saeatlas.config import ConfigError, build_flat, flat_defaults, flat_fields
from saeatlas.data.config import ExtractConfig
from saeatlas.flags import flag
from saeatlas.sae.config import EvalConfig, SAEConfig, TrainConfig

VERB_CONFIGS = {
    "extract": ExtractConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "compare": CompareConfig,
    "concepts": ConceptsConfig,
    "absorption": AbsorptionConfig,
}
OWN_FLAG = {("absorption", "saes"): "--sae"}


def _help(verb: str, capsys) -> str:
    assert main([verb, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_takes_quiet(verb, capsys):
    assert "--quiet" in _help(verb, capsys)


@pytest.mark.parametrize("verb", list(VERB_CONFIGS))
def test_every_setting_of_a_verbs_config_is_a_flag_named_after_it(verb, capsys):
    text = _help(verb, capsys)
    for name, (_, field, _) in flat_fields(VERB_CONFIGS[verb]).items():
        if field.metadata.get("setting") is False or name == "extra":
            continue
        assert OWN_FLAG.get((verb, name), flag(name)) in text, (verb, name)


def test_flags_not_given_keep_the_config_defaults():
    """The CLI passes only what was typed; the defaults are the dataclasses' (one source)."""
    assert build_flat(TrainConfig, {}) == TrainConfig()
    assert flat_defaults(TrainConfig)["steps"] == 2000 and flat_defaults(TrainConfig)["d_sae"] == 4096
    assert flat_defaults(CompareConfig)["n_permutations"] == 1000


def test_old_flags_still_work_but_are_hidden(capsys):
    flags = set(re.findall(r"--[\w-]+", _help("compare", capsys)))
    assert {"--hooks-a", "--saes-a", "--n-permutations", "--n-bootstrap", "--skyline-saes-a"} <= flags
    assert not {"--layers-a", "--sae-a", "--permutations", "--bootstrap", "--skyline-sae-a", "--a"} & flags
    flags = set(re.findall(r"--[\w-]+", _help("train", capsys)))
    assert "--d-sae" in flags and "--width" not in flags and "--compute-dtype" in flags and "--dtype" not in flags
    # an old flag fills the same setting: the error names it as typed
    assert main(["train", "--activations", "x.npy", "--width", "0", "--out", "o"]) == 2
    assert capsys.readouterr().err.strip() == "saeatlas: error: bad --width = 0: use an integer from 1 to 16777216"
    assert main(["train", "--activations", "x.npy", "--d-sae", "0", "--out", "o"]) == 2
    assert capsys.readouterr().err.strip().startswith("saeatlas: error: bad --d-sae = 0")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "o", "--k", "x"], "saeatlas train: error: argument --k: invalid int value: 'x'"),
        (["train", "--out", "o", "--nonsense"], "saeatlas train: error: unrecognized arguments: --nonsense"),
        (["compare", "--out", "o"], "saeatlas compare: error: the following arguments are required: --store-a"),
        (["extract", "--model", "m", "--hooks", "", "--out", "o"], "bad --hooks = []"),
        (["extract", "--model", "m", "--hooks", "3", "--tokens", "-5", "--out", "o"], "bad --tokens = -5"),
        (["eval", "sae", "--tokens", "0"], "bad --tokens = 0"),
        (["eval", "sae", "--ce-tokens", "-1"], "bad --ce-tokens = -1"),
        (["train", "--activations", "x.npy", "--checkpoint-every", "-5", "--out", "o"], "bad --checkpoint-every = -5"),
        (["train", "--activations", "x.npy", "--lr", "nan", "--out", "o"], "bad --lr = nan"),
        (["train", "--activations", "x.npy", "--steps", "100000000000", "--out", "o"], "bad --steps = 100000000000"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_the_python_api_names_the_field_not_a_flag():
    with pytest.raises(ConfigError, match=r"^bad k = 0: use an integer from 1 to d_sae \(4096\)$"):
        SAEConfig(k=0)
    with pytest.raises(ConfigError, match=r"^bad n_permutations = 0"):
        CompareConfig(store_a="a", store_b="b", saes_a="x", saes_b="y", hooks_a=["3"], hooks_b=["4"], n_permutations=0)
    cfg = CompareConfig(
        store_a="a",
        store_b="b",
        saes_a="x",
        saes_b="y",
        hooks_a=[3, "blocks.4.hook_resid_pre"],
        hooks_b=["model.layers.2"],
    )
    assert (cfg.hooks_a, cfg.hooks_b) == (["resid_post.3", "resid_pre.4"], ["resid_post.2"])


def test_a_bad_input_shows_no_progress_bar_first(tmp_path, capsys):
    """Inputs are checked before a bar opens: without --quiet, a bad input is still one line."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32))
    assert (
        main(
            ["train", "--activations", str(tmp_path / "x.npy"), "--batch-size", "4096", "--out", str(tmp_path / "sae")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than one batch" in err[0]


def test_import_saeatlas_is_quick_and_exposes_the_jobs():
    code = (
        "import sys, saeatlas; assert 'torch' not in sys.modules; "
        "names = ['run_extract', 'run_train', 'write_sae', 'run_eval', 'run_compare', 'write_compare', "
        "'run_concepts', 'write_concepts', 'run_absorption', 'write_absorption', 'run_study', 'load_study', "
        "'ExtractConfig', 'TrainConfig', 'SAEConfig', 'CompareConfig', 'AbsorptionConfig']; "
        "missing = [n for n in names if not callable(getattr(saeatlas, n))]; assert not missing, missing"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_saeatlas_makes_openmp_wait_passively_unless_told(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, saeatlas; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == expected


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    """A file where a folder goes, a path under a file: one line, exit 2, before the inputs are even read."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    cases = [
        ["train", "--activations", "missing.npy", "--out", str(afile / "sae")],
        ["compare", "--store-a", "x", "--store-b", "y", "--saes-a", "a/{hook}", "--saes-b", "b"]
        + ["--hooks-a", "1", "--hooks-b", "1", "--out", str(afile)],
        ["extract", "--model", "m", "--corpus", "c", "--hooks", "1", "--out", str(afile)],
        ["init", str(afile / "s.toml")],
        ["report", str(afile)],
    ]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "afile" in err[0] and ("is a file" in err[0] or "which is a file" in err[0]), err
    assert afile.read_text() == "mine"
