"""Before a study's first stage: check what it names outside itself, so a mistake costs seconds, not the minutes
of extraction and training before the stage that reads it.

Each model's config (not its weights) is read for its number of layers, and every hook the study asks of it
(its `hooks`, the absorption hook) must exist; the corpus must resolve (a local path exists, a packaged corpus's
package is installed); concept files must read; pretrained SAE folders must be there (planning finds them).
The messages name the study key.
"""

from __future__ import annotations

from ..errors import SaeAtlasError
from .config import Study, StudyError


def _named(key: str, exc: SaeAtlasError) -> StudyError:
    return StudyError(f"{key}: {exc}")


def preflight(study: Study) -> None:
    """Raise StudyError (one line, naming the key) for the first thing of `study` that cannot work."""
    from ..compare.concepts import load_concept_sources
    from ..data.corpus import corpus_identity
    from ..models.hooks import parse_hook
    from ..models.loading import model_layers

    a = study.absorption
    for i, m in enumerate(study.models):
        try:
            n_layers = model_layers(m.model)
        except SaeAtlasError as exc:
            raise _named(f"models[{i}].model ({m.label})", exc) from None
        asked = [(f"models[{i}].hooks", h) for h in m.hooks]
        if a is not None and a.label == m.label:
            asked.append(("absorption.hook", a.hook))
        for key, hook in asked:
            try:
                parse_hook(hook, n_layers)
            except SaeAtlasError as exc:
                raise _named(f"{key} ({m.label}, {m.model})", exc) from None
    try:
        corpus_identity(study.data.corpus)
    except SaeAtlasError as exc:
        raise _named("data.corpus", exc) from None
    if study.compare is not None and study.compare.concepts:
        try:
            load_concept_sources(study.compare.concepts)
        except SaeAtlasError as exc:
            raise _named("compare.concepts", exc) from None
