"""Absorption, ablation variant (the paper's): integrated-gradients attribution of SAE latents.

The SAE is spliced in at the hook, at the target word's position only, with its error term kept so the
model sees its clean activation at full scale: act = decode(alpha * z) + (a - decode(z)).  The metric is
logit(" Y") - mean of the other 25 capital-letter logits at the last position; latent i's attribution is
z_i * mean over alpha of d metric / d z_i, alpha at the midpoints of `steps` intervals (zero baseline).
IG is complete: the attributions sum to metric(alpha=1) - metric(alpha=0) as steps grow.

An absorption (spec: absorption.md) is a candidate whose top latent by ablation effect (effect = minus the
attribution: what removing the latent does to the metric) lowers the metric (effect <= 0) by at least
`gap` more than the second latent, lies outside the main set, and has cosine >= 0.025 with the probe.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from ..models import ModelHandle, patched
from ..models.hooks import HookPoint
from ..sae.model import SparseAutoencoder
from .task import LETTERS


def letter_token_ids(tokenizer) -> list[int]:
    """[26] the first token of " A" .. " Z": what the model predicts next after "...has the first letter:"."""
    ids = []
    for letter in LETTERS:
        tokens = tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
        ids.append(int(tokens[0]))
    return ids


def _letter_logits(handle: ModelHandle, hidden_last: torch.Tensor, letter_ids: list[int]) -> torch.Tensor:
    """[b, d_model] final-norm hidden states -> [b, 26] logits of the capital letters."""
    weight = handle.model.get_output_embeddings().weight[letter_ids]  # [26, d_model]
    logits = hidden_last @ weight.T
    cap = getattr(handle.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def letter_metric(logits: torch.Tensor, letter: int) -> torch.Tensor:
    """[b, 26] -> [b]: logit of the right letter minus the mean of the other 25."""
    others = torch.cat([logits[:, :letter], logits[:, letter + 1 :]], dim=1)
    return logits[:, letter] - others.mean(dim=1)


@dataclass
class Attribution:
    """IG result for one prompt."""

    scores: np.ndarray
    """[d_sae] attribution of each latent (0 for latents that are off)."""
    metric: float
    """The metric with the SAE spliced in at full scale (alpha = 1, i.e. the clean model)."""
    metric_baseline: float
    """The metric with every latent at 0 (the error term and b_dec kept)."""


def _cache_argument(handle: ModelHandle) -> str:
    """transformers renamed `past_key_values` to `cache` (5.24; the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(handle.base.forward).parameters else "past_key_values"


def _prefix_cache(handle: ModelHandle, ids: torch.Tensor):
    out = handle.base(input_ids=ids, use_cache=True)
    return getattr(out, "cache", None) or out.past_key_values


def integrated_gradients(
    handle: ModelHandle,
    sae: SparseAutoencoder,
    point: HookPoint,
    token_ids: list[int],
    position: int,
    letter: int,
    letter_ids: list[int],
    steps: int = 6,
) -> Attribution:
    """IG attribution of every latent at `position` of one prompt (token_ids with special tokens).

    The tokens before `position` do not see the splice: they run once, and their key/value cache is shared by
    the 2 + `steps` rows (alpha 0, 1 and the midpoints) that run the rest of the prompt.
    """
    handle.model.requires_grad_(False)
    alphas = torch.tensor([0.0, 1.0] + [(s + 0.5) / steps for s in range(steps)])  # rows 0, 1: the ends
    rows = len(alphas)
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        cache = _prefix_cache(handle, ids[:, :position]) if position else None
    if cache is not None:
        cache.batch_repeat_interleave(rows)
    suffix = ids[:, position:].expand(rows, -1)
    held: dict[str, torch.Tensor] = {}

    def splice(act: torch.Tensor) -> torch.Tensor:  # [rows, suffix, d_model]; the word is suffix position 0
        a = act[0, 0].float()  # every row is the same prompt: identical up to the hook
        with torch.no_grad():
            z = sae.encode(a[None])  # [1, d_sae]
            error = a - sae.decode(z)[0]
        scaled = (alphas[:, None] * z).requires_grad_(True)  # [rows, d_sae]
        held["z"], held["scaled"] = z, scaled
        new = sae.decode(scaled) + error  # [rows, d_model]
        out = act.clone()
        out[:, 0] = new.to(act.dtype)
        return out

    with torch.enable_grad(), patched(handle, point, splice):
        hidden = handle.base(
            input_ids=suffix, use_cache=cache is not None, **{_cache_argument(handle): cache}
        ).last_hidden_state
        metric = letter_metric(_letter_logits(handle, hidden[:, -1].float(), letter_ids), letter)  # [rows]
        (grads,) = torch.autograd.grad(metric[2:].sum(), held["scaled"])
    scores = (held["z"][0] * grads[2:].mean(dim=0)).detach().numpy().astype(np.float64)
    ends = metric.detach()
    return Attribution(scores, float(ends[1]), float(ends[0]))


def is_absorption(
    scores: np.ndarray, cos: np.ndarray, main: list[int] | np.ndarray, gap: float = 1.0, cos_min: float = 0.025
) -> tuple[bool, int]:
    """The paper's rule on one candidate: (absorbed?, top latent).  scores, cos: [d_sae]."""
    effect = -np.asarray(scores, dtype=np.float64)
    first, second = np.argsort(effect, kind="stable")[:2]
    absorbed = (
        effect[first] <= 0
        and effect[second] - effect[first] >= gap
        and cos[first] >= cos_min
        and int(first) not in {int(m) for m in main}
    )
    return bool(absorbed), int(first)
