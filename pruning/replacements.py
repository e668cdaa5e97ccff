"""Modules that stand in for a removed operator, shared by ``masks`` (as a forward override,
so a preview skips the work too) and ``slim`` (as the module that replaces the operator).

A stand-in may carry a **compensation**: one bias per tensor it returns (reconstruction
folds the removed branch's mean output into it; ``compensate(sizes)`` adds them, zero-filled),
and a **linear map** per returned tensor (``compensate(sizes, maps)``: ``(out, in)`` matrices
applied to the tensor that output is computed from, ``sources``; fitted by :mod:`pruning.standin`).

>>> import torch
>>> ZeroBranch()(torch.ones(2, 3)).sum().item()
0.0
>>> b = ZeroBranch().compensate([3])
>>> with torch.no_grad():
...     _ = b.compensation[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
>>> b(torch.ones(2, 3)).tolist()
[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
"""

from __future__ import annotations

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn


def _first(args, kwargs, name):
    return args[0] if args else kwargs[name]


def channel_dim(t: torch.Tensor) -> int:
    """The feature dim of an activation: 1 for (B, C, H, W) maps, the last for (B, N, D) tokens."""
    return 1 if t.ndim == 4 else -1


def output_tensors(out) -> list[torch.Tensor]:
    """The tensors a module returned, in order (a tensor, a tuple, or a diffusers output)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Transformer2DModelOutput):
        return [out.sample]
    return [t for t in out if isinstance(t, torch.Tensor)]


class StandIn(nn.Module):
    """Base of the stand-ins: ``compute`` gives the removed operator's output without it;
    ``forward`` adds the compensation biases (if any) to the returned tensors, in order."""

    def compensate(self, sizes, maps=None) -> StandIn:
        """Give this stand-in one zero bias per returned tensor (``sizes``: their feature widths) and,
        with ``maps`` (``[(out, in), ...]``, one per returned tensor), zero linear maps from its sources."""
        self.compensation = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)
        if maps is not None:
            self.linear = nn.ParameterList(nn.Parameter(torch.zeros(o, i)) for o, i in maps)
        return self

    def sources(self, *args, **kwargs) -> list[torch.Tensor]:
        """The input tensor each returned tensor is computed from (what a linear map reads)."""
        return [_first(args, kwargs, "hidden_states")]

    def forward(self, *args, **kwargs):
        out = self.compute(*args, **kwargs)
        comp = self._modules.get("compensation")  # a ParameterList once compensated
        if comp is None:
            return out
        maps = self._modules.get("linear")
        if maps is not None:
            out = _add_maps(out, list(maps), self.sources(*args, **kwargs))
        return _add_biases(out, list(comp))


def _add_biases(out, biases: list[torch.Tensor]):
    def add(t, b):
        shape = [1] * t.ndim
        shape[channel_dim(t)] = b.numel()
        return t + b.to(t.dtype).view(shape)  # broadcast over batch, tokens / pixels
    if isinstance(out, torch.Tensor):
        return add(out, biases[0])
    if isinstance(out, Transformer2DModelOutput):
        return Transformer2DModelOutput(sample=add(out.sample, biases[0]))
    it = iter(biases)
    return tuple(add(t, next(it)) if isinstance(t, torch.Tensor) else t for t in out)


def _map(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``A`` (out, in) applied to each channel vector of ``x`` ((B, in, H, W) or (B, N, in))."""
    A = A.to(x.dtype)
    if x.ndim == 4:
        return torch.einsum("oc,bchw->bohw", A, x)  # (B, out, H, W)
    return x @ A.T  # (B, N, out)


def _add_maps(out, maps: list[torch.Tensor], sources: list[torch.Tensor]):
    if isinstance(out, torch.Tensor):
        return out + _map(sources[0], maps[0])
    if isinstance(out, Transformer2DModelOutput):
        return Transformer2DModelOutput(sample=out.sample + _map(sources[0], maps[0]))
    return tuple(t + _map(x, A) if isinstance(t, torch.Tensor) else t for t, A, x in zip(out, maps, sources))


class ZeroBranch(StandIn):
    """A removed attention or FFN branch: adds nothing to the residual stream."""

    def compute(self, *args, **kwargs):
        return torch.zeros_like(_first(args, kwargs, "hidden_states"))


class JointZeroBranch(StandIn):
    """A removed FLUX joint attention: nothing for either stream."""

    def compute(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        return torch.zeros_like(hidden_states), torch.zeros_like(encoder_hidden_states)

    def sources(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        return [hidden_states, encoder_hidden_states]


class ResnetShortcut(StandIn):
    """A removed ResnetBlock2D: only its shortcut remains (the cheaper op that keeps the shape)."""

    def __init__(self, conv_shortcut: nn.Module | None, output_scale_factor: float = 1.0):
        super().__init__()
        self.conv_shortcut = conv_shortcut
        self.output_scale_factor = output_scale_factor

    def compute(self, input_tensor, temb=None, *args, **kwargs):
        x = self.conv_shortcut(input_tensor.contiguous()) if self.conv_shortcut is not None else input_tensor
        return x / self.output_scale_factor

    def sources(self, input_tensor, *args, **kwargs):
        return [input_tensor]


class IdentityTransformer(StandIn):
    """A removed Transformer2DModel: returns its input in the same output type."""

    def compute(self, hidden_states, *args, return_dict: bool = True, **kwargs):
        return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)


class IdentityFluxBlock(StandIn):
    """A removed FLUX double or single block, or an SD3 joint block: both streams pass through unchanged."""

    def compute(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        return encoder_hidden_states, hidden_states

    def sources(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        return [encoder_hidden_states, hidden_states]


class EmptyAttention(nn.Module):
    """A FLUX single-block attention with every head pruned: a zero-width output."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # (B, N, 0)


def output_widths(module: nn.Module, kind: str) -> list[int]:
    """Feature widths of the tensors operator ``module`` returns (what a compensation biases)."""
    from . import families

    for f in families.all_families():  # block kinds (and special cases) are the families' knowledge
        widths = f.output_widths(module, kind)
        if widths is not None:
            return widths
    if kind in ("attn1", "attn2"):
        return [module.to_out[0].out_features]
    if kind in ("ff", "ff_context"):
        return [module.net[2].out_features]
    if kind == "attn":
        return [module.to_out[0].out_features, module.to_add_out.out_features]
    raise ValueError(f"unknown operator kind {kind!r}")


def input_widths(module: nn.Module, kind: str) -> list[int]:
    """Feature widths of the tensors each output of operator ``module`` is computed from (its
    stand-in's ``sources``): a resnet's input channels; a branch or block keeps its widths."""
    if kind == "resnet":
        return [module.conv1.in_channels]
    return output_widths(module, kind)


def replacement_for(module: nn.Module, kind: str, compensated: bool = False, maps=None) -> nn.Module:
    """The stand-in for operator ``module`` of the given catalog kind (shares no new weights);
    ``compensated``: with zero compensation biases, to be filled by reconstruction or a load;
    ``maps``: also zero linear maps of these ``(out, in)`` shapes (``standin.map_shapes``)."""
    standin = _standin(module, kind)
    if compensated:
        p = next(module.parameters())
        standin.compensate(output_widths(module, kind), maps)
        standin.compensation.to(device=p.device, dtype=p.dtype)
        if maps is not None:
            standin.linear.to(device=p.device, dtype=p.dtype)
    return standin


def _standin(module: nn.Module, kind: str) -> StandIn:
    from . import families

    if kind in ("attn1", "attn2", "ff", "ff_context"):
        return ZeroBranch()
    if kind == "attn":
        return JointZeroBranch()
    for f in families.all_families():  # block kinds: each family's stand-ins
        standin = f.standin(module, kind)
        if standin is not None:
            return standin
    raise ValueError(f"unknown operator kind {kind!r}")
