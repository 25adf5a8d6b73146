"""Where each supported architecture keeps its blocks and sublayer outputs.

A hook point names a place in the residual stream; this table says which
module's output *is* that place for each model family.  `attn_out.L` and
`mlp_out.L` are what a block adds to the residual stream:

- Llama / Qwen2 / Mistral (pre-norm): the `self_attn` and `mlp` outputs.
- Gemma 2 / 3 (sandwich norm): the outputs of `post_attention_layernorm` and
  `post_feedforward_layernorm`, i.e. after the extra norm, right before the add.
- GPT-NeoX / Pythia (pre-norm, parallel residual: resid_post = resid_pre + attn_out + mlp_out): the
  `post_attention_dropout` and `post_mlp_dropout` outputs, the very tensors the block adds (the dropouts are
  identities at inference).
- BERT (post-norm): the dense projections before add & LayerNorm
  (`attention.output.dense`, `output.dense`).  In a post-norm model the
  residual stream is re-normalised inside each block, so resid_pre + attn_out +
  mlp_out != resid_post there.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UnknownModelError


@dataclass(frozen=True)
class Architecture:
    """Module paths (dotted, relative to the base model / one block)."""

    layers: str
    """Path of the ModuleList of blocks, relative to the base model."""
    attn_out: str
    """Module inside a block whose output is the attention contribution."""
    mlp_out: str
    """Module inside a block whose output is the MLP contribution."""
    pre_norm: bool
    """True when resid_post = resid_pre + attn_out + mlp_out holds exactly."""


_PRE_NORM = Architecture(layers="layers", attn_out="self_attn", mlp_out="mlp", pre_norm=True)
_GEMMA = Architecture(
    layers="layers",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    pre_norm=True,
)
_GPT_NEOX = Architecture(layers="layers", attn_out="post_attention_dropout", mlp_out="post_mlp_dropout", pre_norm=True)
_BERT = Architecture(layers="encoder.layer", attn_out="attention.output.dense", mlp_out="output.dense", pre_norm=False)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _PRE_NORM,
    "mistral": _PRE_NORM,
    "qwen2": _PRE_NORM,
    "qwen3": _PRE_NORM,
    "gemma": _PRE_NORM,
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,
    "gemma3_text": _GEMMA,
    "gpt_neox": _GPT_NEOX,
    "bert": _BERT,
}


def architecture_for(model_type: str) -> Architecture:
    """The module table for a `config.model_type`; a clear error if unsupported."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnknownModelError(
            f"model type '{model_type}' is not supported yet: supported types are {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def submodule(root: nn.Module, path: str) -> nn.Module:
    """`root.get_submodule(path)` with '' meaning root itself."""
    return root.get_submodule(path) if path else root
