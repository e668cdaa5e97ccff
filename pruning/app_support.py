"""Session-independent helpers for the Gradio app: the model cache, per-session stop events,
selection tables <-> plans, the side-by-side comparison and zipped exports.

Everything here returns plain data (DataFrames, dicts, PIL images, paths); the app turns it
into widgets. Shared models are only read: previews use ``masked`` (serialized by the app's
queue), exports and latency use ``slim`` copies.

>>> cache = ModelCache()
>>> h = cache.get("tiny-random-sd")
>>> h.model_ref, cache.get("tiny-random-sd") is h
('tiny:sd', True)
>>> table = selection_table(h, "operators")
>>> table.loc[:1, "prune"] = True
>>> plan = plan_from_table(h, "operators", table)
>>> len(plan.removed_operators)
2
>>> totals(h, plan)["params_removed"] > 0
True
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path

import pandas as pd
import torch

from .catalog import catalog, kind_shares
from .errors import ModelLoadError, PlanError
from .loading import BUNDLED, Handle, handle_from_pipe, load_pipeline
from .masks import masked
from .plan import PruningPlan
from .sampling import decode_latents, generate_latents

TINY_RANDOM = {"tiny-random-sd": "sd", "tiny-random-sdxl": "sdxl", "tiny-random-flux": "flux"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LATENCY_MAX_PARAMS = 100_000_000  # above this the comparison skips latency (it needs a slim copy)


# --------------------------------------------------------------------------- models


class ModelCache:
    """Handles keyed by (source, device, dtype), loaded once and shared read-only by sessions.

    ``put`` injects a ready handle (tests); ``by_ref`` finds a handle by its model ref.
    """

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._handles: dict[tuple, Handle] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(source: str, device: str = "cpu", dtype: str = "float32") -> tuple:
        return (str(source).strip(), str(device), str(dtype))

    def put(self, handle: Handle, source: str | None = None, device: str = "cpu", dtype: str = "float32") -> Handle:
        catalog(handle.denoiser)
        catalog(handle.denoiser, **cat_kw(handle))
        with self._lock:
            self._handles[self.key(source or handle.model_ref, device, dtype)] = handle
        return handle

    def get(self, source: str, device: str = "cpu", dtype: str = "float32") -> Handle:
        key = self.key(source, device, dtype)
        if not key[0]:
            raise ModelLoadError("no model given: pick a bundled model, a preset, a Hub id or a local folder")
        if dtype not in DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} is not available on this machine (no CUDA); use 'cpu'")
        with self._lock:
            if key in self._handles:
                return self._handles[key]
            if key[0] in TINY_RANDOM:
                from .testing import tiny_pipeline

                fam = TINY_RANDOM[key[0]]
                pipe = tiny_pipeline(fam).to(device=device, dtype=DTYPES[dtype])
                handle = handle_from_pipe(pipe, model_ref=f"tiny:{fam}", source=key[0])
            else:
                handle = load_pipeline(key[0], device=device, dtype=DTYPES[dtype])
            catalog(handle.denoiser)  # computed once here: its meta pass briefly swaps the module's params
            catalog(handle.denoiser, **cat_kw(handle))
            while len(self._handles) >= self.max_models:
                self._handles.pop(next(iter(self._handles)))
            self._handles[key] = handle
            return handle

    def by_ref(self, model_ref: str) -> Handle | None:
        with self._lock:
            return next((h for h in self._handles.values() if h.model_ref == model_ref), None)


class StopEvents:
    """One ``threading.Event`` per session id: ``fresh`` clears it at the start of a run."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, session: str | None) -> threading.Event:
        with self._lock:
            return self._events.setdefault(session or "default", threading.Event())

    def fresh(self, session: str | None) -> threading.Event:
        ev = self.get(session)
        ev.clear()
        return ev


def cat_kw(handle: Handle) -> dict:
    """Catalog input size of the model's default generation (MACs as the app generates)."""
    from .methods.ldpruner import catalog_kwargs

    return catalog_kwargs(handle)


def is_bundled(handle: Handle) -> bool:
    return handle.model_ref.startswith("bundled:") and handle.source in BUNDLED


def model_summary(handle: Handle) -> tuple[dict, pd.DataFrame]:
    """({family, params, macs, ...}, catalog summary by operator/structure kind)."""
    ops, st = catalog(handle.denoiser, **cat_kw(handle))
    info = {"model_ref": handle.model_ref, "family": handle.family, "denoiser": type(handle.denoiser).__name__,
            "params": int(ops.attrs["total_params"]), "macs": int(ops.attrs["total_macs"]),
            "device": str(handle.device), "dtype": str(handle.dtype).removeprefix("torch."),
            **{k: handle.defaults.get(k) for k in ("steps", "guidance", "resolution")},
            "shares": kind_shares(handle.denoiser, st)}
    rows = [{"what": "operator", "kind": k, "count": len(g), "params": int(g["params"].sum()),
             "param_share": round(float(g["param_share"].sum()), 4), "mac_share": round(float(g["mac_share"].sum()), 4)}
            for k, g in ops.groupby("kind", sort=False)]
    rows += [{"what": "structure", "kind": k, "count": len(g), "params": int(g["params"].sum()),
              "param_share": round(float(g["param_share"].sum()), 4), "mac_share": round(float(g["mac_share"].sum()), 4)}
             for k, g in st.groupby("kind", sort=False)]
    return info, pd.DataFrame(rows)


# --------------------------------------------------------------------------- selection


COLUMNS = ["prune", "fqn", "kind", "units", "kept", "params", "macs", "score"]  # both table modes
DATATYPES = ["bool", "str", "str", "number", "str", "number", "number", "number"]


def _indices(text: str, fqn: str, units: int) -> tuple[int, ...]:
    text = str(text).strip()
    if text.lower() in ("", "none", "all"):
        return ()
    try:
        idx = tuple(int(x) for x in text.replace(";", ",").split(",") if x.strip())
    except ValueError:
        raise PlanError(f"kept indices of {fqn!r} must be comma-separated integers, got {text!r}") from None
    bad = [i for i in idx if not 0 <= i < units]
    if bad:
        raise PlanError(f"kept index {bad[0]} of {fqn!r} is out of range 0..{units - 1}")
    return idx


def selection_table(handle: Handle, mode: str, plan: PruningPlan | None = None,
                    scores: dict[str, float] | None = None) -> pd.DataFrame:
    """Rows to tick: operators (mode "operators") or structures ("structures"), in depth order,
    pre-ticked from ``plan``; ``scores`` maps an FQN to a score shown beside it."""
    ops, st = catalog(handle.denoiser, **cat_kw(handle))
    scores = scores or {}
    if mode == "operators":
        removed = ops["fqn"].isin(set(plan.removed_operators) if plan else set())
        return pd.DataFrame({"prune": removed, "fqn": ops["fqn"], "kind": ops["kind"], "units": 1,
                             "kept": ["none" if r else "all" for r in removed], "params": ops["params"],
                             "macs": ops["macs"].astype("int64"),
                             "score": [round(float(scores.get(f, float("nan"))), 5) for f in ops["fqn"]]})[COLUMNS]
    if mode != "structures":
        raise PlanError(f"unknown table mode {mode!r}; choose 'operators' or 'structures'")
    kept = {**(plan.kept_heads if plan else {}), **(plan.kept_neurons if plan else {}),
            **(plan.kept_groups if plan else {})}
    removed = set(plan.removed_operators) if plan else set()
    prune = [f in kept or f in removed for f in st["fqn"]]
    kept_txt = [",".join(map(str, kept[f])) if f in kept else ("none" if f in removed else "all") for f in st["fqn"]]
    return pd.DataFrame({"prune": prune, "fqn": st["fqn"], "kind": st["kind"], "units": st["units"],
                         "kept": kept_txt, "params": st["params"], "macs": st["macs"].round().astype("int64"),
                         "score": [round(float(scores.get(f, float("nan"))), 5) for f in st["fqn"]]})[COLUMNS]


def _truthy(v) -> bool:
    return v is True or str(v).strip().lower() in ("true", "1", "yes", "x")


def plan_from_table(handle: Handle, mode: str, table: pd.DataFrame, provenance: dict | None = None) -> PruningPlan:
    """The plan a (possibly hand-edited) selection table describes.

    Operators: ticked rows are removed. Structures: a ticked row keeps the indices in its
    ``kept`` column ("all"/"none"/empty on a ticked row: every unit is removed).
    """
    if table is None or not len(table) or "fqn" not in table.columns or "prune" not in table.columns:
        raise PlanError("the selection table is empty: load a model and fill the table first")
    ticked = table[[_truthy(v) for v in table["prune"]]]
    prov = {"method": "manual", **(provenance or {})}
    if mode == "operators":
        plan = PruningPlan(family=handle.family, base=handle.model_ref, removed_operators=tuple(ticked["fqn"]),
                           provenance=prov)
    else:
        _, st = catalog(handle.denoiser, **cat_kw(handle))
        info = st.set_index("fqn")
        kept = {"head": {}, "neuron": {}, "group": {}}
        for rec in ticked.to_dict("records"):
            fqn = rec["fqn"]
            if fqn not in info.index:
                raise PlanError(f"unknown structure {fqn!r} in the selection table")
            kept[info.loc[fqn, "kind"]][fqn] = _indices(rec.get("kept", ""), fqn, int(info.loc[fqn, "units"]))
        plan = PruningPlan(family=handle.family, base=handle.model_ref, kept_heads=kept["head"],
                           kept_neurons=kept["neuron"], kept_groups=kept["group"], provenance=prov)
    plan.validate(handle.denoiser, family=handle.family)
    return plan


def totals(handle: Handle, plan: PruningPlan) -> dict:
    """``plan.summary`` (params and MACs removed, absolute and as fractions)."""
    return plan.summary(handle.denoiser, **cat_kw(handle))


def unit_kept_table(handle: Handle, plan: PruningPlan | None = None,
                    lambdas: dict[str, list] | None = None) -> pd.DataFrame:
    """Per structure: fqn, kind, units, kept fraction under ``plan`` (or lambda > 0), depth."""
    _, st = catalog(handle.denoiser, **cat_kw(handle))
    if lambdas is not None and plan is None:
        st = st[st["fqn"].isin(list(lambdas))]
    rows = []
    for rec in st.to_dict("records"):
        f, n = rec["fqn"], int(rec["units"])
        if plan is not None:
            k = plan.kept(rec["kind"]).get(f)
            frac = 0.0 if f in plan.removed_operators else (1.0 if k is None else len(k) / n)
        else:
            frac = float((torch.as_tensor(lambdas[f]) > 0).float().mean())
        rows.append({"fqn": f, "kind": rec["kind"], "units": n, "kept": frac, "depth": rec["depth"]})
    return pd.DataFrame(rows, columns=["fqn", "kind", "units", "kept", "depth"])


def structure_means(handle: Handle, units: pd.DataFrame, value: str = "importance") -> pd.DataFrame:
    """Per-unit scores (fqn, index, ``value``) -> one row per structure: mean ``value``, component, units, depth."""
    _, st = catalog(handle.denoiser, **cat_kw(handle))
    per = units.groupby("fqn", sort=False)[value].mean().rename(value).reset_index()
    return per.merge(st[["fqn", "component", "units", "depth"]], on="fqn")


# --------------------------------------------------------------------------- comparison


@torch.no_grad()
def compare_images(handle: Handle, plan: PruningPlan, prompt: str, seed: int, *, steps: int | None = None,
                   guidance: float | None = None, stop: threading.Event | None = None,
                   latency: bool = True) -> dict:
    """Original and pruned images for one prompt and seed, with params, MACs, latency, latent
    MSE, PSNR and (bundled shapes models) task accuracy. The pruned image uses ``masked``."""
    from .quality import latent_mse, psnr

    if not str(prompt).strip():
        raise PlanError("the prompt is empty: type a prompt")
    kw = dict(steps=steps, guidance=guidance, stop=stop)
    z0 = generate_latents(handle, [prompt], [int(seed)], **kw)
    with masked(handle.denoiser, plan):
        z1 = generate_latents(handle, [prompt], [int(seed)], **kw)
    original, pruned = decode_latents(handle, torch.cat([z0, z1]))
    s = plan.summary(handle.denoiser, **cat_kw(handle))
    m = {"params_original": s["params_total"], "params_pruned": s["params_total"] - s["params_removed"],
         "params_removed": s["params_fraction"], "macs_original": s["macs_total"],
         "macs_pruned": s["macs_total"] - s["macs_removed"], "macs_removed": s["macs_fraction"],
         "latent_mse": latent_mse(z0, z1), "psnr": psnr([original], [pruned])}
    if latency and s["params_total"] <= LATENCY_MAX_PARAMS:
        from .metrics import denoiser_latency
        from .slim import slim

        small = slim(handle.denoiser, plan)
        m["latency_original_ms"] = 1000 * denoiser_latency(handle.denoiser, repeats=5, **cat_kw(handle))
        m["latency_pruned_ms"] = 1000 * denoiser_latency(small, repeats=5, **cat_kw(handle))
    if is_bundled(handle):
        m.update(shape_accuracy([original, pruned], prompt))
    return {"original": original, "pruned": pruned, "metrics": m}


def shape_accuracy(images: list, prompt: str) -> dict:
    """Task accuracy (color, shape and position right) of (original, pruned) on a shapes caption."""
    from .quality import shape_task_accuracy

    try:
        acc = [shape_task_accuracy([im], [prompt])["all"] for im in images]
    except (KeyError, ValueError, AttributeError, TypeError):
        return {"accuracy_note": "not a shapes caption: task accuracy needs e.g. "
                                 "'a red circle at the top left on a white background'"}
    return {"accuracy_original": acc[0], "accuracy_pruned": acc[1]}


# --------------------------------------------------------------------------- export


LOAD_SNIPPET = """\
from pruning import load_pruned

# the unzipped export folder (slim weights + pruning_plan.json)
pruned = load_pruned("{folder}")
# or re-apply the plan alone to the base weights:
pruned = load_pruned("pruning_plan.json", base="{base}")
images = pruned.pipe("{prompt}", num_inference_steps={steps}).images
"""


EXPORTS = Path(tempfile.gettempdir()) / "pruning-exports"  # one subfolder per export
EXPORT_MAX_AGE_S = 3600


def _remove_old(base: Path) -> None:
    """Delete export folders older than ``EXPORT_MAX_AGE_S`` (the app serves copies of them)."""
    import time

    for d in base.iterdir():
        if d.is_dir() and time.time() - d.stat().st_mtime > EXPORT_MAX_AGE_S:
            shutil.rmtree(d, ignore_errors=True)


def export_zip(handle: Handle, plan: PruningPlan, *, full_pipeline: bool = True, denoiser=None,
               workdir: str | None = None) -> dict:
    """Export ``plan`` to a fresh folder, zip it; also write the bare plan JSON.

    Returns {"folder", "zip", "plan_json", "snippet"} (paths as strings).
    """
    from .export import export

    if workdir is None:
        EXPORTS.mkdir(parents=True, exist_ok=True)
        _remove_old(EXPORTS)
    work = Path(workdir or tempfile.mkdtemp(dir=EXPORTS))
    folder = export(handle, plan, work / "pruned-model", full_pipeline=full_pipeline, denoiser=denoiser)
    zip_path = shutil.make_archive(str(work / "pruned-model"), "zip", root_dir=folder)
    plan_json = work / "pruning_plan.json"
    plan_json.write_text(plan.to_json())
    base = handle.source if not handle.source.startswith("tiny-random") else "<base model>"
    snippet = LOAD_SNIPPET.format(folder="pruned-model", base=base, prompt="a red circle at the top left on a "
                                  "white background", steps=handle.defaults.get("steps", 20))
    if not full_pipeline:
        snippet = snippet.replace("pruned = load_pruned(\"pruned-model\")",
                                  "unet_or_transformer = load_pruned(\"pruned-model\")  # the slim denoiser")
    return {"folder": str(folder), "zip": zip_path, "plan_json": str(plan_json), "snippet": snippet}


def plan_to_json(plan: PruningPlan | None) -> dict | None:
    return json.loads(plan.to_json()) if plan is not None else None
