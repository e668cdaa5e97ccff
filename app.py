"""Gradio app: load a diffusion model, score what can be pruned, look, select, compare, export.

Wiring only: each callback reads widgets, calls ``pruning`` / ``visual`` and returns. Models
live in ``CACHE`` (never loaded at import time, never mutated for one user); session state
holds plain data (dicts, records). Run: ``python app.py``.
"""

from __future__ import annotations

import functools
import inspect
import os
import queue
import threading

import gradio as gr
import pandas as pd

import visual
from pruning.app_support import (
    COLUMNS,
    DATATYPES,
    DTYPES,
    TINY_RANDOM,
    ModelCache,
    StopEvents,
    compare_images,
    export_zip,
    model_summary,
    plan_from_table,
    selection_table,
    structure_means,
    totals,
    unit_kept_table,
)
from pruning.errors import PruningError
from pruning.loading import BUNDLED
from pruning.methods.ecodiff import DEFAULT_EPOCHS as ECO_DEFAULT_EPOCHS
from pruning.methods.ecodiff import DEFAULT_LR as ECO_DEFAULT_LR
from pruning.plan import PruningPlan
from pruning.reference import PIPELINES

try:
    import spaces

    GPU = spaces.GPU
except ImportError:  # off Spaces: a no-op, usable as @GPU and @GPU(duration=...)
    def GPU(fn=None, **_kw):
        return fn if callable(fn) else (lambda f: f)

DEFAULT_MODEL = os.environ.get("PRUNING_DEFAULT_MODEL", "tiny-shapes-sd")
PRESETS = [p["hub_id"] for p in PIPELINES.values()]
MODELS = [*BUNDLED, *PRESETS, *TINY_RANDOM]
PROMPTS = ("a red circle at the top left on a white background\n"
           "a blue square at the bottom right on a black background\n"
           "a yellow triangle in the center on a gray background\n"
           "a green circle at the top right on a black background")
METHODS = ["ldpruner", "ecodiff", "taylor", "magnitude", "random"]
CSS = "#compare img { image-rendering: pixelated; }"  # tiny models make small images: keep pixels sharp
CACHE = ModelCache()
TRACK, PROGRESS = gr.Progress(track_tqdm=True), gr.Progress()  # gradio's per-call progress markers
STOPS = StopEvents()


# --------------------------------------------------------------------------- plumbing


def _message(e: Exception) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, (PruningError, ValueError, OSError)):
        return str(e) or type(e).__name__
    return f"unexpected {type(e).__name__}: {e}"


def friendly(fn):
    """Every error becomes a ``gr.Error`` toast (never a traceback), for functions and generators."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except gr.Error:
                raise
            except Exception as e:
                raise gr.Error(_message(e)) from e
        return gen

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(_message(e)) from e
    return wrapper


def _handle(model: dict | None):
    if not model:
        raise gr.Error("Load a model first (Model tab).")
    return CACHE.get(model["source"], model["device"], model["dtype"])


def _sid(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _prompts(text: str) -> list[str]:
    prompts = [p.strip() for p in str(text or "").splitlines() if p.strip()]
    if not prompts:
        raise gr.Error("Give at least one prompt (one per line).")
    return prompts


def _steps(x) -> int | None:
    return int(x) if x and int(x) > 0 else None


def _plan(model, plan_dict) -> PruningPlan:
    if not plan_dict:
        raise gr.Error("No plan yet: tick operators or structures in the Select tab (or pre-fill it).")
    return PruningPlan.from_dict(plan_dict)


def _frame(state: dict | None) -> pd.DataFrame | None:
    if not state:
        return None
    df = pd.DataFrame(state["records"])
    df.attrs = dict(state.get("attrs", {}))
    return df


def _plain(df: pd.DataFrame) -> dict:
    return {"records": df.to_dict("records"), "attrs": {k: v for k, v in df.attrs.items()}}


# --------------------------------------------------------------------------- heavy work (GPU on Spaces)


@GPU(duration=120)
def _sweep_gpu(h, settings, stop):
    from pruning.methods import ldpruner

    return ldpruner.sweep(h, settings, stop=stop)


@GPU(duration=300)
def _ecodiff_gpu(h, settings, stop, report):
    from pruning.methods import ecodiff

    return ecodiff.optimize(h, settings, progress=report, stop=stop)


@GPU(duration=120)
def _taylor_gpu(h, settings, stop):
    from pruning.methods import diffpruning

    return diffpruning.importance(h, settings, stop=stop)


@GPU(duration=60)
def _compare_gpu(h, plan, prompt, seed, steps, stop):
    return compare_images(h, plan, prompt, seed, steps=steps, stop=stop)


@GPU(duration=600)
def _quality_gpu(h, sparsities, methods, settings, stop, report):
    from pruning.compare import compare_methods as run

    return run(h, sparsities, methods, settings=settings, stop=stop, progress=report)


@GPU(duration=300)
def _export_gpu(h, plan, full_pipeline, recover_iters, prompts, steps):
    small = None
    if recover_iters:
        from pruning.recover import RecoverSettings, recover

        small = recover(h, plan, RecoverSettings(prompts=prompts, iters=int(recover_iters), steps=steps))
    return export_zip(h, plan, full_pipeline=full_pipeline, denoiser=small)


# --------------------------------------------------------------------------- callbacks


@friendly
def load_model(source, device, dtype, progress=TRACK):
    h = CACHE.get(str(source or "").strip(), device, dtype)
    info, kinds = model_summary(h)
    shares = ", ".join(f"{k} {v:.1%}" for k, v in info["shares"].items() if v)
    md = (f"**{info['model_ref']}**: family `{info['family']}` ({info['denoiser']}), "
          f"{info['params'] / 1e6:.3f} M params, {info['macs'] / 1e9:.4f} GMACs per denoiser call at {info['resolution']} px, "
          f"{info['device']} / {info['dtype']}; defaults: {info['steps']} steps, guidance {info['guidance']}, "
          f"{info['resolution']} px. Param shares: {shares}.")
    model = {"source": str(source).strip(), "device": device, "dtype": dtype, "model_ref": h.model_ref}
    ops = list(selection_table(h, "operators")["fqn"])
    return (model, md, kinds, gr.update(choices=ops, value=[]), selection_table(h, "operators"), "operators",
            None, None, None, None)


def stop_run(request: gr.Request):
    """Set this session's stop event: the running loop ends after its current step."""
    STOPS.get(_sid(request)).set()


@friendly
def run_sweep(model, prompts, n_gen, steps, granularity, operators, request: gr.Request,
              progress=TRACK):
    from pruning.methods import ldpruner

    h = _handle(model)
    settings = ldpruner.SweepSettings(prompts=tuple(_prompts(prompts)), n_gen=int(n_gen), steps=_steps(steps),
                                      granularity=granularity, operators=tuple(operators) or None)
    df = _sweep_gpu(h, settings, STOPS.fresh(_sid(request)))
    note = f"{df.attrs['scored']} of {df.attrs['total']} operators scored" + (
        " (stopped: partial results)" if df.attrs["partial"] else "")
    shown = df[["rank", "fqn", "kind", "params", "mac_share", "avg_dist", "std_dist", "score"]].round(5)
    return shown, visual.operator_heatmap(df) if len(df) else visual.placeholder(note), _plain(df), note


def _mask_state(h, eco: dict):
    import torch

    from pruning.methods.ecodiff import MaskState

    return MaskState({f: torch.tensor(v) for f, v in eco["lambdas"].items()}, eco["kinds"],
                     pd.DataFrame(eco["history"]), eco["model_ref"], eco["family"], eco["settings"], eco["partial"])


def _eco_view(h, eco: dict, target, scope):
    from pruning.methods import ecodiff

    plan = ecodiff.to_plan(h, _mask_state(h, eco), target_sparsity=float(target), scope=scope)
    s = totals(h, plan)
    md = (f"At target {float(target):.0%} ({scope}): removes {s['params_fraction']:.1%} of params and "
          f"{s['macs_fraction']:.1%} of MACs; {s['structures_pruned']} structures pruned, "
          f"{s['operators_removed']} emptied." + (" Mask from a stopped run." if eco["partial"] else ""))
    title = f"Kept fraction per layer at {float(target):.0%} sparsity"
    kept = unit_kept_table(h, plan)
    return visual.mask_sparsity_plot(kept[kept["kind"].isin(set(eco["kinds"].values()))], title=title), md


@friendly
def run_ecodiff(model, prompts, steps, epochs, batch, kinds, beta, lr, target, scope, request: gr.Request,
                progress=PROGRESS):
    from pruning.methods.ecodiff import EcoDiffSettings

    h = _handle(model)
    settings = EcoDiffSettings(prompts=_prompts(prompts), steps=_steps(steps), epochs=int(epochs),
                               batch_size=int(batch), kinds=tuple(kinds), beta=float(beta),
                               lr={k: float(lr) for k in ("head", "neuron", "group")})
    settings.validate()
    stop, updates, box = STOPS.fresh(_sid(request)), queue.Queue(), {}

    def work():
        try:
            box["state"] = _ecodiff_gpu(h, settings, stop, lambda d, t, row: updates.put((d, t, row)))
        except Exception as e:  # re-raised below, in the request's thread
            box["error"] = e
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    rows = []
    while worker.is_alive() or not updates.empty():
        try:
            done, total, row = updates.get(timeout=0.3)
        except queue.Empty:
            continue
        rows.append(row)
        progress((done, total), desc="EcoDiff")
        yield visual.loss_plot(pd.DataFrame(rows)), gr.skip(), gr.skip(), gr.skip()
    if "error" in box:
        raise box["error"]
    st = box["state"]
    eco = {"lambdas": {f: v.tolist() for f, v in st.lambdas.items()}, "kinds": st.kinds,
           "history": st.history.to_dict("records"), "model_ref": st.model_ref, "family": st.family,
           "settings": st.settings, "partial": st.partial}
    if not len(st.history):
        yield visual.loss_plot(st.history), gr.skip(), eco, "Stopped before the first step."
        return
    fig, md = _eco_view(h, eco, target, scope)
    yield visual.loss_plot(st.history), fig, eco, md


@friendly
def eco_plan(model, eco, target, scope):
    if not eco:
        raise gr.Error("Run the mask optimization first.")
    return _eco_view(_handle(model), eco, target, scope)


@friendly
def run_taylor(model, prompts, steps, stride, thr, kinds, request: gr.Request,
               progress=TRACK):
    from pruning.methods.diffpruning import TaylorSettings

    h = _handle(model)
    settings = TaylorSettings(prompts=_prompts(prompts), steps=_steps(steps), stride=int(stride), thr=float(thr),
                              kinds=tuple(kinds))
    df = _taylor_gpu(h, settings, STOPS.fresh(_sid(request)))
    if not len(df):
        return visual.placeholder("Stopped before the first timestep"), None, "No scores."
    per = structure_means(h, df)
    note = f"Timesteps used: {df.attrs['timesteps']}" + (" (stopped: partial)" if df.attrs["partial"] else "")
    return visual.structure_heatmap(per, title="Taylor importance (mean per unit; low = prunable)"), _plain(df), note


def _unit_scores(h, method, ld, eco, taylor) -> dict:
    """Per-unit scores (higher = keep) of a structure method, as {fqn: tensor}."""
    import torch

    from pruning.methods import diffpruning, select

    if method == "ecodiff":
        if not eco:
            raise gr.Error("Run the mask optimization (EcoDiff tab) first.")
        return {f: torch.tensor(v) for f, v in eco["lambdas"].items()}
    if method == "taylor":
        if not taylor:
            raise gr.Error("Run Taylor importance (Diff-Pruning tab) first.")
        return diffpruning.scores_to_tensors(h, _frame(taylor))
    return select.magnitude_scores(h) if method == "magnitude" else select.random_scores(h)


def _plan_maker(h, method, ld, eco, taylor):
    """sparsity -> PruningPlan for ``method``, from this session's scores."""
    from pruning.methods import diffpruning, ecodiff, ldpruner, select

    if method == "ldpruner":
        if not ld:
            raise gr.Error("Run the operator sweep (LD-Pruner tab) first.")
        return lambda sp: ldpruner.plan_from_scores(h, _frame(ld), target_sparsity=sp)
    scores = _unit_scores(h, method, ld, eco, taylor)  # checks that the method has run
    if method == "ecodiff":
        return lambda sp: ecodiff.to_plan(h, _mask_state(h, eco), target_sparsity=sp)
    if method == "taylor":
        return lambda sp: diffpruning.to_plan(h, _frame(taylor), target_sparsity=sp)
    return lambda sp: select.plan_from_unit_scores(h, scores, target_sparsity=sp, provenance={"method": method})


def _totals_view(h, plan):
    s = totals(h, plan)
    df = pd.DataFrame({"what": ["params", "MACs"], "removed": [s["params_removed"], s["macs_removed"]],
                       "total": [s["params_total"], s["macs_total"]],
                       "fraction": [round(s["params_fraction"], 4), round(s["macs_fraction"], 4)]})
    return df, plan.to_dict()


@friendly
def prefill(model, method, target, ld, eco, taylor):
    h = _handle(model)
    plan = _plan_maker(h, method, ld, eco, taylor)(float(target))
    mode = "operators" if method == "ldpruner" else "structures"
    scores = ({r["fqn"]: r["score"] for r in ld["records"]} if method == "ldpruner" else
              {f: float(v.float().mean()) for f, v in _unit_scores(h, method, ld, eco, taylor).items()})
    df, plan_dict = _totals_view(h, plan)
    return selection_table(h, mode, plan, scores), mode, df, plan_dict


@friendly
def change_mode(model, mode):
    h = _handle(model)
    empty = PruningPlan(family=h.family, base=h.model_ref)
    return selection_table(h, mode), *_totals_view(h, empty)


@friendly
def plan_totals(model, mode, table):
    h = _handle(model)
    return _totals_view(h, plan_from_table(h, mode, pd.DataFrame(table)))


@friendly
def generate(model, plan_dict, prompt, seed, steps, request: gr.Request, progress=TRACK):
    h = _handle(model)
    out = _compare_gpu(h, _plan(model, plan_dict), prompt, int(seed), _steps(steps), STOPS.fresh(_sid(request)))
    m = out["metrics"]
    rows = [{"metric": k, "value": round(v, 6) if isinstance(v, float) else v} for k, v in m.items()]
    return (out["original"], out["pruned"]), pd.DataFrame(rows)


@friendly
def compare_methods(model, methods, sparsities, prompts, steps, metric, request: gr.Request,
                    progress=TRACK):
    h = _handle(model)
    if not methods:
        raise gr.Error("Pick at least one method.")
    try:
        sps = [float(x) for x in str(sparsities).replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise gr.Error(f"Sparsities must be comma-separated numbers in (0, 1), got {sparsities!r}") from None
    if not sps or not all(0 < s < 1 for s in sps):
        raise gr.Error(f"Sparsities must be comma-separated numbers in (0, 1), got {sparsities!r}")
    from pruning.compare import CompareSettings

    prompts = _prompts(prompts)
    settings = CompareSettings(eval_prompts=prompts, calib_prompts=prompts, steps=_steps(steps), random_draws=1,
                               sweep={"n_gen": max(2, len(prompts))}, taylor={"stride": 100})
    df = _quality_gpu(h, sps, list(methods), settings, STOPS.fresh(_sid(request)),
                      lambda done, total, row: progress((done, total), desc="compare methods"))
    return visual.quality_vs_sparsity(df, metric, x="params_fraction"), df.round(5)


@friendly
def export_model(model, plan_dict, full_pipeline, recover_iters, prompts, steps,
                 progress=TRACK):
    h = _handle(model)
    out = _export_gpu(h, _plan(model, plan_dict), bool(full_pipeline), int(recover_iters or 0),
                      _prompts(prompts), _steps(steps))
    return (gr.update(value=out["zip"], visible=True), gr.update(value=out["plan_json"], visible=True),
            out["snippet"])


# --------------------------------------------------------------------------- layout


def build_app() -> gr.Blocks:
    """The Blocks app (no model is loaded here; the page's load event loads the default)."""
    with gr.Blocks(title="Diffusion pruning explorer") as demo:
        gr.Markdown("# Diffusion pruning explorer\nStructural pruning of SD, SDXL and FLUX denoisers: "
                    "score with LD-Pruner, EcoDiff or Diff-Pruning, pick what to remove, compare, export.")
        model = gr.State(None)
        ld, eco, taylor, plan_state = gr.State(None), gr.State(None), gr.State(None), gr.State(None)
        with gr.Tab("1. Model"):
            with gr.Row():
                source = gr.Dropdown(MODELS, value=DEFAULT_MODEL, allow_custom_value=True, scale=3,
                                     label="Model: bundled, preset Hub id, any Hub id or local folder")
                device = gr.Dropdown(["cpu", "cuda"], value="cpu", label="device", scale=1)
                dtype = gr.Dropdown(list(DTYPES), value="float32", label="dtype", scale=1)
            load_btn = gr.Button("Load", variant="primary")
            info = gr.Markdown("No model loaded yet.")
            kinds = gr.Dataframe(label="Catalog summary by kind", interactive=False)
        with gr.Tab("2. Operator sweep (LD-Pruner)"):
            with gr.Row():
                ld_prompts = gr.Textbox(PROMPTS, lines=4, label="prompts (one per line)", scale=3)
                with gr.Column(scale=2):
                    n_gen = gr.Slider(2, 16, value=4, step=1, label="N_gen (samples per setting)")
                    ld_steps = gr.Number(0, precision=0, label="steps (0 = model default)")
                    granularity = gr.Radio(["fine", "block", "all"], value="fine", label="granularity")
            ld_ops = gr.Dropdown([], multiselect=True, label="only these operators (empty = all)")
            with gr.Row():
                ld_run, ld_stop = gr.Button("Run sweep", variant="primary"), gr.Button("Stop")
            ld_note = gr.Markdown()
            ld_plot = gr.Plot(visual.placeholder(), label="importance heatmap")
            ld_table = gr.Dataframe(label="scores (low = prunable)", interactive=False, max_height=360)
        with gr.Tab("3. Mask optimization (EcoDiff)"):
            with gr.Row():
                eco_prompts = gr.Textbox(PROMPTS, lines=4, label="prompts (one per line)", scale=3)
                with gr.Column(scale=2):
                    eco_steps = gr.Number(0, precision=0, label="steps T (0 = model default)")
                    eco_epochs = gr.Slider(1, 50, value=ECO_DEFAULT_EPOCHS, step=1, label="epochs")
                    eco_batch = gr.Slider(1, 16, value=4, step=1, label="batch size")
            with gr.Row():
                eco_kinds = gr.CheckboxGroup(["head", "neuron", "group"], value=["head", "neuron"], label="mask")
                eco_beta = gr.Number(0.1, label="beta (regularizer weight)")
                eco_lr = gr.Number(ECO_DEFAULT_LR, label="learning rate")
            with gr.Row():
                eco_run, eco_stop = gr.Button("Run optimization", variant="primary"), gr.Button("Stop")
            with gr.Row():
                eco_target = gr.Slider(0.01, 0.9, value=0.2, step=0.01, label="target sparsity (params removed)")
                eco_scope = gr.Radio(["global", "local"], value="global", label="scope")
            eco_note = gr.Markdown()
            with gr.Row():
                eco_loss = gr.Plot(visual.placeholder(height=480), label="loss and expected sparsity")
                eco_mask = gr.Plot(visual.placeholder(height=480), label="kept fraction per layer")
        with gr.Tab("4. Taylor (Diff-Pruning)"):
            with gr.Row():
                ty_prompts = gr.Textbox(PROMPTS, lines=4, label="prompts (x0 generated from them)", scale=3)
                with gr.Column(scale=2):
                    ty_steps = gr.Number(0, precision=0, label="sampling steps (0 = model default)")
                    ty_stride = gr.Slider(1, 500, value=100, step=1, label="timestep stride")
                    ty_thr = gr.Slider(0.0, 0.5, value=0.05, step=0.01, label="threshold thr")
                    ty_kinds = gr.CheckboxGroup(["head", "neuron", "group"], value=["head", "neuron", "group"],
                                                label="structures")
            with gr.Row():
                ty_run, ty_stop = gr.Button("Run Taylor importance", variant="primary"), gr.Button("Stop")
            ty_note = gr.Markdown()
            ty_plot = gr.Plot(visual.placeholder(), label="importance heatmap")
        with gr.Tab("5. Select and compare"):
            with gr.Row():
                method = gr.Dropdown(METHODS, value="magnitude", label="pre-fill from")
                target = gr.Slider(0.01, 0.9, value=0.2, step=0.01, label="target sparsity")
                fill_btn = gr.Button("Pre-fill")
            mode = gr.Radio(["operators", "structures"], value="operators", label="table")
            table = gr.Dataframe(label="tick what to remove (structures: 'kept' lists kept unit indices)",
                                 interactive=True, max_height=360, datatype=DATATYPES,
                                 value=pd.DataFrame(columns=COLUMNS))
            with gr.Row():
                plan_df = gr.Dataframe(pd.DataFrame(columns=["what", "removed", "total", "fraction"]),
                                       label="plan totals (removed)", interactive=False, scale=2)
                with gr.Accordion("plan (JSON)", open=False):
                    plan_json = gr.JSON(label="pruning_plan.json")
            with gr.Row():
                prompt = gr.Textbox(PROMPTS.splitlines()[0], label="prompt", scale=3)
                seed = gr.Number(0, precision=0, label="seed")
                gen_steps = gr.Number(0, precision=0, label="steps (0 = default)")
            gen_btn = gr.Button("Generate original vs pruned", variant="primary")
            with gr.Row():
                slider = gr.ImageSlider(label="original | pruned", height=360, type="pil", format="png",
                                        elem_id="compare")
                metrics = gr.Dataframe(label="comparison", interactive=False)
            with gr.Accordion("Quality versus sparsity across methods", open=False):
                with gr.Row():
                    cmp_methods = gr.CheckboxGroup(METHODS, value=["magnitude", "random"], label="methods")
                    cmp_sps = gr.Textbox("0.1, 0.2, 0.3", label="sparsities")
                    cmp_metric = gr.Dropdown(["latent_mse", "psnr", "acc_all"], value="latent_mse", label="metric")
                cmp_prompts = gr.Textbox(PROMPTS, lines=2, label="prompts: scored with and evaluated on (one per line)")
                with gr.Row():
                    cmp_btn, cmp_stop = gr.Button("Compare methods"), gr.Button("Stop")
                cmp_plot = gr.Plot(visual.placeholder(height=420))
                cmp_table = gr.Dataframe(interactive=False)
        with gr.Tab("6. Export"):
            with gr.Row():
                full = gr.Checkbox(True, label="full pipeline (VAE, text encoders...)")
                rec_iters = gr.Number(0, precision=0, label="recovery finetune iterations (0 = none)")
            exp_btn = gr.Button("Export", variant="primary")
            with gr.Row():
                dl_zip = gr.DownloadButton("Download model (.zip)", visible=False)
                dl_json = gr.DownloadButton("Download pruning_plan.json", visible=False)
            snippet = gr.Code(language="python", label="load it")

        run = {"concurrency_id": "model", "concurrency_limit": 1}  # shared models: one job at a time
        load_out = [model, info, kinds, ld_ops, table, mode, ld, eco, taylor, plan_state]
        load_btn.click(load_model, [source, device, dtype], load_out, api_name="load_model", **run)
        demo.load(load_model, [source, device, dtype], load_out, api_visibility="private", **run)
        for btn in (ld_stop, eco_stop, ty_stop, cmp_stop):
            btn.click(stop_run, None, None, api_name="stop" if btn is ld_stop else None,
                      api_visibility="public" if btn is ld_stop else "private", concurrency_limit=None)
        ld_run.click(run_sweep, [model, ld_prompts, n_gen, ld_steps, granularity, ld_ops],
                     [ld_table, ld_plot, ld, ld_note], api_name="sweep", **run)
        eco_run.click(run_ecodiff, [model, eco_prompts, eco_steps, eco_epochs, eco_batch, eco_kinds, eco_beta,
                                    eco_lr, eco_target, eco_scope], [eco_loss, eco_mask, eco, eco_note],
                      api_name="ecodiff", **run)
        eco_target.release(eco_plan, [model, eco, eco_target, eco_scope], [eco_mask, eco_note],
                           api_name="ecodiff_plan", **run)
        ty_run.click(run_taylor, [model, ty_prompts, ty_steps, ty_stride, ty_thr, ty_kinds],
                     [ty_plot, taylor, ty_note], api_name="taylor", **run)
        fill_btn.click(prefill, [model, method, target, ld, eco, taylor], [table, mode, plan_df, plan_state],
                       api_name="prefill", **run)
        mode.input(change_mode, [model, mode], [table, plan_df, plan_state], api_name="table_mode", **run)
        table.input(plan_totals, [model, mode, table], [plan_df, plan_state], api_name="plan_totals", **run)
        plan_state.change(lambda p: p, plan_state, plan_json, api_visibility="private", queue=False)
        gen_btn.click(generate, [model, plan_state, prompt, seed, gen_steps], [slider, metrics],
                      api_name="generate", **run)
        cmp_btn.click(compare_methods, [model, cmp_methods, cmp_sps, cmp_prompts, gen_steps, cmp_metric],
                      [cmp_plot, cmp_table], api_name="compare_methods", **run)
        exp_btn.click(export_model, [model, plan_state, full, rec_iters, ld_prompts, gen_steps],
                      [dl_zip, dl_json, snippet], api_name="export", **run)
    return demo


demo = build_app()

def _warm(source: str = DEFAULT_MODEL) -> None:
    """Load the default model into the cache in the background, so the first page view is fast."""
    try:
        CACHE.get(source)
    except Exception as e:  # the page's load event shows the error as a toast
        print(f"[app] could not preload {source!r}: {e}", flush=True)


if __name__ == "__main__":
    import torch

    # small models on a shared CPU run far faster on one thread (contention); PRUNING_THREADS overrides
    if not torch.cuda.is_available() or os.environ.get("PRUNING_THREADS"):
        torch.set_num_threads(int(os.environ.get("PRUNING_THREADS", "1")))
    threading.Thread(target=_warm, daemon=True).start()
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), show_error=False, css=CSS)
