"""3 Select: pre-fill a plan from a method's scores (or tick rows by hand), see its totals and
kept fractions, and generate the original and the pruned model side by side."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pandas as pd

import visual
from pruning import labels, methods, validate
from pruning.catalog import UNIT_KINDS
from pruning.compare import CompareSettings, evaluate_plan
from pruning.methods import Scores
from pruning.native import describe, report
from pruning.plan import EDITED, PruningPlan, mark_edited
from pruning.plan import describe as describe_plan

from .. import format as fmt
from .. import guide, results
from ..comparison import compare_images, difference, display_pair, metrics_table
from ..inputs import Checkbox, Number, Slider, Table
from ..runs import check_flag, check_size
from ..tables import (
    COLUMNS,
    DATATYPES,
    MODES,
    empty_table,
    plan_from_table,
    refresh_kept,
    selection_table,
    totals,
    unit_kept_table,
)
from ..wiring import (
    EMPTY,
    GPU,
    PRIVATE,
    PROGRESS,
    RUN,
    UI,
    friendly,
    handle,
    plan,
    prompts,
    run_with_estimate,
    stamp,
    steps,
    toast,
)

KEY = "select"
KEPT_EMPTY = "Your plan's kept fraction per layer appears here."


def build(S) -> SimpleNamespace:
    H = guide.HELP
    default = next((n for n in methods.names() if methods.get(n).data_free), methods.names()[0])
    with gr.Tab("3 Select", id="select"):
        gr.Markdown("### 3. Select what to remove, and compare the original and the pruned model")
        with gr.Row():
            fill_method = gr.Dropdown([(methods.get(n).title, n) for n in methods.names()], value=default,
                                      label="pre-fill from", info=H["prefill"])
            with gr.Group():  # typed in the box (checked on the server, app.py's CSS hides the slider's own box,
                # which clamps a typed value silently), or dragged on the slider (the box follows)
                target = Number(0.2, label="target sparsity", info=H["target"], step=0.01, elem_id="target")
                target_slider = Slider(results.SMALLEST_TARGET, 0.9, value=0.2, step=0.01, label="target sparsity",
                                       show_label=False, elem_id="target-slider")
            scope = gr.Radio(["global", "local"], value="global", label="scope", info=H["scope"])
            native = Checkbox(False, label="native (whole blocks only)", elem_id="native-plan",
                              info="only what a diffusers config can state: the export then loads with plain "
                                   "diffusers, without this app's library")
        target_note = gr.Markdown(elem_classes="status", elem_id="target-note")
        fill = gr.Button("Pre-fill the table")
        mode = gr.Radio(list(MODES), value="operators", label="table", info=H["mode"])
        gr.Markdown("Tick what to remove. In the structures table, **kept indices** lists the units of a ticked "
                    "layer that stay (empty = remove them all); **kept units** follows your ticks.")
        table = Table(empty_table(), headers=COLUMNS, datatype=DATATYPES, interactive=True, max_height=360,
                      label="selection: tick what to remove", elem_id="selection")
        with gr.Row(elem_id="plan-row"):  # on phones the totals take the whole width (app.py's CSS)
            plan_df = gr.Dataframe(EMPTY["totals"], label="your plan removes", interactive=False, scale=2,
                                   elem_id="plan-totals")
            with gr.Accordion("plan (JSON)", open=False):
                plan_json = gr.JSON(label="pruning_plan.json")
        kept_plot = gr.Plot(visual.placeholder(KEPT_EMPTY, height=480), elem_id="kept-plot")
        with gr.Row():
            prompt = gr.Textbox(guide.EXAMPLE_PROMPTS["shapes"][0], label="prompt", info=H["prompt"], scale=3,
                                elem_id="prompt")
            seed = Number(0, precision=0, label="seed", info=H["seed"])
            gen_steps = Number(0, precision=0, label="steps", info=H["steps"])
        gr.Examples([[p] for p in guide.EXAMPLE_PROMPTS["shapes"]], [prompt], label="prompts for the shapes models")
        gr.Examples([[p] for p in guide.EXAMPLE_PROMPTS["other"]], [prompt], label="prompts for other models")
        with gr.Row():
            gen = gr.Button("Generate original vs pruned", variant="primary", scale=3)
            view = gr.Radio(["side by side", "slider"], value="side by side", label="view", info=H["view"])
            recon = Checkbox(False, label="reconstruct", info=H["reconstruct"], elem_id="gen-recon")
        gen_status = gr.Markdown(elem_classes="status", elem_id="gen-status")
        with gr.Row(elem_id="pair"):  # never wraps: the two images stay side by side, the same size
            img_a = gr.Image(label="original", type="pil", format="png", interactive=False, min_width=0,
                             elem_classes="pixelated", elem_id="img-original")
            img_b = gr.Image(label="pruned", type="pil", format="png", interactive=False, min_width=0,
                             elem_classes="pixelated", elem_id="img-pruned")
        img_d = gr.Image(label="difference (x4, black = identical)", type="pil", format="png", interactive=False,
                         elem_classes="pixelated", elem_id="img-diff")
        slider = gr.ImageSlider(label="original | pruned", visible=False, type="pil", format="png",
                                elem_classes="pixelated", elem_id="slider")
        metrics = gr.Dataframe(EMPTY["metrics"], label="original vs pruned", interactive=False, elem_id="metrics")
        with gr.Row():
            measure = gr.Button("Measure the plan on the How much? prompts", size="sm", scale=1)
            evaluated = gr.Markdown(elem_id="plan-eval", elem_classes="status")
        next_ = gr.Button("Next: how much can I prune? →", size="sm")
    return SimpleNamespace(fill_method=fill_method, target=target, target_slider=target_slider, scope=scope,
                           native=native, target_note=target_note, fill=fill, mode=mode, table=table, plan_df=plan_df,
                           plan_json=plan_json, kept_plot=kept_plot, prompt=prompt, seed=seed, steps=gen_steps, gen=gen,
                           view=view, recon=recon, gen_status=gen_status, img_a=img_a, img_b=img_b, img_d=img_d,
                           slider=slider, metrics=metrics, measure=measure, evaluated=evaluated, next=next_)


def reset_outputs(t) -> list:
    return [t.table, t.mode, t.plan_df, t.plan_json, t.kept_plot, t.img_a, t.img_b, t.img_d, t.slider, t.metrics,
            t.gen_status, t.fill_method, t.target, t.target_slider, t.target_note, t.evaluated]


def cleared(t, h) -> dict:
    default = next((n for n in methods.names() if methods.get(n).data_free), methods.names()[0])
    top, why = reach(h, default, {})  # the slider ends where the default method stops, from the start
    return {t.table: selection_table(h, "operators"), t.mode: "operators", t.plan_df: EMPTY["totals"],
            t.plan_json: None, t.kept_plot: visual.placeholder(f"No plan for {results.model_label(h)} yet."),
            t.img_a: None, t.img_b: None, t.img_d: None, t.slider: gr.update(value=None, visible=False),
            t.metrics: EMPTY["metrics"], t.gen_status: "", t.fill_method: gr.update(value=default),
            t.target: min(0.2, top), t.target_slider: gr.update(maximum=top, value=min(0.2, top)), t.target_note: why,
            t.evaluated: ""}


# --------------------------------------------------------------------------- helpers


def reach(h, name, store) -> tuple[float, str]:
    """(the most the method can remove on this model, why, or how to find out)."""
    m = methods.get(name)
    scores = scores_for(h, name, store) if name in (store or {}) or m.data_free else None
    top, why = results.slider_max(h, scores)
    return top, why or f"Run {m.title} in the Score tab to pre-fill from it."


def scores_for(h, name, store) -> Scores:
    m = methods.get(name)
    if name in (store or {}):
        return Scores.from_dict(store[name])
    if m.data_free:
        return m.score(h)
    free = next((methods.get(n).title for n in methods.names() if methods.get(n).data_free), None)
    raise toast(f"Run {m.title} in the Score tab first" + (f" (or pre-fill from {free}, which needs no run)."
                                                            if free else "."))


def totals_view(h, p: PruningPlan) -> pd.DataFrame:
    s = totals(h, p)
    return pd.DataFrame({"what": ["params", "MACs per denoiser call"],
                         "removed": [fmt.count(s["params_removed"]), fmt.count(s["macs_removed"])],
                         "of": [fmt.count(s["params_total"]), fmt.count(s["macs_total"])],
                         "fraction": [fmt.percent(s["params_fraction"]), fmt.percent(s["macs_fraction"])]})


def kept_plot(h, p: PruningPlan, label: str):
    return visual.mask_sparsity_plot(unit_kept_table(h, p), title="Kept fraction per layer under your plan",
                                     subtitle=f"{results.model_label(h)} · {label}")


def cleared_note(h, plan_dict, mode: str) -> str:
    """What a switch of the table's mode did to the plan on screen: a plan is one table's ticks, so the
    switch starts a new one, and a plan that removed something is said to be gone (it went silently).

    >>> from app_support.cache import ModelCache
    >>> h = ModelCache().get("tiny-random-sd")
    >>> cleared_note(h, None, "operators")
    ''
    >>> p = PruningPlan(family="sd", base=h.model_ref, kept_channels={"time_embedding": (0, 1)})
    >>> cleared_note(h, p.to_dict(), "operators")  # doctest: +ELLIPSIS
    'The table now lists operators, so your plan (chosen by hand, ...% of the params) was cleared: ...'
    """
    old = PruningPlan.from_dict(plan_dict) if plan_dict else None
    if old is None or not (old.removed_operators or any(old.kept(k) for k in UNIT_KINDS)):
        return ""
    gone = totals(h, old)["params_fraction"]
    return (f"The table now lists {mode}, so your plan ({describe_plan(old)}, {gone:.1%} of the params) was "
            f"cleared: a plan is the ticks of one table. Pre-fill again, or tick the {mode} to remove.")


def plan_note(h, p: PruningPlan) -> str:
    """What the plan on screen removes, recomputed from the plan itself (hand edits included)."""
    prov = p.provenance or {}
    reached = totals(h, p)["params_fraction"]
    target = prov.get("target_sparsity")
    src = f"Your plan ({describe_plan(p)}) removes {reached:.1%} of the params"
    if isinstance(target, (int, float)) and not prov.get(EDITED):
        src += f" (target {float(target):.0%}" + ("; whole operators overshoot it)" if reached > float(target) + 0.005
                                                  and p.removed_operators else ")")
    return f"{src}. The plan is {describe(report(h.denoiser, p))}."


def evaluation_text(row: dict) -> str:
    """A plan's figures on the comparison's prompts and seeds, in the words of How much?."""
    parts = [f"latent MSE **{fmt.number(row['latent_mse'])}**"
             + (f" ± {fmt.number(row['latent_mse_se'])}" if row.get("latent_mse_se") is not None else ""),
             f"PSNR {labels.psnr_text(row['psnr'])}"]
    if row.get("ssim") is not None:
        parts.append(f"SSIM {fmt.number(row['ssim'], 3)}")
    if row.get("acc_all") is not None:
        parts.append(f"task accuracy {labels.accuracy_text(row)}")
    return (f"**{row['label']}** ({fmt.percent(row['params_fraction'])} of the params removed): "
            f"{', '.join(parts)}. Computed on {row['computed_on']}: the same figures as its point in How much?.")


@GPU(duration=120)
def _evaluate(h, p, settings, control):
    return evaluate_plan(h, p, settings, control=control)


@GPU(duration=120)
def _compare(h, p, prompt, seed, n_steps, control, reconstructed=False):
    return compare_images(h, p, prompt, seed, steps=n_steps, control=control, reconstructed=reconstructed)


def _pair(out: dict, view: str) -> tuple:
    a, b = display_pair(out["original"], out["pruned"])
    side = view != "slider"
    return (gr.update(value=a, visible=side), gr.update(value=b, visible=side),
            gr.update(value=difference(out["original"], out["pruned"]), visible=side),
            gr.update(value=(a, b), visible=not side))


# --------------------------------------------------------------------------- wiring


def wire(S, T) -> None:
    t = T.select
    plan_outputs = [t.table, t.mode, t.plan_df, S.plan, t.kept_plot, t.target_note]

    @friendly
    def target_range(model, name, target, store):
        """The target slider stops at what the method can reach (and says why); a target beyond it
        becomes that end, in words."""
        if not model:
            return {t.target_slider: gr.skip()}
        h = handle(model)
        top, why = reach(h, name, store)
        out = {t.target_slider: gr.update(maximum=top), t.target_note: why}
        if isinstance(target, (int, float)) and target > top + 1e-9:
            out.update({t.target: top, t.target_slider: gr.update(maximum=top, value=top),
                        t.target_note: f"The target is now {top:g} (it was {target:g}). {why}"})
        return out

    @friendly
    def set_target(model, name, value, current, store):
        """A typed target is used as typed, or a toast and the note say what is used instead (the box
        shows it): never gradio's silent clamp."""
        if value is None:  # an emptied box: the target stays
            return {t.target: current, t.target_slider: gr.skip(), t.target_note: gr.skip()}
        if value == current:
            return {t.target: gr.skip(), t.target_slider: gr.skip(), t.target_note: gr.skip()}
        h = handle(model) if model else None  # none yet while the page loads: only "is it a fraction?"
        top, why = reach(h, name, store) if h else (0.99, "")
        used, words = results.typed_target(value, current, top, why, results.model_label(h) if h else "this model")
        if words:
            gr.Warning(words)
        return {t.target: used, t.target_slider: used, t.target_note: words or f"Target {used:g}. {why}"}

    @friendly
    def dragged(model, name, value, store):
        if not model:
            return {t.target: value, t.target_note: gr.skip()}
        return {t.target: value, t.target_note: f"Target {value:g}. {reach(handle(model), name, store)[1]}"}

    @friendly
    def prefill(model, name, target, scope, store, native=False):
        h = handle(model)
        scores = scores_for(h, name, store)
        top, why = results.slider_max(h, scores)
        target = validate.fraction("target sparsity", target)
        if float(target) > top + 1e-9:
            raise toast(f"Target {float(target):.0%} is out of reach. {why}")
        p = methods.to_plan(h, scores, target_sparsity=float(target), scope=scope, native=check_flag("native", native))
        mode = "operators" if scores.level == "operator" else "structures"
        per = scores.per_structure()
        shared = results.allocation_note(p.provenance)  # the method shared the target by its own rule...
        tie = results.ties(scores, float(target))  # ...so the scores' near-tie at a global cut says nothing of it
        warn = f" **Warning: {tie.message}** (the plan is cut from near-tied scores)." if tie.tied and not shared else ""
        return {t.table: selection_table(h, mode, p, dict(zip(per["fqn"], per["score"]))), t.mode: mode,
                t.plan_df: totals_view(h, p), S.plan: p.to_dict(),
                t.kept_plot: kept_plot(h, p, f"{methods.get(name).title} at {float(target):.0%} "
                                       f"({p.provenance.get('allocation') if shared else scope})"),
                t.target_note: plan_note(h, p) + (f" {shared}" if shared else "") + warn}

    @friendly
    def change_mode(model, mode, plan_dict=None):
        h = handle(model)
        empty = PruningPlan(family=h.family, base=h.model_ref)
        return {t.table: selection_table(h, mode), t.plan_df: totals_view(h, empty), S.plan: empty.to_dict(),
                t.kept_plot: kept_plot(h, empty, "nothing selected"), t.target_note: cleared_note(h, plan_dict, mode)}

    @friendly
    def plan_totals(model, mode, table, plan_dict):
        h = handle(model)
        if not isinstance(table, pd.DataFrame):
            raise toast("The selection table must be a table (headers and rows).")
        origin = PruningPlan.from_dict(plan_dict) if plan_dict else None
        p = mark_edited(plan_from_table(h, mode, table), origin)  # a method's plan, edited: both are kept
        return {t.table: refresh_kept(h, mode, table), t.plan_df: totals_view(h, p), S.plan: p.to_dict(),
                t.kept_plot: kept_plot(h, p, "your selection"), t.target_note: plan_note(h, p)}

    @friendly
    def generate(model, plan_dict, prompt, seed, n_steps, view, recon, clicked, request: gr.Request,
                 progress=PROGRESS):
        h = handle(model)
        p, seed, n_steps = plan(plan_dict), check_size("seed", seed), steps(n_steps)
        prompt = prompts(prompt)[0]
        recon = check_flag("reconstruct", recon)
        out = None
        yield {t.gen_status: f"Generating seed {seed} with the original and the pruned {results.model_label(h)}..."}
        for msg in run_with_estimate(h, lambda c: _compare(h, p, prompt, seed, n_steps, c, recon), lambda: "",
                                     request=request, clicked=clicked, progress=progress, phase="generate"):
            if msg[0] == "done":
                out = msg[1]
            else:
                yield {t.gen_status: gr.skip()}
        how = f", {results.reconstruction_note(out['reconstruction'])}" if recon else ""
        below = "below their difference (x4, black = identical)" if view != "slider" else \
            "drag the slider to compare them"
        caption = (f"**{results.model_label(h)}**, seed {seed}: left the original, right the pruned model "
                   f"({fmt.percent(totals(h, p)['params_fraction'])} of params removed{how}); {below}.")
        a, b, d, sl = _pair(out, view)
        yield {t.img_a: a, t.img_b: b, t.img_d: d, t.slider: sl,
               t.metrics: gr.update(value=metrics_table(out["metrics"]),
                                    label=f"original vs pruned: {results.model_label(h)}, seed {seed}"),
               S.pair: {"original": out["original"], "pruned": out["pruned"]}, t.gen_status: caption}

    @friendly
    def measure(model, plan_dict, prompt_text, n_steps, clicked, request: gr.Request, progress=PROGRESS):
        """The plan on the How much? tab's prompts and seeds (its point there has the same figures)."""
        h = handle(model)
        p = plan(plan_dict)
        settings = CompareSettings(eval_prompts=prompts(prompt_text), steps=steps(n_steps))
        row = None
        yield {t.evaluated: f"Measuring {describe_plan(p)} on {results.model_label(h)}..."}
        for msg in run_with_estimate(h, lambda c: _evaluate(h, p, settings, c), lambda: "", request=request,
                                     clicked=clicked, progress=progress, phase="measure"):
            if msg[0] == "done":
                row = msg[1]
            else:
                yield {t.evaluated: gr.skip()}
        yield {t.evaluated: evaluation_text(row)}

    def switch_view(view, pair):
        if not pair:
            return {t.img_a: gr.update(visible=view != "slider"), t.img_b: gr.update(visible=view != "slider"),
                    t.img_d: gr.update(visible=view != "slider"), t.slider: gr.update(visible=view == "slider")}
        a, b, d, sl = _pair(pair, view)
        return {t.img_a: a, t.img_b: b, t.img_d: d, t.slider: sl}

    def ran_range(model, name, target, store, last):
        """After a run: the range of the method that ran. A run's end sets the store and the pre-fill choice
        at once, and the store's event can still read the choice it replaces (the older method's reach, landing
        last, stayed on screen); the method the store just received is the one chosen."""
        return target_range(model, last if last in (store or {}) else name, target, store)

    t.fill_method.change(target_range, [S.model, t.fill_method, t.target, S.store],
                         [t.target, t.target_slider, t.target_note], trigger_mode="always_last", **PRIVATE, **UI)
    S.store.change(ran_range, [S.model, t.fill_method, t.target, S.store, S.last_method],  # the method ran again
                   [t.target, t.target_slider, t.target_note], **PRIVATE, **UI)
    gr.on([t.target.submit, t.target.blur], set_target, [S.model, t.fill_method, t.target, t.target_slider, S.store],
          [t.target, t.target_slider, t.target_note], trigger_mode="always_last", **PRIVATE, **UI)
    t.target_slider.input(None, t.target_slider, t.target, js="(v) => v", **PRIVATE)  # the box follows at once
    t.target_slider.input(dragged, [S.model, t.fill_method, t.target_slider, S.store], [t.target, t.target_note],
                          trigger_mode="always_last", **PRIVATE, **UI)
    t.fill.click(prefill, [S.model, t.fill_method, t.target, t.scope, S.store, t.native], plan_outputs,
                 api_name="prefill", **UI)
    t.mode.input(change_mode, [S.model, t.mode, S.plan], plan_outputs, api_name="table_mode", **UI)
    t.table.input(plan_totals, [S.model, t.mode, t.table, S.plan], plan_outputs, api_name="plan_totals",
                  trigger_mode="always_last", **UI)
    S.plan.change(lambda p: p, S.plan, t.plan_json, **PRIVATE, **UI)
    t.recon.change(lambda on, pair: ("Reconstruct is on: press **Generate** again to see the re-fitted model."
                                     if on and pair else gr.skip()), [t.recon, S.pair], t.gen_status, **PRIVATE, **UI)
    t.gen.click(stamp, None, S.clicked, queue=False, **PRIVATE).then(
        generate, [S.model, S.plan, t.prompt, t.seed, t.steps, t.view, t.recon, S.clicked],
        [t.img_a, t.img_b, t.img_d, t.slider, t.metrics, S.pair, t.gen_status], api_name="generate",
        show_progress_on=[t.gen_status], **RUN)
    t.measure.click(stamp, None, S.clicked, queue=False, **PRIVATE).then(
        measure, [S.model, S.plan, T.quality.prompts, t.steps, S.clicked], t.evaluated, api_name="evaluate_plan",
        show_progress_on=[t.evaluated], **RUN)
    S.plan.change(lambda: "", None, t.evaluated, **PRIVATE, **UI)  # the figures were of another plan
    t.view.change(switch_view, [t.view, S.pair], [t.img_a, t.img_b, t.img_d, t.slider], **PRIVATE, **UI)
    t.next.click(lambda: gr.Tabs(selected="quality"), None, T.tabs, queue=False, **PRIVATE)
