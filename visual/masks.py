"""EcoDiff figures: the live loss / expected-sparsity curves and per-layer kept fractions.

>>> import pandas as pd
>>> h = pd.DataFrame({"step": [0, 1], "loss": [0.3, 0.2], "recon": [0.2, 0.1], "reg": [1.0, 0.9],
...                   "kept_head": [1.0, 0.9], "kept_neuron": [1.0, 0.8]})
>>> [t.name for t in loss_plot(h).data]
['loss', 'recon', 'expected sparsity (head)', 'expected sparsity (neuron)']
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .heatmaps import layer_of

HEIGHT = 480
KIND_COLORS = {"head": "#636EFA", "neuron": "#EF553B", "group": "#00CC96"}


def loss_plot(history: pd.DataFrame, title: str = "EcoDiff optimization") -> go.Figure:
    """Loss and reconstruction (top), expected sparsity = 1 - expected kept fraction per kind (bottom)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("loss", "expected sparsity"))
    h = history if len(history) else pd.DataFrame({"step": [], "loss": [], "recon": []})
    for col in ("loss", "recon"):
        if col in h.columns:
            fig.add_trace(go.Scatter(x=h["step"], y=h[col], mode="lines+markers", name=col), row=1, col=1)
    for col in [c for c in h.columns if c.startswith("kept_")]:
        kind = col.removeprefix("kept_")
        fig.add_trace(go.Scatter(x=h["step"], y=1 - h[col], mode="lines+markers",
                                 name=f"expected sparsity ({kind})", line={"color": KIND_COLORS.get(kind)}),
                      row=2, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=2, col=1)
    fig.update_xaxes(title="step", row=2, col=1)
    fig.update_layout(title=title, height=HEIGHT, margin={"l": 60, "r": 20, "t": 60, "b": 40})
    return fig


def mask_sparsity_plot(kept: pd.DataFrame, title: str = "Kept fraction per layer") -> go.Figure:
    """Grouped bars: kept fraction of heads, neurons and channel groups per layer (depth order).

    ``kept`` has one row per structure: fqn, kind (head/neuron/group), kept (fraction in [0, 1]),
    optionally units and depth.

    >>> df = pd.DataFrame({"fqn": ["mid_block.resnets.0", "mid_block.attentions.0.transformer_blocks.0.ff"],
    ...                    "kind": ["group", "neuron"], "kept": [0.5, 0.75], "units": [8, 128]})
    >>> fig = mask_sparsity_plot(df)
    >>> sorted(t.name for t in fig.data), fig.layout.height
    (['group', 'neuron'], 480)
    """
    df = kept.copy()
    df["layer"] = df["fqn"].map(layer_of)
    if "depth" in df.columns:
        df = df.sort_values("depth", kind="stable")
    layers = list(dict.fromkeys(df["layer"]))
    if "units" not in df.columns:
        df["units"] = None
    fig = go.Figure()
    for kind in [k for k in KIND_COLORS if k in set(df["kind"])]:
        part = df[df["kind"] == kind].groupby("layer", sort=False).agg(
            kept=("kept", "mean"), fqn=("fqn", lambda s: "<br>".join(s)), units=("units", "sum"))
        fig.add_trace(go.Bar(x=list(part.index), y=part["kept"], name=kind, marker_color=KIND_COLORS[kind],
                             customdata=part[["fqn", "units"]].to_numpy(),
                             hovertemplate="%{customdata[0]}<br>kept: %{y:.1%} of %{customdata[1]} units"
                                           "<extra></extra>"))
    fig.update_layout(title=title, height=HEIGHT, barmode="group", margin={"l": 60, "r": 20, "t": 50, "b": 90},
                      yaxis={"range": [0, 1.05], "title": "kept fraction", "tickformat": ".0%"},
                      xaxis={"type": "category", "categoryorder": "array", "categoryarray": layers})
    return fig
