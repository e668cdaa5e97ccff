"""Export a slimmed model (safetensors + ``pruning_plan.json``) and load it back.

Layout of an export folder::

    pruning_plan.json                 manifest: the plan, the denoiser class, sha256 of weights
    <unet|transformer>/config.json    the *base* denoiser config
    <unet|transformer>/diffusion_pytorch_model.safetensors   the slim weights
    model_index.json, vae/, text_encoder/, ...               only with full_pipeline=True

``load_pruned`` rebuilds the slim denoiser from the base config plus the plan on the meta
device and loads the weights with ``strict=True`` (nothing is unpickled, no remote code).
Writes are atomic (a temp folder renamed into place); ``overwrite`` replaces only a folder
that is itself an earlier export, never anything else.

>>> import tempfile, torch
>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> plan = PruningPlan(family="sd", base="tiny:sd", removed_operators=("mid_block.resnets.0",))
>>> out = export(h, plan, tempfile.mkdtemp() + "/export")
>>> small = load_pruned(out)
>>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in h.denoiser.parameters())
True
>>> export(h, plan, tempfile.mkdtemp(), overwrite=True)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pruning.errors.ExportError: refusing to overwrite '...': it is not an earlier export (no pruning_plan.json of ours); nothing was deleted
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ExportError, PlanError
from .files import sha256_file, write_error
from .loading import (
    DEFAULTS_FILE,
    handle_from_pipe,
    load_pipeline,
    pipeline_from_pretrained,
    read_class_name,
    read_defaults,
    same_weights,
)
from .manifest import (
    FORMAT,
    MANIFEST,
    WEIGHTS,
    denoiser_classes,
    is_export,
    read_manifest,
    verify_files,
    weights_path,
)
from .plan import PruningPlan
from .reconstruct import reapply
from .slim import slim


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse an existing target unless ``overwrite`` and it is an earlier export (nothing is deleted)."""
    if not folder.exists():
        return
    if not overwrite:
        raise ExportError(f"export folder {str(folder)!r} already exists (pass overwrite=True to replace it)")
    if not folder.is_dir() or not is_export(folder):
        raise ExportError(f"refusing to overwrite {str(folder)!r}: it is not an earlier export (no {MANIFEST} "
                          "of ours); nothing was deleted")
    if folder == Path.cwd().resolve() or folder in Path.cwd().resolve().parents:
        raise ExportError(f"refusing to overwrite {str(folder)!r}: it is the current directory or contains it")


def export(handle, plan: PruningPlan, folder: str | os.PathLike, *, full_pipeline: bool = False,
           denoiser: nn.Module | None = None, overwrite: bool = False) -> Path:
    """Write the slim model for ``plan`` to ``folder`` atomically (temp folder, then rename).

    ``denoiser`` may be a slim (e.g. recovery-finetuned) module already built for ``plan``;
    by default ``slim(handle.denoiser, plan)`` is computed here. Returns the folder path.
    A failed write (disk full, permissions) is one ``ExportError`` naming the path; the
    previous export, if any, stays intact and no temp folder is left.
    """
    folder = Path(folder).expanduser().resolve()
    check_target(folder, overwrite)
    check_base(plan, handle, "given to export")
    plan = plan.normalized(handle.denoiser)
    small = denoiser if denoiser is not None else build(handle, plan)
    carried = getattr(small, "pruning_plan", None)
    if carried is not None and carried.reconstruction != plan.reconstruction:
        raise PlanError("the denoiser given to export was reconstructed with other settings than the plan records; "
                        "export it with its own plan (denoiser.pruning_plan), which records the reconstruction")
    name = handle.denoiser_name
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).mkdir(parents=True)
        handle.denoiser.save_config(tmp / name)  # the base config: the plan says how to slim it
        state = {k: v.detach().contiguous().cpu() for k, v in small.state_dict().items()}
        save_file(state, str(tmp / name / WEIGHTS), metadata={"format": "pt", "pruning": FORMAT})
        if full_pipeline:
            _save_other_components(handle, tmp)
        (tmp / DEFAULTS_FILE).write_text(json.dumps(handle.defaults, indent=2, default=str))
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))}
        manifest = {"format": FORMAT, "plan": plan.to_dict(),
                    "denoiser": {"name": name, "class": type(handle.denoiser).__name__},
                    "full_pipeline": full_pipeline, "params": sum(v.numel() for v in state.values()), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _swap_in(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError)) and not isinstance(e, ExportError):
            raise write_error(folder, e) from None
        raise
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing (checked) export is replaced only once ``tmp`` is complete."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old, folder)  # keep the previous export
        raise
    shutil.rmtree(old, ignore_errors=True)


def _save_other_components(handle, tmp: Path) -> None:
    pipe = handle.pipe
    for comp_name, comp in pipe.components.items():
        if comp is None or comp_name == handle.denoiser_name:
            continue
        if not hasattr(comp, "save_pretrained"):
            raise ExportError(f"pipeline component {comp_name!r} ({type(comp).__name__}) cannot be saved")
        kwargs = {"safe_serialization": True} if isinstance(comp, nn.Module) else {}
        comp.save_pretrained(tmp / comp_name, **kwargs)
    pipe.save_config(tmp)  # model_index.json


# ----------------------------------------------------------------------------- loading


def read_plan(path: str | os.PathLike) -> tuple[PruningPlan, dict]:
    """A plan from a bare plan JSON or an export manifest; returns ``(plan, manifest or {})``."""
    path = Path(path)
    if path.is_dir():
        return read_manifest(path)
    if path.name == MANIFEST and is_export(path.parent):
        return read_manifest(path.parent)
    return PruningPlan.read(path), {}


def _load_weights(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportError(f"missing weights file {str(path)!r}")
    if sha256_file(path) != expected_sha:
        raise ExportError(f"sha256 mismatch for {str(path)!r}: the file is corrupt or was changed")
    try:
        # clone: fresh, aligned storage, so CPU kernels take the same paths as for the
        # in-memory model (unaligned buffers can change float rounding in gemv paths)
        return {k: v.clone() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"corrupt safetensors file {str(path)!r}: {e}") from None


def load_pruned_denoiser(folder: str | os.PathLike, *, device=None, dtype=None) -> nn.Module:
    """The slim denoiser of an export folder: base config + plan on meta, then strict weights."""
    folder = Path(folder).resolve()
    plan, manifest = read_manifest(folder)
    cls = denoiser_classes()[manifest["denoiser"]["class"]]
    path = weights_path(folder, manifest)
    state = _load_weights(path, manifest["files"][f"{manifest['denoiser']['name']}/{WEIGHTS}"])
    try:
        config = cls.load_config(str(path.parent))
    except Exception as e:
        raise ExportError(f"cannot read the base config in {str(path.parent)!r}: {e}") from None
    with init_empty_weights():
        base = cls.from_config(config)
    small = slim(base, plan)  # structure only: meta tensors, no allocation
    try:
        small.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"weights in {str(path)!r} do not match the plan: {' '.join(str(e).split())[:300]}") from None
    if dtype is not None and any(p.dtype != dtype for p in small.parameters() if p.is_floating_point()):
        small = small.to(dtype=dtype)  # only when the saved weights are in another dtype
    return small.to(device or "cpu")


def load_pruned(path: str | os.PathLike, base=None, *, device=None, dtype=None):
    """Load a pruned model.

    * ``load_pruned(folder)``: an export folder. Returns a ``Handle`` when the export holds the
      full pipeline (or ``base`` is given to supply the other components), else the slim
      denoiser module.
    * ``load_pruned("plan.json", base=<source or Handle>)``: re-applies the plan to the base
      weights and returns a ``Handle`` with the slim denoiser in its pipeline.

    A plan made for other weights (its ``base`` ref differs) raises ``PlanError``.
    """
    path = Path(path)
    if path.is_dir():
        folder = path.resolve()
        small = load_pruned_denoiser(folder, device=device, dtype=dtype)
        plan, manifest = read_manifest(folder)
        if base is None and not manifest["full_pipeline"]:
            return small
        if base is None:
            pipe = _load_export_pipeline(folder, manifest, small, dtype)
            pipe.to(device=device or "cpu", silence_dtype_warnings=True)
            ref = f"pruned:{plan.base}#{plan_hash(plan)}"
            return handle_from_pipe(pipe, model_ref=ref, source=str(folder), defaults=read_defaults(folder))
        handle = base if hasattr(base, "pipe") else load_pipeline(base, device=device, dtype=dtype)
        check_base(plan, handle, path)
        return _with_denoiser(handle, small, plan)
    if not path.is_file():
        raise ExportError(f"{str(path)!r} is neither an export folder nor a plan file")
    if base is None:
        raise ExportError(f"re-applying plan file {str(path)!r} needs base=<model source or Handle>")
    plan = PruningPlan.read(path)
    handle = base if hasattr(base, "pipe") else load_pipeline(base, device=device, dtype=dtype)
    check_base(plan, handle, path)
    return _with_denoiser(handle, build(handle, plan), plan)


def build(handle, plan: PruningPlan) -> nn.Module:
    """The slim denoiser ``plan`` describes: ``slim``, or for a plan that records a reconstruction,
    the reconstruction computed again with its recorded settings."""
    return reapply(handle, plan) if plan.reconstruction is not None else slim(handle.denoiser, plan)


def check_base(plan: PruningPlan, handle, where) -> None:
    """Refuse a plan for another family or other weights, or one that does not fit the denoiser."""
    if plan.family != handle.family:
        raise PlanError(f"plan {str(where)!r} is for family {plan.family!r}, model {handle.source!r} is "
                        f"{handle.family!r}")
    if not same_weights(plan.base, handle.model_ref):
        raise PlanError(f"plan {str(where)!r} was made for {plan.base!r}, not for {handle.model_ref!r}")
    plan.validate(handle.denoiser, family=handle.family)


def _with_denoiser(handle, small: nn.Module, plan: PruningPlan):
    pipe = type(handle.pipe)(**{**handle.pipe.components, handle.denoiser_name: small})
    pipe.set_progress_bar_config(disable=True)
    ref = f"pruned:{handle.model_ref}#{plan_hash(plan)}"
    return handle_from_pipe(pipe, model_ref=ref, source=handle.source, defaults=handle.defaults)


def _load_export_pipeline(folder: Path, manifest: dict, small: nn.Module, dtype):
    verify_files(folder, manifest)
    class_name = read_class_name(folder / "model_index.json", str(folder))
    try:
        pipe = pipeline_from_pretrained(str(folder), class_name, str(folder), dtype or torch.float32,
                                        **{manifest["denoiser"]["name"]: small})
    except Exception as e:
        raise ExportError(f"cannot load the pipeline components in {str(folder)!r}: {e}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plan_hash(plan: PruningPlan) -> str:
    """Short hash of what a plan removes (provenance excluded)."""
    d = plan.to_dict()  # with the reconstruction record, if any: other weights, another model
    d.pop("provenance", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
