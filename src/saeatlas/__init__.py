"""saeatlas: map the feature spaces of language models with sparse autoencoders.

Each job is a function that takes its config and returns its result; a writer saves the result:

    run_extract(ExtractConfig, out) -> ExtractResult      (streams the store into `out`)
    run_train(TrainConfig, data) -> TrainResult           write_sae(result, out)
    run_eval(EvalConfig, sae, data) -> EvalResult
    run_compare(CompareConfig) -> dict                    write_compare(results, out)
    run_concepts(ConceptsConfig) -> dict                  write_concepts(results, out)
    run_absorption(AbsorptionConfig) -> dict              write_absorption(results, out)
    run_study(load_study(path)) -> dict                   (every stage, results.json and report.html)

The names are imported on first use (torch is slow to import), so `import saeatlas` is quick.
"""

from __future__ import annotations

import importlib

from .threads import share_cores

# torch's OpenMP threads spin while they wait, and beside another busy process a spinning thread holds the core
# the working one needs (JumpReLU training: 11 % of its solo speed beside one busy process).  Before torch loads
# this sets OMP_WAIT_POLICY=PASSIVE; after, it puts torch on one thread (saeatlas/threads.py, bench/load.py).
share_cores()

__version__ = "0.1.0"

_EXPORTS = {
    "ExtractConfig": "saeatlas.data.config",
    "run_extract": "saeatlas.data.extract",
    "ExtractResult": "saeatlas.data.extract",
    "ActivationStore": "saeatlas.data.store",
    "SAEConfig": "saeatlas.sae.config",
    "TrainConfig": "saeatlas.sae.config",
    "EvalConfig": "saeatlas.sae.config",
    "run_train": "saeatlas.sae.run",
    "write_sae": "saeatlas.sae.run",
    "TrainResult": "saeatlas.sae.run",
    "run_eval": "saeatlas.sae.run",
    "EvalResult": "saeatlas.sae.run",
    "StoreSource": "saeatlas.sae.data_source",
    "SparseAutoencoder": "saeatlas.sae.model",
    "load_sae": "saeatlas.sae.formats",
    "CompareConfig": "saeatlas.compare.config",
    "ConceptsConfig": "saeatlas.compare.config",
    "run_compare": "saeatlas.compare.grid",
    "run_concepts": "saeatlas.compare.grid",
    "write_compare": "saeatlas.report.files",
    "write_concepts": "saeatlas.report.files",
    "AbsorptionConfig": "saeatlas.absorption.config",
    "run_absorption": "saeatlas.absorption.run",
    "write_absorption": "saeatlas.report.files",
    "load_study": "saeatlas.study.config",
    "run_study": "saeatlas.study.run",
    "write_report": "saeatlas.report.html",
    "load_model": "saeatlas.models.loading",
    "canonical_hook": "saeatlas.models.hooks",
    "SaeAtlasError": "saeatlas.errors",
}

__all__ = ["__version__", *list(_EXPORTS)]  # noqa: PLE0604 - the names of _EXPORTS are strings


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'saeatlas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
