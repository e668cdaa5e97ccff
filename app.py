"""Gradio app: load a diffusion model, score what can be pruned, select and compare, see how much
can go, export.

Composition only: each tab is a module of ``app_support.tabs`` that builds its components and wires
its events (callbacks return ``{component: value}``); the shared pieces (the model cache, runs
owned by their request, error toasts, the run-and-estimate loop) are in ``app_support.wiring``.
Models live in ``CACHE`` (never loaded at import time, never mutated for one user); session state
holds plain data. Run: ``python app.py``.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import gradio as gr

from app_support import guide, wiring
from app_support.exports import cleanup, serve_in_place
from app_support.tabs import export, model, quality, score, select
from app_support.wiring import CACHE, CHOSEN, RUNS, WAITED, sid

TABS = (model, score, select, quality, export)
DEFAULT_MODEL = model.DEFAULT_MODEL
CSS = """
.pixelated img { image-rendering: pixelated; }
#pair { flex-wrap: nowrap !important; }
#pair > * { flex: 1 1 0 !important; min-width: 0 !important; }
#img-diff { max-width: 50%; }
.status { min-height: 1.6em; }
#target-slider .tab-like-container { display: none !important; }  /* it clamps typed values silently: #target takes them */
.status > [data-testid="status-tracker"]:has(.error) { display: none !important; }  /* the toast says it */
@media (max-width: 600px) {
  .tab-container button { padding-left: 6px !important; padding-right: 6px !important; font-size: 13px !important; }
  #img-diff { max-width: 100%; }
  .modebar-container { display: none !important; }  /* plotly's toolbar would cover the plot's title */
  #guide-steps, #glossary { max-height: 20vh; overflow-y: auto !important; }  /* the open guide leaves the tabs in the first screen (each scrolls) */
  #export-options, #export-options > .form { flex-wrap: wrap !important; }  /* gradio groups the inputs in a .form */
  #export-options > .form > *, #export-options > * { flex: 1 1 100% !important; min-width: 100% !important; }
  #plan-row { flex-wrap: wrap !important; }
  #plan-row > * { flex: 1 1 100% !important; min-width: 100% !important; }
  #plan-totals { container-type: inline-size; }  /* its four columns in view: "what" wraps */
  #plan-totals :is(th, [role=gridcell], .sizing-body td) { --w: 72px; font-size: 12px !important; }
  #plan-totals :is(th[data-heading="3"], [data-col="3"], .sizing-body td:nth-child(4)) { --w: 92px; }
  #plan-totals :is(th[data-heading="0"], [data-col="0"], .sizing-body td:nth-child(1)) { --w: calc(100cqw - 238px); }
  #plan-totals :is(th, [role=gridcell], .sizing-body td) {
    width: var(--w) !important; min-width: var(--w) !important; max-width: var(--w) !important; flex: 0 0 var(--w) !important; }
  #plan-totals :is([data-col="0"] span, .sizing-body td:nth-child(1) .cell-wrap) { white-space: normal !important; }
  /* the selection table: prune, score and the whole FQN (wrapped) fill the phone's width; the other columns
     scroll sideways. Only these three columns are sized here (gradio sizes the others from their content). */
  #selection { container-type: inline-size; }
  #selection :is(th[data-heading="0"], [data-col="0"], .sizing-body td:nth-child(1)) { --w: 88px; }
  #selection :is(th[data-heading="1"], [data-col="1"], .sizing-body td:nth-child(2)) { --w: 66px; }
  #selection :is(th[data-heading="2"], [data-col="2"], .sizing-body td:nth-child(3)) { --w: calc(100cqw - 156px); }
  #selection :is(th[data-heading="0"], th[data-heading="1"], th[data-heading="2"], [data-col="0"], [data-col="1"],
                 [data-col="2"], .sizing-body td:nth-child(-n+3)) {
    width: var(--w) !important; min-width: var(--w) !important; max-width: var(--w) !important; flex: 0 0 var(--w) !important; }
  #selection :is([role=gridcell], .sizing-body td) { font-size: 12px !important; }
  #selection :is([data-col="2"] span, .sizing-body td:nth-child(3) .cell-wrap) {
    white-space: normal !important; overflow-wrap: anywhere !important; }
}
"""

# An error toast belongs to the tab whose action raised it (and it times out: wiring.toast): another tab closes it.
CLOSE_TOASTS = "() => { document.querySelectorAll('.toast-body.error .toast-close').forEach(b => b.click()); }"


def end_session(request: gr.Request):
    """A closed tab: stop its runs, remove its exports and forget what the server kept for it."""
    RUNS.stop(sid(request), "the session closed")
    cleanup(session=sid(request))
    for per_session in (CHOSEN, WAITED):
        per_session.pop(sid(request), None)


def build_app() -> gr.Blocks:
    """The Blocks app (no model is loaded here; the page's load event loads the default). The
    method controls are built from the registry as it is now."""
    serve_in_place()  # downloads are served from PRUNING_EXPORT_DIR, never copied into gradio's cache
    with gr.Blocks(title="Diffusion Pruning Explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown(guide.intro())
        with gr.Accordion("How it works, and the words used here", open=True, elem_id="guide"):
            steps_md = gr.Markdown(guide.steps(None), elem_id="guide-steps")
            glossary = gr.Markdown(guide.GLOSSARY, elem_id="glossary")
        S = wiring.shared()
        with gr.Tabs() as tabs:
            T = SimpleNamespace(demo=demo, tabs=tabs, steps_md=steps_md, glossary=glossary)
            for tab in TABS:
                setattr(T, tab.KEY, tab.build(S))
        for tab in TABS:
            tab.wire(S, T)
        tabs.change(None, js=CLOSE_TOASTS, **wiring.PRIVATE)  # a tab's error toast does not follow the visitor
        demo.unload(end_session)
    wiring.DEMOS.add(demo)
    demo.parts = SimpleNamespace(shared=S, tabs=T)  # for tests: the components by tab and name
    return demo


demo = build_app()


def _warm(source: str = DEFAULT_MODEL) -> None:
    """Load the default model into the cache in the background, so the first page view is fast."""
    try:
        CACHE.get(source)
    except Exception as e:  # the page's load event shows the error as a toast
        print(f"[app] could not preload {source!r}: {e}", flush=True)


def launch(app: gr.Blocks | None = None, **kwargs) -> str:
    """Serve the app as ``python app.py`` does (one run at a time per event, a bounded queue, the
    page's CSS); the tests call this too, so they test the app as it is served. Returns the URL."""
    app = app or demo
    app.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), show_error=True, css=CSS, **kwargs)
    return app.local_url


if __name__ == "__main__":
    import torch

    # small models on a shared CPU run far faster on one thread (contention); PRUNING_THREADS overrides
    if not torch.cuda.is_available() or os.environ.get("PRUNING_THREADS"):
        torch.set_num_threads(int(os.environ.get("PRUNING_THREADS", "1")))
    threading.Thread(target=_warm, daemon=True).start()
    launch()
