"""Training without a store: `ModelStreamSource` (corpus -> windows -> forward -> shuffle buffer -> batches).

The stream holds what a store of the same text holds, its batches are a pure function of (settings, seed,
step), a run stopped at a checkpoint and started again writes the same SAE bytes as one that ran through, and
bad inputs are one line / exit 2 before any work.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import HOOK, cli_args, kill_when_stopped, stop_after_command

from saeatlas.cli import main
from saeatlas.data.extract import run_extract
from saeatlas.errors import SaeAtlasError
from saeatlas.sae.config import SAEConfig, TrainConfig
from saeatlas.sae.run import train_to_folder
from saeatlas.sae.stream_source import SOURCE, ModelStreamSource, StreamConfig


def stream_config(model, corpus, **settings) -> StreamConfig:
    """A small float32 stream: the whole corpus, 32-token windows, a 256-token shuffle buffer."""
    base = {"model": str(model), "corpus": str(corpus), "split": "all", "context": 32, "tokens": 900}
    return StreamConfig(**(base | {"model_dtype": "float32", "buffer_tokens": 256} | settings))


def sorted_rows(x: torch.Tensor) -> np.ndarray:
    """The rows of [n, d] in lexicographic order (a multiset of rows, as an array)."""
    a = x.numpy()
    return a[np.lexsort(a.T[::-1])]


def test_one_pass_holds_the_stores_usable_tokens(tiny_llama, long_corpus, tmp_path):
    """The stream reads the text as extract does: its unshuffled tokens equal the store's usable rows, in order,
    and one buffer as large as the text is a permutation of them."""
    cfg = stream_config(tiny_llama, long_corpus, forward_batch=3)
    store = run_extract(cfg.extract_config(HOOK), tmp_path / "store").store
    usable = torch.cat(
        [store.activations(HOOK, s)[torch.from_numpy(store.usable_mask(s))] for s in range(store.n_shards)]
    )
    source = ModelStreamSource(cfg, HOOK)
    assert source.n_tokens == store.manifest["n_tokens_usable"] == len(usable) > 300
    assert source.d_in == 32
    pieces, stream = source._usable_from(0), torch.empty(0, 32)
    while len(stream) < len(usable):
        stream = torch.cat([stream, next(pieces)])
    assert torch.equal(stream[: len(usable)], usable.float())
    assert torch.equal(stream[len(usable) :], usable.float()[: len(stream) - len(usable)])  # the next pass begins
    whole = ModelStreamSource(dataclasses.replace(cfg, buffer_tokens=source.n_tokens), HOOK, handle=source.handle)
    assert np.array_equal(sorted_rows(whole.sample(source.n_tokens, seed=3)), sorted_rows(usable.float()))


def test_batches_are_a_pure_function_of_settings_seed_and_step(tiny_llama, long_corpus):
    """Two sources built apart give the same batches; starting at step s gives batch s of a full run, across
    buffer and epoch boundaries; another seed gives other batches (of the same tokens)."""
    cfg = stream_config(tiny_llama, long_corpus, tokens=400)
    a, b = ModelStreamSource(cfg, HOOK), ModelStreamSource(cfg, HOOK)
    assert a.n_tokens < 400 and a.buffer_tokens == 256  # 20 batches of 48 cross 2 passes and 3 buffers
    first = [x for x, _ in zip(a.batches(48, seed=7), range(20), strict=False)]
    assert all(x.shape == (48, 32) and x.dtype == torch.float32 for x in first)
    again = [x for x, _ in zip(b.batches(48, seed=7), range(20), strict=False)]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    for start in (1, 5, 6, 13):  # 5 * 48 = 240 sits 16 tokens short of the first buffer's end
        resumed = b.batches(48, seed=7, start_step=start)
        assert all(torch.equal(next(resumed), first[i]) for i in range(start, 20)), start
    assert not torch.equal(next(a.batches(48, seed=8)), first[0])
    assert np.array_equal(sorted_rows(next(a.batches(256, seed=8))), sorted_rows(torch.cat(first)[:256]))


def test_resumed_training_writes_the_same_sae_bytes(tiny_llama, long_corpus, tmp_path):
    """Stopped after step 12 (last checkpoint at 10, mid-buffer, in the second pass of the text), then run again
    with a fresh source: the SAE folder equals an uninterrupted run's, byte for byte."""
    cfg = stream_config(tiny_llama, long_corpus, tokens=400)
    train = TrainConfig(
        sae=SAEConfig(arch="topk", d_sae=64, k=4), steps=20, batch_size=48, checkpoint_every=5, seed=1, warmup_steps=2
    )
    train_to_folder(train, ModelStreamSource(cfg, HOOK), tmp_path / "reference")

    class Stop(Exception):
        pass

    def stop_at_12(metrics):
        if metrics is not None and metrics["step"] == 12:
            raise Stop

    source = ModelStreamSource(cfg, HOOK)
    with pytest.raises(Stop):
        train_to_folder(train, source, tmp_path / "resumed", on_step=stop_at_12)
    checkpoint = torch.load(tmp_path / "resumed.partial" / "checkpoint.pt", weights_only=True)
    position = checkpoint["state"]["source"]
    assert checkpoint["state"]["step"] == 10
    assert source.n_tokens < 480 < 2 * source.n_tokens and source.buffer_tokens == 256
    assert position["tokens"] == 480 and position["buffer"] == 1 and position["epoch"] == 1
    assert position["n_tokens"] == source.n_tokens and position["window"] == source._locate(480)[1]
    train_to_folder(train, ModelStreamSource(cfg, HOOK), tmp_path / "resumed")
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    meta = json.loads((tmp_path / "reference" / "cfg.json").read_text())["metadata"]
    assert meta["activation_source"] == SOURCE == "model stream"
    assert meta["stream"]["n_tokens_per_pass"] == source.n_tokens
    assert meta["model_name"] == str(tiny_llama) and meta["hook_name"] == "blocks.1.hook_resid_post"


def test_a_checkpoint_of_other_text_is_refused(tiny_llama, long_corpus):
    """A checkpoint whose text fingerprint or token count differs (the corpus edited since) is one line."""
    source = ModelStreamSource(stream_config(tiny_llama, long_corpus, tokens=400), HOOK)
    next(source.batches(48, seed=0))
    state = source.state()
    source.restore(state)
    with pytest.raises(SaeAtlasError, match="other text"):
        source.restore({**state, "text_sha256": "0" * 64})
    with pytest.raises(SaeAtlasError, match="other text"):
        source.restore({**state, "n_tokens": state["n_tokens"] + 1})
    assert state["tokens"] == 48 and state["epoch"] == 0 and state["buffer"] == 0


@pytest.mark.slow
def test_killed_cli_stream_train_resumes_to_identical_sae(tiny_llama, long_corpus, tmp_path):
    """kill -9 of `saeatlas train --model ...` after its 2nd checkpoint, the same command again: same bytes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }

    def args(out):
        return cli_args(
            "train",
            model=tiny_llama,
            corpus=long_corpus,
            hook=HOOK,
            split="all",
            context=32,
            tokens=500,
            buffer_tokens=256,
            d_sae=64,
            k=4,
            steps=16,
            batch_size=48,
            checkpoint_every=4,
            out=out,
        )

    cli = [sys.executable, "-m", "saeatlas.cli"]
    subprocess.run([*cli, *args(tmp_path / "reference")], check=True, env=env)
    proc = subprocess.Popen(stop_after_command("checkpoints", 2, args(tmp_path / "killed")), env=env)
    kill_when_stopped(proc)
    assert torch.load(tmp_path / "killed.partial" / "checkpoint.pt", weights_only=True)["state"]["step"] == 8
    subprocess.run([*cli, *args(tmp_path / "killed")], check=True, env=env)
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"hook": "resid_post.9"}, "resid_post.9"),
        ({"hook": None}, "--model needs --hook"),
        ({"model": "{tmp}/no-such-model"}, "no-such-model"),
        ({"corpus": "{tmp}/no-such-corpus"}, "no-such-corpus"),
        ({"store": "{tmp}"}, "give one of --activations FILE, --store DIR or --model"),
        ({"model": None, "activations": "{tmp}/x.npy"}, "--corpus, --context only apply with --model"),
        ({"buffer_tokens": 0}, "--buffer-tokens"),
    ],
)
def test_bad_inputs_are_one_line_before_any_work(tiny_llama, long_corpus, tmp_path, capsys, flags, message):
    """A hook past the model's layers, a missing model or corpus, a second data source, stream flags without
    --model, a bad stream setting: exit 2, one line naming it, nothing written."""
    base = {"model": tiny_llama, "corpus": long_corpus, "hook": HOOK, "context": 32, "steps": 2, "out": tmp_path / "s"}
    given = {k: str(v).format(tmp=tmp_path) for k, v in (base | flags).items() if v is not None}
    assert main(cli_args("train", **given)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_a_study_with_sae_source_model_trains_from_the_model_without_its_store(tiny_llama, long_corpus, tmp_path):
    """`[sae] source = "model"`: the train stages have no input (no store to wait for) and carry the stream's
    settings in their key; the stage's action trains from the model with no store on disk."""
    from saeatlas.study.config import parse_study
    from saeatlas.study.plan import plan

    text = f"""
name = "stream"
[data]
corpus = "{long_corpus}"
tokens = 1000
context = 32
heldout_tokens = 0
[[models]]
label = "a"
model = "{tiny_llama}"
hooks = ["resid_post.1"]
[[models]]
label = "b"
model = "{tiny_llama}"
hooks = [2]
[sae]
source = "model"
k = 4
d_sae = 32
steps = 12
batch_size = 100
checkpoint_every = 0
"""
    stages = plan(parse_study(text), tmp_path / "out")
    train = [s for s in stages if s.kind == "train"]
    assert [s.name for s in stages if s.kind == "extract"] == ["extract a", "extract b"]  # the report reads them
    assert [s.name for s in train] == ["train a resid_post.1 seed 0 k 4", "train b resid_post.2 seed 0 k 4"]
    assert all(s.inputs == [] for s in train)
    assert train[0].settings["stream"] == {
        "model": str(tiny_llama),
        "corpus": str(long_corpus),
        "tokens": 1200,  # steps x batch_size, more than [data]'s 1000
        "context": 32,
        "window_chars": 400,
        "corpus_seed": 0,
    }
    store_keyed = plan(parse_study(text.replace('source = "model"\n', "")), tmp_path / "out")
    assert [s.key for s in store_keyed if s.kind == "train"] != [s.key for s in train]
    summary = train[0].action(train[0], False)
    assert summary["metrics"]["l0"] == pytest.approx(4.0)
    assert not (tmp_path / "out" / "stores").exists()
    meta = json.loads((train[0].folder / "cfg.json").read_text())["metadata"]
    assert meta["activation_source"] == "model stream" and meta["stream"]["tokens"] == 1200


def test_a_bad_study_source_is_named():
    """`[sae] source` takes "store" or "model"; anything else is named by its key."""
    from saeatlas.study.config import StudyError, parse_study

    with pytest.raises(StudyError, match="sae.source"):
        parse_study('name = "x"\n[[models]]\nlabel = "a"\nmodel = "m"\nhooks = [1]\n[sae]\nsource = "disk"\n')


@pytest.mark.parametrize("buffer", ["one pass", 128])
def test_an_uninterrupted_run_runs_each_forward_pass_once(tiny_llama, long_corpus, monkeypatch, buffer):
    """The initialisation sample and the training batches share their shuffle buffers, and consecutive buffers
    one token stream: a run that reads one pass of the text runs the model over each batch of windows once (with
    small buffers, the last one reaches into the next pass: one forward pass more)."""
    import saeatlas.sae.stream_source as stream_module
    from saeatlas.sae.trainer import train_sae

    calls = []
    forward = stream_module._forward_batch
    monkeypatch.setattr(stream_module, "_forward_batch", lambda *a: calls.append(len(a[2])) or forward(*a))
    probe = ModelStreamSource(stream_config(tiny_llama, long_corpus, tokens=700), HOOK)
    size = probe.n_tokens if buffer == "one pass" else buffer
    source = ModelStreamSource(
        stream_config(tiny_llama, long_corpus, tokens=700, buffer_tokens=size), HOOK, handle=probe.handle
    )
    n_windows, n_forward = len(source._starts) - 1, -(-(len(source._starts) - 1) // 8)
    train = TrainConfig(sae=SAEConfig(arch="topk", d_sae=32, k=4), steps=6, batch_size=100, checkpoint_every=0)
    assert train.steps * train.batch_size <= source.n_tokens < stream_module.INIT_SAMPLE
    train_sae(train, source)
    if buffer == "one pass":
        assert sum(calls) == n_windows and len(calls) == n_forward
    else:
        assert source.n_tokens % 128 and sum(calls) == n_windows + 8 and len(calls) == n_forward + 1
