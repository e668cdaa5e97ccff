"""1 Model: load a model (bundled, preset, Hub id, allowed folder); every other tab is emptied
for it (each tab's ``cleared``)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from pruning.facts import model_facts
from pruning.loading import BUNDLED, DTYPES
from pruning.reference import PIPELINES

from .. import format as fmt
from .. import guide, results
from ..cache import TINY_RANDOM
from ..wiring import CACHE, EMPTY, PRIVATE, PROGRESS, RUN, WAITED, friendly, sid, waiting_note

KEY = "model"
DEFAULT_MODEL = os.environ.get("PRUNING_DEFAULT_MODEL", "tiny-shapes-sd")
MODELS = [*BUNDLED, *(p["hub_id"] for p in PIPELINES.values()), *TINY_RANDOM]


def build(S) -> SimpleNamespace:
    H = guide.HELP
    with gr.Tab("1 Model", id="model"):
        gr.Markdown("### 1. Load a model")
        with gr.Row():
            source = gr.Dropdown(MODELS, value=DEFAULT_MODEL, allow_custom_value=True, scale=3, label="model",
                                 info=H["model"])
            device = gr.Dropdown(["cpu", "cuda"], value="cpu", label="device", info=H["device"], scale=1)
            dtype = gr.Dropdown(list(DTYPES), value="float32", label="dtype", info=H["dtype"], scale=1)
        load = gr.Button("Load", variant="primary")
        status = gr.Markdown("Loading the default model...", elem_classes="status", elem_id="model-status")
        info = gr.Markdown(elem_id="model-info")
        kinds = gr.Dataframe(EMPTY["kinds"], label="What can be pruned, by kind", interactive=False)
        next_ = gr.Button("Next: score what can be removed →", size="sm")
    return SimpleNamespace(source=source, device=device, dtype=dtype, load=load, status=status, info=info,
                           kinds=kinds, next=next_)


def param_shares(f: dict) -> str:
    """The Model tab's "Parameter shares": the modules that hold the prunable units, then the
    conditioning channels (the time / text embedding's outputs and every modulation layer's inputs; on a
    UNet their ``time_emb_proj`` columns are also part of the resnet share).

    >>> param_shares({"kind_shares": {"attention": 0.245, "ffn": 0.362, "resnet": 0.0},
    ...               "structures": {"channel": {"param_share": 0.351}}})
    'attention 24.5%, ffn 36.2%, conditioning channels 35.1%'
    """
    shares = [f"{k} {v:.1%}" for k, v in f["kind_shares"].items() if v]
    cond = f["structures"].get("channel", {}).get("param_share")
    return ", ".join(shares + ([f"conditioning channels {cond:.1%}"] if cond else []))


def _kinds(f: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [{"what": "operator", "kind": k, "count": r["count"], "params": fmt.count(r["params"]),
          "share of params": fmt.percent(r["param_share"]), "share of MACs": fmt.percent(r["mac_share"])}
         for k, r in f["operators"].items()] +
        [{"what": "structure", "kind": k, "count": r["count"], "params": fmt.count(r["params"]),
          "share of params": fmt.percent(r["param_share"]), "share of MACs": ""}
         for k, r in f["structures"].items()])


def wire(S, T) -> None:
    from . import export, quality, score, select

    t = T.model
    tabs = (score, select, quality, export)
    outputs = [S.model, t.info, t.kinds, t.status, T.steps_md, T.glossary, S.store, S.plan, S.comparison,
               S.last_method, S.pair, *[c for mod in tabs for c in mod.reset_outputs(getattr(T, mod.KEY))]]

    @friendly
    def load_model(source, device, dtype, request: gr.Request = None, progress=PROGRESS):
        progress(0.1, desc=f"loading {source}")
        h = CACHE.get(str(source or "").strip(), device, dtype)
        f = model_facts(h)
        shares = param_shares(f)
        with CACHE.lock(h):  # the estimate times the shared denoiser
            est = guide.estimates(h)
        md = (f"### {results.model_label(h)}\nfamily `{f['family']}` ({f['denoiser_class']}): "
              f"**{fmt.count(f['params'])} params**, **{fmt.count(f['macs'], 'MACs')}** per denoiser call at "
              f"{f['resolution']} px, on {f['device']} / {f['dtype']}. Generates with {f['steps']} steps, guidance "
              f"{f['guidance']:g}. Parameter shares: {shares}.\n\n{est}\n\n"
              f"<small>weights hash (provenance): `{h.model_ref}`</small>")
        model = {"source": h.source, "device": str(h.device), "dtype": f["dtype"], "model_ref": h.model_ref}
        waited = WAITED.pop(sid(request), None)
        dropped = f" The result of {waited}, which finished first, was cleared with the switch." if waited else ""
        out = {S.model: model, t.info: md, t.kinds: _kinds(f), t.status: f"Loaded {results.model_label(h)}.{dropped}",
               T.steps_md: guide.steps(h, est), T.glossary: guide.glossary(h), S.store: {}, S.plan: None,
               S.comparison: None, S.last_method: None, S.pair: None}
        for mod in tabs:
            out.update(mod.cleared(getattr(T, mod.KEY), h))
        return out

    t.load.click(waiting_note, None, t.status, queue=False, **PRIVATE)  # said at once, not after the queue
    t.load.click(load_model, [t.source, t.device, t.dtype], outputs, api_name="load_model",
                 show_progress_on=[t.status], **RUN)
    T.demo.load(load_model, [t.source, t.device, t.dtype], outputs, show_progress_on=[t.status], **PRIVATE, **RUN)
    t.next.click(lambda: gr.Tabs(selected="score"), None, T.tabs, queue=False, **PRIVATE)
