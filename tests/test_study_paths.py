"""A study writes only inside its output folder: safe labels, a checked `out`, no colliding products, and a
stale-product cleanup that deletes only what the study made (issue 15, items 1-4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saeatlas.cli import main
from saeatlas.study.config import StudyError, parse_study
from saeatlas.study.paths import StudyPathError, check_out
from saeatlas.study.plan import plan
from saeatlas.study.stages import Stage, run_stage


def _study(labels=("a", "b"), out="runs/study", extra="") -> str:
    models = "".join(f'[[models]]\nlabel = "{label}"\nmodel = "m"\nhooks = ["resid_post.1"]\n' for label in labels)
    return f'name = "t"\nout = "{out}"\n{models}{extra}'


@pytest.mark.parametrize("out", ["../../..", "..", ".", "a/../../.."])
def test_a_relative_out_that_climbs_out_of_the_current_folder_is_refused(tmp_path, out):
    cwd = tmp_path / "x" / "y"
    cwd.mkdir(parents=True)
    with pytest.raises(StudyPathError, match="current folder"):
        check_out(out, cwd)


@pytest.mark.parametrize("out", ["/", "/usr/local/study", "/etc/x", "/tmp", "~"])
def test_the_root_system_folders_and_home_are_refused(tmp_path, out):
    with pytest.raises(StudyPathError, match="system or top-level folder"):
        check_out(out, tmp_path)


def test_an_existing_out_must_hold_only_a_study(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(StudyPathError, match=r"not a saeatlas study \(thesis.tex\)"):
        check_out("mine", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyPathError, match="is a file"):
        check_out("file", tmp_path)
    study = tmp_path / "runs" / "s"
    for name in ("stores", "saes", "compare"):
        (study / name).mkdir(parents=True)
    for name in ("compare.stage.json", "study.toml", "run.log", ".results.json.tmp-12"):
        (study / name).write_text("{}")
    assert check_out("runs/s", tmp_path) == study.resolve()
    assert check_out(str(tmp_path / "new" / "study"), tmp_path) == (tmp_path / "new" / "study").resolve()


def test_run_with_out_at_the_root_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.toml"
    study.write_text(_study(out="/"))
    before = set(os.listdir("/"))
    assert main(["run", str(study)]) == 2
    assert set(os.listdir("/")) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "system or top-level folder" in err[0]
    assert main(["run", str(study), "--out", "../.."]) == 2
    assert "outside the current folder" in capsys.readouterr().err


@pytest.mark.parametrize("label", ["../../../x", "", "a/b", ".hidden", "a b", "x" * 65, "..", "c:d"])
def test_a_label_that_is_not_a_plain_folder_name_is_refused(label):
    with pytest.raises(StudyError, match=r"bad 'models\[0\].label' = .*use 1-64 letters, digits"):
        parse_study(_study(labels=(label, "b")))


def test_labels_equal_but_for_case_are_refused():
    with pytest.raises(StudyError, match="give each model its own label"):
        parse_study(_study(labels=("Gemma", "gemma")))


@pytest.mark.parametrize(
    "labels, extra, clash",
    [
        (("ll", "ll-heldout"), "", "'extract ll held-out' and 'extract ll-heldout'"),
        (("a", "a-seed1"), '[compare]\nlabel_a = "a"\nlabel_b = "a-seed1"\ncontrols = ["skyline"]\n', "a-seed1"),
        (("a", "a-k16"), '[absorption]\nlabel = "a"\nhook = "resid_post.1"\nk_values = [16]\n', "a-k16"),
    ],
)
def test_labels_whose_products_collide_are_refused_before_anything_is_written(tmp_path, labels, extra, clash):
    study = parse_study(_study(labels=labels, extra=extra))
    with pytest.raises(StudyPathError, match="would both write") as info:
        plan(study, tmp_path / "out")
    assert clash in str(info.value) and not (tmp_path / "out").exists()


def _stage(folder: Path, root: Path | None, settings: dict, records: Path | None = None) -> Stage:
    def action(stage: Stage, progress: bool) -> dict:
        stage.folder.mkdir(parents=True, exist_ok=True)
        (stage.folder / "made").write_text(str(settings))
        return {}

    return Stage("compare", "s", folder, settings, action, root=root, records=records)


def test_the_stale_cleanup_deletes_only_a_recorded_product_inside_out(tmp_path):
    out = tmp_path / "out"
    run_stage(_stage(out / "compare", out, {"x": 1}))
    run_stage(_stage(out / "compare", out, {"x": 2}))  # stale: made again, the old product deleted
    assert (out / "compare" / "made").read_text() == "{'x': 2}"

    # a product outside the study's folder (a pretrained SAE, or a path that escaped) is never deleted
    theirs = tmp_path / "users-sae"
    run_stage(_stage(theirs, None, {"x": 1}, records=out / "pretrained" / "a"))
    (theirs / "weights.safetensors").write_text("irreplaceable")
    run_stage(_stage(theirs, None, {"x": 2}, records=out / "pretrained" / "a"))
    assert (theirs / "weights.safetensors").read_text() == "irreplaceable"
    assert not (tmp_path / "users-sae.stage.json").exists()  # records live in the study's folder
    escaped = tmp_path / "elsewhere"
    run_stage(_stage(escaped, out, {"x": 1}))
    (escaped / "keep").write_text("k")
    run_stage(_stage(escaped, out, {"x": 2}))
    assert (escaped / "keep").exists()


def test_a_stale_product_with_an_unreadable_record_is_not_deleted(tmp_path):
    out = tmp_path / "out"
    stage = _stage(out / "stores", out, {"x": 1})
    run_stage(stage)
    (out / "stores" / "other-model").mkdir()
    stage.done_file.write_text('{"key": 7}')  # a damaged record: no key to trust
    run_stage(_stage(out / "stores", out, {"x": 2}))
    assert (out / "stores" / "other-model").is_dir()


@pytest.mark.parametrize(
    "change, message",
    [
        (("hooks = [1]", "hooks = [1, 9]"), "models[0].hooks (a, "),
        (('corpus = "CORPUS"', 'corpus = "CORPUS-missing"'), "data.corpus: "),
        (("pair_cards = 0", 'pair_cards = 0\nconcepts = ["missing.toml"]'), "compare.concepts: "),
        (('hook = "resid_post.1"', 'hook = "resid_post.7"'), "absorption.hook (a, "),
        (('model = "MODEL"', 'model = "MODEL-missing"'), "models[0].model (a): "),
    ],
)
def test_run_and_status_check_the_whole_study_before_the_first_stage(
    tiny_llama, text_corpus, tmp_path, capsys, change, message
):
    text = """name = "t"
[data]
corpus = "CORPUS"
[[models]]
label = "a"
model = "MODEL"
hooks = [1]
[compare]
label_a = "a"
label_b = "a"
pair_cards = 0
[absorption]
label = "a"
hook = "resid_post.1"
"""
    study = tmp_path / "s.toml"
    study.write_text(text.replace(*change).replace("CORPUS", str(text_corpus)).replace("MODEL", str(tiny_llama)))
    for verb in ("status", "run"):
        assert main([verb, str(study), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
