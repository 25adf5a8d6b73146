"""Studies: the TOML file, its validation, and the stage engine (keys, skip, stale, resume)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import TEXTS

from saeatlas.cli import main
from saeatlas.study.config import StudyError, default_study_text, load_study, parse_study
from saeatlas.study.stages import Stage, run_stage

MINIMAL = 'name = "t"\n[[models]]\nlabel = "a"\nmodel = "m"\nhooks = ["resid_post.1"]\n'


def test_the_built_in_study_is_the_demo():
    study = load_study(None)
    assert [(m.label, m.model) for m in study.models] == [("gemma", "gemma-3-270m"), ("smol", "smollm2-135m")]
    assert study.compare.label_a == "gemma" and study.compare.n_permutations == 1000
    assert "skyline" in study.compare.controls and study.compare.concepts == ["builtin"]
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
        ('[compare]\nlabel_a = "a"\nlabel_b = "z"\n', "bad 'compare.label_b' = 'z': use a model label: a"),
        ('[compare]\nlabel_a = "a"\nlabel_b = "a"\nmethod = "best"\n', "bad 'compare.method' = 'best': use one of"),
        ('[compare]\nlabel_a = "a"\nlabel_b = "a"\ncontrols = ["noise"]\n', "bad 'compare.controls' = 'noise'"),
        ('[compare]\nlabel_a = "a"\nlabel_b = "a"\nsvcca_k = -1\n', "bad 'compare.svcca_k' = -1: use a number of"),
        (
            '[compare]\nlabel_a = "a"\nlabel_b = "a"\nsvcca_k = "all"\n',
            "bad 'compare.svcca_k' = 'all': use a number of directions >= 1, or \"variance\"",
        ),
        ('[compare]\nlabel_a = "a"\nlabel_b = "a"\nthreshold = 5\n', "bad 'compare.threshold' = 5: use a correlation"),
        ('[absorption]\nlabel = "a"\nhook = "resid_post.1"\nvariant = "x"\n', "bad 'absorption.variant' = 'x'"),
        ('[absorption]\nlabel = "a"\nhook = "resid_post.1"\nk_values = []\n', "bad 'absorption.k_values' = []"),
        ('[absorption]\nlabel = "a"\nhook = "resid_post.1"\nwords = 0\n', "bad 'absorption.words' = 0: use at least"),
        ('[absorption]\nlabel = "a"\nhook = "block3"\n', "bad hook point 'block3'"),
        ("[sae]\nsteps = 0\n", "bad 'sae.steps' = 0"),
        ("[sae]\nk = 8000\n", "bad 'sae.k' = 8000: use an integer from 1 to d_sae (4096)"),
        ("[sae]\nd_in = 8\n", "unknown key 'sae.d_in'"),
        ("[sae]\nce_tokens = -1\n", "bad 'sae.ce_tokens' = -1"),
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
    def action(stage: Stage, progress: bool) -> dict:
        calls.append(name)
        stage.folder.mkdir(exist_ok=True)
        (stage.folder / "progress").write_text("x" * len(calls))
        if fail_once:
            fail_once.pop()
            raise KeyboardInterrupt  # killed half-way
        return {"made": name, "settings": settings}

    return Stage("compare", name, tmp_path / name, settings, action, list(inputs), root=tmp_path)


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
    # a product deleted by hand is made again: its record alone is not "done"
    shutil.rmtree(down3.folder)
    assert down3.state() == "stale" and run_stage(down3)[1] == "ran" and down3.folder.is_dir()
    assert run_stage(down3, inputs_remade=True)[1] == "ran" and run_stage(down3)[1] == "done"  # an input remade


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
model = "{model_a}"
hooks = ["resid_post.1", "blocks.2.hook_resid_post"]
[[models]]
label = "b"
model = "{model_b}"
hooks = [1]
[sae]
k = 4
d_sae = 48
steps = 40
batch_size = 64
ce_tokens = 128
[compare]
label_a = "a"
label_b = "b"
threshold = {threshold}
n_permutations = 30
n_bootstrap = 3
controls = ["random_init", "neurons", "shifted", "skyline"]
pair_cards = 2
[absorption]
label = "a"
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
    assert results["version"] == 4 and results["kind"] == "study" and not results["legacy"]
    names = [t["name"] for t in results["stages"]]
    assert names[:4] == ["extract a", "extract a held-out", "extract b", "extract b held-out"]
    assert {"compare", "concepts", "pair cards", "absorption", "evaluate a SAEs"} <= set(names)
    assert all(t["state"] == "ran" for t in results["stages"])
    roles = sorted((s["label"], s["hook"], s["role"], s["k"]) for s in results["saes"])
    assert ("a", "resid_post.1", "skyline", 4) in roles and ("a", "resid_post.1", "sparsity sweep", 2) in roles
    evaluated = [s for s in results["saes"] if s["role"] == "main"]
    assert len(evaluated) == 3 and all(s["metrics"]["l0"] > 0 and s["downstream"] is not None for s in evaluated)
    # both models (different tokenizers) are spliced on the same held-out documents, each figure with its SE
    downstream = [s["downstream"] for s in evaluated]
    assert len({tuple(d["documents"]) for d in downstream}) == 1 and downstream[0]["n_documents"] >= 2
    assert all(d["ce_loss_recovered_se"] is not None and d["ce_clean_se"] > 0 for d in downstream)
    others = [s for s in results["saes"] if s["role"] != "main"]  # held-out metrics, not spliced into the model
    assert others and all(s["metrics"]["l0"] > 0 and s["downstream"] is None for s in others)
    assert [(p["hook_a"], p["hook_b"]) for p in results["compare"]["pairs"]] == [
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

    # the comparison's folder deleted by hand: it is made again under the same key, and so are the stages that
    # read it (pair cards, report), though their keys hold
    shutil.rmtree(out / "compare")
    fourth = run_study(load_study(changed), out)
    ran = sorted(name for name, state in _states(fourth).items() if state == "ran")
    assert ran == ["compare", "pair cards", "report"] and (out / "compare" / "results.json").is_file()


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
        return Stage("compare", "compare", tmp_path / "compare", {"threshold": 0.1}, lambda s, p: {}, **kw)

    assert stage().key == stage(version=1).key != stage(version=2).key


OLD_STYLE = """
name = "old"
[[models]]
label = "a"
spec = "m"
layers = ["resid_post.1"]
[[models]]
label = "b"
spec = "n"
layers = ["3"]
[sae]
width = 64
[compare]
a = "a"
b = "b"
permutations = 20
bootstrap = 0
svcca_k = 0
concepts = "none"
[absorption]
model = "a"
hook = "resid_post.1"
"""

NEW_STYLE = """
name = "old"
[[models]]
label = "a"
model = "m"
hooks = ["resid_post.1"]
[[models]]
label = "b"
model = "n"
hooks = ["blocks.3.hook_resid_post"]
[sae]
d_sae = 64
[compare]
label_a = "a"
label_b = "b"
n_permutations = 20
n_bootstrap = 0
svcca_k = "variance"
concepts = []
[absorption]
label = "a"
hook = "resid_post.1"
"""


def test_a_0_1_study_file_still_reads_with_a_warning_per_renamed_key(caplog):
    with caplog.at_level("WARNING", logger="saeatlas"):
        old = parse_study(OLD_STYLE)
    assert old == parse_study(NEW_STYLE)
    warned = " ".join(r.getMessage() for r in caplog.records)
    for line in (
        "'models[0].spec' is now 'models[0].model'",
        "'sae.width' is now 'sae.d_sae'",
        "'compare.a' is now 'compare.label_a'",
        "'compare.svcca_k = 0' is now written 'variance'",
        "'absorption.model' is now 'absorption.label'",
    ):
        assert line in warned


def test_the_study_file_and_the_cli_allow_the_same_values():
    study = parse_study(NEW_STYLE.replace('hook = "resid_post.1"', 'hook = "resid_post.1"\nwords = "all"'))
    assert study.absorption.words == "all" and study.absorption.n_words is None
    assert study.compare.svcca_k == "variance" and study.compare.concepts == [] and study.compare.controls


# The 0.1 keys of the built-in study's stages (planned into `runs/study`): products whose content this
# release does not change keep them, so a study made by 0.1 is not made again.  compare, concepts and pair
# cards name hooks `hook_a` now (a new code version: new keys); the report changed with them.  The evaluate
# stages splice on windows spread over every held-out document, with standard errors (version 2: new keys).
# absorption has code version 2 (absorption.json version 2: SAEBench's num_split_features, a warning for few
# letters).
KEYS_0_1 = {
    "extract gemma": "7f5fab6a9db55b08",
    "extract gemma held-out": "b7cfdf8aa0996fd2",
    "extract smol": "1cb40849e28e33d3",
    "extract smol held-out": "e20fd8daa1ba9a7a",
    "train gemma resid_post.3 seed 0 k 32": "8db3d45737f06bd3",
    "train gemma resid_post.8 seed 0 k 32": "bc865830580be353",
    "train smol resid_post.5 seed 0 k 32": "56dfec0de6ed3600",
    "train smol resid_post.14 seed 0 k 32": "07f4a20340d9c16d",
    "train gemma resid_post.3 seed 1 k 32": "9b348ed20998f6b8",
    "train gemma resid_post.8 seed 1 k 32": "e5b1d06616db3385",
    "train gemma resid_post.3 seed 0 k 16": "5c985ec2211cf5f4",
    "train gemma resid_post.3 seed 0 k 64": "4597e5b8bc1ab08a",
}
REMADE_KEYS_0_1 = {
    "evaluate gemma SAEs": "a73b5dbfd22ae7a4",
    "evaluate smol SAEs": "51e506905af9740a",
    "absorption": "40b28651611762cb",
}
"""0.1 keys of stages whose content changed since: they must not be kept."""


def test_the_built_in_study_keeps_the_stage_keys_of_0_1():
    from saeatlas.study.plan import plan

    stages = {s.name: s for s in plan(load_study(None), Path("runs/study"))}
    assert {name: stages[name].key for name in KEYS_0_1} == KEYS_0_1
    assert {s.name for s in stages.values()} == set(KEYS_0_1) | set(REMADE_KEYS_0_1) | {
        "compare",
        "concepts",
        "pair cards",
    }
    assert all(stages[name].key != key for name, key in REMADE_KEYS_0_1.items())
    # typed stage records: label, hook and role, without parsing names
    sweep = stages["train gemma resid_post.3 seed 0 k 64"]
    assert (sweep.kind, sweep.label, sweep.hook, sweep.role) == ("train", "gemma", "resid_post.3", "sparsity sweep")
    assert stages["train gemma resid_post.8 seed 1 k 32"].role == "skyline"
    assert stages["extract smol held-out"].role == "heldout"


def test_a_setting_added_after_0_1_enters_a_key_only_when_it_is_used():
    from saeatlas.study.plan import plan

    def key(text: str) -> str:
        return next(s.key for s in plan(parse_study(text), Path("out")) if s.name.startswith("train"))

    base = NEW_STYLE.replace("d_sae = 64", "d_sae = 64\nsteps = 10")
    assert key(base) == key(base.replace("steps = 10", "steps = 10\nwarmup_steps = 100"))  # the default
    assert key(base) != key(base.replace("steps = 10", "steps = 10\nwarmup_steps = 50"))
