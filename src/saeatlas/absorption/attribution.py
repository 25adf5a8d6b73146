"""Absorption, ablation variant (the paper's): integrated-gradients attribution of SAE latents.

The SAE is spliced in at the hook, at the target word's position only: act = decode(alpha * z) + beta * error,
where error = a - decode(z), so alpha = beta = 1 is the clean model.  The metric is logit(" Y") - mean of the
other 25 capital-letter logits at the last position; latent i's attribution is z_i * mean over the path's
points of d metric / d (alpha z_i) (zero baseline).  Two paths (`IgPath`):

- "paper" (sae-spelling, the default): the error term is scaled to zero together with the latents
  (beta = alpha), at alpha = 1 - i/steps, i = 0..steps-1 (the clean end included, the zero end left out;
  lasr-spelling/sae-spelling sae_spelling/feature_attribution.py, `_get_interpolation_acts` and
  `calculate_integrated_gradient_attribution_patching`).  The error gets an attribution of its own, and the
  latents' and the error's attributions together sum to metric(clean) - metric(word token at b_dec) as the
  steps grow (completeness).
- "error_kept": the error stays at full scale (beta = 1), alpha at the midpoints of `steps` intervals.  Only the
  latents move, so their attributions alone sum to metric(clean) - metric(latents off, error kept); the midpoint
  rule is the more accurate one at few steps.  Not the paper's numbers: its top latents can differ.

A latent's ablation effect is minus its attribution (what removing it does to the metric; sae-spelling's
"ablation score").  `is_absorption` is sae-spelling's decision rule on one word.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from ..models import ModelHandle, patched
from ..models.hooks import HookPoint
from ..sae.model import SparseAutoencoder
from .projection import EPS
from .task import LETTERS

IgPath = Literal["paper", "error_kept"]
IG_PATHS: tuple[str, ...] = get_args(IgPath)


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
    """[d_sae] attribution of each latent (0 for latents that are off); its ablation effect is minus this."""
    error_score: float
    """Attribution of the SAE error term ("paper" path; 0 on "error_kept", where the error does not move)."""
    activations: np.ndarray
    """[d_sae] the latents' activations z at the word token."""
    metric: float
    """The metric with the SAE spliced in at full scale (alpha = 1, i.e. the clean model)."""
    metric_baseline: float
    """The metric at the path's zero end: every latent at 0, and the error term too on the "paper" path (the word
    token is then decode(0) = b_dec); the error kept on "error_kept"."""


def path_alphas(steps: int, path: IgPath) -> torch.Tensor:
    """[steps] the latents' scale at the points whose gradients are averaged (see the module docstring)."""
    i = torch.arange(steps, dtype=torch.float64)
    alphas = 1 - i / steps if path == "paper" else (i + 0.5) / steps
    return alphas.float()


@dataclass
class _PathPoints:
    """The leaves of one IG run over rows = [zero end, clean end, path points...] (the clean end is the first path
    point on the "paper" path, so it is not repeated there)."""

    z: torch.Tensor  # [d_sae]
    error: torch.Tensor  # [d_model]
    scaled: torch.Tensor  # [rows, d_sae] alpha * z, a leaf
    scaled_error: torch.Tensor  # [rows, d_model] beta * error, a leaf
    first_point: int  # rows[first_point:] are the path points
    error_moves: bool  # the error is scaled along the path ("paper"), so it has an attribution


def _path_points(sae: SparseAutoencoder, a: torch.Tensor, steps: int, path: IgPath) -> tuple[_PathPoints, torch.Tensor]:
    """a: [d_model] clean activation -> (the leaves, [rows, d_model] the spliced activations)."""
    alphas = path_alphas(steps, path)
    first_point = 1 if path == "paper" else 2  # "paper": alphas[0] == 1 is the clean end
    ends = torch.tensor([0.0] if path == "paper" else [0.0, 1.0])
    alpha = torch.cat([ends, alphas]).to(a.device)  # [rows]
    beta = alpha if path == "paper" else torch.ones_like(alpha)
    with torch.no_grad():
        z = sae.encode(a[None])[0]  # [d_sae]
        error = a - sae.decode(z[None])[0]
    scaled = (alpha[:, None] * z).requires_grad_(True)
    scaled_error = (beta[:, None] * error).requires_grad_(True)
    points = _PathPoints(z, error, scaled, scaled_error, first_point, error_moves=path == "paper")
    return points, sae.decode(scaled) + scaled_error


def _attribution(points: _PathPoints, metric: torch.Tensor) -> Attribution:
    """metric: [rows] on the spliced rows of `_path_points` -> the attributions (mean gradient x activation)."""
    grad_z, grad_error = torch.autograd.grad(metric[points.first_point :].sum(), (points.scaled, points.scaled_error))
    first = points.first_point
    scores = points.z * grad_z[first:].mean(dim=0)
    error_score = points.error @ grad_error[first:].mean(dim=0) if points.error_moves else torch.zeros(())
    ends = metric.detach()
    return Attribution(
        scores=scores.detach().cpu().numpy().astype(np.float64),
        error_score=float(error_score),
        activations=points.z.detach().cpu().numpy().astype(np.float64),
        metric=float(ends[1]),
        metric_baseline=float(ends[0]),
    )


def path_attribution(
    metric_of: Callable[[torch.Tensor], torch.Tensor],
    sae: SparseAutoencoder,
    a: torch.Tensor,
    steps: int = 6,
    path: IgPath = "paper",
) -> Attribution:
    """IG of any differentiable metric of the spliced activation: metric_of maps [rows, d_model] -> [rows].
    a: [d_model] the clean activation.  `integrated_gradients` is this with the model as the metric."""
    with torch.enable_grad():
        points, spliced = _path_points(sae, a.float(), steps, path)
        return _attribution(points, metric_of(spliced))


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
    path: IgPath = "paper",
) -> Attribution:
    """IG attribution of every latent at `position` of one prompt (token_ids with special tokens).

    The tokens before `position` do not see the splice: they run once, and their key/value cache is shared by
    the rows (the zero end, the clean end and the path's points) that run the rest of the prompt.
    """
    handle.model.requires_grad_(False)
    rows = steps + (1 if path == "paper" else 2)
    ids = torch.tensor([token_ids], device=handle.device)
    with torch.no_grad():
        cache = _prefix_cache(handle, ids[:, :position]) if position else None
    if cache is not None:
        cache.batch_repeat_interleave(rows)
    suffix = ids[:, position:].expand(rows, -1)
    held: dict[str, _PathPoints] = {}

    def splice(act: torch.Tensor) -> torch.Tensor:  # [rows, suffix, d_model]; the word is suffix position 0
        # every row is the same prompt: identical up to the hook
        points, spliced = _path_points(sae, act[0, 0].detach().float(), steps, path)
        held["points"] = points
        out = act.clone()
        out[:, 0] = spliced.to(act.dtype)
        return out

    with torch.enable_grad(), patched(handle, point, splice):
        hidden = handle.base(
            input_ids=suffix, use_cache=cache is not None, **{_cache_argument(handle): cache}
        ).last_hidden_state
        metric = letter_metric(_letter_logits(handle, hidden[:, -1].float(), letter_ids), letter)  # [rows]
        return _attribution(held["points"], metric)


def is_absorption(
    scores: np.ndarray,
    activations: np.ndarray,
    cos: np.ndarray,
    main: list[int] | np.ndarray,
    gap: float = 1.0,
    cos_min: float = 0.025,
) -> tuple[bool, int]:
    """sae-spelling's rule on one word: (absorbed?, top latent).  scores, activations, cos: [d_sae].

    With effect = -scores (the ablation effect), latents are ranked by effect, most negative first; the word is an
    absorption when every main latent is off (activation < 1e-8), the top latent's effect is not positive,
    |top effect| - |second effect| >= gap, and the top latent's decoder cosine with the probe is >= cos_min.
    (lasr-spelling/sae-spelling sae_spelling/feature_absorption_calculator.py, `_is_absorption` and the ranking
    `(-1 * ig_scores).topk(...)` in `calculate_absorption_sampled`.  An earlier commit of that file, fd88f73,
    ranked by |effect| instead; the paper's final code, 1d3cc80, ranks by signed effect.)
    """
    effect = -np.asarray(scores, dtype=np.float64)
    first, second = np.argsort(effect, kind="stable")[:2]
    main = np.asarray(main, dtype=np.int64)
    absorbed = (
        bool((np.asarray(activations)[main] < EPS).all())
        and not effect[first] > 0
        and abs(effect[first]) - abs(effect[second]) >= gap
        and cos[first] >= cos_min
    )
    return bool(absorbed), int(first)
