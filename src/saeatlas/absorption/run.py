"""The absorption job: task activations once, probes once, then splitting and absorption per SAE.

`run_absorption(cfg)` returns a results dict (version `RESULTS_VERSION`); `saeatlas.report.files.write_absorption`
writes it as absorption.json, probes.csv, one per-letter CSV and bar chart (SVG) per SAE.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ..devices import resolve_device
from ..errors import SaeAtlasError
from ..models import load_model, parse_hook
from ..progress import count_progress
from ..sae.formats import load_sae, read_metadata, resolve_sae
from ..sae.model import SparseAutoencoder
from .attribution import integrated_gradients, is_absorption, letter_token_ids
from .config import AbsorptionConfig
from .probes import Probes, classification_scores, one_hot, probe_recipe, train_probes
from .projection import EPS, decoder_probe_geometry, projection_absorption
from .splitting import rank_latents, split_feature
from .task import LETTERS, TaskActivations, task_activations, tokenize_prompts

RESULTS_VERSION = 2
"""2: projection scores on unit-norm decoder rows (SAEBench's; equal to version 1's figures), splitting as
SAEBench's num_split_features (main latents, was n_split = main - 1), n_letters_qualified and a warning
instead of an error when few letters qualify, the probe recipe in the config."""
log = logging.getLogger(__name__)


def split_indices(letters: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (by letter) train / test indices, seeded; letters with one item go to train."""
    counts = np.bincount(letters, minlength=len(LETTERS))
    lonely = np.isin(letters, np.flatnonzero(counts < 2))
    idx = np.flatnonzero(~lonely)
    train, test = train_test_split(idx, test_size=test_fraction, stratify=letters[idx], random_state=seed)
    return np.sort(np.concatenate([train, np.flatnonzero(lonely)])), np.sort(test)


def probe_table(probes: Probes, acts: np.ndarray, letters: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Per-letter precision / recall / F1 of the probes on the test split, and their test predictions."""
    predicted = probes.predict(acts[test])
    scores = classification_scores(predicted, one_hot(letters[test], len(LETTERS)))
    scores["predicted"] = predicted
    return scores


def encode_all(sae: SparseAutoencoder, acts: np.ndarray, batch: int = 1024) -> np.ndarray:
    """[n, d_in] -> [n, d_sae] float32 codes, in batches, encoded on the SAE's device."""
    device = sae.W_dec.device
    with torch.no_grad():
        return np.concatenate(
            [
                sae.encode(torch.from_numpy(acts[i : i + batch]).to(device)).float().cpu().numpy()
                for i in range(0, len(acts), batch)
            ]
        )


def _check_sae(sae: SparseAutoencoder, name: str, folder: Path, d_model: int, hook: str) -> None:
    """`sae` (given as `name`, read from `folder`) fits the model's hook."""
    if sae.cfg.d_in != d_model:
        raise SaeAtlasError(
            f"SAE '{name}' reads d_in {sae.cfg.d_in} but the model's {hook} has {d_model}: "
            "give an SAE trained on this model"
        )
    trained_at = read_metadata(folder).get("hook_name")
    if trained_at and trained_at != hook:
        log.warning("SAE '%s' was trained at %s, scored here at %s", name, trained_at, hook)


def _letter_mean(values: np.ndarray, qualifying: np.ndarray) -> float:
    chosen = values[qualifying]
    chosen = chosen[np.isfinite(chosen)]
    return float(chosen.mean()) if chosen.size else float("nan")


def score_sae(
    cfg: AbsorptionConfig,
    task: TaskActivations,
    probes: Probes,
    table: dict,
    train: np.ndarray,
    test: np.ndarray,
    sae: SparseAutoencoder,
    handle=None,
    progress: bool = False,
) -> dict:
    """Splitting and absorption of one SAE on the task; `handle` (the model) only for the ablation variant."""
    started = time.perf_counter()
    letters = task.letters
    codes = encode_all(sae, task.acts)  # [n, d_sae]
    W_dec = sae.W_dec.detach().double().cpu().numpy()
    ranked = rank_latents(
        codes[train],
        one_hot(letters[train], len(LETTERS)),
        recipe=probe_recipe(cfg.probe_recipe, "sparse", cfg.split_seed),
    )
    qualifying = table["f1"] > cfg.min_probe_f1
    rows, splits, true_positives = [], [], []
    for c, letter in enumerate(LETTERS):
        y_train, y_test = letters[train] == c, letters[test] == c
        split = split_feature(ranked[c], codes[train], y_train, codes[test], y_test, cfg.tau, cfg.max_k, cfg.split_seed)
        tp = test[table["predicted"][:, c] & y_test]  # probe true positives on the test split
        splits.append(split)
        true_positives.append(tp)
        row = {
            "letter": letter,
            "qualifies": bool(qualifying[c]),
            "probe_f1": float(table["f1"][c]),
            "probe_precision": float(table["precision"][c]),
            "probe_recall": float(table["recall"][c]),
            "n_test": int(y_test.sum()),
            "n_true_positives": len(tp),
            "main_latents": split.main,
            "num_split_features": split.num_split_features,
            "k_sparse_f1": split.f1,
            "f1_by_k": split.f1_by_k,
        }
        if cfg.variant in ("projection", "both"):
            proj = projection_absorption(task.acts[tp], codes[tp], W_dec, probes.direction(c), split.main)
            row.update(_projection_summary(proj, task, tp))
        rows.append(row)
    if cfg.variant in ("ablation", "both"):
        ablation_rates(cfg, handle, sae, task, codes, W_dec, probes, splits, true_positives, test, rows, progress)
    summary = {
        "n_letters_qualified": int(qualifying.sum()),
        "mean_num_split_features": _letter_mean(np.array([r["num_split_features"] for r in rows], float), qualifying),
        "mean_k_sparse_f1": _letter_mean(np.array([r["k_sparse_f1"] for r in rows]), qualifying),
    }
    for key in ("absorption_fraction", "full_absorption_rate", "ablation_absorption_rate"):
        if key in rows[0]:
            summary[f"mean_{key}"] = _letter_mean(np.array([r[key] for r in rows], float), qualifying)
    return {
        "letters": rows,
        "summary": summary,
        "l0_on_task": float((codes > 0).sum(1).mean()),
        "seconds": time.perf_counter() - started,
    }


def _projection_summary(proj: dict, task: TaskActivations, tp: np.ndarray) -> dict:
    n = len(tp)
    absorbed = np.flatnonzero(proj["fraction"] > 0)
    top, counts = np.unique(proj["top_latent"][absorbed], return_counts=True) if len(absorbed) else ([], [])
    order = np.argsort(-np.asarray(counts), kind="stable")[:5]
    examples = [task.prompts[tp[i]].word for i in np.flatnonzero(proj["full"])[:8]]
    return {
        "absorption_fraction": float(proj["fraction"].mean()) if n else float("nan"),
        "full_absorption_rate": float(proj["full"].mean()) if n else float("nan"),
        "absorbing_latents": [{"latent": int(top[i]), "count": int(counts[i])} for i in order],
        "fully_absorbed_words": examples,
    }


def ablation_candidates(split, tp: np.ndarray, test: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Probe true positives that the k-sparse probe on the main latents misses while every main latent is off."""
    where = np.searchsorted(test, tp)  # test is sorted; tp is a subset of it
    missed = ~split.predicted_test[where]
    main_off = (codes[tp][:, split.main] < EPS).all(axis=1) if split.main else np.ones(len(tp), bool)
    return tp[missed & main_off]


def ablation_rates(
    cfg, handle, sae, task, codes, W_dec, probes, splits, true_positives, test, rows, progress: bool
) -> None:
    """The paper's variant: IG on (a seeded sample of at most `max_candidates` of) each letter's candidates;
    adds the counts and the rate (absorptions rescaled to all candidates / true positives) to `rows`."""
    point = parse_hook(cfg.hook, handle.n_layers)
    ids, positions, _ = tokenize_prompts(handle.tokenizer, task.prompts)
    answer_ids = letter_token_ids(handle.tokenizer)
    rng = np.random.default_rng(cfg.seed)
    candidates = [ablation_candidates(split, tp, test, codes) for split, tp in zip(splits, true_positives)]
    samples = [
        c if len(c) <= cfg.max_candidates else np.sort(rng.choice(c, cfg.max_candidates, replace=False))
        for c in candidates
    ]
    with count_progress("integrated gradients", sum(len(s) for s in samples), "prompts", enabled=progress) as advance:
        for c, (row, sample) in enumerate(zip(rows, samples)):
            _, cos = decoder_probe_geometry(W_dec, probes.direction(c))
            absorbed = []
            for i in sample:
                attribution = integrated_gradients(
                    handle, sae, point, ids[i], int(positions[i]), c, answer_ids, cfg.ig_steps
                )
                hit, top = is_absorption(
                    attribution.scores, attribution.activations, cos, splits[c].main, gap=cfg.ig_gap
                )
                if hit:
                    absorbed.append({"word": task.prompts[i].word, "latent": top})
                advance(1)
            n_tp = len(true_positives[c])
            scale = len(candidates[c]) / len(sample) if len(sample) else 0.0
            row.update(
                {
                    "ablation_candidates": len(candidates[c]),
                    "ablation_scored": len(sample),
                    "ablation_absorbed": len(absorbed),
                    "ablation_absorption_rate": len(absorbed) * scale / n_tp if n_tp else float("nan"),
                    "ablation_examples": absorbed[:8],
                }
            )


def run_absorption(cfg: AbsorptionConfig, progress: bool = True) -> dict:
    """Probes, splitting and absorption for every SAE of `cfg`; the results dict."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)  # a device that is not here: one line, before any work
    # fail on a bad SAE before the model work; a pretrained name is its folder in the Hugging Face cache
    folders = {name: resolve_sae(name, cfg.hook) for name in cfg.saes}
    saes = [(name, load_sae(folders[name], device)) for name in cfg.saes]
    dtype = "float32" if cfg.variant != "projection" else cfg.model_dtype
    handle = load_model(cfg.model, dtype=dtype, device=device)
    if handle.kind != "causal":
        raise SaeAtlasError(f"model '{cfg.model}' is an encoder: the first-letter task needs a causal LM")
    point = parse_hook(cfg.hook, handle.n_layers)
    for name, sae in saes:
        _check_sae(sae, name, folders[name], handle.d_model, point.name)
    timings = {}
    t = time.perf_counter()
    with count_progress(
        f"first-letter prompts at {point.name}", cfg.n_words or 0, "prompts", enabled=progress
    ) as advance:
        task = task_activations(handle, point.name, cfg.n_words, cfg.seed, cfg.batch_size, progress=advance)
    timings["activations"] = time.perf_counter() - t
    letters = task.letters
    t = time.perf_counter()
    train, test = split_indices(letters, cfg.test_fraction, cfg.split_seed)
    probes = train_probes(
        task.acts[train],
        one_hot(letters[train], len(LETTERS)),
        probe_recipe(cfg.probe_recipe, "letters", cfg.split_seed),
    )
    table = probe_table(probes, task.acts, letters, test)
    timings["probes"] = time.perf_counter() - t
    qualified = int((table["f1"] > cfg.min_probe_f1).sum())
    warning = few_letters_warning(qualified, cfg.min_letters, cfg.min_probe_f1, float(table["f1"].mean()))
    if warning and not qualified:
        raise SaeAtlasError(f"at {point.name} of {handle.name}, {warning}")
    results_saes, names = [], _unique_names([folder for folder, _ in saes])
    for (folder, sae), name in zip(saes, names):
        scored = score_sae(cfg, task, probes, table, train, test, sae, handle, progress)
        scored.update(
            {
                "folder": str(folder),
                "name": name,
                "arch": sae.cfg.arch,
                "d_sae": sae.cfg.d_sae,
                "k": sae.cfg.k if sae.cfg.arch in ("topk", "batchtopk", "mp") else None,
            }
        )
        results_saes.append(scored)
    timings["total"] = time.perf_counter() - started
    return {
        "kind": "absorption",
        "version": RESULTS_VERSION,
        "config": cfg.to_dict(),
        "model": handle.name,
        "model_identity": handle.identity,
        "hook": point.name,
        "n_prompts": len(task.prompts),
        "n_dropped": task.n_dropped,
        "n_train": len(train),
        "n_test": len(test),
        "word_position_from_end": _position_from_end(task, handle),
        "probes": [
            {
                "letter": L,
                "precision": float(table["precision"][c]),
                "recall": float(table["recall"][c]),
                "f1": float(table["f1"][c]),
                "n_test": int(table["positives"][c]),
            }
            for c, L in enumerate(LETTERS)
        ],
        "mean_probe_f1": float(table["f1"].mean()),
        "n_letters_qualified": qualified,
        "warning": warning,
        "saes": results_saes,
        "seconds": timings,
    }


def few_letters_warning(qualified: int, min_letters: int, min_probe_f1: float, mean_f1: float) -> str | None:
    """None when at least `min_letters` letters have a probe F1 above `min_probe_f1`; else one line saying how
    many do, and that the means are over them only (SAEBench, main.py, refuses below its min_feats_for_eval, 20)."""
    if qualified >= min_letters:
        return None
    if not qualified:
        return (
            f"no letter has a probe F1 above {min_probe_f1} (mean F1 {mean_f1:.2f}): the letter is not readable at "
            "the word token here; use an earlier layer or more words"
        )
    return (
        f"only {qualified} of 26 letters have a probe F1 above {min_probe_f1} (mean F1 {mean_f1:.2f}; "
        f"{min_letters} expected): the means are over these {qualified} letters only"
    )


def _unique_names(folders: list[str]) -> list[str]:
    """Folder names, with the parent folder prefixed where two SAEs share a name (their output files would clash)."""
    names = [Path(f).name for f in folders]
    return [f"{Path(f).parent.name}-{n}" if names.count(n) > 1 else n for f, n in zip(folders, names)]


def _position_from_end(task: TaskActivations, handle) -> list[int]:
    """Distinct offsets of the word token from the prompt's end (e.g. [-6] for Gemma): a check, not an input."""
    ids, positions, _ = tokenize_prompts(handle.tokenizer, task.prompts[:200])
    return sorted({int(p - len(i)) for p, i in zip(positions, ids)})
