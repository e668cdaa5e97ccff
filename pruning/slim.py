"""Physical surgery: ``slim(denoiser, plan)`` returns a new, smaller module.

Two passes over a deep copy (the input is never mutated), or with ``inplace=True`` over the
denoiser itself (no copy: each parameter is replaced by its slice, so the old one is freed
at once and the peak is the model plus its largest parameter):

1. tensors: every parameter touched by a pruned structure is sliced once, with one keep-mask
   per (parameter, dim) built from the structures' ``Cut`` specs (so a FLUX single block's
   ``proj_out`` loses head columns and MLP columns in the same slice);
2. attributes: a registry of cutters keyed by module type brings each module's attributes
   (``heads``, ``inner_dim``, ``in_features``, ``num_groups``, ...) in line with its tensors.

Removed operators are replaced by the stand-ins of ``replacements.py``. Works on the meta
device too (no weights are allocated), and on a denoiser with accelerate's offload hooks (the
copy has none: see ``memory.plain_copy``; ``inplace`` refuses a hooked denoiser).

``inplace`` is for a model nobody else holds (one loaded for this export or generation, a meta
model built to load an export): never for a model shared between users (``app_support.cache``).

>>> import torch
>>> from pruning.testing import tiny_pipeline
>>> from pruning.plan import PruningPlan
>>> unet = tiny_pipeline("sd").unet
>>> attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
>>> small = slim(unet, PruningPlan(family="sd", base="tiny:sd", kept_heads={attn: (0,)}))
>>> small.get_submodule(attn).heads, unet.get_submodule(attn).heads > 1
(1, True)
>>> same = slim(unet, PruningPlan(family="sd", base="tiny:sd", kept_heads={attn: (0,)}), inplace=True)
>>> same is unet, unet.get_submodule(attn).heads
(True, 1)
"""

from __future__ import annotations

from collections import defaultdict

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import (
    CombinedTimestepGuidanceTextProjEmbeddings,
    CombinedTimestepTextProjEmbeddings,
    TimestepEmbedding,
)
from diffusers.models.transformers.transformer_flux import FluxAttention
from torch import nn

from .catalog import Structure, discover, forget
from .errors import SettingsError
from .memory import offloaded, plain_copy
from .plan import PruningPlan
from .replacements import replacement_for
from .specs import CUTTERS, UNIT_KINDS, inside, layers_of, register_cutter, set_heads  # noqa: F401 (re-exported: families register here)
from .standin import linear_operators, map_shapes


def slim(denoiser: nn.Module, plan: PruningPlan, *, inplace: bool = False) -> nn.Module:
    """A physically slimmed copy of ``denoiser`` following ``plan`` (validated and normalized).

    ``inplace``: slim ``denoiser`` itself and return it (peak memory: the model plus its largest
    parameter, instead of twice the model); the same tensors as the copy, bit for bit.
    """
    plan = plan.normalized(denoiser)
    found = discover(denoiser)  # loads every family module, and with them their cutters
    if inplace and offloaded(denoiser):
        raise SettingsError("slim(inplace=True) needs a denoiser without accelerate's offload hooks "
                            "(its weights live in the hooks): slim a copy instead (inplace=False)")
    if inplace:
        forget(denoiser)  # its cached discovery and catalog describe the unpruned model
    new = denoiser if inplace else plain_copy(denoiser)  # the copy has no offload hooks (nor what they point at)
    _slice_parameters(new, keep_masks(new, found.structures, plan))
    if inplace:
        _realign(new)
    owned: dict[str, dict[str, Structure]] = defaultdict(dict)
    for kind in UNIT_KINDS:
        for fqn in plan.kept(kind):
            s = found.structures[fqn]
            owned[_owner_of(s)][kind] = s
    # every layer a structure cuts, also outside its own module (SDXL's add_embedding.linear_2, the consumers)
    _sync_leaves(new, dict.fromkeys(m for k in UNIT_KINDS for f in plan.kept(k) for m in layers_of(found.structures[f])))
    for fqn, structures in sorted(owned.items()):
        module = new.get_submodule(fqn)
        cutter = next((fn for t, fn in CUTTERS.items() if isinstance(module, t)), None)
        if cutter is None:
            raise TypeError(f"no cutter registered for {type(module).__name__} at {fqn!r}")
        cutter(module, structures)
    linear = set(linear_operators(plan))  # stand-ins that reconstruction fitted as linear maps
    for fqn in plan.removed_operators:
        parent_name, _, child = fqn.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        module, kind = getattr(parent, child), found.operators[fqn].kind
        setattr(parent, child, replacement_for(module, kind, compensated=fqn in plan.compensated,
                                               maps=map_shapes(module, kind) if fqn in linear else None))
    new.pruning_plan = plan  # plain attribute for introspection; not part of the state_dict
    return new


def _owner_of(s: Structure) -> str:
    """The module whose cutter updates the attributes for ``s``."""
    return s.fqn.rsplit(".", 1)[0] if s.component in ("single_attn", "proj_mlp") else s.fqn


def keep_masks(model: nn.Module, structures: dict[str, Structure], plan: PruningPlan) -> dict[str, dict]:
    """``{param: {dim: (size,) bool}}``: which slices of each parameter a plan keeps."""
    params = dict(model.named_parameters())
    masks: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for kind in UNIT_KINDS:
        for fqn, kept in plan.kept(kind).items():
            s = structures[fqn]
            removed = sorted(set(range(s.units)) - set(kept))
            for cut in s.cuts:
                if any(inside(cut.param, op) for op in plan.removed_operators):
                    continue  # a conditioning channel's consumer inside a removed operator: replaced whole
                size = params[cut.param].shape[cut.dim]
                mask = masks[cut.param].setdefault(cut.dim, torch.ones(size, dtype=torch.bool))
                for u in removed:
                    start = cut.offset + u * s.unit_size
                    mask[start:start + s.unit_size] = False
    return masks


def slice_tensor(t: torch.Tensor, dims: dict[int, torch.Tensor]) -> torch.Tensor:
    """``t`` restricted to the kept indices of each dim (``dims``: ``{dim: (size,) bool}``, one
    entry of :func:`keep_masks`); a new contiguous tensor. ``slim`` and ``materialize`` both cut with it.

    >>> slice_tensor(torch.arange(6).reshape(2, 3), {1: torch.tensor([True, False, True])}).tolist()
    [[0, 2], [3, 5]]
    """
    for dim, keep in dims.items():
        t = t.index_select(dim, keep.nonzero().flatten().to(t.device))
    return t.contiguous()


def _slice_parameters(model: nn.Module, keep_masks: dict[str, dict[int, torch.Tensor]]) -> None:
    """Replace each parameter by its slice, one at a time (in place, the old tensor is freed before the next)."""
    for name, dims in keep_masks.items():
        owner_name, _, pname = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, pname)
        setattr(owner, pname, nn.Parameter(slice_tensor(old.detach(), dims), requires_grad=old.requires_grad))
        del old


def _realign(model: nn.Module, alignment: int = 64) -> None:
    """Give every tensor left unsliced fresh, aligned storage (one at a time), as the copy's deep copy
    does: weights loaded from safetensors sit at unaligned addresses, and CPU kernels can round
    differently there, so an in-place model would not compute bit for bit as a copied one."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None and not t.is_meta and t.data_ptr() % alignment:
                    fresh = t.detach().clone()
                    store[name] = nn.Parameter(fresh, requires_grad=t.requires_grad) if isinstance(
                        t, nn.Parameter) else fresh


def _sync_leaves(model: nn.Module, owners) -> None:
    """Linear / Conv2d / GroupNorm attributes follow their (sliced) weights (``owners``: module FQNs)."""
    for owner in owners:
        for _, m in model.get_submodule(owner).named_modules():
            if isinstance(m, nn.Linear):
                m.out_features, m.in_features = m.weight.shape
            elif isinstance(m, nn.Conv2d):
                m.out_channels, m.in_channels = m.weight.shape[:2]
            elif isinstance(m, nn.GroupNorm) and m.weight is not None:
                m.num_channels = m.weight.shape[0]


@register_cutter(Attention, FluxAttention)
def _cut_attention(attn: nn.Module, s: dict[str, Structure]) -> None:
    set_heads(attn, s["head"].unit_size)


@register_cutter(FeedForward)
def _cut_ffn(ff: FeedForward, s: dict[str, Structure]) -> None:
    pass  # a FeedForward keeps all its sizes in its Linear layers, which _sync_leaves updates


@register_cutter(TimestepEmbedding, CombinedTimestepTextProjEmbeddings, CombinedTimestepGuidanceTextProjEmbeddings)
def _cut_embedding(emb: nn.Module, s: dict[str, Structure]) -> None:
    pass  # conditioning channels: the embedders' and consumers' sizes live in Linear layers (_sync_leaves)
