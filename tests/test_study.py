"""Studies: the TOML file, its validation, and the stage engine (keys, skip, stale, resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TEXTS

from saeatlas.cli import main
from saeatlas.study.config import StudyError, default_study_text, load_study, parse_study
from saeatlas.study.stages import Stage, run_stage

MINIMAL = 'name = "t"\n[[models]]\nlabel = "a"\nspec = "m"\nlayers = ["resid_post.1"]\n'


def test_the_built_in_study_is_the_demo():
    study = load_study(None)
    assert [(m.label, m.spec) for m in study.models] == [("gemma", "gemma-3-270m"), ("smol", "smollm2-135m")]
    assert study.compare.a == "gemma" and study.compare.permutations == 1000 and "skyline" in study.compare.controls
    assert study.absorption.k_values == [16, 32, 64] and study.absorption.hook == "resid_post.3"
    assert parse_study(default_study_text()) == study


@pytest.mark.parametrize(
    "extra, message",
    [
        ("foo = 1\n", "unknown key 'foo': allowed keys in the top level are name, models"),
        ("[data]\ntokenz = 5\n", "unknown key 'data.tokenz': allowed keys in [data] are corpus, tokens"),
        ('[sae]\nk = "32"\n', "bad 'sae.k' = '32': expected int"),
        ('[sae]\narch = "dense"\n', "bad 'sae.arch' = 'dense': use one of relu, topk"),
        ("[data]\ntokens = 10\n", "bad 'data.tokens' = 10: use at least 1000"),
        ('[compare]\na = "a"\nb = "z"\n', "bad 'compare.b' = 'z': use a model label: a"),
        ('[compare]\na = "a"\nb = "a"\nmethod = "best"\n', "bad 'compare.method' = 'best': use one of many_to_one"),
        ('[compare]\na = "a"\nb = "a"\ncontrols = ["noise"]\n', "bad 'compare.controls' = 'noise'"),
        ('[absorption]\nmodel = "a"\nhook = "resid_post.1"\nvariant = "x"\n', "bad 'absorption.variant' = 'x'"),
        ('[absorption]\nmodel = "a"\nhook = "resid_post.1"\nk_values = []\n', "bad 'absorption.k_values' = []"),
    ],
)
def test_validation_names_the_key_the_value_and_what_is_allowed(extra, message):
    text = MINIMAL.replace('name = "t"\n', 'name = "t"\n' + extra) if not extra.startswith("[") else MINIMAL + extra
    with pytest.raises(StudyError, match=None) as info:
        parse_study(text)
    assert message in str(info.value)


def test_broken_toml_and_missing_file_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    assert main(["run", str(bad)]) == 2
    assert main(["status", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not valid TOML" in err[0] and "saeatlas init" in err[1]


def test_init_writes_the_built_in_study_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "study.toml"
    assert main(["init", str(path)]) == 0
    assert path.read_text() == default_study_text()
    assert main(["init", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------- the stage engine
def _counting_stage(tmp_path: Path, name: str, settings: dict, calls: list, inputs=(), fail_once: list | None = None):
    def action(stage: Stage) -> dict:
        calls.append(name)
        stage.folder.mkdir(exist_ok=True)
        (stage.folder / "progress").write_text("x" * len(calls))
        if fail_once:
            fail_once.pop()
            raise KeyboardInterrupt  # killed half-way
        return {"made": name, "settings": settings}

    return Stage(name, tmp_path / name, settings, action, list(inputs))


def test_stages_skip_when_done_rerun_when_settings_or_inputs_change(tmp_path):
    calls = []
    up = _counting_stage(tmp_path, "up", {"x": 1}, calls)
    down = _counting_stage(tmp_path, "down", {"y": 1}, calls, [up])
    for stage in (up, down):
        summary, state, _ = run_stage(stage)
        assert state == "ran" and summary["made"] == stage.name
    assert calls == ["up", "down"] and up.state() == down.state() == "done"
    again = [run_stage(s)[1] for s in (up, down)]
    assert again == ["done", "done"] and calls == ["up", "down"]
    # a changed setting upstream changes both keys: both stale, both made again
    up2 = _counting_stage(tmp_path, "up", {"x": 2}, calls)
    down2 = _counting_stage(tmp_path, "down", {"y": 1}, calls, [up2])
    assert up2.key != up.key and down2.key != down.key and down2.state() == "stale"
    assert [run_stage(s)[1] for s in (up2, down2)] == ["ran", "ran"]
    assert calls == ["up", "down", "up", "down"]
    # a change downstream only reruns downstream
    down3 = _counting_stage(tmp_path, "down", {"y": 2}, calls, [up2])
    assert [run_stage(s)[1] for s in (up2, down3)] == ["done", "ran"] and calls[-1] == "down"


def test_an_interrupted_stage_resumes_and_a_stale_product_is_deleted(tmp_path):
    calls = []
    stage = _counting_stage(tmp_path, "s", {"x": 1}, calls, fail_once=[True])
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage)
    assert stage.state() == "partial" and (stage.folder / "progress").exists()
    _, state, _ = run_stage(stage)  # same key: resumes in the same folder (the product is kept)
    assert state == "ran" and (stage.folder / "progress").read_text() == "xx"
    changed = _counting_stage(tmp_path, "s", {"x": 9}, calls)
    (changed.folder / "leftover").write_text("old")
    run_stage(changed)
    assert not (changed.folder / "leftover").exists()  # stale product deleted before making it again


# ---------------------------------------------------------------- a whole study on tiny models
@pytest.fixture(scope="module")
def study_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study-corpus")
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(2 + i % 5)))
    return folder


def tiny_study_text(model_a: Path, model_b: Path, corpus: Path, threshold: float = 0.0) -> str:
    return f"""
name = "tiny"
[data]
corpus = "{corpus}"
tokens = 3000
window_chars = 60
context = 32
heldout_tokens = 600
[[models]]
label = "a"
spec = "{model_a}"
layers = ["resid_post.1", "resid_post.2"]
[[models]]
label = "b"
spec = "{model_b}"
layers = ["resid_post.1"]
[sae]
k = 4
width = 48
steps = 40
batch_size = 64
ce_tokens = 128
[compare]
a = "a"
b = "b"
threshold = {threshold}
permutations = 30
bootstrap = 3
controls = ["random_init", "neurons", "shifted", "skyline"]
pair_cards = 2
[absorption]
model = "a"
hook = "resid_post.1"
k_values = [2, 4]
words = 150
min_probe_f1 = 0.0
min_letters = 3
"""


def _states(summary: dict) -> dict[str, str]:
    return {t["name"]: t["state"] for t in summary["stages"]}


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end_then_reruns_nothing_then_only_what_a_change_touches(
    tiny_llama, tiny_other, study_corpus, tmp_path, monkeypatch, capsys
):
    import json

    from saeatlas.study.run import run_study

    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    study_file = tmp_path / "study.toml"
    study_file.write_text(tiny_study_text(tiny_llama, tiny_other, study_corpus))
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report" in printed and str(out / "report.html") in printed
    results = json.loads((out / "results.json").read_text())
    assert results["version"] == 1 and results["kind"] == "study" and not results["legacy"]
    names = [t["name"] for t in results["stages"]]
    assert names[:4] == ["extract a", "extract a held-out", "extract b", "extract b held-out"]
    assert {"compare", "concepts", "pair cards", "absorption", "evaluate a SAEs"} <= set(names)
    assert all(t["state"] == "ran" for t in results["stages"])
    roles = sorted((s["label"], s["hook"], s["role"], s["k"]) for s in results["saes"])
    assert ("a", "resid_post.1", "skyline", 4) in roles and ("a", "resid_post.1", "sparsity sweep", 2) in roles
    evaluated = [s for s in results["saes"] if s["role"] == "main"]
    assert len(evaluated) == 3 and all(s["metrics"]["l0"] > 0 and s["downstream"] is not None for s in evaluated)
    others = [s for s in results["saes"] if s["role"] != "main"]  # held-out metrics, not spliced into the model
    assert others and all(s["metrics"]["l0"] > 0 and s["downstream"] is None for s in others)
    assert [(p["layer_a"], p["layer_b"]) for p in results["compare"]["pairs"]] == [
        ("resid_post.1", "resid_post.1"),
        ("resid_post.2", "resid_post.1"),
    ]
    assert len(results["pair_cards"]) == 4 and results["pair_cards"][0]["a"]
    assert [s["k"] for s in results["absorption"]["saes"]] == [2, 4]
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (out / "run.log").read_text().count("finished in") == len(names) + 1  # and the report itself

    # nothing changed: every stage is skipped
    again = run_study(load_study(study_file), out)
    assert set(_states(again).values()) == {"done"}

    # a copied study with one comparison setting changed: only the comparison stages and the report run
    changed = tmp_path / "changed.toml"
    changed.write_text(tiny_study_text(tiny_llama, tiny_other, study_corpus, threshold=0.05))
    assert main(["status", str(changed), "--out", str(out)]) == 0
    status = capsys.readouterr().out
    assert "stale" in status and "extract a" in status
    third = run_study(load_study(changed), out)
    ran = sorted(name for name, state in _states(third).items() if state == "ran")
    assert ran == ["compare", "concepts", "pair cards", "report"]


def test_pair_cards_show_each_latent_once():
    """Many-to-one matching pairs one A latent with several B latents: the cards take its strongest pair."""
    from saeatlas.study.cards import strongest_pairs

    comparison = {
        "pairs": {"idx_a": [7, 7, 3, 7, 5, 3], "idx_b": [0, 1, 2, 3, 4, 5], "corr": [0.9, 0.8, 0.7, 0.95, 0.2, 0.6]}
    }
    assert strongest_pairs(comparison, 3) == [(7, 3, 0.95), (3, 2, 0.7), (5, 4, 0.2)]
    assert strongest_pairs(comparison, 1) == [(7, 3, 0.95)]
    assert strongest_pairs({"pairs": {}}, 4) == []


def test_a_new_code_version_of_a_stage_changes_its_key(tmp_path):
    def stage(**kw):
        return Stage("compare", tmp_path / "compare", {"threshold": 0.1}, lambda s: {}, **kw)

    assert stage().key == stage(version=1).key != stage(version=2).key
