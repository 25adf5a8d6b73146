"""Hook point names: one canonical spelling, and the ones the ecosystem writes.

saeatlas names a hook `<stage>.<layer>`: `resid_pre.L` (input of block L), `attn_out.L` and `mlp_out.L` (what
block L's attention / MLP adds to the residual stream), `resid_post.L` (output of block L).  Wherever a hook is
accepted (CLI, study file, Python configs, SAE folders), these spellings mean the same hook:

- `resid_post.3`, or a bare layer number `3` (always the residual stream after block 3);
- TransformerLens / SAELens: `blocks.3.hook_resid_post` (also `hook_resid_pre`, `hook_attn_out`, `hook_mlp_out`);
- Hugging Face module paths as sparsify names its hookpoints: `layers.3` or `model.layers.3` (the block's
  output, i.e. `resid_post.3`).

`canonical_hook` turns any of them into the canonical name; `parse_hook` also checks the layer against a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import HookError

STAGES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Stages within a block, in the order the forward pass reaches them."""

_CANONICAL = re.compile(r"^(resid_pre|attn_out|mlp_out|resid_post)\.(\d+)$")
_TRANSFORMER_LENS = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|attn_out|mlp_out|resid_post)$")
_MODULE_PATH = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.)?layers\.(\d+)$")
_FORMS = "resid_post.3, a bare layer number, blocks.3.hook_resid_post or model.layers.3"


def canonical_hook(name: str | int) -> str:
    """The canonical name (`resid_post.3`) of a hook written in any accepted spelling; HookError otherwise."""
    text = str(name).strip()
    if text.isdigit():
        return f"resid_post.{int(text)}"
    if m := _CANONICAL.match(text):
        return f"{m.group(1)}.{int(m.group(2))}"
    if m := _TRANSFORMER_LENS.match(text):
        return f"{m.group(2)}.{int(m.group(1))}"
    if m := _MODULE_PATH.match(text):
        return f"resid_post.{int(m.group(1))}"
    raise HookError(f"bad hook point {text!r}: write it as {_FORMS} (stages: {', '.join(STAGES)})")


def hook_spellings(hook: str) -> list[str]:
    """The names a folder of SAEs may use for `hook`: canonical first, then TransformerLens, then (for the
    residual stream after a block) the module path sparsify uses."""
    point = canonical_hook(hook)
    stage, layer = point.rsplit(".", 1)
    names = [point, f"blocks.{layer}.hook_{stage}"]
    return names + ([f"layers.{layer}"] if stage == "resid_post" else [])


def transformer_lens_name(hook: str) -> str:
    """`resid_post.9` -> `blocks.9.hook_resid_post`, the name SAELens writes in an SAE's cfg.json."""
    return hook_spellings(hook)[1]


@dataclass(frozen=True, order=True)
class HookPoint:
    """A named place in the residual stream; orders by forward-pass position."""

    layer: int
    stage_index: int

    @property
    def stage(self) -> str:
        return STAGES[self.stage_index]

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.layer}"

    def __str__(self) -> str:
        return self.name


def parse_hook(name: str | int, n_layers: int) -> HookPoint:
    """Any accepted spelling -> HookPoint; a HookError for bad names or layers out of range."""
    stage, layer = canonical_hook(name).rsplit(".", 1)
    if int(layer) >= n_layers:
        raise HookError(f"hook point '{name}' is out of range: this model has layers 0..{n_layers - 1}")
    return HookPoint(int(layer), STAGES.index(stage))


def parse_hooks(names: str | list[str], n_layers: int) -> list[HookPoint]:
    """Parse a comma-separated string or a list; sorted, duplicates are an error."""
    items = [n for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
    if not items:
        raise HookError("no hook points given: name at least one, e.g. resid_post.3")
    points = [parse_hook(n, n_layers) for n in items]
    if len(set(points)) != len(points):
        raise HookError(f"hook points repeat in '{','.join(map(str, items))}': name each once")
    return sorted(points)


TEMPLATE_FIELDS = ("hook", "layer")


def template_problem(template: str) -> str | None:
    """What is wrong with an SAE folder template (a path with `{hook}` and / or `{layer}`), or None.  A path
    without braces is a folder holding one SAE folder per hook, also fine."""
    import string

    try:
        fields = [
            (name, spec, conv) for _, name, spec, conv in string.Formatter().parse(str(template)) if name is not None
        ]
    except ValueError as exc:
        return f"{exc} (write a literal brace as {{{{ or }}}})"
    for name, spec, conv in fields:
        if name not in TEMPLATE_FIELDS or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            return f"{shown} is not a field it can fill"
    return None
