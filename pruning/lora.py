"""LoRAs carried through pruning: slice a LoRA for a plan, or fuse it into the model before pruning.

A LoRA adds ``scale * B @ A`` to a layer's weight (``A``: rank x inputs, ``B``: outputs x rank;
for a conv, ``A`` is the k x k conv and ``B`` the 1 x 1 one). Pruning keeps some output rows of
the layers that produce pruned units (``to_q/k/v``, ``add_*_proj``, ``ff.net[0]``, a resnet's
``conv1`` / ``time_emb_proj``) and some input columns of the layers that read them (``to_out[0]``,
``to_add_out``, ``ff.net[2]``, ``proj_out``, a resnet's ``conv2``): exactly the rows of ``B`` and
the columns of ``A``, found from the same keep masks ``slim`` uses (``slim.keep_masks``), so
``slim(base + LoRA) == slim(base) + sliced LoRA``. Factors of layers inside removed operators are
dropped and reported (``dropped``); text-encoder factors pass through unchanged.

Inputs: the formats diffusers' ``load_lora_weights`` reads (diffusers / peft safetensors, kohya
and the other formats its ``lora_state_dict`` converts), safetensors only (nothing is
unpickled). The LoRA's scale (``alpha / rank``, rsLoRA's ``alpha / sqrt(rank)``) is folded into
``B``, and the written file's metadata says alpha = rank, so diffusers applies it at scale 1.

>>> import torch
>>> A, B = torch.randn(2, 5), torch.randn(4, 2)
>>> keep_rows, keep_cols = torch.tensor([0, 2]), torch.tensor([1, 3, 4])
>>> full = (B @ A)[keep_rows][:, keep_cols]
>>> torch.allclose(full, B[keep_rows] @ A[:, keep_cols])
True
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import families
from .catalog import discover, inside
from .errors import ExportError, SettingsError
from .files import atomic_write, sha256_file
from .memory import plain_copy
from .plan import PruningPlan
from .slim import keep_masks
from .validate import number, parse_json

LORA_DIR = "lora"
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights looks for in a folder


@dataclass
class Lora:
    """LoRA factors by prefixed module name (``unet.down_blocks...to_q``): ``(A, B, bias)``, the scale
    folded into ``B`` (and the LoRA bias, if any); ``source`` names where it came from."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    source: str
    dropped: list[str] = field(default_factory=list)  # after slicing: what went with removed operators

    def for_component(self, name: str) -> dict:
        return {k[len(name) + 1:]: v for k, v in self.layers.items() if k.startswith(name + ".")}


MAX_ALPHA = 1e6  # far beyond any trained LoRA's alpha; larger values only overflow the fused weights
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # passed through unchanged


def _metadata(path: Path, what: str) -> dict:
    """The peft adapter metadata diffusers writes (``lora_adapter_metadata``, a JSON object), or {}."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return {}
    data = parse_json(raw, f"{what}: its lora_adapter_metadata")
    if not isinstance(data, dict):
        raise SettingsError(f"{what}: its lora_adapter_metadata must be a JSON object, got {type(data).__name__}")
    return data


def _alpha(name: str, value) -> float:
    """A LoRA alpha: a finite number in (0, MAX_ALPHA]."""
    return number(name, value, lo=0, hi=MAX_ALPHA, open_lo=True)


def _flag(meta: dict, key: str, what: str) -> bool:
    value = meta.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SettingsError(f"{what}: metadata {key!r} must be true or false, got {value!r:.80}")
    return value


def _module_scale(module: str, rank: int, alphas: dict, meta: dict, what: str) -> float:
    """``alpha / rank`` for one module from kohya alphas or peft metadata (1 when neither says);
    every value is checked (an alpha is a finite number in (0, MAX_ALPHA])."""
    prefix, _, name = module.partition(".")
    if f"{module}.alpha" in alphas:
        return _alpha(f"{what}: alpha of {module!r}", alphas[f"{module}.alpha"]) / rank
    if f"{prefix}.lora_alpha" not in meta and f"{prefix}.r" not in meta:
        return 1.0
    if _flag(meta, f"{prefix}.use_dora", what):
        raise SettingsError(f"LoRA module {module!r} is DoRA: only plain LoRA factors can be sliced")
    alpha = _alpha(f"{what}: metadata {prefix}.lora_alpha", meta.get(f"{prefix}.lora_alpha", rank))
    patterns = meta.get(f"{prefix}.alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise SettingsError(f"{what}: metadata {prefix}.alpha_pattern must be an object (module pattern -> "
                            f"alpha), got {type(patterns).__name__}")
    for pattern, a in patterns.items():
        if name == pattern or name.endswith("." + pattern):
            alpha = _alpha(f"{what}: metadata {prefix}.alpha_pattern[{pattern!r:.80}]", a)
    return alpha / (rank ** 0.5 if _flag(meta, f"{prefix}.use_rslora", what) else rank)


def _module_alphas(alphas: dict, convert, what: str) -> dict:
    """``{"<module>.alpha": value}`` from diffusers' network alphas (keyed by the factor's key + ``.alpha``
    for converted kohya files, or by ``<module>.alpha``)."""
    out = {}
    for key, value in alphas.items():
        base = key.removesuffix(".alpha")
        if base.endswith(".weight"):
            (conv,) = convert({base: value})
            base = conv.rsplit(".lora_", 1)[0]
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise SettingsError(f"{what}: alpha {key!r:.120} must hold one number, it has shape "
                                    f"{tuple(value.shape)}")
            value = value.item()
        out[f"{base}.alpha"] = value
    return out


def _check_factors(module: str, A: torch.Tensor, B: torch.Tensor, bias, what: str) -> None:
    """Rank >= 1, matching ranks, the factor layouts of a linear or conv LoRA, finite values."""
    if A.dim() not in (2, 4) or B.dim() != A.dim():
        raise SettingsError(f"{what}: module {module!r} has factors of shapes {tuple(A.shape)} and "
                            f"{tuple(B.shape)}; a LoRA's are 2-d (linear) or 4-d (conv)")
    if A.shape[0] < 1 or B.shape[1] != A.shape[0] or A[0].numel() == 0 or B.shape[0] < 1:
        raise SettingsError(f"{what}: module {module!r} has factors of shapes {tuple(B.shape)} x {tuple(A.shape)}: "
                            "the rank must be at least 1 and the same in lora_A and lora_B")
    if bias is not None and tuple(bias.shape) != (B.shape[0],):
        raise SettingsError(f"{what}: module {module!r} has a bias of shape {tuple(bias.shape)}, not ({B.shape[0]},)")
    for slot, t in (("lora_A", A), ("lora_B", B), ("bias", bias)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise SettingsError(f"{what}: module {module!r} has non-finite values (NaN or infinity) in its {slot}")


def _check_fits(handle, layers: dict, what: str) -> None:
    """Refuse a LoRA whose modules are not this pipeline's: every denoiser module must be a linear or
    conv layer of the denoiser with the factors' shapes; other components must be its text encoders."""
    den, prefix = handle.denoiser, handle.denoiser_name
    comps = set(getattr(handle.pipe, "components", {}) or {})
    bad = []
    for module, (A, B, _bias) in layers.items():
        part, _, name = module.partition(".")
        if part == prefix:
            try:
                layer = den.get_submodule(name)
            except AttributeError:
                bad.append(module)
                continue
            w = getattr(layer, "weight", None)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)) or B.shape[0] != w.shape[0] or A.shape[1] != w.shape[1] \
                    or (A.dim() == 4) != (w.dim() == 4):
                bad.append(f"{module} (factors {tuple(B.shape)} x {tuple(A.shape)}, weight {tuple(w.shape) if w is not None else None})")
        elif part not in TEXT_ENCODERS or part not in comps:
            bad.append(module)
    if bad:
        raise SettingsError(f"{what} does not fit {handle.source!r}: {len(bad)} of its {len(layers)} layers are not "
                            f"layers of its {prefix} or text encoders: " + ", ".join(repr(b) for b in bad[:3])
                            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + " (a LoRA for another model?)")


WHAT_IS_A_LORA = ("a LoRA file holds small low-rank factor pairs (lora_A / lora_B, or lora_down / lora_up "
                  "weights) that adapt some layers of a base model, as diffusers' load_lora_weights reads them")


def read_lora(handle, path: str | os.PathLike) -> Lora:
    """The LoRA in ``path`` (a ``.safetensors`` file, or a folder holding ``pytorch_lora_weights.safetensors``)
    for ``handle``'s pipeline, converted the way ``load_lora_weights`` converts it, scales folded."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    path = Path(path)
    if path.is_dir():
        path = path / LORA_FILE
    what = f"LoRA file {path.name!r}"  # its base name: never a folder of this machine (an upload's path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise SettingsError(f"{what}: not a .safetensors file (only safetensors LoRAs are read; "
                            "nothing is unpickled)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        # one line: safetensors quotes the file's own tensor names, which may hold newlines
        raise SettingsError(f"{what} is not a readable safetensors file: {' '.join(str(e).split())[:300]}") from None
    meta = _metadata(path, what)
    cls = type(handle.pipe)
    try:
        state, alphas = families.of(handle).lora_state_dict(cls, dict(tensors))
    except Exception as e:  # an unknown layout: diffusers would refuse it too
        raise SettingsError(f"{what}: diffusers cannot read it for a {cls.__name__}: "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    try:
        state = convert_unet_state_dict_to_peft(state)
        alphas = _module_alphas(alphas or {}, convert_unet_state_dict_to_peft, what)
    except SettingsError:
        raise
    except Exception as e:  # a layout diffusers' converter does not know
        raise SettingsError(f"{what}: diffusers cannot convert its keys: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}") from None
    factors: dict[str, dict] = {}
    for key, t in state.items():
        for part, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_B.bias", "bias")):
            if key.endswith(part):
                factors.setdefault(key[: -len(part)], {})[slot] = t
                break
        else:
            if not key.endswith(".alpha"):
                raise SettingsError(f"{what} is not a LoRA: {WHAT_IS_A_LORA}; it holds {key!r}, which is none of "
                                    "them (a whole model or text-encoder checkpoint?)")
    if not factors:
        raise SettingsError(f"{what} holds no LoRA factors: {WHAT_IS_A_LORA}")
    layers = {}
    for module, f in sorted(factors.items()):
        if "A" not in f or "B" not in f:
            raise SettingsError(f"{what}: module {module!r} lacks its lora_A or lora_B")
        if not all(t.is_floating_point() for t in f.values()):
            raise SettingsError(f"{what}: module {module!r} has factors that are not floating-point tensors")
        A, B, bias = f["A"].float(), f["B"].float(), f.get("bias")
        bias = None if bias is None else bias.float()
        _check_factors(module, A, B, bias, what)
        scale = _module_scale(module, A.shape[0], alphas, meta, what)
        B, bias = B * scale, None if bias is None else bias * scale
        _check_factors(module, A, B, bias, what)  # the folded scale may overflow
        layers[module] = (A, B, bias)
    _check_fits(handle, layers, what)
    return Lora(layers, str(path))


def _removed_by(module: str, plan: PruningPlan, found) -> str | None:
    for op in plan.removed_operators:
        if module == op or inside(module, op):
            if any(module == f"{op}.{k}" or inside(module, f"{op}.{k}") for k in found.operators[op].kept):
                return None  # e.g. a removed resnet's conv_shortcut: it stays
            return op
    return None


def slice_lora(handle, plan: PruningPlan, lora: Lora) -> Lora:
    """``lora`` for the slim model of ``plan``: rows of ``B`` and columns of ``A`` sliced as ``slim``
    slices the weights, factors of removed operators dropped (listed in ``dropped``)."""
    den = handle.denoiser
    plan = plan.normalized(den)
    found = discover(den)
    masks = keep_masks(den, found.structures, plan)
    prefix = handle.denoiser_name
    out, dropped = {}, []
    for module, (A, B, bias) in lora.layers.items():
        if not module.startswith(prefix + "."):
            out[module] = (A, B, bias)  # another component (a text encoder): not pruned
            continue
        name = module[len(prefix) + 1:]
        try:
            layer = den.get_submodule(name)
        except AttributeError:
            raise SettingsError(f"LoRA file {Path(lora.source).name!r} adapts {name!r}, which {handle.source!r} does not have "
                                "(a LoRA for another model?)") from None
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or B.shape[0] != layer.weight.shape[0] \
                or A.shape[1] != layer.weight.shape[1]:
            raise SettingsError(f"LoRA file {Path(lora.source).name!r}: factors for {name!r} ({tuple(B.shape)} x {tuple(A.shape)}) "
                                f"do not fit its weight {tuple(layer.weight.shape)}")
        op = _removed_by(name, plan, found)
        rows = masks.get(f"{name}.weight", {}).get(0)
        cols = masks.get(f"{name}.weight", {}).get(1)
        if op is not None or (rows is not None and not rows.any()):
            dropped.append(f"{module} (removed with {op})" if op else f"{module} (all its units pruned)")
            continue
        if cols is not None and not cols.any():  # every input pruned (all the conditioning channels): B @ A is 0
            dropped.append(f"{module} (all its inputs pruned" + ("; its LoRA bias goes with it)" if bias is not None
                                                                  else ")"))
            continue
        if rows is not None:
            keep = rows.nonzero().flatten()
            B = B.index_select(0, keep)
            bias = None if bias is None else bias.index_select(0, keep)
        if cols is not None:
            A = A.index_select(1, cols.nonzero().flatten())
        out[module] = (A.contiguous(), B.contiguous(), bias)
    return Lora(out, lora.source, dropped)


def _delta(A: torch.Tensor, B: torch.Tensor, shape) -> torch.Tensor:
    """``B @ A`` shaped like the weight (a conv's ``A`` is k x k, its ``B`` 1 x 1)."""
    return (B.flatten(1) @ A.flatten(1)).view(shape)


@torch.no_grad()
def fuse_into(module: nn.Module, factors: dict, scale: float = 1.0) -> nn.Module:
    """Add ``scale * B @ A`` (and the LoRA bias) to the weights of ``module``'s layers, in place."""
    for name, (A, B, bias) in factors.items():
        layer = module.get_submodule(name)
        w = layer.weight
        w.add_((scale * _delta(A.double(), B.double(), w.shape)).to(w.dtype))
        if bias is not None:
            if layer.bias is None:
                raise SettingsError(f"the LoRA has a bias for {name!r}, which has none")
            layer.bias.add_((scale * bias).to(layer.bias.dtype))
    return module


def fuse_lora(handle, path: str | os.PathLike, scale: float = 1.0):
    """A new ``Handle`` with the LoRA fused into copies of the components it adapts (the given
    model is untouched): prune this, and the scores reflect the LoRA. Its ``model_ref`` names the
    LoRA, so plans made on it are refused on the plain base."""
    from .loading import handle_from_pipe

    lora = read_lora(handle, path)
    parts = {k.split(".", 1)[0] for k in lora.layers}
    comps = dict(handle.pipe.components)
    missing = sorted(parts - set(comps))
    if missing:
        raise SettingsError(f"LoRA file {Path(lora.source).name!r} adapts {missing[0]!r}, which {handle.source!r} does not have")
    for part in parts:
        comps[part] = fuse_into(plain_copy(comps[part]), lora.for_component(part), scale)
    pipe = type(handle.pipe)(**comps)
    pipe.set_progress_bar_config(disable=True)
    ref = f"{handle.model_ref}+lora:{sha256_file(lora.source)[:12]}" + ("" if scale == 1 else f"x{scale:g}")
    return handle_from_pipe(pipe, model_ref=ref, source=handle.source, defaults=handle.defaults)


def write_lora(lora: Lora, path: str | os.PathLike) -> Path:
    """Write ``lora`` as a diffusers/peft safetensors LoRA (alpha = rank: the scale is in ``B``), atomically."""
    tensors, meta = {}, {}
    by_prefix: dict[str, dict[str, int]] = {}
    for module, (A, B, bias) in lora.layers.items():
        tensors[f"{module}.lora_A.weight"] = A.contiguous()
        tensors[f"{module}.lora_B.weight"] = B.contiguous()
        if bias is not None:
            tensors[f"{module}.lora_B.bias"] = bias.contiguous()
        prefix, _, name = module.partition(".")
        by_prefix.setdefault(prefix, {})[name] = A.shape[0]
    for prefix, ranks in by_prefix.items():
        r = Counter(ranks.values()).most_common(1)[0][0]
        other = {m: k for m, k in ranks.items() if k != r}
        meta.update({f"{prefix}.r": r, f"{prefix}.lora_alpha": r, f"{prefix}.rank_pattern": other,
                     f"{prefix}.alpha_pattern": other, f"{prefix}.target_modules": sorted(ranks),
                     f"{prefix}.lora_bias": any(lora.layers[f"{prefix}.{m}"][2] is not None for m in ranks)})
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    return Path(path)


def slice_lora_file(handle, plan: PruningPlan, source: str | os.PathLike, out_dir: str | os.PathLike,
                    rename=None) -> dict:
    """Slice the LoRA in ``source`` for ``plan`` into ``out_dir/pytorch_lora_weights.safetensors``; returns
    the report an export records: {"file", "source", "sliced", "kept", "dropped"}. ``rename``: maps the
    denoiser's module names to those of the written model (a native export's renumbered blocks)."""
    lora = read_lora(handle, source)
    small = slice_lora(handle, plan, lora)
    if rename is not None:
        small = renamed(small, handle.denoiser_name, rename)
    if not small.layers:
        raise ExportError(f"every layer the LoRA file {Path(lora.source).name!r} adapts is removed by the plan: "
                          + ", ".join(small.dropped[:3]))
    write_lora(small, Path(out_dir) / LORA_FILE)
    changed = sum(1 for k, v in small.layers.items() if v[0].shape != lora.layers[k][0].shape
                  or v[1].shape != lora.layers[k][1].shape)
    return {"file": f"{Path(out_dir).name}/{LORA_FILE}", "source": Path(lora.source).name, "sliced": changed,
            "kept": len(small.layers), "dropped": small.dropped}


def renamed(lora: Lora, component: str, rename) -> Lora:
    """``lora`` with the module names of ``component`` passed through ``rename`` (the others unchanged).

    >>> t = torch.zeros(1, 1)
    >>> renamed(Lora({"transformer.blocks.2.to_q": (t, t, None)}, "x"), "transformer",
    ...         lambda m: m.replace("blocks.2", "blocks.1")).layers.keys()
    dict_keys(['transformer.blocks.1.to_q'])
    """
    prefix = component + "."
    layers = {(prefix + rename(k[len(prefix):]) if k.startswith(prefix) else k): v for k, v in lora.layers.items()}
    return Lora(layers, lora.source, lora.dropped)


__all__ = ["Lora", "read_lora", "slice_lora", "write_lora", "slice_lora_file", "renamed", "fuse_lora", "fuse_into",
           "LORA_FILE", "LORA_DIR"]
