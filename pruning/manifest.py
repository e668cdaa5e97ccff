"""The export manifest (``pruning_plan.json``): its schema, and every path in it confined to the
export folder. Nothing in a manifest is trusted before :func:`read_manifest` has checked it.

Schema (``format: "pruning-export/1"``)::

    plan           a PruningPlan as JSON
    denoiser       {"name": "unet" | "transformer", "class": the family's denoiser class (UNet2DConditionModel, ...)}
    full_pipeline  bool
    params         int, the slim denoiser's parameter count
    files          {relative path: sha256 hex} for every .safetensors file in the folder (and the
                   shard index ``<denoiser>/diffusion_pytorch_model.safetensors.index.json`` when the
                   weights are sharded, as ``pruning.materialize`` writes them)
    card           optional: the model card's figures (``pruning.card``: summary, quality, method)
    plan_only      optional, bool: no denoiser weights; ``load_pruned`` re-applies the plan to the
                   base weights (and loads ``DELTAS``, the re-fitted tensors, when it records a reconstruction)
    lora           optional: {"file", "source", "sliced", "dropped"}, a LoRA sliced for the plan
    native         optional: {"base_config", "dropped", "params", ...}: the denoiser is in stock diffusers form
                   (``pruning.native``: rewritten config, renumbered keys); ``base_config`` rebuilds the slim model

>>> import tempfile, json
>>> d = Path(tempfile.mkdtemp())
>>> _ = (d / MANIFEST).write_text(json.dumps({"format": FORMAT}))
>>> read_manifest(d)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pruning.errors.ExportError: ...pruning_plan.json: missing field(s) ['denoiser', 'files', 'full_pipeline', 'params', 'plan']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from . import families
from .errors import ExportError, PlanError, SettingsError
from .files import sha256_file
from .plan import PruningPlan
from .shards import INDEX, WEIGHTS
from .validate import few, inside, read_json, shown

MANIFEST = "pruning_plan.json"
FORMAT = "pruning-export/1"
DELTAS = "reconstruction.safetensors"  # plan-only exports: the re-fitted tensors that differ from plain slim
# family -> (pipeline component, denoiser class name), from the registry
DENOISERS = {f.name: (f.denoiser_name, f.denoiser_class.__name__) for f in families.all_families()}
_SHA = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("format", "plan", "denoiser", "full_pipeline", "params", "files")
_OPTIONAL = ("card", "plan_only", "lora", "native")


def check_native_record(where: str, record) -> None:
    """The manifest's ``native`` record: ``{"base_config": {...}, "dropped": file or null, "params": int}``."""
    if not isinstance(record, Mapping) or not isinstance(record.get("base_config"), Mapping) or \
            not (record.get("dropped") is None or isinstance(record.get("dropped"), str)):
        raise ExportError(f"{where}: 'native' must be {{'base_config': {{...}}, 'dropped': file or null, ...}}")


def denoiser_classes() -> dict[str, type]:
    """The only classes an export may name (never an arbitrary import path)."""
    return {f.denoiser_class.__name__: f.denoiser_class for f in families.all_families()}


def is_export(folder: str | Path) -> bool:
    """True when ``folder`` holds a manifest of ours (what ``overwrite`` may replace)."""
    try:
        data = read_json(Path(folder) / MANIFEST, "export manifest")
    except SettingsError:
        return False
    return isinstance(data, Mapping) and data.get("format") == FORMAT


def read_manifest(folder: str | Path) -> tuple[PruningPlan, dict]:
    """``(plan, manifest)`` of an export folder, validated; errors name the manifest and the field."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ExportError(f"{str(folder)!r} is not a pruning export: no {MANIFEST}")
    where = str(path)
    try:
        m = read_json(path, "export manifest")
    except SettingsError as e:
        raise ExportError(str(e)) from None
    if not isinstance(m, Mapping):
        raise ExportError(f"{where}: the manifest must be a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise ExportError(f"{where}: unknown export format {shown(m.get('format'))} (expected {FORMAT!r})")
    missing = sorted(set(_FIELDS) - set(m))
    if missing:
        raise ExportError(f"{where}: missing field(s) {missing}")
    unknown = sorted(set(m) - set(_FIELDS) - set(_OPTIONAL))
    if unknown:
        raise ExportError(f"{where}: unknown field(s) {few(unknown)}")
    try:
        plan = PruningPlan.from_dict(m["plan"])
    except PlanError as e:
        raise ExportError(f"{where}: plan: {e}") from None
    den = m["denoiser"]
    if not isinstance(den, Mapping) or set(den) != {"name", "class"} or not all(isinstance(v, str) for v in den.values()):
        raise ExportError(f"{where}: 'denoiser' must be {{'name': ..., 'class': ...}}, got {shown(den)}")
    supported = set(DENOISERS.values())
    if (den["name"], den["class"]) not in supported:
        raise ExportError(f"{where}: unsupported denoiser {shown(den['name'])} of class {shown(den['class'])} "
                          f"(supported: {sorted(supported)})")
    if DENOISERS[plan.family] != (den["name"], den["class"]):
        raise ExportError(f"{where}: denoiser {shown(den['name'])} does not fit a {plan.family!r} plan")
    if not isinstance(m["full_pipeline"], bool):
        raise ExportError(f"{where}: 'full_pipeline' must be true or false, got {shown(m['full_pipeline'])}")
    if isinstance(m["params"], bool) or not isinstance(m["params"], int) or m["params"] < 0:
        raise ExportError(f"{where}: 'params' must be a parameter count, got {shown(m['params'])}")
    plan_only = m.get("plan_only", False)
    if not isinstance(plan_only, bool) or (plan_only and m["full_pipeline"]):
        raise ExportError(f"{where}: 'plan_only' must be true or false (and false with a full pipeline), "
                          f"got {plan_only!r}")
    for name in ("card", "lora"):
        if name in m and not isinstance(m[name], Mapping):
            raise ExportError(f"{where}: {name!r} must be a JSON object, got {type(m[name]).__name__}")
    if "native" in m:
        check_native_record(where, m["native"])
    files = m["files"]
    if not isinstance(files, Mapping) or (not files and not plan_only):
        raise ExportError(f"{where}: 'files' must map every weights file to its sha256 (an export without "
                          "hashes is refused)")
    for rel, sha in files.items():
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise ExportError(f"{where}: files[{shown(rel, 200)}] is not a sha256 hex digest: {shown(sha)}")
        try:
            inside(rel, folder)
        except SettingsError as e:
            raise ExportError(f"{where}: files: {e}") from None
    weights, index = f"{den['name']}/{WEIGHTS}", f"{den['name']}/{INDEX}"
    if plan_only and (weights in files or index in files or (plan.reconstruction is not None) != (DELTAS in files)):
        raise ExportError(f"{where}: a plan-only export holds no denoiser weights, and {DELTAS!r} exactly when "
                          "its plan records a reconstruction")
    if not plan_only and (weights in files) == (index in files):
        raise ExportError(f"{where}: 'files' must hash the denoiser weights: {weights!r} or (sharded) {index!r}, "
                          "not both")
    return plan, dict(m)


def verify_files(folder: str | Path, manifest: Mapping) -> None:
    """Every listed file exists and matches its hash, and no unlisted ``.safetensors`` is present."""
    folder = Path(folder).resolve()
    listed = {inside(rel, folder) for rel in manifest["files"]}
    for rel, sha in manifest["files"].items():
        path = inside(rel, folder)
        if not path.is_file():
            raise ExportError(f"missing file {str(path)!r} listed in the export manifest")
        if sha256_file(path) != sha:
            raise ExportError(f"sha256 mismatch for {str(path)!r}: the file is corrupt or was changed")
    extra = sorted(str(p) for p in folder.rglob("*.safetensors") if p.resolve() not in listed)
    if extra:
        raise ExportError(f"{str(folder)!r} holds weights the manifest does not list: {shown(extra[0], 200)}")


def weights_path(folder: str | Path, manifest: Mapping) -> Path:
    """The denoiser weights file (the shard index when sharded), resolved inside ``folder``."""
    name = manifest["denoiser"]["name"]
    sharded = f"{name}/{INDEX}" in manifest["files"]
    return inside(f"{name}/{INDEX if sharded else WEIGHTS}", folder)
