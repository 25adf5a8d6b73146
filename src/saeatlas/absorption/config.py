"""What `saeatlas absorption` does: one dataclass, every field documented once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from ..config import _check

VARIANTS: tuple[str, ...] = ("projection", "ablation", "both")


@dataclass
class AbsorptionConfig:
    """The first-letter task on one model and hook, scored for one or more SAEs of that hook."""

    model: str
    """Packaged model name, HF folder, .gguf file or hub id (a causal LM)."""
    hook: str
    """Hook point the SAEs read, e.g. resid_post.3.  Past ~2/3 of the depth the letter moves to the last token."""
    saes: list[str] = field(default_factory=list)
    """SAE folders (SAELens, sparsify or dictionary_learning layout) trained at `hook`."""
    variant: Literal["projection", "ablation", "both"] = "projection"
    """projection (fast, no gradients; the evaluation suite's), ablation (integrated gradients through the
    model; the paper's) or both."""
    words: int | None = 4000
    """Vocabulary tokens to use, stratified by first letter (None: the whole alphabetic vocabulary)."""
    seed: int = 0
    """Seed of the word sample and the in-context examples."""
    split_seed: int = 42
    """Seed of the stratified 80/20 train/test split and of probe training."""
    test_fraction: float = 0.2
    min_probe_f1: float = 0.6
    """Letters count in the means only where the probe's test F1 exceeds this."""
    min_letters: int = 20
    """Fewer qualifying letters than this is an error (the layer does not carry the letter)."""
    tau: float = 0.03
    """k-sparse probing: k is accepted while F1(k) > best + tau."""
    max_k: int = 10
    """Largest k tried by k-sparse probing."""
    ig_steps: int = 6
    """Integrated-gradients steps (ablation variant)."""
    ig_gap: float = 1.0
    """Ablation variant: the top latent's effect must exceed the second's by this much (logit units; the
    paper's value for Gemma-2-2B, whose letter logits differ by ten or more; small models differ by a few)."""
    max_candidates: int = 200
    """Ablation variant: at most this many candidates per letter (a seeded sample; counts rescaled)."""
    model_dtype: str = "bfloat16"
    """Compute dtype of the model."""
    batch_size: int = 32

    def validate(self) -> AbsorptionConfig:
        _check(self.variant in VARIANTS, "--variant", self.variant, f"use one of {', '.join(VARIANTS)}")
        _check(
            self.words is None or self.words >= 100,
            "--words",
            self.words,
            "use at least 100 (about 4000 for stable per-letter figures)",
        )
        _check(0.05 <= self.test_fraction <= 0.5, "test fraction", self.test_fraction, "use 0.05 .. 0.5")
        _check(0 <= self.min_probe_f1 < 1, "--min-probe-f1", self.min_probe_f1, "use a value in [0, 1)")
        _check(1 <= self.min_letters <= 26, "--min-letters", self.min_letters, "use 1 .. 26")
        _check(self.max_k >= 1, "--max-k", self.max_k, "use at least 1")
        _check(self.ig_steps >= 1, "--ig-steps", self.ig_steps, "use at least 1 (the paper uses 6)")
        _check(self.ig_gap >= 0, "--ig-gap", self.ig_gap, "use a logit difference >= 0 (the paper uses 1.0)")
        _check(self.max_candidates >= 1, "--max-candidates", self.max_candidates, "use at least 1")
        _check(len(self.saes) > 0, "--sae", self.saes, "give at least one SAE folder")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
