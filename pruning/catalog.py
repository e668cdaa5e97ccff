"""What can be pruned in a denoiser: operators (LD-Pruner granularity) and structures.

``discover(denoiser)`` walks the module tree once and returns typed specs; ``catalog``
turns them into two DataFrames with params and MACs at a reference resolution. The same
specs drive masking (``masks.py``) and surgery (``slim.py``), so the three always agree on
what a head, a neuron or a channel group is.

>>> from pruning.testing import tiny_pipeline
>>> ops, structs = catalog(tiny_pipeline("sd").unet)
>>> sorted(set(ops["kind"]))
['attn1', 'attn2', 'ff', 'resnet', 'transformer']
>>> sorted(set(structs["kind"]))
['channel', 'group', 'head', 'neuron']
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import pandas as pd
import torch
from diffusers.models.activations import GEGLU, GELU, ApproximateGELU
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_flux import FluxAttention
from torch import nn

from . import families
from .metrics import example_inputs, meta_twin, module_macs
from .specs import (  # noqa: F401 (the vocabulary of specs, re-exported: catalog is where callers look)
    BLOCK_UNIT_KINDS,
    UNIT_KINDS,
    Cut,
    Operator,
    Structure,
    block_kinds,
    fine_kinds,
    inside,
    linear_cuts,
)


@dataclass(frozen=True)
class Discovery:
    operators: dict[str, Operator]
    structures: dict[str, Structure]
    family_hint: str  # the registered family that owns the denoiser ("sd" for every UNet, "flux", "sd3")


_DISCOVERY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CATALOG: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DOUBLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget(denoiser: nn.Module) -> None:
    """Drop the cached discovery and catalogs of ``denoiser`` (its structure is about to change in place)."""
    _DISCOVERY.pop(denoiser, None)
    _CATALOG.pop(denoiser, None)
    _DOUBLE.pop(denoiser, None)


def discover(denoiser: nn.Module) -> Discovery:
    """Operators and structures of ``denoiser`` keyed by FQN (cached per module object)."""
    if denoiser in _DISCOVERY:
        return _DISCOVERY[denoiser]
    ops: dict[str, Operator] = {}
    structs: dict[str, Structure] = {}
    fams = families.all_families()  # block types are each family's knowledge
    for name, mod in denoiser.named_modules():
        if any(f.discover_module(name, mod, ops, structs) for f in fams):
            continue
        if isinstance(mod, (Attention, FluxAttention)) and not getattr(mod, "pre_only", False):
            s = _attention_structure(name, mod)
            if s is not None:
                structs[name] = s
        elif isinstance(mod, FeedForward):
            s = _ffn_structure(name, mod)
            if s is not None:
                structs[name] = s
    owner = families.for_denoiser(denoiser)
    cond = owner.conditioning(denoiser) if owner is not None else None
    if cond is not None:
        structs[cond.fqn] = cond
    found = Discovery(ops, structs, owner.name if owner is not None else "unknown")
    _DISCOVERY[denoiser] = found
    return found


def _attention_structure(name: str, attn: nn.Module) -> Structure | None:
    inner, heads = attn.to_q.out_features, attn.heads
    if attn.to_k.out_features != inner or attn.to_v.out_features != inner or inner % heads:
        return None  # grouped-query or unusual layouts: not prunable by heads
    rows = [("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v)]
    cols = [("to_out.0", attn.to_out[0])]
    component = name.rsplit(".", 1)[-1]
    if getattr(attn, "add_q_proj", None) is not None:  # joint attention (FLUX, SD3): one head spans both streams
        rows += [("add_q_proj", attn.add_q_proj), ("add_k_proj", attn.add_k_proj), ("add_v_proj", attn.add_v_proj)]
        if getattr(attn, "to_add_out", None) is not None:  # context_pre_only (SD3's last block): no text output
            cols += [("to_add_out", attn.to_add_out)]
    cuts = linear_cuts(name, rows, 0) + linear_cuts(name, cols, 1)
    return Structure(name, "head", component, heads, inner // heads, tuple(cuts), ((name, inner),))


def _ffn_structure(name: str, ff: FeedForward) -> Structure | None:
    act, out = ff.net[0], ff.net[2]
    if not isinstance(act, (GELU, GEGLU, ApproximateGELU)) or not isinstance(out, nn.Linear):
        return None
    inner = out.in_features
    cuts = linear_cuts(name, [("net.0.proj", act.proj)], 0)
    if isinstance(act, GEGLU):  # proj holds [hidden | gate]: a neuron is one row of each half
        cuts += linear_cuts(name, [("net.0.proj", act.proj)], 0, offset=inner)
    cuts += linear_cuts(name, [("net.2", out)], 1)
    return Structure(name, "neuron", name.rsplit(".", 1)[-1], inner, 1, tuple(cuts), ((name, inner),))


# --------------------------------------------------------------------------- positions


_POS = re.compile(r"^(down_blocks|up_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)")
_STAGE = {"down_blocks": "down", "up_blocks": "up", "transformer_blocks": "double",
          "single_transformer_blocks": "single"}


def position(fqn: str, n_levels: int = 0) -> dict:
    """Block position of an FQN: stage, level (resolution level for UNets), and a block label.

    >>> position("up_blocks.1.attentions.0.transformer_blocks.0.attn2", n_levels=4)
    {'stage': 'up', 'level': 2, 'block': 'up.1'}
    >>> position("single_transformer_blocks.7.attn")
    {'stage': 'single', 'level': 7, 'block': 'single.7'}
    """
    if fqn.startswith("mid_block"):
        return {"stage": "mid", "level": max(n_levels - 1, 0), "block": "mid"}
    m = _POS.match(fqn)
    if not m:
        return {"stage": "other", "level": 0, "block": "other"}
    stage, idx = _STAGE[m.group(1)], int(m.group(2))
    level = n_levels - 1 - idx if stage == "up" else idx
    return {"stage": stage, "level": level, "block": f"{stage}.{idx}"}


# --------------------------------------------------------------------------- accounting


def _get(root: nn.Module, fqn: str) -> nn.Module:
    return root.get_submodule(fqn) if fqn else root


def unit_params(denoiser: nn.Module, s: Structure, within: bool = False, params: dict | None = None) -> int:
    """Parameters removed per unit of ``s`` (``within``: only those inside the owning module;
    ``params``: ``dict(denoiser.named_parameters())`` when the caller holds it)."""
    params = params if params is not None else dict(denoiser.named_parameters())
    cuts = [c for c in s.cuts if not within or c.param.startswith(s.fqn + ".")]
    return sum(params[c.param].numel() // params[c.param].shape[c.dim] * s.unit_size for c in cuts)


def unit_view(t, cut: Cut, s: Structure):
    """The slice of ``t`` (shaped like ``cut.param``) owned by the units of ``s``, as (units, -1)."""
    part = t.narrow(cut.dim, cut.offset, s.units * s.unit_size).movedim(cut.dim, 0)  # (units*unit_size, ...)
    return part.reshape(s.units, -1)  # (units, unit_size * rest)


def unit_totals(denoiser: nn.Module, per_param, kinds=UNIT_KINDS) -> dict:
    """``{fqn: (units,) tensor}``: for every structure of ``kinds``, the sum over the weights each
    unit owns of ``per_param(name, param)`` (a tensor shaped like the parameter), in float32 on CPU.

    >>> import torch
    >>> from pruning.testing import tiny_pipeline
    >>> unet = tiny_pipeline("sd").unet
    >>> counts = unit_totals(unet, lambda n, p: torch.ones_like(p), kinds=("head",))
    >>> s = discover(unet).structures[next(iter(counts))]
    >>> int(counts[s.fqn][0]) == unit_params(unet, s)
    True
    """
    params = dict(denoiser.named_parameters())
    out = {}
    for fqn, s in discover(denoiser).structures.items():
        if s.kind not in kinds:
            continue
        total = torch.zeros(s.units)
        for c in s.cuts:
            total += unit_view(per_param(c.param, params[c.param]).detach().float(), c, s).sum(1).cpu()
        out[fqn] = total
    return out


def unit_parts(denoiser: nn.Module, macs: dict[str, int], s: Structure,
               params: dict | None = None) -> dict[str, tuple[int, float]]:
    """``{module fqn: (params, MACs)}`` removed per unit of ``s`` in each module it cuts (a plan that
    also removes an operator holding one of them counts that module once, with the operator)."""
    params = params if params is not None else dict(denoiser.named_parameters())
    out: dict[str, list] = {}
    for c in s.cuts:
        part = out.setdefault(c.param.rsplit(".", 1)[0], [0, 0.0])
        part[0] += params[c.param].numel() // params[c.param].shape[c.dim] * s.unit_size
    for fqn, extent in s.mac_parts:
        out.setdefault(fqn, [0, 0.0])[1] += macs.get(fqn, 0) * s.unit_size / extent
    return {k: (int(p), float(m)) for k, (p, m) in out.items()}


def double_cuts(denoiser: nn.Module) -> list[tuple[str, str, str, int]]:
    """``(param, rows structure, columns structure, params)`` for every weight that two structures cut
    along its two dims (a UNet resnet's ``time_emb_proj``: rows with its channel groups, columns with
    the conditioning channels); ``params`` is what one unit of each removes twice when both go.

    >>> from pruning.testing import tiny_pipeline
    >>> double_cuts(tiny_pipeline("sd").unet)[0]
    ('down_blocks.0.resnets.0.time_emb_proj.weight', 'down_blocks.0.resnets.0', 'time_embedding', 4)
    """
    if denoiser in _DOUBLE:
        return _DOUBLE[denoiser]
    params = dict(denoiser.named_parameters())
    by_param: dict[str, dict[int, list]] = {}  # param -> dim -> [structure, its cuts along that dim]
    for s in discover(denoiser).structures.values():
        for c in s.cuts:
            entry = by_param.setdefault(c.param, {}).setdefault(c.dim, [s, 0])
            entry[1] += entry[0] is s
    out = []
    for name, dims in by_param.items():
        if 0 in dims and 1 in dims and dims[0][0] is not dims[1][0]:
            t, (rows, n_rows), (cols, n_cols) = params[name], dims[0], dims[1]
            # a unit's slices along a dim: one per cut (a scale_shift resnet's time_emb_proj: [scale | shift])
            out.append((name, rows.fqn, cols.fqn,
                        n_rows * rows.unit_size * n_cols * cols.unit_size * t.numel() // (t.shape[0] * t.shape[1])))
    _DOUBLE[denoiser] = out
    return out


def unit_macs(macs: dict[str, int], s: Structure) -> float:
    """MACs removed per unit of ``s`` (exact: every part is linear in the unit count)."""
    return sum(macs.get(fqn, 0) * s.unit_size / extent for fqn, extent in s.mac_parts)


def operator_params(denoiser: nn.Module, op: Operator) -> int:
    """Parameters removed when ``op`` is removed (all of it but the kept shortcut)."""
    mod = _get(denoiser, op.fqn)
    kept = sum(sum(p.numel() for p in mod.get_submodule(k).parameters()) for k in op.kept)
    return sum(p.numel() for p in mod.parameters()) - kept


def operator_macs(macs: dict[str, int], op: Operator) -> int:
    return macs.get(op.fqn, 0) - sum(macs.get(f"{op.fqn}.{k}", 0) for k in op.kept)


def _execution_order(denoiser: nn.Module, fqns: list[str], inputs: dict) -> tuple[dict[str, int], dict[str, int]]:
    """Order in which modules first run in a meta forward (depth for heatmap rows), and MACs."""
    order: dict[str, int] = {}
    twin = meta_twin(denoiser)  # hooks go on the twin: the real model is never touched
    for fqn in fqns:
        def hook(_m, _a, fqn=fqn):
            order.setdefault(fqn, len(order))
        _get(twin, fqn).register_forward_pre_hook(hook)
    return order, module_macs(denoiser, inputs, twin=twin)


def catalog(denoiser: nn.Module, *, sample_size: int | None = None, text_len: int | None = None):
    """``(operators, structures)`` DataFrames for ``denoiser`` at a reference input size.

    operators: fqn, kind, granularity, stage, level, block, depth, params, macs, param_share,
    mac_share. structures: one row per prunable structure: fqn, kind (head/neuron/group/channel),
    component, units, unit_size, module_params, fixed_params (module params no unit owns: lost
    too when a structure that is not an operator is emptied), unit_params, unit_macs, parts (``{module:
    (params, MACs)}`` per unit in each module it cuts: a channel structure's span the denoiser), params
    (prunable), macs (prunable), param_share, mac_share and the same position columns.
    ``sample_size`` is the latent side (defaults: UNet ``config.sample_size``, FLUX 128).
    """
    key = (sample_size, text_len)
    cached = _CATALOG.get(denoiser, {})
    if key in cached:
        return cached[key][0].copy(), cached[key][1].copy()
    found = discover(denoiser)
    inputs = example_inputs(denoiser, device="meta", sample_size=sample_size, text_len=text_len)
    owners = sorted({*found.operators, *(s.fqn for s in found.structures.values())})
    order, macs = _execution_order(denoiser, owners, inputs)
    total_p = sum(p.numel() for p in denoiser.parameters())
    total_m = macs[""] or 1
    n_levels = len(getattr(denoiser, "down_blocks", []))

    op_rows = []
    for op in found.operators.values():
        p, m = operator_params(denoiser, op), operator_macs(macs, op)
        op_rows.append(dict(fqn=op.fqn, kind=op.kind, granularity=op.granularity, **position(op.fqn, n_levels),
                            depth=order.get(op.fqn, -1), params=p, macs=m,
                            param_share=p / total_p, mac_share=m / total_m))
    st_rows, params = [], dict(denoiser.named_parameters())
    for s in found.structures.values():
        up, um = unit_params(denoiser, s, params=params), unit_macs(macs, s)
        module_p = sum(q.numel() for q in _get(denoiser, s.fqn).parameters())
        in_module = sum(c.param.startswith(s.fqn + ".") for c in s.cuts) and unit_params(denoiser, s, within=True,
                                                                                         params=params)
        st_rows.append(dict(fqn=s.fqn, kind=s.kind, component=s.component, units=s.units, unit_size=s.unit_size,
                            **position(s.fqn, n_levels), depth=order.get(s.fqn, -1),
                            module_params=module_p,
                            # an emptied channel structure removes its channels only (the embedders stay)
                            fixed_params=0 if s.kind == "channel" else module_p - in_module * s.units,
                            unit_params=up, unit_macs=um, parts=unit_parts(denoiser, macs, s, params),
                            params=up * s.units, macs=um * s.units,
                            param_share=up * s.units / total_p, mac_share=um * s.units / total_m))
    ops_df = pd.DataFrame(op_rows).sort_values("depth", kind="stable").reset_index(drop=True)
    st_df = pd.DataFrame(st_rows).sort_values("depth", kind="stable").reset_index(drop=True)
    ops_df.attrs.update(total_params=total_p, total_macs=total_m)
    st_df.attrs.update(total_params=total_p, total_macs=total_m)
    _CATALOG.setdefault(denoiser, {})[key] = (ops_df, st_df)
    return ops_df.copy(), st_df.copy()


def kind_shares(denoiser: nn.Module, structures: pd.DataFrame | None = None) -> dict[str, float]:
    """Share of the denoiser's params held by attention, FFN, resnet and FLUX single-block MLP modules.

    The model tables of the README quote these (module params, not only the prunable part).
    """
    st = structures if structures is not None else catalog(denoiser)[1]
    total = sum(p.numel() for p in denoiser.parameters())
    groups = {
        "attention": st["kind"] == "head",
        "ffn": st["component"].isin(["ff", "ff_context"]),
        "resnet": st["component"] == "resnet",
        "proj_mlp": st["component"] == "proj_mlp",
    }
    return {k: float(st.loc[mask, "module_params"].sum()) / total for k, mask in groups.items()}


__all__ = [
    "Cut", "Structure", "Operator", "Discovery", "discover", "catalog", "kind_shares", "position",
    "unit_params", "unit_parts", "unit_macs", "unit_view", "double_cuts", "unit_totals", "operator_params", "operator_macs", "UNIT_KINDS",
    "BLOCK_UNIT_KINDS",
    "inside", "linear_cuts", "fine_kinds", "block_kinds", "forget",
]
