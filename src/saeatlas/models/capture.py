"""Reading and replacing activations at hook points, with early stop.

`capture` runs the model and returns the activations at the requested points; the forward pass stops (by an
exception raised inside the deepest hook) as soon as the deepest point is captured, so later blocks, the final
norm and the LM head are never computed.  `patched` replaces the activation at one point on every forward.
`resid_post.L` is the output of block L: it equals `hidden_states[L + 1]` of a transformers forward with
`output_hidden_states=True` for every block but the last, whose `hidden_states` entry has the final norm applied.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .architectures import submodule
from .handle import ModelHandle
from .hooks import HookPoint


class _StopForward(Exception):
    """Raised inside the deepest hook to end the forward pass early."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _sublayer(handle: ModelHandle, point: HookPoint) -> nn.Module:
    """The module whose output *is* the point (for every stage but resid_pre, which is the block's input)."""
    path = {"attn_out": handle.architecture.attn_out, "mlp_out": handle.architecture.mlp_out}.get(point.stage, "")
    return submodule(handle.layers[point.layer], path)


def capture(
    handle: ModelHandle, points: list[HookPoint], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Run the base model and return `{name: [batch, seq, d_model]}` at each point.

    The forward stops after the deepest point; tensors keep the model dtype and stay on the model's device
    (the inputs are moved there).
    """
    deepest = max(points)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def store(point: HookPoint, tensor: torch.Tensor) -> None:
        captured[point.name] = tensor.detach()
        if point == deepest:
            raise _StopForward

    for point in points:
        if point.stage == "resid_pre":
            hook = lambda mod, args, kwargs, p=point: store(p, args[0] if args else kwargs["hidden_states"])
            handles.append(handle.layers[point.layer].register_forward_pre_hook(hook, with_kwargs=True))
        else:
            hook = lambda mod, args, output, p=point: store(p, _hidden(output))
            handles.append(_sublayer(handle, point).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            device = handle.device
            handle.base(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


@contextlib.contextmanager
def patched(handle: ModelHandle, point: HookPoint, fn):
    """Within the block, replace the activation at `point` by `fn(activation)` on every forward.

    fn: [batch, seq, d_model] -> same shape and dtype.
    """
    if point.stage == "resid_pre":

        def pre_hook(mod, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        hook = handle.layers[point.layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        hook = _sublayer(handle, point).register_forward_hook(
            lambda mod, args, output: _replace(output, fn(_hidden(output)))
        )
    try:
        yield
    finally:
        hook.remove()
