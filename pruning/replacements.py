"""Modules that stand in for a removed operator, shared by ``masks`` (as a forward override,
so a preview skips the work too) and ``slim`` (as the module that replaces the operator).

>>> import torch
>>> ZeroBranch()(torch.ones(2, 3)).sum().item()
0.0
"""

from __future__ import annotations

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn


def _first(args, kwargs, name):
    return args[0] if args else kwargs[name]


class ZeroBranch(nn.Module):
    """A removed attention or FFN branch: adds nothing to the residual stream."""

    def forward(self, *args, **kwargs):
        return torch.zeros_like(_first(args, kwargs, "hidden_states"))


class JointZeroBranch(nn.Module):
    """A removed FLUX joint attention: nothing for either stream."""

    def forward(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        return torch.zeros_like(hidden_states), torch.zeros_like(encoder_hidden_states)


class ResnetShortcut(nn.Module):
    """A removed ResnetBlock2D: only its shortcut remains (the cheaper op that keeps the shape)."""

    def __init__(self, conv_shortcut: nn.Module | None, output_scale_factor: float = 1.0):
        super().__init__()
        self.conv_shortcut = conv_shortcut
        self.output_scale_factor = output_scale_factor

    def forward(self, input_tensor, temb=None, *args, **kwargs):
        x = self.conv_shortcut(input_tensor.contiguous()) if self.conv_shortcut is not None else input_tensor
        return x / self.output_scale_factor


class IdentityTransformer(nn.Module):
    """A removed Transformer2DModel: returns its input in the same output type."""

    def forward(self, hidden_states, *args, return_dict: bool = True, **kwargs):
        return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)


class IdentityFluxBlock(nn.Module):
    """A removed FLUX double or single block: both streams pass through unchanged."""

    def forward(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        return encoder_hidden_states, hidden_states


class EmptyAttention(nn.Module):
    """A FLUX single-block attention with every head pruned: a zero-width output."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (B, N, 0)


def replacement_for(module: nn.Module, kind: str) -> nn.Module:
    """The stand-in for operator ``module`` of the given catalog kind (shares no new weights)."""
    if kind in ("attn1", "attn2", "ff", "ff_context"):
        return ZeroBranch()
    if kind == "attn":
        return JointZeroBranch()
    if kind == "resnet":
        return ResnetShortcut(module.conv_shortcut, module.output_scale_factor)
    if kind == "transformer":
        return IdentityTransformer()
    if kind in ("double_block", "single_block"):
        return IdentityFluxBlock()
    raise ValueError(f"unknown operator kind {kind!r}")
