"""Native exports: a slim denoiser that plain diffusers builds from its own, rewritten config.

A plan is **native** when everything it removes is something a diffusers config can state:

* FLUX: whole double and single blocks (``num_layers``, ``num_single_layers``);
* SD3 / SD3.5: whole joint blocks but the last one (``num_layers``, ``dual_attention_layers``
  re-indexed; diffusers makes the last block ``context_pre_only``, so it must stay);
* SD / SDXL UNets: whole ``BasicTransformerBlock``s (their ``attn1``, ``attn2`` and ``ff`` removed
  together: ``transformer_layers_per_block`` and ``reverse_transformer_layers_per_block``, one count
  per ``Transformer2DModel``; the mid block shares the count of the last down block's first one when
  that block has attention), and every ``Transformer2DModel`` of a down / up block at once (the block
  becomes a ``DownBlock2D`` / ``UpBlock2D``).

Pruned heads, neurons and channel groups are never native: in these configs the head count also
sets the width (FLUX and SD3: the hidden size; UNets: the head dim), and FFN and resnet widths
follow the block width. A removed operator whose stand-in carries a reconstruction bias is not
native either. :func:`blockers` lists, for any plan, the layers that prevent a native export.

A native export's ``<denoiser>/config.json`` states the slim shape and its weights carry the
renumbered keys, so ``DiffusionPipeline.from_pretrained(folder)`` reads it without this package.
The manifest's ``native`` record keeps the base config, so ``load_pruned`` still rebuilds the slim
model of the plan (keys mapped back; a UNet block's three LayerNorms, which the slim model keeps but
never uses, are kept aside in ``native_dropped.safetensors``).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.plan import PruningPlan
>>> flux = tiny_pipeline("flux").transformer
>>> plan = PruningPlan(family="flux", base="tiny:flux", removed_operators=("transformer_blocks.0",))
>>> layout = native_layout(flux, plan)
>>> layout.config["num_layers"], layout.key("transformer_blocks.1.attn.to_q.weight")
(1, 'transformer_blocks.0.attn.to_q.weight')
>>> heads = PruningPlan(family="flux", base="tiny:flux", kept_heads={"transformer_blocks.0.attn": (0, 1)})
>>> blockers(flux, heads)[0].split(" (")[0]
'transformer_blocks.0.attn: attention heads pruned'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import families
from .errors import ExportError, PlanError
from .files import sha256_file
from .plan import PruningPlan
from .validate import inside as inside_folder
from .validate import py_str

DROPPED = "native_dropped.safetensors"
LORA_DIR = "lora_native"  # a LoRA sliced for the plan, its block indices renumbered as in the native folder
SINGLE_FILE = "single_file.safetensors"  # the denoiser in its original key layout (FLUX: BFL's, SD3: Stability's)
ALIGN = 64  # bytes: where a native weights file's tensor data starts (see ``save_aligned``)  # slim-model tensors the native model lacks (unused LayerNorms)
UNIT_WHY = {
    "head": "attention heads pruned (diffusers' configs derive the width from the head count: FLUX and SD3 "
            "their hidden size, UNets their head dim, so a smaller head count cannot be stated)",
    "neuron": "FFN neurons pruned (the configs fix the FFN width at 4 x the block width)",
    "group": "resnet channels pruned (the configs fix a resnet's width to its block's channels)",
    "channel": "conditioning channels pruned (the configs fix the time / text embedding's width to the block width)",
}


@dataclass(frozen=True)
class NativeLayout:
    """How a plan's slim model maps onto a stock diffusers model.

    ``config``: the slim denoiser's diffusers config. ``renames``: module prefix in the slim model ->
    in the native model, for every module of a renumbered block list (identity entries included).
    ``dropped``: module prefixes of the slim model that the native model does not have.
    """

    config: dict
    renames: Mapping[str, str] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    def key(self, k: str) -> str | None:
        """The native name of slim-model tensor ``k`` (None: the native model lacks it)."""
        if any(k.startswith(d + ".") for d in self.dropped):
            return None
        return _rename(k, self.renames)

    def slim_key(self, k: str) -> str:
        """The slim-model name of native tensor ``k``."""
        return _rename(k, {new: old for old, new in self.renames.items()})


def _rename(k: str, renames: Mapping[str, str]) -> str:
    parts = k.split(".")
    for n in range(len(parts) - 1, 0, -1):  # the longest module prefix that is renamed
        p = ".".join(parts[:n])
        if p in renames:
            return ".".join([renames[p], *parts[n:]])
    return k


def plain_config(denoiser: nn.Module) -> dict:
    """The denoiser's diffusers config as plain JSON data (no private ``_`` keys)."""
    return json.loads(json.dumps({k: v for k, v in denoiser.config.items() if not k.startswith("_")}))


def renumber(prefix: str, n: int, removed: set[str]) -> tuple[list[int], dict[str, str]]:
    """Kept indices of the block list ``prefix.0 .. prefix.{n-1}`` and their renames.

    >>> renumber("transformer_blocks", 4, {"transformer_blocks.1"})
    ([0, 2, 3], {'transformer_blocks.0': 'transformer_blocks.0', 'transformer_blocks.2': 'transformer_blocks.1', 'transformer_blocks.3': 'transformer_blocks.2'})
    """
    kept = [i for i in range(n) if f"{prefix}.{i}" not in removed]
    return kept, {f"{prefix}.{old}": f"{prefix}.{new}" for new, old in enumerate(kept)}


def blockers(denoiser: nn.Module, plan: PruningPlan) -> list[str]:
    """Why ``plan`` cannot be exported natively: one ``"FQN: reason"`` line per layer ([] = native)."""
    plan = plan.normalized(denoiser)
    out = [f"{fqn}: {UNIT_WHY[kind]}" for kind in UNIT_WHY for fqn in plan.kept(kind)]
    out += [f"{fqn}: its stand-in carries a reconstruction bias, which no diffusers config has"
            for fqn in plan.compensated]
    return out + families.get(plan.family).native_blockers(denoiser, plan)


def is_native(denoiser: nn.Module, plan: PruningPlan) -> bool:
    return not blockers(denoiser, plan)


def report(denoiser: nn.Module, plan: PruningPlan) -> dict:
    """``{"native": bool, "blockers": [...]}`` for the library, the CLI and the app."""
    why = blockers(denoiser, plan)
    return {"native": not why, "blockers": why}


def describe(rep: Mapping) -> str:
    """One line for a :func:`report`.

    >>> describe({"native": True, "blockers": []})
    'native: plain diffusers loads its export (export --native)'
    >>> describe({"native": False, "blockers": ["a: x", "b: y"]})
    'not native: a: x (and 1 more)'
    """
    if rep["native"]:
        return "native: plain diffusers loads its export (export --native)"
    more = len(rep["blockers"]) - 1
    return f"not native: {rep['blockers'][0]}" + (f" (and {more} more)" if more else "")  # layers, or the channels


def native_layout(denoiser: nn.Module, plan: PruningPlan) -> NativeLayout:
    """The native layout of ``plan``; a ``PlanError`` naming the first layer that prevents it."""
    plan = plan.normalized(denoiser)
    why = blockers(denoiser, plan)
    if why:
        more = f" (and {len(why) - 1} more)" if len(why) > 1 else ""
        raise PlanError(f"the plan is not native (diffusers' config cannot state it): {why[0]}{more}")
    return families.get(plan.family).native_layout(denoiser, plan)


def module_rename(denoiser: nn.Module, plan: PruningPlan):
    """``rename(module name)``: a slim-model module's name in the native model (for LoRA module names)."""
    renames = native_layout(denoiser, plan).renames
    return lambda name: _rename(name + ".x", renames)[:-2]


def split_state(layout: NativeLayout, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """``(native state, dropped slim tensors)`` of a slim model's state dict."""
    native, dropped = {}, {}
    for k, v in state.items():
        new = layout.key(k)
        if new is None:
            dropped[k] = v
        else:
            native[new] = v
    return native, dropped


def _header_len(tensors: Mapping[str, torch.Tensor], metadata: dict) -> int:
    """The length of the safetensors header ``save_file`` writes (its JSON: metadata, then the tensors by
    dtype size then name, no spaces; padded with spaces to 8 bytes)."""
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header, offset = {"__metadata__": metadata}, 0
    for k, v in items:
        n = v.numel() * v.element_size()
        header[k] = {"dtype": _DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    size = len(json.dumps(header, separators=(",", ":")).encode())
    return size + (-size) % 8


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8"}


def save_aligned(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict) -> None:
    """``save_file`` with the tensor data starting at a multiple of ``ALIGN`` bytes (a metadata entry pads
    the header). diffusers maps the file and computes on the mapped memory: CPU kernels round alike only
    on equally aligned data, so this makes plain diffusers' outputs equal ``load_pruned``'s bit for bit
    (every tensor whose predecessors' byte sizes are multiples of 64 is aligned: all of them at real widths)."""
    meta = dict(metadata)
    for pad in range(ALIGN if all(v.dtype in _DTYPES for v in tensors.values()) else 0):  # unknown dtype: as is
        meta = {**metadata, "pad": " " * pad}
        if (8 + _header_len(tensors, meta)) % ALIGN == 0:
            break
    save_file(dict(tensors), str(path), metadata=meta)


def write(tmp: Path, name: str, base: nn.Module, plan: PruningPlan, state: Mapping[str, torch.Tensor],
          metadata: dict, single_file: bool = False) -> dict:
    """Write the native ``<name>/`` (config + renumbered weights) into ``tmp``; returns the manifest record.

    The native model is built on the meta device from the rewritten config and must hold exactly the
    exported tensors, names and shapes (else an ``ExportError`` naming the first difference).
    """
    from .manifest import WEIGHTS

    fam = families.get(plan.family)
    layout = native_layout(base, plan)
    native, dropped = split_state(layout, state)
    model = fam.meta_denoiser(layout.config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in native.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[0]
        raise ExportError(f"the native {name} does not match the rewritten config at {diff[0]!r} "
                          f"(config {want.get(diff[0])}, weights {got.get(diff[0])})")
    (tmp / name).mkdir()
    model.save_config(tmp / name)
    save_aligned(native, tmp / name / WEIGHTS, metadata)
    if dropped:
        save_file(dropped, str(tmp / DROPPED), metadata=metadata)
    record = {"base_config": plain_config(base), "dropped": DROPPED if dropped else None,
              "params": sum(p.numel() for p in model.parameters())}
    if single_file:
        original = fam.single_file_state(native, layout.config)
        save_aligned(original, tmp / SINGLE_FILE, {"format": "pt"})
        record.update(single_file=SINGLE_FILE, single_file_layout=fam.single_file_layout)
    return record


def check_single_file(family: str) -> None:
    """Refuse a single-file export for a family without an original key layout (before any work)."""
    if families.get(family).single_file_layout is None:
        raise ExportError(f"a single-file checkpoint is written for FLUX and SD3 only (their original key layouts), "
                          f"not for {family!r}")


def slim_state(folder: Path, manifest: Mapping, base: nn.Module, plan: PruningPlan,
               state: Mapping[str, torch.Tensor]) -> dict:
    """A native export's weights under the slim model's names (for ``load_pruned``), with the
    dropped tensors (checked against the manifest's hash) put back."""
    layout = native_layout(base, plan)
    out = {layout.slim_key(k): v for k, v in state.items()}
    rel = manifest["native"].get("dropped")
    if rel:
        path = inside_folder(rel, folder)
        if rel not in manifest["files"] or not path.is_file() or sha256_file(path) != manifest["files"][rel]:
            raise ExportError(f"{str(path)!r} is missing or does not match its hash in the export manifest")
        out.update({k: v.clone() for k, v in load_file(str(path)).items()})
    return out


def card_section(record: Mapping, *, family: str, name: str, folder_name: str, full_pipeline: bool,
                 repo: str | None = None, base: str = "<the base model>") -> str:
    """The model card's section on loading the export without ``pruning`` (plain diffusers)."""
    # user values (folder, repo, base) as inert string literals in the code: validate.py_str
    fam = families.get(family)
    where = repo or folder_name
    cls = fam.denoiser_class.__name__
    lines = ["## Load it without `pruning` (native export)", "",
             f"`{name}/config.json` states the slim shape and the weights carry diffusers' own key names, so "
             "stock diffusers reads this folder (`pip install diffusers transformers torch`):", "", "```python"]
    if full_pipeline:
        lines += ["from diffusers import DiffusionPipeline",
                  f'pipe = DiffusionPipeline.from_pretrained({py_str(where)})  # the whole pipeline, slim {name}']
    else:
        lines += [f"from diffusers import {fam.pipeline_class.__name__}, {cls}",
                  f'{name} = {cls}.from_pretrained({py_str(where)}, subfolder="{name}")',
                  f'pipe = {fam.pipeline_class.__name__}.from_pretrained({py_str(base)}, {name}={name})']
    if record.get("single_file"):
        lines += ["", f"# or the single file {record['single_file']} ({record['single_file_layout']} key layout; "
                  "block counts follow from its keys):",
                  f'{name} = {cls}.from_single_file({py_str(where + "/" + record["single_file"])}, '
                  f'config={py_str(where)}, subfolder="{name}")']
    if record.get("lora"):
        sub, _, weight = record["lora"].rpartition("/")
        lines.append(f'pipe.load_lora_weights({py_str(where)}, subfolder={py_str(sub)}, weight_name={py_str(weight)})'
                     "  # the LoRA, sliced for the plan, its blocks renumbered as in this folder")
    lines += ["```", "", "Loaders that read it: diffusers (`from_pretrained`), `pruning.load_pruned` (the plan in "
              "`pruning_plan.json` is re-applied to the base config)"
              + (", and single-file loaders (ComfyUI, `from_single_file`) through the single-file checkpoint."
                 if record.get("single_file") else "."), ""]
    return "\n".join(lines)


def append_card(folder: Path, record: Mapping, **kw) -> None:
    """Add :func:`card_section` to the card (``README.md``) written in ``folder``."""
    card = folder / "README.md"
    card.write_text(card.read_text().rstrip("\n") + "\n\n" + card_section(record, **kw))


__all__ = ["NativeLayout", "blockers", "is_native", "report", "describe", "native_layout", "split_state",
           "module_rename", "renumber", "plain_config", "write", "slim_state", "card_section",
           "append_card", "check_single_file", "DROPPED", "LORA_DIR", "SINGLE_FILE"]
