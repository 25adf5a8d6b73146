"""The first-letter task: vocabulary, in-context prompts, the target word's position, activations.

Prompt (Chanin et al. 2024, arXiv:2409.14507; lasr-spelling/sae-spelling sae_spelling/prompting.py): ten
in-context examples, then the target, one per line,
`"{word} has the first letter:"` with answer `" " + UPPER(first letter)`:

    tartan has the first letter: T
    mirth has the first letter: M
    dog has the first letter:

The activation is read at the target word's token, found from the prompt's tokenization (character
offsets), never from a fixed offset.  Words that the prompt's tokenization does not keep as their own
single token are dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SaeAtlasError
from ..fileio import cache_dir, write_bytes_atomic, write_json_atomic
from ..models import ModelHandle, capture, parse_hook

LETTERS = string.ascii_uppercase
TEMPLATE = "{word} has the first letter:"
TASK_VERSION = 1
"""Bumped when prompts or positions change: part of the activation cache key."""
_ALPHA = re.compile(r"^ ?[a-zA-Z]+$")


@dataclass
class Prompt:
    """One task item."""

    word: str
    """The target word as the token decodes (may start with one space)."""
    token_id: int
    letter: int
    """0..25: A..Z."""
    text: str
    """Full prompt, without special tokens (the tokenizer adds them)."""
    word_start: int
    """Character span of the target word in `text`."""
    word_end: int


def alphabetic_vocabulary(tokenizer) -> list[tuple[int, str]]:
    """(token id, text) of every token whose decoded text is only [a-zA-Z], with at most one leading space."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    return [(i, t) for i, t in zip(ids, texts) if _ALPHA.match(t)]


def _line(word: str, answer: bool) -> str:
    line = TEMPLATE.format(word=word)
    return f"{line} {word.strip()[0].upper()}" if answer else line


def stratified_sample(letters: np.ndarray, n_words: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of a sample of about `n_words` items, balanced across letters (water-filling).

    Every letter gets the same share; letters with fewer items give their leftover to the others.  None or a
    number >= the total: everything.  The result is sorted.
    """
    by_letter = [np.flatnonzero(letters == c) for c in range(len(LETTERS))]
    total = sum(len(b) for b in by_letter)
    if n_words is None or n_words >= total:
        return np.arange(len(letters))
    quota = {c: 0 for c in range(len(by_letter))}
    remaining = n_words
    open_letters = [c for c in quota if len(by_letter[c])]
    while remaining > 0 and open_letters:
        share = max(remaining // len(open_letters), 1)
        for c in list(open_letters):
            take = min(share, len(by_letter[c]) - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if quota[c] == len(by_letter[c]):
                open_letters.remove(c)
            if remaining == 0:
                break
    chosen = [rng.choice(by_letter[c], size=quota[c], replace=False) for c in quota if quota[c]]
    return np.sort(np.concatenate(chosen))


def build_prompts(
    vocabulary: list[tuple[int, str]], n_words: int | None, seed: int = 0, n_examples: int = 10
) -> list[Prompt]:
    """Prompts for a letter-stratified sample of the vocabulary; examples drawn (seeded) from the rest."""
    if len(vocabulary) <= n_examples:
        raise SaeAtlasError(
            f"the tokenizer has only {len(vocabulary)} alphabetic tokens: the first-letter task "
            f"needs more than {n_examples}"
        )
    rng = np.random.default_rng(seed)
    letters = np.array([LETTERS.index(text.strip()[0].upper()) for _, text in vocabulary])
    prompts = []
    for i in stratified_sample(letters, n_words, rng):
        others = rng.choice(len(vocabulary) - 1, size=n_examples, replace=False)
        examples = [vocabulary[j + (j >= i)][1] for j in others]  # skip the target itself
        prefix = "\n".join(_line(w, answer=True) for w in examples) + "\n"
        token_id, word = vocabulary[i]
        prompts.append(
            Prompt(
                word,
                int(token_id),
                int(letters[i]),
                prefix + _line(word, answer=False),
                len(prefix),
                len(prefix) + len(word),
            )
        )
    return prompts


def tokenize_prompts(tokenizer, prompts: list[Prompt]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Token ids per prompt (special tokens added), the target word's position [n], and whether the word is
    exactly its own vocabulary token there [n] bool."""
    enc = tokenizer([p.text for p in prompts], add_special_tokens=True, return_offsets_mapping=True, verbose=False)
    positions = np.full(len(prompts), -1, dtype=np.int64)
    single = np.zeros(len(prompts), dtype=bool)
    for row, (p, ids, offsets) in enumerate(zip(prompts, enc["input_ids"], enc["offset_mapping"])):
        covering = [t for t, (s, e) in enumerate(offsets) if e > s and s < p.word_end and e > p.word_start]
        if not covering:
            continue
        last = covering[-1]
        positions[row] = last
        # Byte-level tokenizers put the leading space inside the token; offsets may or may not include it.
        single[row] = len(covering) == 1 and ids[last] == p.token_id
    return enc["input_ids"], positions, single


@dataclass
class TaskActivations:
    """Activations of the first-letter task at one hook: the product the rest of the analysis reads."""

    prompts: list[Prompt]
    acts: np.ndarray
    """[n_prompts, d_model] float32 at the target word's token."""
    positions: np.ndarray
    """[n_prompts] token index of the target word (special tokens counted)."""
    hook: str
    model: str
    n_dropped: int
    """Sampled words the prompt's tokenization merged or split (not their own token): left out."""

    @property
    def letters(self) -> np.ndarray:
        """[n_prompts] int 0..25."""
        return np.array([p.letter for p in self.prompts], dtype=np.int64)


def _cache_key(handle: ModelHandle, hook: str, n_words: int | None, seed: int) -> str:
    facts = {
        "model": handle.identity,
        "tokenizer": handle.tokenizer_identity,
        "dtype": str(handle.dtype),
        "hook": hook,
        "words": n_words,
        "seed": seed,
        "version": TASK_VERSION,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def task_activations(
    handle: ModelHandle,
    hook: str,
    n_words: int | None = 4000,
    seed: int = 0,
    batch_size: int = 32,
    use_cache: bool = True,
    progress=None,
) -> TaskActivations:
    """Run the first-letter prompts through `handle` up to `hook` and keep the target word's activation.

    Cached on disk by model, tokenizer, hook, sample size and seed (`$SAEATLAS_CACHE/absorption`): the
    activations are computed once and reused by every SAE and every later run.
    `progress(n_prompts_done)` is called after each batch.
    """
    point = parse_hook(hook, handle.n_layers)
    folder = cache_dir() / "absorption" / _cache_key(handle, point.name, n_words, seed)
    if use_cache and (folder / "task.json").exists():
        return _read_cached(folder)
    vocabulary = alphabetic_vocabulary(handle.tokenizer)
    prompts = build_prompts(vocabulary, n_words, seed)
    ids, positions, single = tokenize_prompts(handle.tokenizer, prompts)
    keep = np.flatnonzero(single)
    if len(keep) == 0:
        raise SaeAtlasError(
            f"no first-letter prompt keeps its target word as one token in {handle.name}'s "
            "tokenization: this tokenizer does not suit the task"
        )
    order = sorted(keep, key=lambda i: len(ids[i]))  # similar lengths per batch: little padding
    acts = np.zeros((len(prompts), handle.d_model), dtype=np.float32)
    pad = handle.tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            batch[r, : len(ids[i])] = torch.tensor(ids[i])
            mask[r, : len(ids[i])] = 1
        out = capture(handle, [point], batch, mask)[point.name]  # [b, seq, d_model]
        at = torch.as_tensor(positions[rows])
        acts[rows] = out[torch.arange(len(rows), device=out.device), at.to(out.device)].float().cpu().numpy()
        if progress:
            progress(len(rows))
    if not np.isfinite(acts[keep]).all():
        raise SaeAtlasError(f"{handle.name} produced NaN or Inf activations at {point.name}: try --model-dtype float32")
    task = TaskActivations(
        [prompts[i] for i in keep], acts[keep], positions[keep], point.name, handle.name, int(len(prompts) - len(keep))
    )
    if use_cache:
        _write_cached(folder, task)
    return task


def _write_cached(folder: Path, task: TaskActivations) -> None:
    from safetensors.numpy import save

    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / "acts.safetensors", save({"acts": task.acts, "positions": task.positions}))
    # task.json last: it marks the entry complete.
    write_json_atomic(
        folder / "task.json",
        {
            "prompts": [asdict(p) for p in task.prompts],
            "hook": task.hook,
            "model": task.model,
            "n_dropped": task.n_dropped,
        },
    )


def _read_cached(folder: Path) -> TaskActivations:
    from safetensors.numpy import load_file

    meta = json.loads((folder / "task.json").read_text())
    tensors = load_file(folder / "acts.safetensors")
    return TaskActivations(
        [Prompt(**p) for p in meta["prompts"]],
        tensors["acts"],
        tensors["positions"],
        meta["hook"],
        meta["model"],
        meta["n_dropped"],
    )
