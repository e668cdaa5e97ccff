"""4 How much?: every chosen method scores the model once, is cut at every target, and the
pruned models are compared with the original on the same prompts and seeds; the visitor's own plan
is marked on the plot."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

import visual
from pruning import labels, methods
from pruning.chunks import compare_chunked
from pruning.compare import OWN_PLAN, CompareSettings, check_sparsities
from pruning.estimate import estimate_comparison
from pruning.methods import Scores
from pruning.plan import PruningPlan

from .. import format as fmt
from .. import guide, results, wiring
from ..comparison import comparison_refit
from ..inputs import Checkbox
from ..runs import check_count, check_flag
from ..tables import totals
from ..wiring import (
    CACHE,
    EMPTY,
    PRIVATE,
    PROGRESS,
    RUN,
    UI,
    chunks_note,
    estimate_text,
    friendly,
    gpu_budget,
    handle,
    plan,
    prompts,
    run_in_tab,
    stamp,
    steps,
    stop_run,
    toast,
)

KEY = "quality"
PROMPTS = "\n".join(guide.EXAMPLE_PROMPTS["shapes"])
BASELINES = ("original", "fewer steps", OWN_PLAN)  # rows that are no method's plan


def build(S) -> SimpleNamespace:
    H = guide.HELP
    cheap = [n for n in methods.names() if methods.get(n).data_free]
    with gr.Tab("4 How much?", id="quality"):
        gr.Markdown("### 4. How much can I prune?\nEach method scores the model once, is cut at every target, and "
                    "the pruned models are compared with the original on the same prompts and seeds. Your own plan "
                    "(from Select) is marked on the plot. *fewer steps*: the original model with its steps cut to "
                    "spend each plan's MACs per image (20% fewer MACs = 20% fewer steps): does pruning beat simply "
                    "running fewer steps?")
        with gr.Row():
            chosen = gr.CheckboxGroup([(methods.get(n).title, n) for n in methods.names()], value=cheap,
                                      label="methods", info=H["cmp_methods"])
            sps = gr.Textbox("0.1, 0.2, 0.3", label="target sparsities", info=H["sparsities"])
        cmp_prompts = gr.Textbox(PROMPTS, lines=3, label="prompts (scored with and evaluated on)", info=H["prompts"])
        with gr.Row():
            run, stop = gr.Button("Compare", variant="primary"), gr.Button("Stop")
            est_btn = gr.Button("Estimate the cost", size="sm")
            metric = gr.Dropdown([(visual.METRICS[k][0], k) for k in ("latent_mse", "psnr", "ssim", "acc_all")],
                                 value="latent_mse", label="show", info=H["metric"])
            recon = Checkbox(False, label="also reconstruct every plan", info=H["cmp_reconstruct"])
        est = gr.Markdown(elem_classes="status", elem_id="quality-estimate")
        status = gr.Markdown(elem_classes="status", elem_id="quality-status")
        plot = gr.Plot(visual.placeholder("Run the comparison to see quality against sparsity.", 420),
                       elem_id="quality-plot")
        table = gr.Dataframe(EMPTY["quality"], interactive=False, label="every plan, against the original",
                             elem_id="quality-table")
        next_ = gr.Button("Next: export your plan →", size="sm")
    return SimpleNamespace(chosen=chosen, sps=sps, prompts=cmp_prompts, run=run, stop=stop, est_btn=est_btn,
                           metric=metric, recon=recon, est=est, status=status, plot=plot, table=table, next=next_)


def reset_outputs(t) -> list:
    return [t.plot, t.table, t.status, t.est]


def cleared(t, h) -> dict:
    return {t.plot: visual.placeholder(f"No comparison for {results.model_label(h)} yet.", height=420),
            t.table: EMPTY["quality"], t.status: "", t.est: ""}


# --------------------------------------------------------------------------- helpers


def sparsities(text) -> list[float]:
    items = [x for x in str(text or "").replace(";", ",").split(",") if x.strip()]
    return check_sparsities(check_count("sparsities", items))


def quality_settings(chosen, sps, prompt_text, n_steps, recon, store=None, plan_dict=None, model=None):
    """(sparsities, prompts, CompareSettings) of the tab's widgets. A method the visitor ran in the
    Score tab is cut from those scores (its settings, not the defaults); the others run at their
    quick settings; the visitor's plan from Select is one more point on the same prompts and seeds."""
    if not chosen:
        raise toast("Pick at least one method to compare.")
    p = prompts(prompt_text)
    chosen = [methods.get(n).name for n in chosen]
    h = handle(model) if model else None
    mine = {n: store[n] for n in chosen if n in (store or {}) and not Scores.from_dict(store[n]).partial
            and h is not None and Scores.from_dict(store[n]).model_ref == h.model_ref}
    quick = {n: methods.get(n).quick_values() for n in chosen if n not in mine}
    settings = CompareSettings(eval_prompts=p, calib_prompts=p, steps=steps(n_steps), random_draws=1,
                               reconstruct=check_flag("reconstruct", recon), method_settings=quick,
                               method_scores=mine, own_plan=plan_dict or None)
    return sparsities(sps), p, settings


def quality_plot(table: dict | None, metric, plan_dict, model):
    if not table:
        whose = f"No comparison for {results.model_label(handle(model))} yet. " if model else ""
        return visual.placeholder(f"{whose}Run the comparison to see quality against sparsity.", height=420)
    df = pd.DataFrame(table["records"])
    done = df[df["method"] != "original"] if len(df) else df
    if not len(done) or metric not in df.columns:
        return visual.placeholder("Stopped before any method was evaluated." if table["attrs"].get("partial")
                                  else f"No {metric} in this comparison.", height=420)
    mark = totals(handle(model), plan(plan_dict))["params_fraction"] if plan_dict and model else None
    a = table["attrs"]
    sub = (f"{table['label']} · {len(a['eval_prompts'])} prompts, seeds 0-{len(a['eval_prompts']) - 1}"
           + (" · STOPPED" if a.get("partial") else ""))
    same = bool(table.get("own_plan") and plan_dict) and \
        PruningPlan.from_dict(table["own_plan"]).to_dict() == plan(plan_dict).to_dict()
    if same:
        mark = None  # the plan's own measured point says where it is
    else:  # no plan then, or it changed since: a line where the plan is now, no stale point
        df = df[df["method"] != OWN_PLAN]
    return visual.quality_vs_sparsity(df, metric, subtitle=sub, mark=mark)


def _psnr(v) -> str:
    return labels.psnr_text(v) if pd.notna(v) else "-"  # 100 dB (the cap): "identical"


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    empty = pd.Series(dtype=float)
    rebuilt = df.get("reconstructed", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    names = [labels.method_name(m) if m in methods.names() else m for m in df["method"]]
    out = pd.DataFrame({"method": names,
                        "settings": df["label"].fillna("") if "label" in df else "",
                        "reconstructed": rebuilt.map({True: "yes", False: ""}),
                        "target": df["sparsity"].map(fmt.percent),
                        "params removed": df.get("params_fraction", empty).map(fmt.percent),
                        "MACs": df.get("macs", empty).map(lambda v: fmt.count(v))})
    se = df.get("latent_mse_se", pd.Series(float("nan"), index=df.index))
    out["latent MSE ± SE (lower = closer)"] = [f"{fmt.number(m)} ± {fmt.number(e)}" if pd.notna(e) else fmt.number(m)
                                               for m, e in zip(df.get("latent_mse", empty), se)]
    out["PSNR dB (higher = closer)"] = df.get("psnr", empty).map(_psnr)
    if "ssim" in df.columns:
        out["SSIM (higher = closer)"] = df["ssim"].map(lambda v: fmt.number(v, 3))
    if "acc_all" in df.columns:
        out["task accuracy (95% interval)"] = [labels.accuracy_text(r) if pd.notna(r.get("acc_all")) else "-"
                                               for r in df.to_dict("records")]
    if "error" in df.columns:
        out["note"] = df["error"].fillna("")
    return out


# --------------------------------------------------------------------------- wiring


def wire(S, T) -> None:
    t = T.quality
    gen_steps = T.select.steps

    @friendly
    def quality_estimate(model, chosen, sps, prompt_text, n_steps, recon, store, plan_dict):
        """The predicted time and memory of the comparison about to start."""
        if not model:
            return ""
        h = handle(model)
        sp, _, settings = quality_settings(chosen, sps, prompt_text, n_steps, recon, store, plan_dict, model)
        with CACHE.lock(h):
            return estimate_text(h, estimate_comparison(h, sp, list(chosen), settings, budget_s=gpu_budget()))

    @friendly
    def run_quality(model, chosen, sps, prompt_text, n_steps, metric, recon, store, plan_dict, clicked,
                    request: gr.Request, progress=PROGRESS):
        h = handle(model)
        sp, p, settings = quality_settings(chosen, sps, prompt_text, n_steps, recon, store, plan_dict, model)
        chosen = [methods.get(n).name for n in chosen]
        def work(control):
            return compare_chunked(h, sp, list(chosen), settings=settings, budget=wiring.CHUNK, control=control,
                                   call=wiring.gpu_chunk, refit=comparison_refit)

        def cost():
            return estimate_text(h, estimate_comparison(h, sp, list(chosen), settings, budget_s=gpu_budget()))

        yield {t.status: f"Comparing on {results.model_label(h)}...", t.est: ""}
        ran = yield from run_in_tab(h, work, cost, request=request, clicked=clicked, progress=progress,
                                    phase="compare", est=t.est, status=t.status)
        if ran is None:  # a model switch clears this result and says so
            return
        run, asked = ran
        df = run.result
        table = {"records": df.to_dict("records"), "attrs": dict(df.attrs), "label": results.model_label(h),
                 "own_plan": plan_dict or None}
        why = "" if df.attrs.get("stopped") in (None, "stopped") else f" ({df.attrs['stopped']})"
        note = (f"**Stopped**{why}: the finished rows are shown." if df.attrs.get("partial")
                else f"Done: {int((~df['method'].isin(BASELINES)).sum())} plans evaluated.")
        reused = [labels.method_name(n) for n in df.attrs.get("reused_scores", [])]
        note += (f" Computed on: {df.attrs['computed_on']}." if df.attrs.get("computed_on") else "") + \
            (f" Cut from your Score-tab scores: {', '.join(reused)}." if reused else "")
        yield {t.plot: quality_plot(table, metric, plan_dict, model),
               t.table: gr.update(value=quality_table(df), label=f"every plan against the original: "
                                                                  f"{results.model_label(h)}"),
               S.comparison: table, t.status: note + chunks_note(run), t.est: asked}

    def redraw(table, metric, plan_dict, model):
        return quality_plot(table, metric, plan_dict, model)

    t.run.click(stamp, None, S.clicked, queue=False, **PRIVATE).then(
        run_quality, [S.model, t.chosen, t.sps, t.prompts, gen_steps, t.metric, t.recon, S.store, S.plan, S.clicked],
        [t.plot, t.table, S.comparison, t.status, t.est], api_name="compare_methods", show_progress_on=[t.status],
        **RUN)
    t.est_btn.click(quality_estimate, [S.model, t.chosen, t.sps, t.prompts, gen_steps, t.recon, S.store, S.plan], t.est,
                    api_name="estimate_compare", **RUN)
    t.metric.change(redraw, [S.comparison, t.metric, S.plan, S.model], t.plot, api_name="redraw", **UI)
    S.plan.change(redraw, [S.comparison, t.metric, S.plan, S.model], t.plot, **PRIVATE, **UI)
    t.stop.click(stop_run, None, None, queue=False, **PRIVATE)
    t.next.click(lambda: gr.Tabs(selected="export"), None, T.tabs, queue=False, **PRIVATE)
