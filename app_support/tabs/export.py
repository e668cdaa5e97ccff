"""5 Export: the plan as a slim model (optionally reconstructed, recovered, native, with a LoRA
sliced for it), zipped with its card, and the lines that load it."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from pruning import labels
from pruning.card import quality_line, quality_table
from pruning.estimate import estimate_export
from pruning.export import check_removes_something
from pruning.native import describe, native_layout, report
from pruning.plan import describe as describe_plan

from .. import format as fmt
from .. import guide, results
from ..comparison import refit
from ..exports import export_zip
from ..inputs import Checkbox, Number
from ..runs import check_flag, check_size
from ..tables import totals
from ..wiring import (
    CACHE,
    GPU,
    PRIVATE,
    PROGRESS,
    RUN,
    UI,
    estimate_text,
    friendly,
    gpu_budget,
    handle,
    plan,
    prompts,
    run_in_tab,
    sid,
    stamp,
    steps,
    toast,
)

KEY = "export"
EMPTY_QUALITY = quality_table(None)
NO_PLAN = "No plan yet: make one in **Select and compare** (pre-fill or tick rows)."


def build(S) -> SimpleNamespace:
    H = guide.HELP
    with gr.Tab("5 Export", id="export"):
        gr.Markdown("### 5. Export the slimmed model")
        summary = gr.Markdown(NO_PLAN, elem_id="export-summary")
        with gr.Row(elem_id="export-options"):  # one option per line on a phone (CSS)
            full = Checkbox(True, label="full pipeline", info=H["full"])
            iters = Number(0, precision=0, label="recovery iterations", info=H["recover"])
            recon = Checkbox(False, label="reconstruct", info=H["reconstruct"], elem_id="exp-recon")
            native = Checkbox(False, label="native diffusers folder", elem_id="exp-native",
                              info="rewritten config, renumbered keys: DiffusionPipeline.from_pretrained loads it "
                                   "without pruning (whole-block plans only)")
        lora = gr.File(label="LoRA to carry through (optional, .safetensors for the base model: exported sliced for "
                             "the plan into lora/)", file_types=[".safetensors"], type="filepath", elem_id="exp-lora")
        with gr.Row():
            run = gr.Button("Export", variant="primary", scale=3)
            est_btn = gr.Button("Estimate the cost", size="sm", scale=1)
        est = gr.Markdown(elem_classes="status", elem_id="export-estimate")
        status = gr.Markdown(elem_classes="status", elem_id="export-status")
        with gr.Row():
            dl_zip = gr.DownloadButton("Download the model (.zip)", visible=False)
            dl_json = gr.DownloadButton("Download pruning_plan.json", visible=False)
        quality_md = gr.Markdown(elem_id="export-quality-line")
        quality = gr.Dataframe(EMPTY_QUALITY, label="the card's quality figures (pruned vs the original)",
                               interactive=False, visible=False, elem_id="export-quality")
        snippet = gr.Code(language="shell", label="load it", elem_id="snippet")
    return SimpleNamespace(summary=summary, full=full, iters=iters, recon=recon, native=native, lora=lora, run=run,
                           est_btn=est_btn, est=est, status=status, dl_zip=dl_zip, dl_json=dl_json, snippet=snippet,
                           quality=quality, quality_md=quality_md)


def reset_outputs(t) -> list:
    return [t.summary, t.dl_zip, t.dl_json, t.snippet, t.status, t.est, t.quality, t.quality_md]


def _gone(t) -> dict:
    """Nothing of a previous export stays on screen."""
    return {t.dl_zip: gr.update(value=None, visible=False), t.dl_json: gr.update(value=None, visible=False),
            t.snippet: "", t.status: "", t.quality: gr.update(value=EMPTY_QUALITY, visible=False), t.quality_md: ""}


def cleared(t, h) -> dict:
    return {t.summary: NO_PLAN, **_gone(t), t.est: ""}


def plan_source(p) -> str:
    """The method a plan came from, in words ("EcoDiff 20%, edited by hand"), as its card says."""
    return describe_plan(p)


def removed_parts(h, p, s: dict) -> str:
    """What the plan removes, in words: operators, slimmed layers and, apart (they are no layer: every
    block's modulation reads them), the conditioning channels.

    >>> from app_support.cache import ModelCache
    >>> from pruning.plan import PruningPlan
    >>> h = ModelCache().get("tiny-random-sd")
    >>> p = PruningPlan(family="sd", base=h.model_ref, kept_channels={"time_embedding": (0, 1)})
    >>> removed_parts(h, p, totals(h, p))  # doctest: +ELLIPSIS
    '0 operators removed, 0 layers slimmed and ... of ... conditioning channels removed'
    """
    from pruning.catalog import discover

    found = discover(h.denoiser).structures
    channels = p.kept("channel")
    gone = sum(found[f].units - len(k) for f, k in channels.items())
    of = sum(found[f].units for f in channels)
    ops, layers = s["operators_removed"], s["structures_pruned"] - len(channels)
    head = f"{labels.plural(ops, 'operator')} removed"
    if not channels:
        return f"{head} and {labels.plural(layers, 'layer')} slimmed"
    return (f"{head}, {labels.plural(layers, 'layer')} slimmed and {gone:,} of "
            f"{labels.plural(of, 'conditioning channel')} removed")


def _lora_path(lora_file) -> str | None:
    """The uploaded LoRA's path (a gr.File value: a path or a file object), or None."""
    if not lora_file:
        return None
    path = str(getattr(lora_file, "name", lora_file))
    if not path.endswith(".safetensors"):
        raise toast(f"The LoRA {Path(path).name!r} is not a .safetensors file: only safetensors LoRAs are read "
                    "(nothing is unpickled).")
    return path


@GPU(duration=300)
def _export(h, p, full_pipeline, recover_iters, rec_prompts, n_steps, session, control, reconstructed=False,
            lora=None, native=False):
    small = None
    if reconstructed:  # the re-fitted slim model; its plan records the reconstruction
        small = refit(h, p, control=control)  # shared with Generate's re-fit of the same plan
        p = small.pruning_plan
    if recover_iters:
        from pruning.recover import RecoverSettings, recover

        small = recover(h, p, RecoverSettings(prompts=rec_prompts, iters=recover_iters, steps=n_steps),
                        denoiser=copy.deepcopy(small) if small is not None else None, control=control)
        if small.recovery["partial"]:
            raise toast(f"Export stopped during recovery ({control.reason}); nothing was exported.")
    out = export_zip(h, p, session=session, full_pipeline=full_pipeline, denoiser=small, lora=lora, native=native)
    if reconstructed:
        out["reconstruction"] = small.reconstruction
    return out


def wire(S, T) -> None:
    t = T.export
    rec_prompts, gen_steps = T.score.prompts, T.select.steps

    @friendly
    def summary(model, plan_dict):
        if not model or not plan_dict:
            return {t.summary: NO_PLAN, **_gone(t)}
        h = handle(model)
        p = plan(plan_dict)
        s = totals(h, p)
        return {t.summary: (f"Exports **{results.model_label(h)}** pruned by your plan (**{plan_source(p)}**): "
                            f"{removed_parts(h, p, s)}, **{fmt.percent(s['params_fraction'])} of the params** "
                            f"({fmt.count(s['params_removed'])} of {fmt.count(s['params_total'])}) and "
                            f"{fmt.percent(s['macs_fraction'])} of the MACs per denoiser call. The plan is "
                            f"{describe(report(h.denoiser, p))}."), **_gone(t)}

    @friendly
    def export_estimate(model, plan_dict, recover_iters, recon):
        """The predicted time and memory of the export about to start."""
        if not model:
            return ""
        h = handle(model)
        plan(plan_dict)  # no plan: the same message as Export gives
        iters, recon = check_size("recover_iters", recover_iters or 0), check_flag("reconstruct", recon)
        with CACHE.lock(h):
            return estimate_text(h, estimate_export(h, reconstruct=recon, recover_iters=iters,
                                                    budget_s=gpu_budget()))

    @friendly
    def export_model(model, plan_dict, full_pipeline, recover_iters, prompt_text, n_steps, recon, clicked,
                     lora_file=None, native=False, request: gr.Request = None, progress=PROGRESS):
        h = handle(model)
        lora = _lora_path(lora_file)
        p, iters = plan(plan_dict), check_size("recover_iters", recover_iters or 0)
        full_pipeline = check_flag("full pipeline", full_pipeline)
        check_removes_something(p, h)  # before a recovery or reconstruction
        rp = prompts(prompt_text) if iters else None
        recon, native = check_flag("reconstruct", recon), check_flag("native", native)
        if native:
            native_layout(h.denoiser, p)  # not native: one toast naming the layer, before any work
        n = steps(n_steps)
        def work(control):
            return _export(h, p, full_pipeline, iters, rp, n, sid(request), control, recon, lora, native)

        def cost():
            return estimate_text(h, estimate_export(h, reconstruct=recon, recover_iters=iters, budget_s=gpu_budget()))

        yield {**_gone(t), t.status: f"Exporting {results.model_label(h)}...", t.est: ""}
        ran = yield from run_in_tab(h, work, cost, request=request, clicked=clicked, progress=progress,
                                    phase="export", est=t.est, status=t.status)
        if ran is None:  # a model switch clears this result and says so
            return
        out, asked = ran
        done = "Exported" + (f" ({results.reconstruction_note(out['reconstruction'])})" if recon else "")
        if out.get("lora"):
            r = out["lora"]
            done += (f", with the LoRA sliced ({r['kept']} layers kept, {r['sliced']} sliced"
                     + (f"; dropped with removed operators: {', '.join(d.split(' ')[0] for d in r['dropped'])}"
                        if r["dropped"] else "") + ")")
        card = out.get("card") or {}
        q = card.get("quality")
        shown = {t.quality: gr.update(value=quality_table(q), visible=bool(q)),
                 t.quality_md: (f"**Method**: {card.get('method_text') or plan_source(p)}. "
                                + (f"{quality_line(q)}; the card records:" if q else
                                   f"Quality {card.get('quality_note') or 'not measured'}."))}
        yield {**shown, t.dl_zip: gr.update(value=out["zip"], visible=True),
               t.dl_json: gr.update(value=out["plan_json"], visible=True), t.snippet: out["snippet"],
               t.status: f"{done}: download the zip, then follow the lines below.", t.est: asked}

    S.plan.change(summary, [S.model, S.plan], [t.summary, *_gone(t)], **PRIVATE, **UI)
    for option in (t.full, t.iters, t.recon, t.native, t.lora):  # the shown export no longer matches the options
        option.change(lambda: _gone(t), None, list(_gone(t)), **PRIVATE, **UI)
    t.run.click(stamp, None, S.clicked, queue=False, **PRIVATE).then(
        export_model, [S.model, S.plan, t.full, t.iters, rec_prompts, gen_steps, t.recon, S.clicked, t.lora,
                       t.native],
        [t.dl_zip, t.dl_json, t.snippet, t.status, t.est, t.quality, t.quality_md], api_name="export",
        show_progress_on=[t.status], **RUN)
    t.est_btn.click(export_estimate, [S.model, S.plan, t.iters, t.recon], t.est, api_name="estimate_export", **RUN)
