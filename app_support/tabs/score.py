"""2 Score: one group of controls per registered method, built from its settings fields
(:mod:`app_support.method_controls`); the ``score`` endpoint takes the method and its settings as
named data ``{"preset": ..., "prompts": [...], "steps": n, <field>: value}``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import gradio as gr
import pandas as pd

import visual
from pruning import labels, methods
from pruning.chunks import score_chunked
from pruning.errors import PruningError
from pruning.estimate import estimate
from pruning.methods import Scores

from .. import guide, results, wiring
from .. import method_controls as mc
from ..inputs import Number
from ..wiring import (
    CACHE,
    CHOSEN,
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
    prompts,
    run_in_tab,
    sid,
    stamp,
    steps,
    stop_run,
)

KEY = "score"
PROMPTS = "\n".join(guide.EXAMPLE_PROMPTS["shapes"])
LOSS_EMPTY = "A method that optimises (its loss per step) draws its curves here."


def _preset_label(m, p: str) -> str:
    title = m.preset_title(p)
    return f"{title} (default)" if p == m.presets[0] and title == p else title


def build(S) -> SimpleNamespace:
    H = guide.HELP
    first = methods.names()[0]
    default = next((n for n in methods.names() if methods.get(n).data_free), first)  # instant: no images needed
    groups, common = {}, mc.common_fields()
    with gr.Tab("2 Score", id="score"):
        gr.Markdown("### 2. Score what can be removed")
        note = gr.Markdown(f"{methods.get(default).title}: {methods.get(default).summary}", elem_id="method-note")
        method = gr.Radio([(methods.get(n).title, n) for n in methods.names()], value=default, label="method",
                          info=H["method"], elem_id="method")
        with gr.Row():
            sc_prompts = gr.Textbox(PROMPTS, lines=4, label="prompts", info=H["prompts"], scale=3,
                                    visible=not methods.get(default).data_free, elem_id="score-prompts")
            sc_steps = Number(0, precision=0, label="steps", info=H["steps"], scale=1, elem_id="score-steps")
        for name in methods.names():
            m = methods.get(name)
            with gr.Group(visible=name == default, elem_id=f"settings-{name}") as group:
                preset = (gr.Radio([(_preset_label(m, p), p) for p in m.presets], value=m.presets[0],
                                   label="settings", info=m.preset_help or H["preset"], elem_id=f"preset-{name}")
                          if len(m.presets) > 1 else None)
                preset_note = gr.Markdown(elem_id=f"preset-note-{name}") if len(m.presets) > 1 else None
                controls = {}
                offered = mc.offered(m.Settings, common)
                with gr.Row():
                    for f, main in offered:
                        if main:
                            controls[f["name"]] = mc.control(f, f"set-{name}-{f['name']}")
                rest = [f for f, main in offered if not main]
                if rest:
                    with gr.Accordion("more settings", open=False):
                        with gr.Row():
                            for f in rest:
                                controls[f["name"]] = mc.control(f, f"set-{name}-{f['name']}")
                if not offered:
                    gr.Markdown(f"{m.title} has no settings of its own.")
            groups[name] = SimpleNamespace(group=group, preset=preset, note=preset_note, controls=controls)
        settings = gr.JSON(visible=False, label="settings")  # the named settings of the run (the API's input)
        with gr.Row():
            run, stop = gr.Button("Run", variant="primary"), gr.Button("Stop")
            est_btn = gr.Button("Estimate the cost", size="sm")
        est = gr.Markdown(elem_classes="status", elem_id="score-estimate")
        status = gr.Markdown(elem_classes="status", elem_id="score-status")
        plot = gr.Plot(visual.placeholder(), label="scores per layer", elem_id="score-plot")
        loss = gr.Plot(visual.placeholder(LOSS_EMPTY, height=480), visible=False, label="optimization curves",
                       elem_id="loss-plot")
        table = gr.Dataframe(EMPTY["scores"], label="most prunable first", interactive=False, max_height=360)
        next_ = gr.Button("Next: select what to remove →", size="sm")
    return SimpleNamespace(note=note, method=method, prompts=sc_prompts, steps=sc_steps, groups=groups,
                           settings=settings, run=run, stop=stop, est_btn=est_btn, est=est, status=status, plot=plot,
                           loss=loss, table=table, next=next_)


def reset_outputs(t) -> list:
    return [t.plot, t.loss, t.table, t.status, t.est, t.note]


def cleared(t, h) -> dict:
    return {t.plot: visual.placeholder(f"No results for {results.model_label(h)} yet. Run a method above."),
            t.loss: gr.update(value=visual.placeholder(LOSS_EMPTY), visible=False), t.table: EMPTY["scores"],
            t.status: f"Ready: {results.model_label(h)}. Pick a method and press Run.", t.est: "",
            t.note: gr.skip()}


# --------------------------------------------------------------------------- settings


def _inputs(t) -> tuple[list, list]:
    """(keys, components): every method's preset and controls, flattened; keys are (method, field)."""
    keys, comps = [], []
    for name, g in t.groups.items():
        if g.preset is not None:
            keys.append((name, "preset"))
            comps.append(g.preset)
        for field, c in g.controls.items():
            keys.append((name, field))
            comps.append(c)
    return keys, comps


def method_settings(model, name, data):
    """(handle, the method's settings) from the named data."""
    h = handle(model)
    m = methods.get(name)
    data = data if isinstance(data, dict) else ({} if data is None else data)
    p = prompts(data.get("prompts")) if isinstance(data, dict) and not m.data_free else None
    n = steps(data.get("steps")) if isinstance(data, dict) else None
    return h, mc.settings(name, data, h.family, prompts=p, steps=n)


def _curves(scores) -> list:
    """An optimising method's history (one row per step with its loss), or []."""
    history = scores.info.get("history") or []
    return history if history and isinstance(history[0], dict) and {"step", "loss"} <= set(history[0]) else []


def _history_plot(h, history, scores=None):
    sub = results.subtitle(h, scores) if scores is not None else results.model_label(h)
    return visual.loss_plot(pd.DataFrame(history), title="Optimization", subtitle=sub)


def _over_budget(model, name):
    """The method's default-settings estimate when it exceeds one GPU call's budget, else None."""
    budget = gpu_budget()
    if not model or budget is None:
        return None
    h = handle(model)
    with CACHE.lock(h):  # the estimate times the shared denoiser
        e = estimate(h, name, methods.get(name).settings())
    return e if e.seconds > budget else None


def preset_note(model, name, preset) -> str:
    """The preset's own note (what it trades); on a model where the defaults exceed one GPU call's
    budget, why the method's budget preset is suggested."""
    m = methods.get(name)
    ref = handle(model).model_ref if model else None
    text = (m.preset_note(preset, ref or "") or "") if preset else ""
    if preset and preset == m.budget_preset:
        over = _over_budget(model, name)
        if over is not None:
            t, budget = over.seconds, gpu_budget()
            when = f"about {t:.0f} s" if t < 120 else f"about {t / 60:.0f} min"
            text = (f"**Suggested for this model**: the default settings need {when}, over the {budget:g} s of one "
                    f"GPU call (about {math.ceil(t / budget)} chunks); they stay available: choose "
                    f"\"{m.presets[0]}\". ") + text
    return text


# --------------------------------------------------------------------------- wiring


def wire(S, T) -> None:
    t = T.score
    keys, comps = _inputs(t)
    fill = T.select.fill_method

    def collect(name, prompt_text, n_steps, *vals):
        data = {f: v for (n, f), v in zip(keys, vals) if n == name}
        return {t.settings: {**data, "prompts": [p for p in str(prompt_text or "").splitlines() if p.strip()],
                             "steps": n_steps}, S.clicked: stamp()}

    @friendly
    def score_estimate(model, name, data, request: gr.Request):
        """The predicted time and memory of the Run about to start (a few timed denoiser calls). An
        estimate that finishes after the visitor chose another method is dropped (it would name the
        old one): Gradio's cancel cannot reach an estimate whose request was already on its way."""
        if not model:
            return ""
        h, s = method_settings(model, name, data)
        with CACHE.lock(h):
            text = estimate_text(h, estimate(h, name, s, budget_s=gpu_budget()))
        return text if CHOSEN.get(sid(request), name) == name else gr.skip()

    @friendly
    def run_score(model, name, data, store, clicked, request: gr.Request, progress=PROGRESS):
        h, s = method_settings(model, name, data)
        m, live, run = methods.get(name), [], None

        def work(control):
            return score_chunked(h, name, s, budget=wiring.CHUNK, control=control, call=wiring.gpu_chunk)

        def cost():
            return estimate_text(h, estimate(h, name, s, budget_s=gpu_budget()))

        yield {t.status: f"Running {m.title} on {results.model_label(h)}...", t.est: ""}
        def curves(msg):  # an optimiser: its curves as they come
            if msg[0] == "progress" and {"step", "loss"} <= set(msg[3]):
                live.append(msg[3])
                return {t.loss: gr.update(value=_history_plot(h, live), visible=True)}
            return None

        ran = yield from run_in_tab(h, work, cost, request=request, clicked=clicked, progress=progress,
                                    phase=labels.method_name(name), est=t.est, status=t.status, extra=curves)
        if ran is None:  # a model switch clears this result and says so
            return
        run, asked = ran
        scores = run.result
        history = _curves(scores)
        yield {t.table: gr.update(value=results.score_table(h, scores), label=results.table_label(h, scores)),
               t.plot: results.heatmap(h, scores), S.store: {**(store or {}), name: scores.to_dict()},
               S.last_method: name, t.status: results.status(h, scores) + chunks_note(run),
               t.loss: gr.update(value=_history_plot(h, history, scores), visible=True) if history
               else gr.update(visible=False),
               fill: gr.update(value=name), t.est: asked}

    @friendly
    def show_method(model, name, store, request: gr.Request):
        """Switching methods shows that method's controls and its own last result (or says there is none)."""
        m = methods.get(name)
        CHOSEN[sid(request)] = name
        out = {g.group: gr.update(visible=n == name) for n, g in t.groups.items()}
        out[t.prompts] = gr.update(visible=not m.data_free)
        out[t.est] = ""  # the estimate named the previous method
        if not model:
            return {**out, t.note: f"{m.title}: {m.summary}"}
        h = handle(model)
        if name in (store or {}):
            s = Scores.from_dict(store[name])
            history = _curves(s)
            return {**out, t.table: gr.update(value=results.score_table(h, s), label=results.table_label(h, s)),
                    t.plot: results.heatmap(h, s), t.note: f"{m.summary}\n\n{results.status(h, s)}",
                    t.status: results.status(h, s),
                    t.loss: gr.update(value=_history_plot(h, history, s), visible=True) if history
                    else gr.update(visible=False)}
        return {**out, t.table: gr.update(value=EMPTY["scores"], label="most prunable first"),
                t.plot: visual.placeholder(f"No {m.title} scores for {results.model_label(h)} yet."),
                t.note: f"{m.title}: {m.summary}", t.status: f"No {m.title} run on {results.model_label(h)} yet.",
                t.loss: gr.update(visible=False)}


    for name, g in t.groups.items():
        if g.preset is None:
            continue
        fields = list(g.controls)

        @friendly
        def preset_values(model, preset, name=name, fields=fields, g=g):
            """Choosing a preset fills the method's controls with its values (the loaded model's family's)."""
            family = handle(model).family if model else "sd"
            shown = mc.shown_values(name, preset, family)
            return {**{g.controls[f]: shown[f] for f in fields}, g.note: preset_note(model, name, preset)}

        g.preset.change(preset_values, [S.model, g.preset], [*g.controls.values(), g.note], **PRIVATE, **UI)

        @friendly
        def suggest(model, name=name, g=g):
            """On a model where the defaults exceed one GPU call's budget, the method's budget preset
            is chosen (the defaults stay one click away); elsewhere the choice is left alone."""
            m = methods.get(name)
            try:
                over = m.budget_preset and _over_budget(model, name) is not None
            except PruningError:  # no estimate (e.g. the model did not load): leave the choice alone
                over = False
            return {g.preset: gr.update(value=m.budget_preset)} if over else {g.preset: gr.skip()}

        S.model.change(suggest, S.model, [g.preset], **PRIVATE, **UI)

    asked = t.est_btn.click(collect, [t.method, t.prompts, t.steps, *comps], [t.settings, S.clicked], queue=False,
                            **PRIVATE).then(score_estimate, [S.model, t.method, t.settings], t.est,
                                            api_name="estimate", **RUN)
    t.method.change(show_method, [S.model, t.method, S.store],  # an estimate still pending is the old method's
                    [*(g.group for g in t.groups.values()), t.prompts, t.est, t.note, t.table, t.plot, t.status,
                     t.loss], cancels=[asked], **PRIVATE, **UI)
    t.run.click(collect, [t.method, t.prompts, t.steps, *comps], [t.settings, S.clicked], queue=False,
                **PRIVATE).then(
        run_score, [S.model, t.method, t.settings, S.store, S.clicked],
        [t.table, t.plot, t.loss, S.store, S.last_method, t.status, fill, t.est],
        api_name="score", show_progress_on=[t.status], **RUN)
    t.stop.click(stop_run, None, None, api_name="stop", queue=False)
    t.next.click(lambda: gr.Tabs(selected="select"), None, T.tabs, queue=False, **PRIVATE)

