"""A study: one TOML file naming models, data, SAEs, the comparison and absorption.

`load_study(path)` parses and validates it; `default_study_text()` is the built-in study (the demo).  Each
table is a dataclass built on the same configs as the command line (`[data]` on `TextConfig`, `[sae]` on
`TrainConfig` with its SAE, `[compare]` on `CompareOptions`, `[absorption]` on `AbsorptionOptions`), so the
names, defaults and checks are the same everywhere.  Unknown keys, wrong types and bad values are errors that
name the key, the value and what is allowed.  Keys renamed since saeatlas 0.1 are still read, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

from ..absorption.config import AbsorptionOptions
from ..compare.config import BUILTIN_CONCEPTS, CompareOptions
from ..config import (
    FLATTEN,
    RUNTIME,
    Config,
    ConfigError,
    check,
    check_choice,
    check_device,
    check_int,
    check_text,
    flat_fields,
)
from ..data.config import TextConfig
from ..errors import SaeAtlasError
from ..models.hooks import canonical_hook, template_problem
from ..sae.config import EvalConfig, TrainConfig
from .paths import LABEL_RULE, label_ok

log = logging.getLogger("saeatlas")


class StudyError(SaeAtlasError):
    """The study file is missing, malformed or holds a bad setting."""


@dataclass(kw_only=True)
class DataSettings(TextConfig):
    """[data]: the text both models read."""

    window_chars: int | None = 400
    """Start windows at the same characters for every tokenizer (a study compares two models, whose tokenizers
    usually differ; `extract` alone defaults to none)."""
    heldout_tokens: int = 16384
    """Eval-split tokens per model for SAE quality (0: skip)."""

    def _validate(self) -> None:
        check_int(self, "tokens", 1000, allowed="use at least 1000 tokens")
        check_int(self, "heldout_tokens", 0, allowed="use 0 (skip) or more")


@dataclass(kw_only=True)
class ModelSettings(Config):
    """[[models]]: one model of the study."""

    RENAMED: ClassVar[dict[str, str]] = {"spec": "model", "layers": "hooks"}

    label: str
    """Short name used in the study (stage names, folders, the report)."""
    model: str
    """Packaged name, Hugging Face folder, .gguf file or hub id."""
    hooks: list[str | int]
    """Hooks to extract and compare (resid_post.3, a bare layer number, blocks.3.hook_resid_post...)."""
    saes: str | None = None
    """Pretrained SAEs instead of training: a folder template with {hook} (or a folder of one folder per hook)."""

    def _validate(self) -> None:
        check(label_ok(self.label), "label", self.label, LABEL_RULE)
        check_text(self, "model", "name a packaged model, a Hugging Face folder, a .gguf file or a hub id")
        if self.saes is not None:
            problem = template_problem(self.saes)
            check(problem is None, "saes", self.saes, f"{problem}: use {{hook}} and/or {{layer}}, e.g. saes/{{hook}}")
        check(bool(self.hooks), "hooks", self.hooks, "name at least one hook, e.g. resid_post.3")
        self.hooks = [canonical_hook(h) for h in self.hooks]
        check(len(set(self.hooks)) == len(self.hooks), "hooks", self.hooks, "name each hook once")


@dataclass(kw_only=True)
class SAESettings(Config):
    """[sae]: how the study's SAEs are trained (every TrainConfig and SAEConfig field), and evaluated."""

    RENAMED: ClassVar[dict[str, str]] = {"width": "d_sae", "dtype": "compute_dtype"}

    train: TrainConfig = field(default_factory=TrainConfig, metadata=FLATTEN)
    """The SAE and its training (flat in the table: arch, k, d_sae, steps, batch_size, seed, lr...)."""
    ce_tokens: int = EvalConfig.ce_tokens
    """Held-out tokens for CE-loss recovered with the SAE spliced in (0: skip)."""
    source: Literal["store", "model"] = "store"
    """Where the SAEs' training activations come from: the model's store of [data]'s text, or the model itself
    as it reads that text (as far as steps x batch_size tokens take it; the stores are still extracted for the
    comparison and the report, but training neither waits for nor reads them)."""

    def _validate(self) -> None:
        check_int(self, "ce_tokens", 0, 10**9)
        check_choice(self, "source", ("store", "model"))


@dataclass(kw_only=True)
class CompareSettings(CompareOptions):
    """[compare]: which two models, and how their SAEs are matched and scored."""

    RENAMED: ClassVar[dict[str, str]] = {
        "a": "label_a",
        "b": "label_b",
        "permutations": "n_permutations",
        "bootstrap": "n_bootstrap",
    }

    label_a: str
    """Label of model A."""
    label_b: str
    """Label of model B."""
    skyline_seed: int = 1
    """The skyline control trains A's SAEs again with this seed."""
    concepts: list[str] = field(default_factory=lambda: [BUILTIN_CONCEPTS])
    """Concept subspaces: "builtin" (the paper's eight categories) and / or TOML / JSON files {name: [words]},
    merged; [] skips them."""
    pair_cards: int = 6
    """Matched pairs shown per layer pair in the report (0: none)."""

    def _validate(self) -> None:
        check_int(self, "skyline_seed", 0)
        check(isinstance(self.concepts, list), "concepts", self.concepts, 'give a list: ["builtin"], files, or []')
        check_int(self, "pair_cards", 0, 1000)


@dataclass(kw_only=True)
class AbsorptionSettings(AbsorptionOptions):
    """[absorption]: the first-letter task on one model's hook, for TopK SAEs at several k."""

    RENAMED: ClassVar[dict[str, str]] = {"model": "label"}

    label: str
    """Label of the model."""
    hook: str | int
    """Hook the SAEs read, e.g. resid_post.3."""
    k_values: list[int] = field(default_factory=lambda: [16, 32, 64])
    """TopK SAEs at these k (the other settings as in [sae]) on that hook."""

    def _validate(self) -> None:
        self.hook = canonical_hook(self.hook)
        check(
            bool(self.k_values) and all(isinstance(k, int) and k >= 1 for k in self.k_values),
            "k_values",
            self.k_values,
            "give one or more k >= 1",
        )


@dataclass(kw_only=True)
class Study(Config):
    """The whole study."""

    name: str
    """Shown in the report and the summary."""
    models: list[ModelSettings]
    """Two or more models ([[models]] tables)."""
    out: str = "runs/study"
    """Output folder (`saeatlas run --out` overrides)."""
    device: str = field(default="auto", metadata=RUNTIME)
    """Where every stage runs: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps; under torchrun
    each process takes the GPU of its local rank.  Not part of any stage's key: products made on one device
    count as done on another."""
    data: DataSettings = field(default_factory=DataSettings)
    sae: SAESettings = field(default_factory=SAESettings)
    compare: CompareSettings | None = None
    absorption: AbsorptionSettings | None = None

    def _validate(self) -> None:
        check_device(self)

    def model(self, label: str) -> ModelSettings:
        return next(m for m in self.models if m.label == label)


# ---------------------------------------------------------------- parsing
def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is typing.Literal:  # the config checks the value itself, with the allowed values in its message
        return any(isinstance(value, type(a)) and not isinstance(value, bool) for a in args)
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
    return re.sub(r"<class '(\w+)'>", r"\1", str(hint)).replace("typing.", "")


def _migrate(cls, data: dict, where: str) -> dict:
    """`data` with the keys (and sentinel values) of saeatlas 0.1 turned into today's, each with a warning."""
    data = dict(data)
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old in data and new not in data:
            log.warning("study: '%s%s' is now '%s%s'; the old name is read until saeatlas 0.3", where, old, where, new)
            data[new] = data.pop(old)
    sentinels = {
        ("svcca_k", 0): "variance",
        ("concepts", "none"): [],
        ("concepts", BUILTIN_CONCEPTS): [BUILTIN_CONCEPTS],
    }
    for (key, old), new in sentinels.items():
        if key in data and data[key] == old and type(data[key]) is type(old):
            log.warning("study: '%s%s = %r' is now written %r", where, key, old, new)
            data[key] = new
    if isinstance(data.get("concepts"), str):  # 0.1 took one file name
        data["concepts"] = [data["concepts"]]
    return data


def _build(cls, data, where: str):
    """A dataclass from a TOML table, checking keys and types (nested FLATTEN configs read from the same
    table); a bad value is named by its key, e.g. 'compare.method'."""
    if not isinstance(data, dict):
        raise StudyError(f"bad [{where}]: expected a table of settings, got {data!r}")
    prefix = f"{where}." if where else ""
    data = _migrate(cls, data, prefix)
    # A table's own device field (a TrainConfig's, a CompareOptions') is not a key: the study's top-level
    # `device` is the one every stage runs on.
    fields = {
        name: spec
        for name, spec in flat_fields(cls).items()
        if spec[1].metadata.get("setting") is not False and not (where and spec[1].metadata.get("runtime"))
    }
    unknown = sorted(set(data) - set(fields))
    if unknown:
        table = f"[{where}]" if where else "the top level"
        raise StudyError(f"unknown key '{prefix}{unknown[0]}': allowed keys in {table} are {', '.join(fields)}")
    values = {}
    for name, (_, f, hint) in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StudyError(f"missing key '{key}': the study needs it")
            continue
        value, nested = data[name], _dataclass_in(hint)
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list) or not value:
                got = "a single [table]" if isinstance(value, dict) else repr(value)
                raise StudyError(f"bad '{key}': expected one or more [[{key}]] tables (double brackets), got {got}")
            values[name] = [_build(typing.get_args(hint)[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        elif nested is not None and isinstance(value, dict):
            values[name] = _build(nested, value, key)
        elif not _type_ok(value, hint):
            raise StudyError(f"bad '{key}' = {value!r}: expected {_type_name(hint)}")
        else:
            values[name] = value
    try:
        from ..config import build_flat

        return build_flat(cls, values)
    except ConfigError as exc:
        raise StudyError(exc.message(f"'{prefix}{exc.field}'")) from None
    except SaeAtlasError as exc:
        raise StudyError(f"[{where or 'study'}]: {exc}") from None


def _dataclass_in(hint):
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise StudyError(f"bad '{key}' = {value!r}: {allowed}")


def validate(study: Study) -> Study:
    """Rules across tables; the messages name the key, the value and what is allowed."""
    labels = [m.label for m in study.models]
    folded = [label.casefold() for label in labels]  # folders on a case-insensitive file system
    _check(len(set(folded)) == len(labels), "models.label", labels, "give each model its own label (case aside)")
    if (c := study.compare) is not None:
        for key in ("label_a", "label_b"):
            _check(
                getattr(c, key) in labels, f"compare.{key}", getattr(c, key), f"use a model label: {', '.join(labels)}"
            )
    if (a := study.absorption) is not None:
        _check(a.label in labels, "absorption.label", a.label, f"use a model label: {', '.join(labels)}")
    return study


def parse_study(text: str, source: str = "study") -> Study:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(
            f"{source} is not valid TOML ({exc}): fix the file or start again with `saeatlas init`"
        ) from None
    return validate(_build(Study, data, ""))


def default_study_text() -> str:
    """The built-in study (the demo), with comments: what `saeatlas init` writes."""
    return resources.files("saeatlas.study").joinpath("default.toml").read_text()


def paper_study_text() -> str:
    """The universality paper's setting (Pythia-70m vs Pythia-160m, EleutherAI's pretrained SAEs, legacy and
    corrected statistics side by side), with comments: what `saeatlas init --paper` writes."""
    return resources.files("saeatlas.study").joinpath("paper.toml").read_text()


def load_study(path: str | Path | None) -> Study:
    """The study in `path`, or the built-in one when `path` is None."""
    if path is None:
        return parse_study(default_study_text(), "the built-in study")
    path = Path(path)
    if not path.is_file():
        raise StudyError(
            f"study file '{path}' does not exist: check the path, or write one with `saeatlas init {path}`"
        )
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeError("it holds NUL bytes")
        text = data.decode("utf-8")
    except UnicodeError as exc:
        raise StudyError(
            f"study file '{path}' is not a UTF-8 text file ({str(exc).split(': ')[-1]}): give a TOML study, "
            "e.g. one written by `saeatlas init`"
        ) from None
    return parse_study(text, str(path))
