"""Every file saeatlas reads is checked against its schema: a damaged one is one line naming file and field.

Each test takes a valid file, breaks it (wrong type, value out of range, missing key, cut bytes, not UTF-8)
and checks the one-line SaeAtlasError; `schema.mutations` makes the broken copies from the schemas, so a field
added to a schema is tested too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HOOK, tiny_store

from saeatlas.errors import SaeAtlasError, StoreError
from saeatlas.schema import (
    SCHEMAS,
    ManifestShard,
    checked,
    checked_results,
    mutations,
    read_safetensors_header,
    schema_problem,
)


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# ---------------------------------------------------------------- the checker itself
def test_messages_name_the_field_the_value_and_what_was_expected():
    schema = SCHEMAS["store manifest"]
    doc = {"shards": [{"n_tokens": "abc"}]}
    with pytest.raises(SaeAtlasError) as err:
        checked(doc, schema, "m.json", "extract again")
    assert one_line(err).startswith("m.json: missing key 'format'") and one_line(err).endswith("; extract again")
    shard = {"index": 0, "n_windows": 1, "n_tokens": "abc", "n_tokens_usable": 0, "last_doc_id": 0, "files": {}}
    assert schema_problem(shard, ManifestShard) == ("field 'n_tokens' = 'abc': expected an integer")
    assert schema_problem({"key": "abc", "name": "x"}, SCHEMAS["started record"]) == (
        "field 'key' = 'abc': expected 16 hex digits (a stage key)"
    )
    assert schema_problem([1], SCHEMAS["concepts file"]) == "the whole file = [1]: expected a table (JSON object)"
    assert schema_problem({"d_in": 16, "d_sae": 8, "k": 9}, SCHEMAS["SAELens cfg.json"]) == (
        "field 'k' = 9: expected at most d_sae (8)"
    )
    assert schema_problem({"d_in": True, "d_sae": 8}, SCHEMAS["SAELens cfg.json"]) == (
        "field 'd_in' = True: expected an integer"
    )
    long = schema_problem({"d_in": "x" * 100, "d_sae": 8}, SCHEMAS["SAELens cfg.json"])
    assert long.startswith("field 'd_in' = 'xxxx") and "..." in long and len(long) < 90


VALID = {
    "SAELens cfg.json": {
        "d_in": 16,
        "d_sae": 48,
        "k": 4,
        "architecture": "topk",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.1.hook_resid_post"},
        "saeatlas": {"sae": {"arch": "topk", "d_in": 16, "d_sae": 48, "k": 4}},
        "dtype": "float32",
    },
    "sparsify cfg.json": {"k": 4, "d_in": 16, "num_latents": 48, "expansion_factor": 3, "multi_topk": False},
    "dictionary_learning config.json": {"trainer": {"k": 4, "activation_dim": 16, "dict_size": 48}},
    "safetensors header": {"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}},
    "model config.json": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 4, "vocab_size": 400},
    "stage record": {
        "key": "0123456789abcdef",
        "name": "train a",
        "settings": {},
        "inputs": ["fedcba9876543210"],
        "summary": {"x": 1},
        "seconds": 1.5,
    },
    "started record": {"key": "0123456789abcdef", "name": "train a"},
    "compare results": {
        "version": 4,
        "kind": "compare",
        "config": {"measures": ["svcca"], "method": "mutual", "store_a": "a", "store_b": "b", "saes_a": "x"}
        | {"saes_b": "y"},
        "hooks_a": ["resid_post.1"],
        "hooks_b": ["resid_post.1"],
        "pairs": [{}],
        "skyline": [],
    },
    "concepts results": {
        "version": 4,
        "kind": "concepts",
        "config": {"measures": ["svcca"]},
        "concepts": {"Time": ["day"]},
        "hooks_a": ["resid_post.1"],
        "hooks_b": ["resid_post.1"],
        "entries": [],
    },
    "absorption results": {
        "version": 2,
        "kind": "absorption",
        "model": "m",
        "hook": "resid_post.1",
        "probes": [],
        "saes": [{"name": "s", "letters": []}],
    },
    "pair cards": [{"hook_a": "h", "hook_b": "h", "idx_a": 1, "idx_b": 2, "corr": 0.5, "a": [], "b": []}],
    "evaluation metrics": {"runs/sae": {"hook": "resid_post.1", "metrics": {"mse": 0.1}}},
    "concepts file": {"Time": ["day", "week"], "Animals": ["fox"]},
}
VALID["study results"] = {
    "version": 4,
    "kind": "study",
    "study": {},
    "models": [],
    "saes": [],
    "compare": VALID["compare results"],
    "concepts": None,
    "absorption": VALID["absorption results"],
    "pair_cards": [],
    "stages": [],
    "seconds": 3.0,
}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_mutation_of_a_valid_file_is_refused_naming_its_field(kind):
    schema = SCHEMAS[kind]
    assert schema_problem(VALID[kind], schema) is None
    seen = 0
    for field, what, broken in mutations(VALID[kind], schema):
        found = schema_problem(broken, schema)
        assert found is not None, (kind, field, what)
        assert f"'{field}" in found, (kind, field, what, found)
        seen += 1
    assert seen >= 2


def test_registry_covers_every_kind_of_file():
    assert set(SCHEMAS) == set(VALID) | {"store manifest"}


# ---------------------------------------------------------------- activation store
@pytest.fixture(scope="module")
def store(tiny_llama, text_corpus, tmp_path_factory) -> Path:
    return tiny_store(tiny_llama, text_corpus, tmp_path_factory.mktemp("schema") / "store", tokens=300)


@pytest.fixture
def copy(store, tmp_path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(store, out)
    return out


def _edit(folder: Path, change) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_manifest_mutations_each_give_one_line_naming_the_field(copy):
    from saeatlas.data.store import ActivationStore

    manifest = json.loads((copy / "manifest.json").read_text())
    n = 0
    for field, what, broken in mutations(manifest, SCHEMAS["store manifest"]):
        (copy / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(StoreError) as err:
            ActivationStore(copy)
        text = one_line(err)
        assert str(copy / "manifest.json") in text, (field, what, text)
        if field not in ("format", "version"):  # those two say "not a store manifest" / "format version"
            assert f"'{field}" in text, (field, what, text)
        n += 1
    assert n > 60


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["shards"][0].update(n_tokens="abc"), "field 'shards[0].n_tokens' = 'abc': expected an integer"),
        (lambda m: m["model"].update(d_model=1 << 30), "field 'model.d_model' = 1073741824: expected an integer <="),
        (lambda m: m.update(dtype="float16"), "field 'dtype' = 'float16': expected 'bfloat16' or 'float32'"),
        (lambda m: m.update(hooks={"a": 1}), "field 'hooks' = {'a': 1}: expected a list"),
        (lambda m: m["model"].pop("d_model"), "missing key 'model.d_model'"),
        (lambda m: m["shards"][0].update(index=3), "field 'shards[0].index' = 3: expected 0"),
        (lambda m: m.update(n_tokens=m["n_tokens"] + 1), "expected the sum of the shards' n_tokens"),
        (lambda m: m["shards"][0]["files"].popitem(), "field 'shards[0].files'"),
    ],
)
def test_bad_manifest_fields(copy, change, message):
    from saeatlas.data.store import ActivationStore

    _edit(copy, change)
    with pytest.raises(StoreError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        ActivationStore(copy)
    assert one_line(err).startswith(str(copy / "manifest.json"))


def test_a_manifest_whose_dtype_was_changed_is_caught_when_a_shard_is_read(copy):
    """The shards' hashes still match (the manifest is not hashed), so without the check `info` read float32
    bits as bf16 pairs: mean norm 199066 instead of 0.1."""
    from saeatlas.data.store import ActivationStore

    assert ActivationStore(copy).dtype == "float32"
    _edit(copy, lambda m: m.update(dtype="bfloat16"))
    store = ActivationStore(copy)
    with pytest.raises(StoreError) as err:
        store.norm_stats(HOOK)
    text = one_line(err)
    assert "field 'dtype' = 'bfloat16'" in text and "uint16" in text and "holds float32" in text
    assert f"{HOOK}/shard-00000.npy" in text


def test_a_shard_of_another_shape_is_caught(copy):
    from saeatlas.data.store import ActivationStore
    from saeatlas.fileio import sha256_file

    rel = f"{HOOK}/shard-00000.npy"
    array = np.load(copy / rel)
    np.save(copy / rel, array[:, :-1])  # and make the manifest agree with the file's hash, as an edit would
    _edit(copy, lambda m: m["shards"][0]["files"].update({rel: sha256_file(copy / rel)}))
    with pytest.raises(StoreError, match=r"holds float32 \[\d+, 31\]"):
        ActivationStore(copy).activations(HOOK, 0)


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    return subprocess.run(
        [sys.executable, "-m", "saeatlas", *args], check=False, capture_output=True, text=True, env=env
    )


def _error_line(run: subprocess.CompletedProcess) -> str:
    """The CLI's one error line (stderr may also hold a progress bar), after checking exit 2, no traceback."""
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("saeatlas: error")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr
    return errors[0]


@pytest.mark.slow
def test_info_on_damaged_manifests_exits_2_with_one_line(copy):
    _edit(copy, lambda m: m.update(dtype="bfloat16"))
    run = _cli("info", str(copy))
    assert "field 'dtype' = 'bfloat16'" in _error_line(run) and "199066" not in run.stdout
    _edit(copy, lambda m: m["shards"][0].update(n_tokens="abc"))
    assert "field 'shards[0].n_tokens' = 'abc': expected an integer" in _error_line(_cli("info", str(copy)))
    (copy / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    assert "not valid JSON" in _error_line(_cli("info", str(copy)))


# ---------------------------------------------------------------- SAE folders
@pytest.fixture
def saelens(tmp_path) -> Path:
    from saeatlas.sae import SAEConfig, SparseAutoencoder
    from saeatlas.sae.formats import save_saelens

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(arch="topk", d_in=16, d_sae=48, k=4))
    return save_saelens(sae, tmp_path / "sae", metadata={"hook_name": "resid_post.1"})


def test_saelens_cfg_mutations_each_give_one_line(saelens):
    from saeatlas.sae.formats import load_sae

    cfg = json.loads((saelens / "cfg.json").read_text())
    n = 0
    for field, what, broken in mutations(cfg, SCHEMAS["SAELens cfg.json"]):
        (saelens / "cfg.json").write_text(json.dumps(broken))
        with pytest.raises(SaeAtlasError) as err:
            load_sae(saelens)
        text = one_line(err)
        assert text.startswith(str(saelens / "cfg.json")) and f"'{field}" in text, (field, what, text)
        n += 1
    assert n > 15


def test_saelens_k_above_d_sae_and_not_utf8(saelens):
    from saeatlas.sae.formats import load_sae

    cfg = json.loads((saelens / "cfg.json").read_text())
    cfg["saeatlas"]["sae"]["k"] = 49
    (saelens / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeAtlasError, match=r"field 'saeatlas.sae.k' = 49: expected at most saeatlas.sae.d_sae \(48\)"):
        load_sae(saelens)
    (saelens / "cfg.json").write_bytes(b'{"d_in": "\xff"}')
    with pytest.raises(SaeAtlasError, match="cfg.json is not valid JSON"):
        load_sae(saelens)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "the file is truncated"),
        (lambda b: b[:5], r"not a safetensors file \(only 5 bytes\)"),
        (lambda b: (20).to_bytes(8, "little") + b"this is not json!!!!" + b[28:], "its header is not JSON"),
        (lambda b: b.replace(b'"F32"', b'"F99"', 1), r"field 'W_\w+\.dtype' = 'F99': expected 'BOOL', "),
        (lambda b: b.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1), r"data_offsets' = \[4, \d+\]: expected"),
    ],
)
def test_damaged_safetensors_give_one_line_naming_the_file(saelens, damage, message):
    from saeatlas.sae.formats import load_sae

    weights = saelens / "sae_weights.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(SaeAtlasError, match=message) as err:
        load_sae(saelens)
    assert one_line(err).startswith(str(weights))


def _sparsify(folder: Path, cfg: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    tensors = {"encoder.weight": torch.randn(48, 16), "encoder.bias": torch.zeros(48)}
    save_file(tensors | {"W_dec": torch.randn(48, 16), "b_dec": torch.zeros(16)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"k": "4"}, "field 'k' = '4': expected an integer"),
        ({"k": 0}, "field 'k' = 0: expected an integer >= 1"),
        ({"k": 49}, r"field 'k' = 49: expected at most d_sae \(48\)"),
        ({"k": 4, "d_in": 17}, r"field 'd_in' = 17: expected 16 \(the weights' size\)"),
        ({"k": 4, "num_latents": 47}, "field 'num_latents' = 47: expected 48"),
        ([4], r"the whole file = \[4\]: expected a table"),
    ],
)
def test_bad_sparsify_cfg(tmp_path, cfg, message):
    from saeatlas.sae.formats import load_sae

    folder = _sparsify(tmp_path / "sp", cfg)
    with pytest.raises(SaeAtlasError, match=message) as err:
        load_sae(folder)
    assert one_line(err).startswith(str(folder / "cfg.json"))


def _dictionary_learning(folder: Path) -> dict:
    folder.mkdir()
    return {
        "encoder.weight": torch.randn(48, 16),
        "encoder.bias": torch.zeros(48),
        "decoder.weight": torch.randn(16, 48),
        "bias": torch.zeros(16),
    }


def test_dictionary_learning_files(tmp_path):
    from saeatlas.sae.formats import load_sae

    folder = tmp_path / "dl"
    state = _dictionary_learning(folder)
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"k": 4, "dict_size": 48}}))
    assert load_sae(folder).cfg.k == 4
    cases = [
        (lambda: (folder / "config.json").write_text('{"trainer": {"k": "4"}}'), "field 'trainer.k' = '4'"),
        (lambda: (folder / "config.json").write_text('{"trainer": {"k": 49}}'), "field 'trainer.k' = 49"),
        (lambda: (folder / "config.json").write_text('{"trainer": {"dict_size": 64}}'), "'trainer.dict_size' = 64"),
        (lambda: (folder / "config.json").write_text('{"trainer": []}'), "field 'trainer' = \\[\\]: expected a table"),
        (lambda: torch.save(torch.zeros(3), folder / "ae.pt"), "holds a Tensor, not a state dict"),
        (lambda: torch.save(state | {"note": "hi"}, folder / "ae.pt"), "entry 'note' is a str: expected a tensor"),
        (lambda: torch.save(state | {"k": torch.tensor(2.5)}, folder / "ae.pt"), "tensor 'k' is torch.float32"),
        (
            lambda: (folder / "ae.pt").write_bytes((folder / "ae.pt").read_bytes()[:200]),
            "is damaged or truncated",
        ),
    ]
    for damage, message in cases:
        torch.save(state, folder / "ae.pt")
        (folder / "config.json").write_text("{}")
        damage()
        with pytest.raises(SaeAtlasError, match=message) as err:
            load_sae(folder)
        assert str(folder) in one_line(err) and "weights_only=False" not in one_line(err)


def test_unsafe_pickle_is_refused_in_one_line_without_torch_advice(tmp_path):
    import pickle

    from saeatlas.sae.formats import load_sae

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "dl"
    state = _dictionary_learning(folder)
    torch.save(state | {"x": Evil()}, folder / "ae.pt", pickle_module=pickle)
    with pytest.raises(SaeAtlasError, match="holds pickled Python objects, not only tensors: refused") as err:
        load_sae(folder)
    text = one_line(err)
    assert "weights_only" not in text and "pwned" not in text and text.startswith(str(folder / "ae.pt"))


# ---------------------------------------------------------------- stage records
@pytest.mark.parametrize(
    "record",
    [
        {"key": 123, "name": "x", "summary": {}, "seconds": 1.0},
        {"key": "not-hex-at-all!!", "name": "x", "summary": {}, "seconds": 1.0},
        {"name": "x", "summary": {}, "seconds": 1.0},
        {"key": "KEY", "name": "x", "summary": "done", "seconds": "1"},
        ["a list"],
        "text",
    ],
)
def test_a_stage_record_with_wrong_fields_reads_as_stale_not_a_crash(tmp_path, record):
    from saeatlas.study.stages import Stage, run_stage

    made = []

    def action(stage, progress):
        stage.folder.mkdir(exist_ok=True)
        made.append(1)
        return {"ok": True}

    stage = Stage("report", "report", tmp_path / "out", {"a": 1}, action)
    stage.folder.mkdir()
    stage.done_file.write_text(json.dumps(record))
    assert stage.record() is None and stage.state() == "stale"
    stage.started_file.write_text(json.dumps({"key": ["x"], "name": 3}))
    assert stage.state() == "stale"
    summary, how, _ = run_stage(stage, progress=False)
    assert (summary, how, made) == ({"ok": True}, "ran", [1])
    assert stage.state() == "done" and stage.record()["key"] == stage.key


def test_a_damaged_stage_record_is_stale_and_a_valid_one_done(tmp_path):
    from saeatlas.study.stages import Stage

    stage = Stage("report", "report", tmp_path / "out", {"a": 1}, lambda s, p: {})
    assert stage.state() == "missing"
    stage.folder.mkdir()
    stage.done_file.write_bytes(b'{"key": "\xff')
    assert stage.state() == "stale"
    good = {"key": stage.key, "name": "report", "summary": {}, "seconds": 0.5}
    stage.done_file.write_text(json.dumps(good))
    assert stage.state() == "done"


# ---------------------------------------------------------------- results read back
def _study_results(tmp_path: Path, change) -> Path:
    doc = json.loads(json.dumps(VALID["study results"]))
    change(doc)
    (tmp_path / "results.json").write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(version=3), r"made by another saeatlas version \(study results version 3; this saeatlas"),
        (lambda d: d.update(kind="compare"), "holds 'compare' results, not a study's"),
        (lambda d: d.update(models="x"), "field 'models' = 'x': expected a list"),
        (lambda d: d.pop("saes"), "missing key 'saes'"),
        (lambda d: d["compare"].update(version=3), "field 'compare.version' = 3: expected 4"),
        (lambda d: d["compare"]["config"].pop("measures"), "missing key 'compare.config.measures'"),
        (lambda d: d.update(seconds=-1.0), "field 'seconds' = -1.0: expected a number >= 0"),
    ],
)
def test_report_refuses_bad_results_in_one_line(tmp_path, change, message):
    from saeatlas.report.html import write_report

    out = _study_results(tmp_path, change)
    with pytest.raises(SaeAtlasError, match=message) as err:
        write_report(out)
    assert one_line(err).startswith(str(out / "results.json"))


def test_report_cli_exit_2_one_line(tmp_path):
    out = _study_results(tmp_path, lambda d: d.update(version=2))
    assert "made by another saeatlas version" in _error_line(_cli("report", str(out)))


def test_results_of_a_stage_read_back_are_checked(tmp_path):
    from saeatlas.study.run import _read_json

    path = tmp_path / "results.json"
    path.write_text(json.dumps(VALID["compare results"] | {"version": 3}))
    with pytest.raises(SaeAtlasError, match="made by another saeatlas version .* rerun the study"):
        _read_json(path, "compare")
    path.write_text(json.dumps(VALID["absorption results"] | {"saes": [{"name": "s"}]}))
    with pytest.raises(SaeAtlasError, match="missing key 'saes\\[0\\].letters'"):
        _read_json(path, "absorption")
    path.write_text(json.dumps([{"hook_a": "h", "hook_b": "h", "idx_a": -1, "idx_b": 0, "corr": 1.0}]))
    with pytest.raises(SaeAtlasError, match=r"field '\[0\].idx_a' = -1: expected an integer >= 0"):
        _read_json(path, SCHEMAS["pair cards"])
    assert _read_json(tmp_path / "absent.json", "compare") is None
    with pytest.raises(SaeAtlasError, match="holds concepts results, not compare results"):
        checked_results(VALID["concepts results"], "compare", "r.json", "rerun")


# ---------------------------------------------------------------- model folders
@pytest.fixture
def model_copy(tiny_llama, tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(tiny_llama, out)
    return out


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "the file is truncated"),
        (lambda f: f.write_bytes(b"\xff" * 64), r"not a safetensors file, or truncated"),
        (lambda f: f.write_bytes((4).to_bytes(8, "little") + b"\xff\xfe\x00\x01" + b"0" * 32), "header is not JSON"),
    ],
)
def test_a_model_folder_with_damaged_weights_is_one_line(model_copy, damage, message):
    from saeatlas.models.loading import load_model

    weights = model_copy / "model.safetensors"
    damage(weights)
    with pytest.raises(SaeAtlasError, match=message) as err:
        load_model(str(model_copy), dtype="float32")
    assert one_line(err).startswith(str(weights))


def test_a_model_config_with_wrong_types_is_one_line(model_copy):
    from saeatlas.models.loading import load_model

    config = json.loads((model_copy / "config.json").read_text())
    for key, value, message in [
        ("hidden_size", "32", "field 'hidden_size' = '32': expected an integer"),
        ("num_hidden_layers", 0, "field 'num_hidden_layers' = 0: expected an integer >= 1"),
        ("model_type", ["llama"], "field 'model_type' = \\['llama'\\]: expected a string"),
    ]:
        (model_copy / "config.json").write_text(json.dumps(config | {key: value}))
        with pytest.raises(SaeAtlasError, match=message) as err:
            load_model(str(model_copy), dtype="float32")
        assert one_line(err).startswith(str(model_copy / "config.json"))


def test_safetensors_header_reader_accepts_real_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, tmp_path / "t.safetensors")
    header = read_safetensors_header(tmp_path / "t.safetensors", "fix")
    assert header["a"]["shape"] == [2, 3] and header["b"]["dtype"] == "BF16"
