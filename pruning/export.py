"""Export a slimmed model (safetensors + ``pruning_plan.json``) and load it back.

Layout of an export folder::

    pruning_plan.json                 manifest: the plan, the denoiser class, sha256 of weights
    README.md, grid.png               the model card (``pruning.card``) and its original-vs-pruned images
    <unet|transformer>/config.json    the *base* denoiser config
    <unet|transformer>/diffusion_pytorch_model.safetensors   the slim weights (or, as ``materialize``
        writes them, shards ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` + ``.index.json``)
    model_index.json, vae/, text_encoder/, ...               only with full_pipeline=True
    lora/pytorch_lora_weights.safetensors                    only with lora=: the LoRA sliced for the plan

With ``native=True`` (``pruning.native``) ``<denoiser>/`` holds the *slim* config and renumbered keys
(stock diffusers loads it), plus ``native_dropped.safetensors`` (UNets: the unused LayerNorms of removed
blocks, for ``load_pruned``), ``lora_native/`` (the LoRA's blocks renumbered) and, with
``single_file=True``, ``single_file.safetensors`` (FLUX / SD3 in the original key layout).

``plan_only=True`` writes no weights: the plan, the card and, for a reconstructed plan, the
re-fitted tensors that differ from plain slimming (``reconstruction.safetensors``);
``load_pruned`` re-applies it to the base model's own weights, bit for bit the full export.
``push_to_hub="user/name"`` uploads the folder (``pruning.hub``).

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
>>> pruned = load_pruned(out, base=h)  # a Handle: the other components from the base
>>> sum(p.numel() for p in pruned.denoiser.parameters()) < sum(p.numel() for p in h.denoiser.parameters())
True
>>> small = load_pruned_denoiser(out)  # the slim denoiser alone
>>> sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in pruned.denoiser.parameters())
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
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .bundled import BUNDLED
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
    DELTAS,
    FORMAT,
    MANIFEST,
    WEIGHTS,
    denoiser_classes,
    is_export,
    read_manifest,
    verify_files,
    weights_path,
)
from .metrics import count_params
from .plan import PruningPlan
from .reconstruct import reapply
from .shards import INDEX, weight_files
from .slim import slim
from .validate import check_outputs, shown


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


def source_folder(handle) -> Path | None:
    """The local folder a handle was loaded from (a bundled model or a local folder), else None."""
    kind, _, rest = str(getattr(handle, "model_ref", "")).partition(":")
    name = rest.rpartition("@")[0] or rest
    if kind == "bundled" and name in BUNDLED:
        return Path(BUNDLED[name])
    if kind == "local" and name:
        return Path(name)
    return None


def check_removes_something(plan: PruningPlan, handle) -> PruningPlan:
    """The plan normalized for ``handle``, refused when it removes nothing: an export of an empty
    plan would be the base model under a pruned model's name and card, which is always a mistake
    (an empty table, the wrong plan file); the base model itself is the baseline.

    >>> from pruning.loading import handle_from_pipe
    >>> from pruning.testing import tiny_pipeline
    >>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
    >>> check_removes_something(PruningPlan(family="sd", base="tiny:sd"), h)
    Traceback (most recent call last):
    ...
    pruning.errors.PlanError: the plan removes nothing (no operator removed, no unit pruned): its export would be the base model tiny:sd unchanged; select something to prune
    """
    normalized = plan.normalized(handle.denoiser)
    if normalized.is_empty:
        raise PlanError("the plan removes nothing (no operator removed, no unit pruned): its export would be the "
                        f"base model {handle.model_ref} unchanged; select something to prune")
    return normalized


def export(handle, plan: PruningPlan, folder: str | os.PathLike, *, full_pipeline: bool = False,
           denoiser: nn.Module | None = None, overwrite: bool = False, card: bool = True,
           evaluate: bool | None = None, plan_only: bool = False, lora: str | os.PathLike | None = None,
           push_to_hub: str | None = None, private: bool = False, token: str | None = None,
           native: bool = False, single_file: bool = False, inplace: bool = False) -> Path:
    """Write the slim model for ``plan`` to ``folder`` atomically (temp folder, then rename).

    ``denoiser`` may be a slim (e.g. recovery-finetuned) module already built for ``plan``;
    by default ``slim(handle.denoiser, plan)`` is computed here. Returns the folder path.
    A failed write (disk full, permissions) is one ``ExportError`` naming the path; the
    previous export, if any, stays intact and no temp folder is left.

    ``card``: write the model card (``README.md``; ``evaluate`` measures quality against the base
    for it: None = only on denoisers below ``card.EVALUATE_BELOW_PARAMS``). ``plan_only``: no
    weights (see the module doc). ``lora``: a LoRA safetensors file for the base model, sliced
    for the plan into ``lora/`` (``pruning.lora``). ``push_to_hub``: then upload the folder to that
    model repo (``token`` / ``private`` for it); offline this fails before any work. ``native``: write
    the denoiser in stock diffusers form (``pruning.native``: rewritten config, renumbered keys); a plan
    that is not native is one ``PlanError`` naming the layer, before any work. ``single_file`` (with
    ``native``, FLUX and SD3): also the denoiser as one safetensors file in the original key layout.

    ``inplace``: the handle is yours to spend: its denoiser is slimmed in place (``slim(inplace=True)``,
    peak memory the model plus its largest layer) after the card and LoRA have read the base; the
    handle holds the slim denoiser afterwards. Not with ``plan_only``, ``denoiser``, a reconstructed
    plan or a measured card (they need the base model next to the slim one).
    """
    check_outputs({"export folder": folder}, {"the model folder": source_folder(handle), "lora": lora},
                  folders=["export folder"])
    folder = Path(folder).expanduser().resolve()
    check_target(folder, overwrite)
    if plan_only and (full_pipeline or denoiser is not None and getattr(denoiser, "recovery", None) is not None):
        raise ExportError("a plan-only export holds no weights: it cannot carry the full pipeline or a "
                          "recovery-finetuned denoiser (export those in full)")
    if push_to_hub is not None:
        from .hub import check_reachable

        check_reachable(push_to_hub)  # before any work
    check_base(plan, handle, "given to export")
    plan = check_removes_something(plan, handle)
    if native:
        from .native import native_layout

        if plan_only:
            raise ExportError("a plan-only export holds no weights: it cannot be native (export it in full)")
        native_layout(handle.denoiser, plan)  # a PlanError naming the layer, before any work
    if single_file:
        from .native import check_single_file

        if not native:
            raise ExportError("a single-file checkpoint comes with a native export (native=True / --native)")
        check_single_file(plan.family)
    why = inplace_refusal(handle, plan, denoiser=denoiser, plan_only=plan_only, card=card, evaluate=evaluate,
                          native=native)
    if inplace and why is not None:
        raise ExportError(f"export(inplace=True) cannot write {why}: it needs the base model next to the slim one "
                          "(export with inplace=False)")
    small = denoiser if denoiser is not None else (None if inplace else build(handle, plan))
    carried = getattr(small, "pruning_plan", None)
    if carried is not None and carried.reconstruction != plan.reconstruction:
        raise PlanError("the denoiser given to export was reconstructed with other settings than the plan records; "
                        "export it with its own plan (denoiser.pruning_plan), which records the reconstruction")
    name = handle.denoiser_name
    with staged(folder) as tmp:
        extra = {"plan_only": True} if plan_only else {}
        lora_report = None
        if lora is not None:
            from .lora import slice_lora_file

            lora_report = slice_lora_file(handle, plan, lora, tmp / "lora")
            extra["lora"] = lora_report
        if card and inplace:  # the card reads the base model: before it is slimmed
            from .card import write_card

            extra["card"] = write_card(tmp, handle, plan, None, full_pipeline=full_pipeline, evaluate=False,
                                       folder_name=folder.name, repo=push_to_hub, lora=lora_report)
        if inplace:
            small = slim(handle.denoiser, plan, inplace=True)
        state = {k: v.detach().contiguous().cpu() for k, v in small.state_dict().items()}
        if plan_only:
            if plan.reconstruction is not None:
                save_file(_deltas(handle, plan, state), str(tmp / DELTAS), metadata={"format": "pt", "pruning": FORMAT})
        elif native:
            from .native import write as write_native

            extra["native"] = write_native(tmp, name, handle.denoiser, plan, state,
                                           {"format": "pt", "pruning": FORMAT}, single_file=single_file)
        else:
            (tmp / name).mkdir()
            handle.denoiser.save_config(tmp / name)  # the base config: the plan says how to slim it
            save_file(state, str(tmp / name / WEIGHTS), metadata={"format": "pt", "pruning": FORMAT})
        if full_pipeline:
            _save_other_components(handle, tmp)
        (tmp / DEFAULTS_FILE).write_text(json.dumps(handle.defaults, indent=2, default=str))
        if lora is not None and native:  # for plain diffusers: block indices renumbered as in the native folder
            from .lora import slice_lora_file
            from .native import LORA_DIR, module_rename

            rename = module_rename(handle.denoiser, plan)
            extra["native"]["lora"] = slice_lora_file(handle, plan, lora, tmp / LORA_DIR, rename=rename)["file"]
        if card and not inplace:
            from .card import write_card

            extra["card"] = write_card(tmp, handle, plan, small, full_pipeline=full_pipeline, plan_only=plan_only,
                                       evaluate=evaluate, folder_name=folder.name, repo=push_to_hub, lora=lora_report)
            if native:
                from .native import append_card

                append_card(tmp, extra["native"], family=plan.family, name=name, folder_name=folder.name,
                            full_pipeline=full_pipeline, repo=push_to_hub, base=handle.source)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))}
        write_manifest(tmp, plan, name, type(handle.denoiser), full_pipeline=full_pipeline,
                       params=count_params(small), files=files, extra=extra)  # parameters: not buffers (SD3's pos_embed)
    if push_to_hub is not None:
        from .hub import push

        push(folder, push_to_hub, token=token, private=private)
    return folder


def inplace_refusal(handle, plan: PruningPlan, *, denoiser=None, plan_only: bool = False, card: bool = True,
                    evaluate: bool | None = None, native: bool = False) -> str | None:
    """Why ``export(inplace=True)`` cannot write this export (it needs the base model next to the
    slim one), or None when it can."""
    from .card import EVALUATE_BELOW_PARAMS

    measured = card and (evaluate if evaluate is not None else
                         sum(p.numel() for p in handle.denoiser.parameters()) < EVALUATE_BELOW_PARAMS)
    return ("a plan-only export" if plan_only else "a given denoiser" if denoiser is not None else
            "a reconstructed plan" if plan.reconstruction is not None else "a measured card" if measured else
            "a native export" if native else None)


def _deltas(handle, plan: PruningPlan, state: dict) -> dict:
    """The tensors of a reconstructed slim model that differ from plain ``slim`` (what a plan-only
    export stores: re-applying the plan to the base weights and loading these gives the same model)."""
    plain = slim(handle.denoiser, plan).state_dict()
    return {k: v for k, v in state.items() if not torch.equal(v, plain[k].detach().cpu())}


@contextmanager
def staged(folder: Path):
    """A hidden staging folder next to ``folder`` for an export's files: it becomes ``folder`` only
    when the block completes (:func:`_swap_in`); on any error it is deleted (nothing else is) and a
    write error names ``folder``."""
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True)
        yield tmp
        _swap_in(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError)) and not isinstance(e, ExportError):
            raise write_error(folder, e) from None
        raise


def write_manifest(tmp: Path, plan: PruningPlan, name: str, cls: type, *, full_pipeline: bool, params: int,
                   files: dict, extra: dict) -> None:
    """The export's manifest: its plan, the denoiser's folder and class, its params and each weight
    file's sha256 (what ``load_pruned`` checks)."""
    manifest = {"format": FORMAT, "plan": plan.to_dict(), "denoiser": {"name": name, "class": cls.__name__},
                "full_pipeline": full_pipeline, "params": params, "files": files, **extra}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


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


def _load_denoiser_weights(folder: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The slim denoiser's tensors: one file, or every shard of a sharded export (each hash checked)."""
    name = manifest["denoiser"]["name"]
    index = weights_path(folder, manifest)
    if index.name == WEIGHTS:
        return _load_weights(index, manifest["files"][f"{name}/{WEIGHTS}"])
    listed = {rel: sha for rel, sha in manifest["files"].items() if rel.startswith(f"{name}/")}
    if not index.is_file() or sha256_file(index) != listed[f"{name}/{INDEX}"]:
        raise ExportError(f"missing or changed shard index {str(index)!r}")
    state = {}
    for file in weight_files(index.parent)[1:]:
        rel = f"{name}/{file}"
        if rel not in listed:
            raise ExportError(f"{str(index)!r} names a shard the manifest does not hash: {file!r}")
        state.update(_load_weights(index.parent / file, listed[rel]))
    return state


def load_pruned_denoiser(folder: str | os.PathLike, *, device=None, dtype=None) -> nn.Module:
    """The slim denoiser of an export folder: base config + plan on meta, then strict weights."""
    folder = Path(folder).resolve()
    plan, manifest = read_manifest(folder)
    if manifest.get("plan_only"):
        raise ExportError(f"{str(folder)!r} is a plan-only export (no weights): load it with "
                          "load_pruned(folder, base=<the base model>)")
    cls = denoiser_classes()[manifest["denoiser"]["class"]]
    path = weights_path(folder, manifest)
    state = _load_denoiser_weights(folder, manifest)
    try:
        config = manifest["native"]["base_config"] if manifest.get("native") else cls.load_config(str(path.parent))
    except Exception as e:
        raise ExportError(f"cannot read the base config in {str(path.parent)!r}: {e}") from None
    with init_empty_weights():
        base = cls.from_config(config)
    if manifest.get("native"):  # diffusers' key names -> the slim model's, the unused tensors put back
        from .native import slim_state

        state = slim_state(folder, manifest, base, plan, state)
    small = slim(base, plan, inplace=True)  # structure only: meta tensors, no allocation
    try:
        small.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"weights in {str(path)!r} do not match the plan: {' '.join(str(e).split())[:300]}") from None
    if dtype is not None and any(p.dtype != dtype for p in small.parameters() if p.is_floating_point()):
        small = small.to(dtype=dtype)  # only when the saved weights are in another dtype
    return small.to(device or "cpu")


def load_pruned(path: str | os.PathLike, base=None, *, device=None, dtype=None):
    """Load a pruned model: always a :class:`~pruning.loading.Handle` (the pipeline with the slim
    denoiser); :func:`load_pruned_denoiser` gives the slim denoiser module alone.

    * ``load_pruned(folder)``: an export folder. A full-pipeline export holds every component; a
      denoiser-only export takes the others from ``base``, by default the model its plan names
      (a bundled model, a Hub id at its commit, an existing folder).
    * ``load_pruned("plan.json", base=<source or Handle>)``: re-applies the plan to the base
      weights and returns a ``Handle`` with the slim denoiser in its pipeline.
    * a plan-only export folder: the same, with the re-fitted tensors it holds; ``base`` defaults
      to the model the plan names (a bundled model, a Hub id at its commit, an existing folder).
    * ``load_pruned("user/name")``: an export on the Hub (not an existing local path), downloaded
      first (``pruning.hub.snapshot``; offline only from the cache, else an error naming the repo).

    A plan made for other weights (its ``base`` ref differs) raises ``PlanError``.
    """
    if isinstance(path, str) and not os.path.exists(os.path.expanduser(path)) and _looks_like_repo(path):
        from .hub import snapshot

        repo, _, revision = path.partition("@")
        path = snapshot(repo, revision or None)
    path = Path(path)
    if path.is_dir() and read_manifest(path.resolve())[1].get("plan_only"):
        return _reapply_export(path.resolve(), base, device=device, dtype=dtype)
    if path.is_dir():
        folder = path.resolve()
        small = load_pruned_denoiser(folder, device=device, dtype=dtype)
        plan, manifest = read_manifest(folder)
        if base is None and not manifest["full_pipeline"]:  # the other components from the plan's base
            try:
                base = base_source(plan)
            except ExportError as e:
                raise ExportError(f"{str(folder)!r} holds the slim denoiser only, and {e} (or Handle) for the "
                                  "other components, or load the denoiser alone with load_pruned_denoiser(folder)"
                                  ) from None
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
    owned = not hasattr(base, "pipe")  # a handle loaded here is ours: slim it in place
    handle = load_pipeline(base, device=device, dtype=dtype) if owned else base
    check_base(plan, handle, path)
    return _with_denoiser(handle, build(handle, plan, inplace=owned), plan)


def _looks_like_repo(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and "\\" not in path


def base_source(plan: PruningPlan) -> str:
    """The model source a plan's ``base`` ref names (what ``load_pipeline`` loads), or an error.

    >>> base_source(PruningPlan(family="sd", base="hub:org/model@abc123")), base_source(
    ...     PruningPlan(family="sd", base="bundled:tiny-shapes-sd@0f0f"))
    ('org/model@abc123', 'tiny-shapes-sd')
    """
    kind, _, rest = plan.base.partition(":")
    name, _, version = rest.rpartition("@")
    if kind == "hub":
        name = name or version  # "hub:org/model" has no revision
        version = version if name != version else ""
        _check_hub_ref(plan.base, name, version)
        return f"{name}@{version}" if version and version != "None" else name
    if kind in ("bundled", "local") and name:
        return name
    raise ExportError(f"the plan's base {plan.base!r} names no model that can be loaded: pass base=<model source>")


def _check_hub_ref(base: str, repo_id: str, revision: str) -> None:
    """A ``hub:`` base names a valid Hub repo id (and revision), never a local path.

    >>> _check_hub_ref("hub:../../etc@x", "../../etc", "x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning.errors.ExportError: the plan's base 'hub:../../etc@x' is not a valid Hub model id: ...
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"the plan's base {base!r} is not a valid Hub model id: {' '.join(str(e).split())[:200]}"
                          ) from None
    if repo_id.count("/") > 1 or Path(repo_id).expanduser().is_absolute():
        raise ExportError(f"the plan's base {base!r} is not a valid Hub model id (org/name)")
    if revision and (".." in revision or not all(c.isalnum() or c in "._-/" for c in revision)):
        raise ExportError(f"the plan's base {base!r} has an invalid revision {revision[:80]!r}")


def _reapply_export(folder: Path, base, *, device=None, dtype=None):
    """A plan-only export re-applied to the base weights, with its re-fitted tensors loaded."""
    plan, manifest = read_manifest(folder)
    owned = not hasattr(base, "pipe")  # a handle loaded here is ours: slim it in place
    handle = load_pipeline(base or base_source(plan), device=device, dtype=dtype) if owned else base
    check_base(plan, handle, folder)
    small = slim(handle.denoiser, plan, inplace=owned)
    if plan.reconstruction is not None:
        deltas = _load_weights(folder / DELTAS, manifest["files"][DELTAS])
        own = small.state_dict()
        bad = [k for k, v in deltas.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ExportError(f"{str(folder / DELTAS)!r} does not fit the plan: {bad[0]!r}")
        small.load_state_dict({**own, **{k: v.to(own[k].device, own[k].dtype) for k, v in deltas.items()}},
                              strict=True)
    return _with_denoiser(handle, small, plan)


def build(handle, plan: PruningPlan, *, inplace: bool = False) -> nn.Module:
    """The slim denoiser ``plan`` describes: ``slim``, or for a plan that records a reconstruction,
    the reconstruction computed again with its recorded settings (a method that compensates its
    own weights, as OBS-Diff, records its name there and rebuilds them; a reconstruction of such a
    plan records the method's settings as its ``"start"``, and ``reapply`` rebuilds that first).
    ``inplace``: the handle is ours, slim its denoiser in place (a reconstruction still builds a
    new model)."""
    if plan.reconstruction is None:
        return slim(handle.denoiser, plan, inplace=inplace)
    method = plan.reconstruction["settings"].get("method")
    if method is not None:
        from . import methods

        return methods.get(method).rebuild(handle, plan)
    return reapply(handle, plan)


def check_base(plan: PruningPlan, handle, where) -> None:
    """Refuse a plan for another family or other weights, or one that does not fit the denoiser."""
    if plan.family != handle.family:
        raise PlanError(f"plan {str(where)!r} is for family {plan.family!r}, model {handle.source!r} is "
                        f"{handle.family!r}")
    if not same_weights(plan.base, handle.model_ref):
        raise PlanError(f"plan {str(where)!r} was made for {shown(plan.base, 200)}, not for {handle.model_ref!r}")
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
