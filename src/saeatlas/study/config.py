"""A study: one TOML file naming models, data, SAEs, the comparison and absorption.

`load_study(path)` parses and validates it; `default_study_text()` is the built-in study (the demo).  Each
section is a dataclass; unknown keys, wrong types and bad values are errors that name the key, the value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import SaeAtlasError


class StudyError(SaeAtlasError):
    """The study file is missing, malformed or holds a bad setting."""


@dataclass
class DataSettings:
    corpus: str = "wiki"
    """Named corpus (wiki, news, shakespeare, kjv), a path, or hf:<dataset>."""
    tokens: int = 100_000
    """Stored tokens per model (train split)."""
    window_chars: int | None = 400
    """Start windows at the same characters for every tokenizer (needed to compare different tokenizers)."""
    context: int = 128
    heldout_tokens: int = 16384
    """Eval-split tokens per model for SAE quality (0: skip)."""
    seed: int = 0


@dataclass
class ModelSettings:
    label: str
    """Short name used in the study (stage names, the report)."""
    spec: str
    """Packaged name, HF folder, .gguf file or hub id."""
    layers: list[str]
    """Hooks to extract and compare; bare numbers mean resid_post.N."""
    saes: str | None = None
    """Pretrained SAEs instead of training: a folder template with {hook} (or a folder of one folder per hook)."""


@dataclass
class SAESettings:
    arch: str = "topk"
    k: int = 32
    width: int = 4096
    steps: int = 600
    batch_size: int = 4096
    seed: int = 0
    l1_coefficient: float = 5.0
    ce_tokens: int = 4096
    """Held-out tokens for CE-loss recovered with the SAE spliced in (0: skip)."""


@dataclass
class CompareSettings:
    a: str
    b: str
    method: str = "many_to_one"
    threshold: float = 0.1
    measures: list[str] = field(
        default_factory=lambda: ["svcca", "pwcca", "rsa", "linear_cka", "mutual_knn", "svcca_legacy"]
    )
    svcca_k: int = 50
    """SVCCA / PWCCA directions per side (at most a tenth of the pairs); 0: enough for 99% of the variance."""
    permutations: int = 1000
    bootstrap: int = 100
    controls: list[str] = field(default_factory=lambda: ["random_init", "neurons", "shifted"])
    skyline_seed: int = 1
    concepts: str = "builtin"
    """builtin (the paper's 8 categories), a TOML/JSON file {name: [words]}, or none."""
    pair_cards: int = 6


@dataclass
class AbsorptionSettings:
    model: str
    hook: str
    k_values: list[int] = field(default_factory=lambda: [16, 32, 64])
    variant: str = "projection"
    words: int = 4000
    min_probe_f1: float = 0.6
    """Letters count in the means above this probe F1."""
    min_letters: int = 20
    """Fewer qualifying letters is an error (the layer does not carry the letter)."""


@dataclass
class Study:
    name: str
    models: list[ModelSettings]
    out: str = "runs/study"
    data: DataSettings = field(default_factory=DataSettings)
    sae: SAESettings = field(default_factory=SAESettings)
    compare: CompareSettings | None = None
    absorption: AbsorptionSettings | None = None

    def model(self, label: str) -> ModelSettings:
        return next(m for m in self.models if m.label == label)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- parsing
def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls, data, where: str):
    """A dataclass from a TOML table, checking keys and types; nested dataclasses recurse."""
    if not isinstance(data, dict):
        raise StudyError(f"bad [{where}]: expected a table of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        table = f"[{where}]" if where else "the top level"
        raise StudyError(
            f"unknown key '{f'{where}.' if where else ''}{unknown[0]}': allowed keys in {table} are {', '.join(names)}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StudyError(f"missing key '{key}': the study needs it")
            continue
        value, hint = data[f.name], hints[f.name]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            kwargs[f.name] = _build(nested, value, key)
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list) or not value:
                raise StudyError(f"bad '{key}': expected one or more [[{key}]] tables")
            kwargs[f.name] = [_build(typing.get_args(hint)[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        elif not _type_ok(value, hint):
            raise StudyError(f"bad '{key}' = {value!r}: expected {_type_name(hint)}")
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def _dataclass_in(hint):
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise StudyError(f"bad '{key}' = {value!r}: {allowed}")


def validate(study: Study) -> Study:
    """Cross-field rules; the messages name the key, the value and what is allowed."""
    from ..compare.config import CONTROLS, METHODS
    from ..compare.similarity import MEASURES
    from ..sae.config import ARCHITECTURES

    labels = [m.label for m in study.models]
    _check(len(set(labels)) == len(labels), "models.label", labels, "give each model its own label")
    for i, m in enumerate(study.models):
        _check(bool(m.layers), f"models[{i}].layers", m.layers, "name at least one hook, e.g. resid_post.3")
    d = study.data
    _check(d.tokens >= 1000, "data.tokens", d.tokens, "use at least 1000 tokens")
    _check(d.heldout_tokens >= 0, "data.heldout_tokens", d.heldout_tokens, "use 0 (skip) or more")
    s = study.sae
    _check(s.arch in ARCHITECTURES, "sae.arch", s.arch, f"use one of {', '.join(ARCHITECTURES)}")
    _check(s.width >= 2 and s.k >= 1 and s.steps >= 1, "sae", (s.width, s.k, s.steps), "width >= 2, k >= 1, steps >= 1")
    if (c := study.compare) is not None:
        for key in ("a", "b"):
            _check(
                getattr(c, key) in labels, f"compare.{key}", getattr(c, key), f"use a model label: {', '.join(labels)}"
            )
        _check(c.method in METHODS, "compare.method", c.method, f"use one of {', '.join(METHODS)}")
        for m in c.measures:
            _check(m in MEASURES, "compare.measures", m, f"use some of {', '.join(MEASURES)}")
        for ctl in c.controls:
            _check(ctl in CONTROLS, "compare.controls", ctl, f"use some of {', '.join(CONTROLS)}")
        _check(c.svcca_k >= 0, "compare.svcca_k", c.svcca_k, "use a number of directions, or 0 for 99% of the variance")
        _check(c.permutations >= 1, "compare.permutations", c.permutations, "use at least 1 (1000 for p-values)")
        _check(c.bootstrap >= 0, "compare.bootstrap", c.bootstrap, "use 0 (none) or more")
        _check(c.pair_cards >= 0, "compare.pair_cards", c.pair_cards, "use 0 or more")
    if (a := study.absorption) is not None:
        _check(a.model in labels, "absorption.model", a.model, f"use a model label: {', '.join(labels)}")
        _check(
            a.variant in ("projection", "ablation", "both"),
            "absorption.variant",
            a.variant,
            "use projection, ablation or both",
        )
        _check(
            bool(a.k_values) and all(k >= 1 for k in a.k_values),
            "absorption.k_values",
            a.k_values,
            "give one or more k >= 1",
        )
        _check(a.words >= 100, "absorption.words", a.words, "use at least 100")
    return study


def parse_study(text: str, source: str = "study") -> Study:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(
            f"{source} is not valid TOML ({exc}): fix the file or start again with `saeatlas init`"
        ) from None
    for key in ("data", "sae"):
        data.setdefault(key, {})
    return validate(_build(Study, data, ""))


def default_study_text() -> str:
    """The built-in study (the demo), with comments: what `saeatlas init` writes."""
    return resources.files("saeatlas.study").joinpath("default.toml").read_text()


def load_study(path: str | Path | None) -> Study:
    """The study in `path`, or the built-in one when `path` is None."""
    if path is None:
        return parse_study(default_study_text(), "the built-in study")
    path = Path(path)
    if not path.is_file():
        raise StudyError(
            f"study file '{path}' does not exist: check the path, or write one with `saeatlas init {path}`"
        )
    return parse_study(path.read_text(), str(path))
