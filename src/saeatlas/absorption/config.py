"""What `saeatlas absorption` does: `AbsorptionOptions` (the task, probes and scoring; also the study's
[absorption] table) and `AbsorptionConfig` (which model, hook and SAEs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..config import RUNTIME, Config, check, check_choice, check_device, check_float, check_int, check_text
from ..data.config import DTYPES, Dtype
from ..models.hooks import canonical_hook
from .probes import RECIPE_NAMES, RecipeName

Variant = Literal["projection", "ablation", "both"]
VARIANTS: tuple[str, ...] = get_args(Variant)


@dataclass(kw_only=True)
class AbsorptionOptions(Config):
    """How the first-letter task is built and scored: shared by `absorption` and the study's [absorption]."""

    variant: Variant = "projection"
    """projection (fast, no gradients; SAEBench's), ablation (integrated gradients through the model; the
    paper's) or both."""
    words: int | Literal["all"] = 4000
    """Vocabulary tokens to use, stratified by first letter, or "all" (the whole alphabetic vocabulary)."""
    seed: int = 0
    """Seed of the word sample and the in-context examples."""
    split_seed: int = 42
    """Seed of the stratified train/test split and of probe training."""
    test_fraction: float = 0.2
    """Share of the words held out to test the probes and score absorption."""
    min_probe_f1: float = 0.6
    """Letters count in the means only where the probe's test F1 exceeds this."""
    min_letters: int = 20
    """With fewer qualifying letters than this the figures are still reported, over those letters, with a
    warning (SAEBench's min_feats_for_eval, 20, below which SAEBench reports nothing); none at all is an error."""
    probe_recipe: RecipeName = "saeatlas"
    """How the probes train: saeatlas (the default: letter probes and the sparse probe that ranks latents in
    batches of 64, weight decay 1e-4) or saebench (SAEBench's, to reproduce its numbers: the sparse probe in
    batches of 4096 with weight decay 1e-6, the letter probes as saeatlas's; SAEBench's lr schedule and
    initialisation).  saeatlas's is the default because with batches of 4096 a sample of a few thousand words
    gives the sparse probe one step per epoch, 50 in all (README, absorption)."""
    tau: float = 0.03
    """k-sparse probing: k grows while F1(k) exceeds the best so far by more than this."""
    max_k: int = 10
    """Largest k tried by k-sparse probing."""
    ig_steps: int = 6
    """Integrated-gradients steps (ablation variant)."""
    ig_gap: float = 1.0
    """Ablation variant: the top latent's effect must exceed the second's by this much (logit units; the
    paper's value for Gemma-2-2B, whose letter logits differ by ten or more; small models differ by a few)."""
    max_candidates: int = 200
    """Ablation variant: at most this many candidates per letter (a seeded sample; counts rescaled)."""
    model_dtype: Dtype = "bfloat16"
    """Compute dtype of the model for the projection variant (the ablation variant runs in float32)."""
    batch_size: int = 32
    """Prompts per forward pass when reading the task's activations."""

    device: str = field(default="auto", metadata=RUNTIME)
    """Where to run the model's forward, the SAE encodes and the attributions: auto (CUDA, then MPS, then the
    CPU), cpu, cuda, cuda:N or mps; under torchrun each process takes the GPU of its local rank.  The results
    are the same files on every device."""

    def _validate(self) -> None:
        check_choice(self, "variant", VARIANTS)
        check(
            self.words == "all"
            or (isinstance(self.words, int) and not isinstance(self.words, bool) and 100 <= self.words <= 10**7),
            "words",
            self.words,
            'use at least 100 (about 4000 for stable per-letter figures), or "all"',
        )
        check_int(self, "seed", 0)
        check_int(self, "split_seed", 0)
        check_float(self, "test_fraction", 0.05, 0.5)
        check_float(self, "min_probe_f1", 0, 1, high_open=True)
        check_int(self, "min_letters", 1, 26)
        check_choice(self, "probe_recipe", RECIPE_NAMES)
        check_float(self, "tau", 0)
        check_int(self, "max_k", 1, 1000)
        check_int(self, "ig_steps", 1, 1000, "use at least 1 (the paper uses 6)")
        check_float(self, "ig_gap", 0, allowed="use a logit difference >= 0 (the paper uses 1.0)")
        check_int(self, "max_candidates", 1)
        check_choice(self, "model_dtype", DTYPES)
        check_int(self, "batch_size", 1, 1 << 16)
        check_device(self)

    @property
    def n_words(self) -> int | None:
        """`words` as a count, None for the whole vocabulary."""
        return None if self.words == "all" else self.words


@dataclass(kw_only=True)
class AbsorptionConfig(AbsorptionOptions):
    """The first-letter task on one model and hook, scored for one or more SAEs of that hook."""

    model: str
    """Packaged model name, Hugging Face folder, .gguf file or hub id (a causal LM)."""
    hook: str
    """Hook point the SAEs read, e.g. resid_post.3.  Past ~2/3 of the depth the letter moves to the last token."""
    saes: list[str] = field(default_factory=list)
    """SAE folders (SAELens, sparsify or dictionary_learning layout) trained at `hook`."""

    def _validate(self) -> None:
        check_text(self, "model", "name a packaged model, a Hugging Face folder, a .gguf file or a hub id")
        self.hook = canonical_hook(self.hook)
        check(isinstance(self.saes, list) and bool(self.saes), "saes", self.saes, "give at least one SAE folder")
