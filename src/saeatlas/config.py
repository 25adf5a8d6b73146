"""What every configuration dataclass shares: validation once, when built, and field documentation.

Each job has one config dataclass (`ExtractConfig`, `SAEConfig`, `TrainConfig`, `CompareConfig`, ...), keyword
only, every field documented by the string right under it.  A config checks itself when it is built
(`__post_init__`), so a config that exists is valid; a bad value raises `ConfigError`, which names the field.
The command line derives its flags from these dataclasses (`saeatlas.flags`) and the study file its keys, so
the CLI shows the error with the flag the user typed (`--d-sae`) and the study with its key (`sae.d_sae`).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
from typing import Any

from .errors import SaeAtlasError


class ConfigError(SaeAtlasError):
    """A setting holds a bad value; `field` is its attribute name, re-spelled by the CLI and the study file."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(self.message(field))

    def message(self, name: str) -> str:
        """The one-line message with the setting spelled `name` (a flag, a study key or the field)."""
        return f"bad {name} = {self.value!r}: {self.allowed}"


def check(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ConfigError(field, value, allowed) unless `ok`."""
    if not ok:
        raise ConfigError(field, value, allowed)


MAX_COUNT = 10**12
"""The largest count any setting can mean (tokens, steps, seeds...): a larger one can only be a mistake, and
would overflow the int64 tensors and numpy seeds it reaches."""


def check_int(cfg, field: str, low: int, high: int | None = None, allowed: str = "") -> None:
    """cfg.<field> is an int in [low, high] (high None: up to MAX_COUNT)."""
    value = getattr(cfg, field)
    high = MAX_COUNT if high is None else high
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    check(ok, field, value, allowed or f"use an integer from {low} to {high}")


def check_float(
    cfg,
    field: str,
    low: float,
    high: float | None = None,
    allowed: str = "",
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """cfg.<field> is a finite number in the range given (open ends where asked)."""
    value = getattr(cfg, field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    check(ok, field, value, allowed or f"use a number in {lo}{low}, {'inf' if high is None else high}{hi}")


def check_text(cfg, field: str, allowed: str) -> None:
    """cfg.<field> is a string with something besides white space."""
    value = getattr(cfg, field)
    check(isinstance(value, str) and bool(value.strip()), field, value, allowed)


def check_choice(cfg, field: str, allowed: tuple[str, ...]) -> None:
    """cfg.<field> is one of `allowed`."""
    check(getattr(cfg, field) in allowed, field, getattr(cfg, field), f"use one of {', '.join(allowed)}")


def check_subset(cfg, field: str, allowed: tuple[str, ...]) -> None:
    """cfg.<field> is a list whose items are all in `allowed` (no repeats)."""
    values = getattr(cfg, field)
    check(isinstance(values, list), field, values, "give a list")
    for v in values:
        check(v in allowed, field, v, f"use some of {', '.join(allowed)}")
    check(len(set(values)) == len(values), field, values, "name each once")


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base of the config dataclasses: `__post_init__` runs the `_validate` of every class in the hierarchy,
    most basic first, so a subclass adds checks without repeating its bases'."""

    def __post_init__(self) -> None:
        for klass in reversed(type(self).__mro__):
            validate = klass.__dict__.get("_validate")
            if validate is not None:
                validate(self)

    def to_dict(self) -> dict:
        """Every setting (nested configs as tables), JSON-able; RUNTIME fields (where it runs) left out, as
        they change no result: products, records and stage keys are the same on every device."""
        return {
            f.name: _settings(getattr(self, f.name)) for f in dataclasses.fields(self) if not f.metadata.get("runtime")
        }


def _settings(value: Any) -> Any:
    """`value` as `to_dict` writes it: nested configs without their RUNTIME fields, other dataclasses as dicts."""
    if isinstance(value, Config):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_settings(v) for v in value)
    if isinstance(value, dict):
        return {k: _settings(v) for k, v in value.items()}
    return copy.deepcopy(value)


def non_default(cfg, skip: tuple[str, ...] = ()) -> dict:
    """The fields of dataclass `cfg` (not in `skip`) whose value differs from their default."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        value = getattr(cfg, f.name)
        if default is dataclasses.MISSING or value != default:
            out[f.name] = value
    return out


def pick(cls, values: dict) -> dict:
    """The entries of `values` that are fields of dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """{field: its documentation}: the string literal right under each field in the class body (and its
    bases'), as sparsify documents its configs; read from the source with `ast`."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is Config:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. a frozen app): no help texts
            continue
        body = tree.body[0].body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


FLATTEN = {"flatten": True}
"""Field metadata: a nested config whose fields appear flat on the command line and in the study file."""
DERIVED = {"setting": False}
"""Field metadata: a value saeatlas sets from the data (e.g. an SAE's d_in), not a flag or a study key."""
RUNTIME = {"runtime": True}
"""Field metadata: where a job runs (its device), a flag and a study key that changes no result, so it is left
out of `to_dict` (records, settings digests, stage keys)."""


def check_device(cfg, field: str = "device") -> None:
    """A device name saeatlas accepts (`saeatlas.devices`); whether that device is here is asked when the job
    starts (`resolve_device`)."""
    from .devices import DEVICE_PATTERN

    value = getattr(cfg, field)
    check(
        isinstance(value, str) and bool(DEVICE_PATTERN.fullmatch(value)),
        field,
        value,
        "use auto, cpu, cuda, cuda:N or mps",
    )


@functools.cache
def flat_fields(cls) -> dict[str, tuple[tuple[str, ...], dataclasses.Field, Any]]:
    """{flat name: (attribute path, field, type hint)} of a config class, nested FLATTEN configs expanded."""
    import typing

    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[tuple[str, ...], dataclasses.Field, Any]] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flatten"):
            for name, (path, inner, hint) in flat_fields(hints[f.name]).items():
                assert name not in out, f"{cls.__name__}: flattened field {name} repeats"
                out[name] = ((f.name, *path), inner, hint)
        else:
            out[f.name] = ((f.name,), f, hints[f.name])
    return out


def build_flat(cls, values: dict):
    """An instance of config class `cls` from flat values (nested FLATTEN configs built from the same dict);
    fields not in `values` keep their defaults."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flatten"):
            kwargs[f.name] = build_flat(hints[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def flat_values(cfg) -> dict:
    """{flat name: value} of a config instance (the inverse of `build_flat`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(flat_values(value) if f.metadata.get("flatten") else {f.name: value})
    return out


def flat_defaults(cls) -> dict:
    """{flat name: default} of a config class (fields without a default left out)."""
    out = {}
    for name, (_, f, _) in flat_fields(cls).items():
        if f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = f.default_factory()
    return out
