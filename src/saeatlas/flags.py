"""Command-line flags derived from the config dataclasses, as sparsify derives its CLI from its configs.

Every field of a config becomes a flag named after it (`d_sae` -> `--d-sae`), its help the field's
documentation, its type read from the annotation: numbers and strings as such, `bool` as `--x / --no-x`,
lists comma-separated (an empty string is an empty list).  Defaults are not repeated here: a flag that is not
given leaves the dataclass default, so the CLI, the Python API and the study file cannot drift apart.  Hidden
aliases keep old flag names working for one release.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from .config import field_docs, flat_defaults, flat_fields


def flag(field: str) -> str:
    """The flag of a field: `d_sae` -> `--d-sae`."""
    return "--" + field.replace("_", "-")


def _comma_list(item_type):
    def parse(text: str) -> list:
        return [item_type(t.strip()) for t in text.split(",") if t.strip()]

    parse.__name__ = f"comma-separated {item_type.__name__}"
    return parse


def _int_or_word(words: tuple[str, ...]):
    def parse(text: str):
        return text if text in words else int(text)

    parse.__name__ = f"integer or {' / '.join(words)}"
    return parse


def _argument_type(hint) -> tuple[Any, dict]:
    """(type function, extra add_argument options) for a field's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        literals = tuple(w for a in options if typing.get_origin(a) is typing.Literal for w in typing.get_args(a))
        plain = [a for a in options if typing.get_origin(a) is not typing.Literal]
        if literals and plain == [int]:
            return _int_or_word(literals), {}
        return _argument_type(plain[0] if len(plain) == 1 else str)
    if hint is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return _comma_list(args[0] if args else str), {"metavar": "A,B,..."}
    if origin is typing.Literal:
        return str, {"metavar": "{" + ",".join(map(str, args)) + "}"}
    return hint if hint in (int, float, str) else str, {}


def _docs(cls) -> dict[str, str]:
    """Documentation of every flat field of `cls`, nested configs included."""
    docs = dict(field_docs(cls))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("flatten"):
            docs.update(_docs(hints[f.name]))
    return docs


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls,
    *,
    skip: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
    repeat: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Add a flag for every flat field of config class `cls` (except `skip`); returns {field: [its flag, then
    its old aliases]}.

    aliases: field -> old flag names accepted silently.  repeat: field -> the flag of a list field given once
    per item (e.g. `saes` -> `--sae DIR --sae DIR`) instead of comma-separated.
    """
    aliases, repeat = aliases or {}, repeat or {}
    docs, defaults = _docs(cls), flat_defaults(cls)
    shown: dict[str, list[str]] = {}
    for name, (_, field, hint) in flat_fields(cls).items():
        if name in skip or field.metadata.get("setting") is False:
            continue
        kind, options = _argument_type(hint)
        required = name not in defaults
        if name in repeat:
            shown[name] = [repeat[name]]
            kind, options = str, {"action": "append", "metavar": "DIR"}
        else:
            shown[name] = [flag(name)]
        text = docs.get(name, "").replace("%", "%%")
        if not required and options.get("action") is not argparse.BooleanOptionalAction:
            text += f" (default: {_show(defaults[name])})"
        elif not required:
            text += f" (default: {'on' if defaults[name] else 'off'})"
        typed = {"type": kind} if kind is not None else {}
        # required flags are checked after parsing (`missing`), so that an old alias counts too
        parser.add_argument(
            shown[name][0],
            dest=name,
            default=argparse.SUPPRESS,
            help=text + (" (required)" if required else ""),
            **typed,
            **options,
        )
        if required:
            parser.set_defaults(**{_REQUIRED: [*(parser.get_default(_REQUIRED) or []), name]})
        for old in aliases.get(name, ()):
            shown[name].append(old)
            parser.add_argument(old, dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **typed, **options)
    return shown


_REQUIRED = "_required_fields"


def missing(args: argparse.Namespace, shown: dict[str, list[str]]) -> list[str]:
    """The flags of required fields that were not given (under their name or an alias)."""
    return [shown[name][0] for name in getattr(args, _REQUIRED, []) if not hasattr(args, name)]


def typed(field: str, shown: dict[str, list[str]], argv: list[str]) -> str:
    """How the user wrote the flag of `field`: the last of its spellings in `argv` (its flag if none)."""
    spellings = shown.get(field, [field])
    written = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in spellings]
    return written[-1] if written else spellings[0]


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return "unset" if value is None else str(value)


def given(args: argparse.Namespace, cls, skip: tuple[str, ...] = ()) -> dict:
    """The flat settings of `cls` given on the command line (the rest keep the dataclass defaults)."""
    fields = flat_fields(cls)
    return {name: value for name, value in vars(args).items() if name in fields and name not in skip}
