"""Hook points and activation capture with early stop.

Names: `resid_pre.L` (input of block L), `attn_out.L`, `mlp_out.L` (what
block L's attention / MLP adds to the residual stream), `resid_post.L`
(output of block L).  `resid_post.L` equals `hidden_states[L + 1]` of a
transformers forward with `output_hidden_states=True` for every block but
the last, whose `hidden_states` entry has the final norm applied; the hook
on the block output is right for all of them.

The forward pass stops (by an exception raised inside the deepest hook) as
soon as the deepest requested point is captured: later blocks, the final
norm and the LM head are never computed.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from ..errors import HookError
from .architectures import submodule
from .handle import ModelHandle

STAGES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Stages within a block, in the order the forward pass reaches them."""

_NAME = re.compile(r"^(resid_pre|attn_out|mlp_out|resid_post)\.(\d+)$")


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


def parse_hook(name: str, n_layers: int) -> HookPoint:
    """`'resid_post.3'` -> HookPoint; a HookError for bad names or layers out of range."""
    match = _NAME.match(name.strip())
    if not match:
        raise HookError(f"bad hook point '{name}': use <stage>.<layer> with stage one of {', '.join(STAGES)}")
    layer = int(match.group(2))
    if layer >= n_layers:
        raise HookError(f"hook point '{name}' is out of range: this model has layers 0..{n_layers - 1}")
    return HookPoint(layer, STAGES.index(match.group(1)))


def parse_hooks(names: str | list[str], n_layers: int) -> list[HookPoint]:
    """Parse a comma-separated string or a list; sorted, duplicates are an error."""
    items = [n for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
    if not items:
        raise HookError("no hook points given: name at least one, e.g. resid_post.3")
    points = [parse_hook(n, n_layers) for n in items]
    if len(set(points)) != len(points):
        raise HookError(f"hook points repeat in '{','.join(items)}': name each once")
    return sorted(points)


class _StopForward(Exception):
    """Raised inside the deepest hook to end the forward pass early."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def capture(
    handle: ModelHandle, points: list[HookPoint], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Run the base model and return `{name: [batch, seq, d_model]}` at each point.

    The forward stops after the deepest point; tensors keep the model dtype.
    """
    deepest = max(points)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def store(point: HookPoint, tensor: torch.Tensor) -> None:
        captured[point.name] = tensor.detach()
        if point == deepest:
            raise _StopForward

    for point in points:
        block = handle.layers[point.layer]
        if point.stage == "resid_pre":
            hook = lambda mod, args, kwargs, p=point: store(p, args[0] if args else kwargs["hidden_states"])
            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            path = {"attn_out": handle.architecture.attn_out, "mlp_out": handle.architecture.mlp_out}.get(
                point.stage, ""
            )
            hook = lambda mod, args, output, p=point: store(p, _hidden(output))
            handles.append(submodule(block, path).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            handle.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def _replace(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextlib.contextmanager
def patched(handle: ModelHandle, point: HookPoint, fn):
    """Within the block, replace the activation at `point` by `fn(activation)` on every forward.

    fn: [batch, seq, d_model] -> same shape and dtype.
    """
    block = handle.layers[point.layer]
    if point.stage == "resid_pre":

        def pre_hook(mod, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        hook = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        path = {"attn_out": handle.architecture.attn_out, "mlp_out": handle.architecture.mlp_out}.get(point.stage, "")
        hook = submodule(block, path).register_forward_hook(
            lambda mod, args, output: _replace(output, fn(_hidden(output)))
        )
    try:
        yield
    finally:
        hook.remove()
