"""Export straight from the base model's files: ``materialize(plan, base, out)``.

The base denoiser is never loaded. Its config builds the model on the meta device; ``slim``'s own
``keep_masks`` (the plan's cut specs) say which rows and columns of each tensor survive, and
``slim(inplace=True)`` on the meta model gives the slim model's tensor names, shapes and the
stand-ins of removed operators. Then each tensor is read from the base's safetensors (``safe_open``,
one at a time), sliced with ``slim.slice_tensor``, replaced by its re-fitted value when the plan
carries a reconstruction (a plan-only export's ``reconstruction.safetensors``), and streamed into
diffusers' sharded layout (``pruning.shards``). Peak memory: one tensor plus the meta model and
Python (about 0.5 GB), whatever the model's size.

The result is a normal export (``pruning_plan.json``, model card, ``<denoiser>/config.json``,
weights): ``load_pruned`` reads it, and its tensors equal ``export`` of the loaded model's. A
plan-only export becomes a full one this way.

``base``: a diffusers pipeline folder (or a bundled model's name), or a Hub id ``org/name[@rev]``
whose denoiser files are fetched into the Hugging Face cache (offline: only from the cache, else
an ``ExportError`` naming the repo, at once).

>>> import tempfile
>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import folder_hash
>>> base = Path(tempfile.mkdtemp()) / "tiny-sd"
>>> tiny_pipeline("sd").save_pretrained(base)
>>> plan = PruningPlan(family="sd", base=f"local:{base}@{folder_hash(base)}", removed_operators=("mid_block.resnets.0",))
>>> out = materialize(plan, str(base), Path(tempfile.mkdtemp()) / "export", max_shard_size="1MB")
>>> sorted(p.name for p in (out / "unet").iterdir())[:2]
['config.json', 'diffusion_pytorch_model-00001-of-00006.safetensors']
>>> from pruning.export import load_pruned_denoiser
>>> type(load_pruned_denoiser(out).mid_block.resnets[0]).__name__
'ResnetShortcut'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import init_empty_weights

from . import families
from .bundled import BUNDLED
from .catalog import discover
from .errors import ExportError
from .export import _load_weights, check_base, check_target, read_plan, staged, write_manifest
from .loading import (
    DEFAULTS_FILE,
    Handle,
    _default_settings,
    folder_hash,
    hub_offline,
    preset_defaults,
    read_defaults,
)
from .manifest import DELTAS, FORMAT
from .metrics import count_params
from .plan import PruningPlan
from .shards import MAX_SHARD_SIZE, LazyWeights, write_sharded
from .slim import keep_masks, slice_tensor, slim


def materialize(plan: PruningPlan | str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
                max_shard_size: int | str = MAX_SHARD_SIZE, dtype: torch.dtype | None = None,
                overwrite: bool = False, card: bool = True) -> Path:
    """Write the full export of ``plan`` (a plan, a plan JSON, or an export folder: plan-only ones bring
    their re-fitted tensors) for the base model ``base`` into ``out``; returns the folder.

    Shards hold at most ``max_shard_size`` (``"5GB"``, bytes as an int); ``dtype`` casts the floating
    tensors (default: as stored in the base). The card is written unmeasured (no model is run)."""
    plan, deltas, where = _plan_and_deltas(plan)
    out = Path(out).expanduser().resolve()
    check_target(out, overwrite)
    family = families.get(plan.family)
    name = family.denoiser_name
    folder, model_ref, source = resolve_base(base, name)
    weights = LazyWeights(folder / name)
    cls = family.denoiser_class
    try:
        config = cls.load_config(str(folder / name))
    except Exception as e:
        raise ExportError(f"cannot read the denoiser config in {str(folder / name)!r}: {e}") from None
    with init_empty_weights():  # parameters on meta: the base is never allocated
        meta = cls.from_config(config)
    handle = config_handle(folder, meta, family=plan.family, model_ref=model_ref, source=source)
    check_base(plan, handle, where)
    plan = plan.normalized(meta)
    masks = keep_masks(meta, discover(meta).structures, plan)
    with staged(out) as tmp:
        extra = {}
        if card:  # the card reads the unpruned (meta) model: before it is slimmed
            from .card import write_card

            extra["card"] = write_card(tmp, handle, plan, None, full_pipeline=False, evaluate=False,
                                       folder_name=out.name)
        small = slim(meta, plan, inplace=True)  # meta: names, shapes and stand-ins, no weights
        specs = _specs(small, weights, masks, deltas, dtype, where)

        def tensor(key: str) -> torch.Tensor:
            t = deltas[key] if key in deltas else (
                slice_tensor(weights.get(key), masks[key]) if key in masks else
                weights.get(key) if key in weights else torch.zeros(specs[key][0]))  # a plain stand-in's bias
            return t.to(specs[key][1])

        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text((folder / name / "config.json").read_text())
        files = write_sharded(specs, tensor, tmp / name, max_shard_size=max_shard_size,
                              metadata={"format": "pt", "pruning": FORMAT})
        (tmp / DEFAULTS_FILE).write_text(json.dumps(handle.defaults, indent=2, default=str))
        write_manifest(tmp, plan, name, cls, full_pipeline=False, params=count_params(small),  # parameters, as export
                       files={f"{name}/{f}": sha for f, sha in sorted(files.items())}, extra=extra)
    return out


def _plan_and_deltas(plan) -> tuple[PruningPlan, dict, str]:
    """The plan, the re-fitted tensors it needs (``{}`` without a reconstruction) and a name for errors."""
    if isinstance(plan, PruningPlan):
        manifest, where, folder = {}, "given to materialize", None
    else:
        path = Path(plan).expanduser()
        plan, manifest = read_plan(path)
        where, folder = str(path), path if path.is_dir() else path.parent
    if plan.reconstruction is None:
        return plan, {}, where
    if manifest.get("plan_only") and DELTAS in manifest.get("files", {}):
        return plan, _load_weights(folder / DELTAS, manifest["files"][DELTAS]), where
    raise ExportError(f"plan {where!r} records a reconstruction, and its re-fitted tensors are not here: materialize "
                      f"the plan-only export folder that holds them ({DELTAS}), or export the reconstruction again")


def _specs(small, weights: LazyWeights, masks: dict, deltas: dict, dtype, where) -> dict:
    """``{key: (shape, dtype)}`` of every tensor of the slim model, checked against the base's files."""
    floats = [weights.dtype(k) for k in weights.keys() if weights.dtype(k).is_floating_point]
    default = dtype or (max(set(floats), key=floats.count) if floats else torch.float32)
    specs = {}
    for key, t in small.state_dict().items():
        shape = tuple(t.shape)
        if key in deltas:
            got, stored = tuple(deltas[key].shape), deltas[key].dtype
        elif key in weights:
            got = list(weights.shape(key))
            for dim, keep in masks.get(key, {}).items():
                got[dim] = int(keep.sum())
            got, stored = tuple(got), weights.dtype(key)
        elif t.is_meta:  # a stand-in's compensation bias: zeros in a plain slim model
            got, stored = shape, default
        else:
            raise ExportError(f"the base weights have no tensor {key!r} for plan {where!r}")
        if got != shape:
            raise ExportError(f"tensor {key!r}: the base weights give {got}, the plan's slim model needs {shape}")
        specs[key] = (shape, dtype if dtype is not None and stored.is_floating_point else stored)
    return specs


# ----------------------------------------------------------------------------- the base model


def resolve_base(base: str | os.PathLike, denoiser_name: str) -> tuple[Path, str, str]:
    """``(folder, model_ref, source)`` of a base model: a bundled name, a local diffusers folder, or a Hub id
    (its denoiser files and configs fetched into the cache; offline only from the cache)."""
    source = str(base).strip()
    if source in BUNDLED:
        folder = BUNDLED[source]
        return folder, f"bundled:{source}@{folder_hash(folder)}", source
    path = Path(os.path.expanduser(source))
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        if not (path / denoiser_name).is_dir():
            raise ExportError(f"base {source!r} is not a diffusers folder with a {denoiser_name}/ subfolder")
        folder = path.resolve()
        return folder, f"local:{folder}@{folder_hash(folder)}", source
    return _hub_base(source, denoiser_name)


def _hub_base(source: str, denoiser_name: str) -> tuple[Path, str, str]:
    from huggingface_hub import snapshot_download

    repo_id, _, revision = source.partition("@")
    offline = hub_offline()
    patterns = ["model_index.json", f"{denoiser_name}/*", "vae/config.json", "tokenizer*/tokenizer_config.json",
                DEFAULTS_FILE]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns,
                                        local_files_only=offline))
    except Exception as e:
        why = ("the Hub is offline (HF_HUB_OFFLINE=1) and its files are not in the local cache" if offline else
               f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        raise ExportError(f"cannot read base model {repo_id!r} from the Hub: {why}") from None
    if not (folder / denoiser_name).is_dir():
        raise ExportError(f"Hub model {repo_id!r} has no {denoiser_name}/ folder: not a diffusers pipeline of this family")
    return folder, f"hub:{repo_id}@{folder.name}", source  # a snapshot folder is named by its commit


def config_handle(folder: Path, denoiser, *, family: str, model_ref: str, source: str) -> Handle:
    """A :class:`Handle` of a model that is not loaded: its denoiser on meta, its generation defaults
    from the folder's configs as ``load_pipeline`` derives them (for the plan check and the card)."""
    pipe = _ConfigPipe(folder)
    defaults = {**_default_settings(pipe, family, denoiser), **preset_defaults(source.partition("@")[0]),
                **(read_defaults(folder) or {})}
    return Handle(pipe=pipe, family=family, denoiser=denoiser, model_ref=model_ref, source=source,
                  dtype=next(denoiser.parameters()).dtype, defaults=defaults)


class _ConfigPipe:
    """What the families' ``default_settings`` read from a pipeline, from its folder's config files."""

    def __init__(self, folder: Path):
        vae = _config(folder / "vae" / "config.json")
        self.vae = SimpleNamespace(config=SimpleNamespace(**(vae or {})))  # a folder may hold the denoiser alone
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)  # as diffusers computes it
        for tok in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            cfg = _config(folder / tok / "tokenizer_config.json")
            if cfg is not None and "model_max_length" in cfg:
                setattr(self, tok, SimpleNamespace(model_max_length=cfg["model_max_length"]))


def _config(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {str(path)!r}: {e}") from None


__all__ = ["materialize", "resolve_base", "config_handle"]
