"""Training activations straight from a model: corpus -> windows -> forward pass -> shuffle buffer -> batches.

For runs whose activations would not fit on a disk as a store.  The text is cut exactly as `extract` cuts it
(the same windows, batched into forward passes of `forward_batch` windows from window 0, with the same
capture), so one pass of the stream holds the same usable tokens, with the same values, as a store extracted
with `StreamConfig.extract_config`.  The stream of usable tokens repeats the text as often as training needs.

Shuffle buffer: the stream is cut into chunks of `buffer_tokens` consecutive tokens and each chunk is permuted
with a generator seeded by (seed, chunk index); batches are consecutive slices of the permuted chunks.  The
batch sequence is therefore a pure function of (settings, seed), and the buffer at any step can be rebuilt
exactly from the position alone: resuming at step s recomputes only the forward passes of the chunk that
holds token s * batch_size (the windows before it are tokenized again, never run through the model).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config, check, check_choice, check_int, check_text
from ..data.config import DTYPES, MAX_TOKENS, Dtype, ExtractConfig
from ..data.corpus import SPLITS, Split, corpus_identity, load_documents
from ..data.extract import _budgeted, _chunks, _forward_batch
from ..data.tokens import EXCLUDED_BY_DEFAULT, Window, pack_windows
from ..errors import CorpusError, SaeAtlasError
from ..models import load_model, parse_hooks
from .data_source import check_finite

INIT_SAMPLE = 8192
"""Tokens the trainer's initialisation samples (`trainer.init_sae`): the buffers it spans are kept for training."""
SOURCE = "model stream"
"""What an SAE's cfg.json records as `metadata.activation_source` when it was trained from a model stream."""


@dataclass(kw_only=True)
class StreamConfig(Config):
    """The text a model stream reads and how it is buffered (the `train` verb's --model / --corpus flags)."""

    model: str | None = None
    """Train from this model's activations as they are produced (packaged name, Hugging Face folder, .gguf
    file, hub id), with --corpus and --hook, instead of a store."""
    corpus: str = "wiki"
    """With --model: named corpus (wiki, news, shakespeare, kjv), a local path, or hf:<dataset>."""
    tokens: int = 200_000
    """With --model: token budget of the text (every real token of a window, as for extract); training
    repeats it when it needs more tokens than it holds."""
    context: int = 128
    """With --model: tokens per context window, specials included."""
    window_chars: int | None = None
    """With --model: start a new window about every this many characters (as for extract)."""
    pack_documents: bool = False
    """With --model: fill windows across document boundaries."""
    split: Split = "train"
    """With --model: document-level split of the corpus to read."""
    corpus_seed: int = 0
    """With --model: seed of the document order shuffle (extract's --seed)."""
    model_dtype: Dtype = "bfloat16"
    """With --model: compute dtype of the model."""
    forward_batch: int = 8
    """With --model: windows per forward pass (extract's --batch-size)."""
    buffer_tokens: int = 65536
    """With --model: tokens of the shuffle buffer (at most the text's usable tokens); each buffer's tokens are
    permuted with a seeded generator (memory: about 2 x max(buffer_tokens, 8192) x d_model float32 values)."""

    def _validate(self) -> None:
        if self.model is not None:
            check_text(self, "model", "name a packaged model, a Hugging Face folder, a .gguf file or a hub id")
        check_text(self, "corpus", "name a corpus (wiki, news, shakespeare, kjv), a path or hf:<dataset>")
        check_int(self, "tokens", 1, MAX_TOKENS, "give a positive token budget")
        check_int(self, "context", 2, 1 << 20, "use at least 2 tokens per window")
        if self.window_chars is not None:
            check_int(self, "window_chars", 1, 1 << 24, "use 1 to 2^24 characters (about 4 per token)")
        check(
            self.window_chars is None or not self.pack_documents,
            "window_chars",
            self.window_chars,
            "windows cut at characters hold one document each: drop pack_documents",
        )
        check_choice(self, "split", SPLITS)
        check_int(self, "corpus_seed", 0)
        check_choice(self, "model_dtype", DTYPES)
        check_int(self, "forward_batch", 1, 1 << 16)
        check_int(self, "buffer_tokens", 1, 1 << 28)

    def extract_config(self, hook: str) -> ExtractConfig:
        """The `extract` settings whose store holds the same usable tokens, in stream order, at `hook`."""
        return ExtractConfig(
            model=self.model,
            hooks=[hook],
            corpus=self.corpus,
            tokens=self.tokens,
            context=self.context,
            window_chars=self.window_chars,
            pack_documents=self.pack_documents,
            split=self.split,
            seed=self.corpus_seed,
            batch_size=self.forward_batch,
            model_dtype=self.model_dtype,
            store_dtype=self.model_dtype,
        )


class ModelStreamSource:
    """One hook of a model's activations over a corpus, produced while training (no store).

    A training source like `StoreSource`: `d_in`, `n_tokens` (usable tokens in one pass of the text), `name`,
    `sample(n, seed)`, `batches(batch_size, seed, start_step)`; and `state()` / `restore(state)`, which the
    trainer keeps in its checkpoint.  Every input (model, hook, corpus, settings) is checked when it is built,
    before any training.
    """

    def __init__(self, cfg: StreamConfig, hook: str, device: str = "cpu", handle=None):
        if not cfg.model:
            raise SaeAtlasError("a model stream needs a model: give --model (with --corpus and --hook)")
        if not hook:
            raise SaeAtlasError("--model needs --hook: the hook to train on, e.g. resid_post.9")
        self.cfg = cfg
        self.documents = load_documents(cfg.corpus, split=cfg.split, seed=cfg.corpus_seed)  # before the model loads
        self.handle = handle or load_model(cfg.model, dtype=cfg.model_dtype, device=device)
        [self.point] = parse_hooks([hook], self.handle.n_layers)
        self.hook = self.point.name
        counts, digest = self._plan()
        if counts.sum() == 0:
            raise CorpusError(f"corpus '{cfg.corpus}' ({cfg.split} split) has no usable tokens: use a corpus with text")
        self._starts = np.concatenate([[0], np.cumsum(counts)])  # [n_windows + 1] usable tokens before each window
        self.buffer_tokens = min(cfg.buffer_tokens, self.n_tokens)  # a larger buffer would hold tokens twice
        self._text_sha256 = digest
        self._position = 0
        self._recent: dict[tuple[int, int], torch.Tensor] = {}  # (buffer, seed) -> buffer, oldest first
        self._keep = -(-INIT_SAMPLE // self.buffer_tokens)
        self._live: tuple[Iterator[torch.Tensor] | None, int, list[torch.Tensor]] = (None, -1, [])
        """The token stream the last buffer was cut from, the position it has reached, and its leftover pieces."""
        settings = {**cfg.to_dict(), "hook": self.hook, "text": digest}
        self.name = f"{SOURCE} {cfg.model}:{self.hook} on {cfg.corpus} ({json_digest(settings)[:12]})"

    # ------------------------------------------------------------ facts
    @property
    def d_in(self) -> int:
        return self.handle.d_model

    @property
    def n_tokens(self) -> int:
        """Usable tokens (specials and position 0 left out, as a store's n_tokens_usable) in one pass."""
        return int(self._starts[-1])

    def metadata(self) -> dict:
        """What the SAE's cfg.json records about its data."""
        prefix, _ = self.handle.special_tokens
        return {
            "activation_source": SOURCE,
            "model_name": self.cfg.model,
            "hook_name": self.hook,
            "context_size": self.cfg.context,
            "prepend_bos": bool(prefix),
            "dataset_path": self.cfg.corpus,
            "corpus_identity": corpus_identity(self.cfg.corpus),
            "stream": {
                **self.cfg.to_dict(),
                "buffer_tokens_used": self.buffer_tokens,
                "n_tokens_per_pass": self.n_tokens,
                "text_sha256": self._text_sha256,
            },
        }

    # ------------------------------------------------------------ the text
    def _windows(self) -> Iterator[Window]:
        """The windows of the text, as extract cuts them (the budget's last window cut to meet it)."""
        return _budgeted(
            pack_windows(
                ((i, d.text) for i, d in enumerate(self.documents)),
                self.handle.tokenizer,
                self.cfg.context,
                *self.handle.special_tokens,
                pack_documents=self.cfg.pack_documents,
                window_chars=self.cfg.window_chars,
            ),
            self.cfg.tokens,
        )

    def _plan(self) -> tuple[np.ndarray, str]:
        """Usable tokens of every window [n_windows], and the sha256 of the windows' token ids and flags."""
        digest, counts = hashlib.sha256(), []
        for window in self._windows():
            digest.update(window.token_ids.tobytes())
            digest.update(window.flags.tobytes())
            counts.append(int(((window.flags & EXCLUDED_BY_DEFAULT) == 0).sum()))
        return np.asarray(counts, dtype=np.int64), digest.hexdigest()

    def _locate(self, position: int) -> tuple[int, int]:
        """(epoch, window) of usable token `position` of the repeated stream."""
        epoch, within = divmod(position, self.n_tokens)
        return epoch, int(np.searchsorted(self._starts, within, side="right")) - 1

    def _usable_from(self, position: int) -> Iterator[torch.Tensor]:
        """The usable tokens' activations [n, d_in] float32 from `position` on, forever, in pieces (one per forward
        pass).  Forward passes always batch the same windows (from window 0 of the text, `forward_batch` at a
        time), so a token's values do not depend on where the stream was started."""
        _, window = self._locate(position)
        first = window // self.cfg.forward_batch * self.cfg.forward_batch
        skip = position % self.n_tokens - int(self._starts[first])
        while True:
            for batch in _chunks(itertools.islice(self._windows(), first, None), self.cfg.forward_batch):
                acts = _forward_batch(self.handle, [self.point], batch)[self.hook]  # [real tokens, d_in]
                usable = torch.from_numpy(np.concatenate([(w.flags & EXCLUDED_BY_DEFAULT) == 0 for w in batch]))
                x = acts[usable].float()[skip:]
                skip = 0
                if len(x):
                    yield x
            first = 0

    # ------------------------------------------------------------ the shuffle buffer
    def _buffers(self, chunk: int, seed: int) -> Iterator[torch.Tensor]:
        """Shuffle buffers number `chunk`, `chunk + 1`, ... [buffer_tokens, d_in]: buffer c is stream tokens
        [c * B, (c + 1) * B) permuted with a generator seeded by (seed, c).  One forward pass feeds consecutive
        buffers (and goes on where the last buffer made, by any call, ended); the buffers spanning INIT_SAMPLE
        tokens are kept, so the initialisation sample and the first batches share their forward passes."""
        size = self.buffer_tokens
        while True:
            if (chunk, seed) not in self._recent:
                tokens, reached, held = self._live
                if reached != chunk * size:
                    tokens, reached, held = self._usable_from(chunk * size), chunk * size, []
                n_held = sum(len(piece) for piece in held)
                while n_held < size:
                    held.append(next(tokens))
                    n_held += len(held[-1])
                x = torch.cat(held)
                self._live = (tokens, reached + size, [x[size:]])
                x = x[:size]
                check_finite(x, self.name)
                g = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
                self._recent[chunk, seed] = x[torch.randperm(size, generator=g)]
                while len(self._recent) > self._keep:
                    del self._recent[next(iter(self._recent))]
            yield self._recent[chunk, seed]
            chunk += 1

    def batches(
        self, batch_size: int, seed: int, start_step: int = 0, part: slice = slice(None)
    ) -> Iterator[torch.Tensor]:
        """Infinite stream of [batch_size, d_in] batches, from step `start_step` on: consecutive slices of the
        permuted buffers; with `part`, only those rows of each (a rank's slice under torchrun: every rank runs
        the model over the whole stream)."""
        position = start_step * batch_size
        chunk, offset = divmod(position, self.buffer_tokens)
        buffers = self._buffers(chunk, seed)
        held = next(buffers)[offset:]
        while True:
            while len(held) < batch_size:
                held = torch.cat([held, next(buffers)])
            batch, held = held[:batch_size], held[batch_size:]
            position += batch_size
            self._position = position
            yield batch[part]

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """n rows (the first batch of the stream with `seed`), for initialisation."""
        return next(self.batches(n, seed))

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """Where the last batch handed out ended: usable tokens consumed, the epoch and window of the next
        token, its shuffle buffer, and the text's fingerprint (to refuse a checkpoint of another text)."""
        epoch, window = self._locate(self._position)
        return {
            "tokens": self._position,
            "epoch": epoch,
            "window": window,
            "buffer": self._position // self.buffer_tokens,
            "n_tokens": self.n_tokens,
            "text_sha256": self._text_sha256,
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's `state()`: SaeAtlasError when it was taken on another text (a corpus
        edited since); the buffer is rebuilt from the position by `batches(start_step=...)`."""
        if state.get("text_sha256") != self._text_sha256 or state.get("n_tokens") != self.n_tokens:
            raise SaeAtlasError(
                f"the checkpoint was taken on other text than {self.cfg.corpus} now holds: "
                "delete the .partial folder to train from the start"
            )
        self._position = int(state["tokens"])


def json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
