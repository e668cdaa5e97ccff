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

UNIT_KINDS = ("head", "neuron", "group", "channel")  # the kinds of prunable units, everywhere in the package
# The kinds inside blocks: the score-only methods' default. A "channel" is one channel of the
# conditioning embedding (time / pooled text) that every modulation layer reads; removed without
# compensation it shifts every block at once, so those methods take it only when asked.
BLOCK_UNIT_KINDS = ("head", "neuron", "group")


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
    """A prunable family of units (heads, neurons, channel groups) owned by one module, or the
    conditioning channels (kind "channel"): ``fqn`` is the embedding, and the cuts span its producers
    and every consumer, in modules all over the denoiser (see :func:`consumers_of`)."""

    fqn: str
    kind: str  # head | neuron | group | channel
    component: str  # attn1 | attn2 | attn | single_attn | ff | ff_context | proj_mlp | resnet | cond
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


def channel_structure(denoiser: nn.Module, fqn: str, producers: list[str], consumers: list[str]) -> Structure | None:
    """The conditioning channels of a denoiser: the embedding ``fqn`` whose output is the sum of the
    ``producers`` (Linear layers, one row per channel) and that the ``consumers`` read (Linear layers
    that take it through an elementwise activation: one column per channel). None where the widths
    do not agree (then the family's layout is not the one it knows).

    >>> from pruning.testing import tiny_pipeline
    >>> sd3 = tiny_pipeline("sd3").transformer
    >>> s = channel_structure(sd3, "time_text_embed", ["time_text_embed.text_embedder.linear_2"],
    ...                       ["norm_out.linear"])
    >>> s.kind, s.units == sd3.norm_out.linear.in_features, [c.dim for c in s.cuts]
    ('channel', True, [0, 0, 1])
    """
    prods = [(p, denoiser.get_submodule(p)) for p in producers]
    cons = [(c, denoiser.get_submodule(c)) for c in consumers]
    if not prods or not cons or not all(isinstance(m, nn.Linear) for _, m in prods + cons):
        return None
    width = prods[0][1].out_features
    if any(m.out_features != width for _, m in prods) or any(m.in_features != width for _, m in cons):
        return None
    if width == 0:
        return None  # a model slimmed with every channel pruned: nothing left to prune
    cuts = [Cut(f"{p}.{t}", 0) for p, m in prods for t in ("weight", "bias") if getattr(m, t) is not None]
    cuts += [Cut(f"{c}.weight", 1) for c, _ in cons]
    parts = tuple((name, width) for name, _ in prods + cons)
    return Structure(fqn, "channel", "cond", width, 1, tuple(cuts), parts)


def layers_of(s: Structure, dim: int | None = None) -> list[str]:
    """The modules whose parameters ``s`` cuts (only along ``dim`` if given), in order.

    >>> s = Structure("ff", "neuron", "ff", 4, 1, (Cut("ff.net.0.proj.weight", 0), Cut("ff.net.2.weight", 1)), ())
    >>> layers_of(s), consumers_of(s)
    (['ff.net.0.proj', 'ff.net.2'], ['ff.net.2'])
    """
    return list(dict.fromkeys(c.param.rsplit(".", 1)[0] for c in s.cuts if dim is None or c.dim == dim))


def consumers_of(s: Structure) -> list[str]:
    """The layers that read a structure's units as input columns (its cuts along dim 1), in order."""
    return layers_of(s, 1)


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
