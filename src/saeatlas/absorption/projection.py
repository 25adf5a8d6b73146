"""Absorption, projection variant: how much of the probe direction is carried by latents outside the main set.

SAEBench's rule (adamkarvonen/SAEBench, sae_bench/evals/absorption/feature_absorption_calculator.py): for one
input with activation a [d_in] and unit probe direction p [d_in], `act_proj = a . p`, and latent i scores
`activation_i * cos(W_dec_i, p)`.  SAEBench scores an SAE whose decoder rows have unit norm: its loader folds
the row norms into the encoder first (sae_bench_utils/general_utils.py load_and_format_sae calls SAELens's
`fold_W_dec_norm`; an SAE passed in as an object only gets a warning that its decoder is not normalised).
This module does the same for any SAE file: `unit_decoder_activations` folds the row norms into the codes
(activation_i = z_i * |W_dec_i|, which leaves every reconstruction unchanged, for TopK too, where folding
into the encoder could change which latents are kept), so a latent scores z_i * |W_dec_i| * cos = z_i *
(W_dec_i . p), its share of the reconstruction's projection on p.  The scores do not change when a latent
is rescaled (encoder row * c, decoder row / c).  SAEBench's calculator applied to an SAE whose rows are not
unit norm (no fold) scores z_i * cos instead, in the SAE's internal units, which such a rescaling changes
c-fold and which `act_proj` (in the activations' units) cannot be compared with; saeatlas saves its SAEs
with the activation normalisation folded into the decoder (rows of norm 1 / scale), so the two differ there.

- absorption fraction: the absorbers are the latents outside the main set with cos >= 0.1 and a positive
  score, the top 3 of them.  0 if the main latents already carry act_proj or the absorbers carry less
  than 0.4 of it; 1 if the main latents carry nothing (<= 0); else min(absorbers, act_proj - main) / (that +
  main), clipped to [0, 1].
- full absorption: every main latent is off (activation < 1e-8), act_proj > 0 (SAEBench's calculator has
  >= 0, and divides by zero at 0), and the latent with the largest score has cos >= 0.025 and carries >= 0.4
  of act_proj.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-8


@dataclass(frozen=True)
class ProjectionThresholds:
    """SAEBench's thresholds (feature_absorption_calculator.py, cited above)."""

    absorber_cos: float = 0.1
    """Latents outside the main set count as absorbers from this cosine with the probe."""
    n_absorbers: int = 3
    """At most this many absorbers (the largest contributions)."""
    absorber_fraction: float = 0.4
    """Absorbers must carry at least this fraction of act_proj (partial absorption), and the top latent this
    fraction for full absorption."""
    full_cos: float = 0.025
    """Full absorption: the top latent's cosine with the probe."""


def unit_decoder_activations(codes: np.ndarray, W_dec: np.ndarray) -> np.ndarray:
    """[n, d_sae] activations of the same SAE with unit-norm decoder rows: codes [n, d_sae] * |W_dec_i|.

    SAEBench folds the norms the same way before it scores (SAELens's fold_W_dec_norm: W_enc and b_enc times
    the norm, W_dec divided by it); this folds them into the codes, which is the same for every architecture.
    """
    norms = np.linalg.norm(np.asarray(W_dec, dtype=np.float64), axis=1)
    return np.asarray(codes, dtype=np.float64) * norms[None, :]


def decoder_probe_geometry(W_dec: np.ndarray, probe_dir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W_dec_i . p, cos(W_dec_i, p)) for every latent: two [d_sae] arrays.  `probe_dir` [d_in] is normalised here."""
    p = np.asarray(probe_dir, dtype=np.float64)
    p = p / np.linalg.norm(p)
    W = np.asarray(W_dec, dtype=np.float64)
    along = W @ p
    cos = along / np.maximum(np.linalg.norm(W, axis=1), EPS)
    return along, cos


def projection_absorption(
    acts: np.ndarray,
    codes: np.ndarray,
    W_dec: np.ndarray,
    probe_dir: np.ndarray,
    main: list[int] | np.ndarray,
    thresholds: ProjectionThresholds = ProjectionThresholds(),
) -> dict[str, np.ndarray]:
    """Absorption fraction and full absorption of one feature (probe) on each input.

    acts [n, d_in] (the SAE's input), codes [n, d_sae] (the SAE's, whatever the norms of its decoder rows),
    W_dec [d_sae, d_in], probe_dir [d_in], main: the feature's main latent ids.  Returns [n] arrays: `fraction` (float in [0, 1]), `full` (bool), `act_proj`,
    `main_proj`, `absorber_proj`, and `top_latent` (the largest contributor outside the main set).
    """
    main = np.asarray(main, dtype=np.int64)
    _, cos = decoder_probe_geometry(W_dec, probe_dir)
    p = np.asarray(probe_dir, dtype=np.float64)
    act_proj = np.asarray(acts, dtype=np.float64) @ (p / np.linalg.norm(p))  # [n]
    activation = unit_decoder_activations(codes, W_dec)  # [n, d_sae]
    contrib = activation * cos[None, :]  # SAEBench's probe_projection of each latent
    main_proj = contrib[:, main].sum(axis=1)

    outside = np.ones(len(cos), dtype=bool)
    outside[main] = False
    candidate = np.where((outside & (cos >= thresholds.absorber_cos))[None, :] & (contrib > 0), contrib, 0.0)
    k = min(thresholds.n_absorbers, candidate.shape[1])
    top = np.partition(candidate, candidate.shape[1] - k, axis=1)[:, -k:] if k else np.zeros((len(codes), 0))
    absorber_proj = top.sum(axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        absorbed = np.minimum(absorber_proj, act_proj - main_proj)
        partial = np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0)
        weak = absorber_proj / act_proj < thresholds.absorber_fraction
    fraction = np.where(main_proj >= act_proj, 0.0, np.where(weak, 0.0, np.where(main_proj <= 0, 1.0, partial)))
    fraction = np.nan_to_num(fraction, nan=0.0)

    top_any = contrib.argmax(axis=1)
    top_value = contrib[np.arange(len(codes)), top_any]
    main_off = (activation[:, main] < EPS).all(axis=1) if len(main) else np.ones(len(codes), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        full = (
            main_off
            & (act_proj > 0)
            & (cos[top_any] >= thresholds.full_cos)
            & (top_value / act_proj >= thresholds.absorber_fraction)
        )
    masked = np.where(outside[None, :], contrib, -np.inf)
    return {
        "fraction": fraction,
        "full": np.nan_to_num(full, nan=False).astype(bool),
        "act_proj": act_proj,
        "main_proj": main_proj,
        "absorber_proj": absorber_proj,
        "top_latent": masked.argmax(axis=1),
    }
