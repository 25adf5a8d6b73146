"""A finished tiny study for the explorer tests: two tiny models with different tokenizers, TopK SAEs, the
comparison with every control, concepts from a small keyword file, pair cards and absorption.

Not a test module: tests/test_explore*.py call `build_explore_study` from a module-scoped fixture.  The corpus
holds `report_fixture.TRICKY` (markup in the text) so escaping is tested on real token strings.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import TEXTS
from report_fixture import CONCEPTS, TRICKY, cache_at


def explore_study_text(model_a: Path, model_b: Path, corpus: Path, concepts: Path) -> str:
    return f"""
name = "tiny-explore"
[data]
corpus = "{corpus}"
tokens = 3000
window_chars = 60
context = 32
heldout_tokens = 0
[[models]]
label = "a"
model = "{model_a}"
hooks = ["resid_post.1", "resid_post.2"]
[[models]]
label = "b"
model = "{model_b}"
hooks = ["resid_post.1"]
[sae]
k = 4
d_sae = 48
steps = 40
batch_size = 64
ce_tokens = 0
[compare]
label_a = "a"
label_b = "b"
threshold = 0.0
n_permutations = 10
n_bootstrap = 0
controls = ["random_init", "neurons", "shifted", "skyline"]
concepts = ["{concepts}"]
pair_cards = 2
[absorption]
label = "a"
hook = "resid_post.1"
k_values = [2, 4]
words = 150
min_probe_f1 = 0.0
min_letters = 3
"""


def build_explore_study(root: Path, model_a: Path, model_b: Path) -> Path:
    """Run the tiny study under `root`; returns its output folder (holding results.json)."""
    from saeatlas.study.config import load_study
    from saeatlas.study.run import run_study

    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for i in range(30):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(2 + i % 5)))
    (corpus / "tricky.txt").write_text(f"{TEXTS[0]} {TRICKY} {TEXTS[2]}")
    concepts = root / "concepts.json"
    concepts.write_text(json.dumps(CONCEPTS))
    study_file = root / "study.toml"
    study_file.write_text(explore_study_text(model_a, model_b, corpus, concepts))
    with cache_at(root / "cache"):
        run_study(load_study(study_file), root / "out", progress=False)
    return root / "out"
