"""The vocabulary of prunable parts, below everything that uses it: what a structure's units own
(:class:`Cut`), structures and operators as frozen specs, and the registry of *cutters* (how a
module's attributes follow its sliced tensors). Family modules define their block types with it;
``catalog`` discovers specs, ``masks`` and ``slim`` act on them. It imports nothing of the
package but the family registry.

>>> op = Operator("mid_block.resnets.0", "resnet", kept=("conv_shortcut",))  # a resnet is both a fine and a block unit
>>> op.granularity, inside("mid_block.resnets.0.conv1", op.fqn)
('both', True)
>>> [c.param for c in linear_cuts("attn", [("to_q", nn.Linear(4, 4))], dim=0)]
['attn.to_q.weight', 'attn.to_q.bias']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import families

UNIT_KINDS = ("head", "neuron", "group")  # the kinds of prunable units, everywhere in the package


def inside(fqn: str, parent: str) -> bool:
    """``fqn`` is a submodule of ``parent`` (strictly).

    >>> inside("mid_block.attentions.0.transformer_blocks.0.ff", "mid_block.attentions.0"), inside("a.b", "a.b")
    (True, False)
    """
    return fqn.startswith(parent + ".")


@dataclass(frozen=True)
class Cut:
    """Unit ``u`` of a structure owns indices ``offset + u*unit_size ... +unit_size`` of ``param`` along ``dim``."""

    param: str
    dim: int
    offset: int = 0


@dataclass(frozen=True)
class Structure:
    """A prunable family of units (heads, neurons, channel groups) owned by one module."""

    fqn: str
    kind: str  # head | neuron | group
    component: str  # attn1 | attn2 | attn | single_attn | ff | ff_context | proj_mlp | resnet
    units: int
    unit_size: int
    cuts: tuple[Cut, ...]
    mac_parts: tuple[tuple[str, int], ...]  # (module fqn, extent): a unit removes macs * unit_size / extent


@dataclass(frozen=True)
class Operator:
    """A removable operator: its residual branch can contribute nothing (or only its shortcut)."""

    fqn: str
    kind: str  # attn1 | attn2 | ff | resnet | transformer | attn | ff_context | double_block | single_block
    kept: tuple[str, ...] = ()  # submodules that survive removal (a resnet's conv_shortcut)

    @property
    def granularity(self) -> str:
        fine, block = self.kind in fine_kinds(), self.kind in block_kinds()
        return "both" if fine and block else ("fine" if fine else "block")


def fine_kinds() -> tuple[str, ...]:
    """Operator kinds of fine granularity (sub-block), over every registered family."""
    return tuple(dict.fromkeys(k for f in families.all_families() for k in f.fine_kinds))


def block_kinds() -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for f in families.all_families() for k in f.block_kinds))


def linear_cuts(prefix: str, linears: list[tuple[str, nn.Linear]], dim: int, offset: int = 0) -> list[Cut]:
    cuts = []
    for name, lin in linears:
        cuts.append(Cut(f"{prefix}.{name}.weight", dim, offset))
        if dim == 0 and lin.bias is not None:
            cuts.append(Cut(f"{prefix}.{name}.bias", 0, offset))
    return cuts


CUTTERS: dict[type, Callable[[nn.Module, dict[str, Structure]], None]] = {}


def register_cutter(*types: type):
    """Register a function that updates a module's attributes after its tensors were sliced."""
    def wrap(fn):
        for t in types:
            CUTTERS[t] = fn
        return fn
    return wrap


def set_heads(attn: nn.Module, head_dim: int) -> None:
    inner = attn.to_q.weight.shape[0]
    attn.heads = inner // head_dim
    attn.inner_dim = inner
    if hasattr(attn, "inner_kv_dim"):
        attn.inner_kv_dim = inner
