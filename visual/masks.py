"""EcoDiff figures: the live loss / expected-sparsity curves and per-layer kept fractions.

Colours mean one thing each: the two loss curves are greys (solid: total, dashed: image
part), and every structure kind has its own colour in both figures (heads, neurons, groups,
conditioning channels).

>>> import pandas as pd
>>> h = pd.DataFrame({"step": [0, 1], "loss": [0.3, 0.2], "recon": [0.2, 0.1], "reg": [1.0, 0.9],
...                   "kept_head": [1.0, 0.9], "kept_neuron": [1.0, 0.8]})
>>> [t.name for t in loss_plot(h).data]
['loss', 'recon', 'expected sparsity (head)', 'expected sparsity (neuron)']
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .heatmaps import layers as layer_names
from .theme import TITLE_CHARS, TITLE_SIZE, apply_theme, broken, set_title

HEIGHT = 480
PANEL_SIZE = 13  # the loss plot's panel titles, a little smaller than the figure's title
PANEL_CHARS = TITLE_CHARS * TITLE_SIZE // PANEL_SIZE  # as wide as a title line
# one entry per unit kind of pruning.catalog.UNIT_KINDS (a kind missing here would vanish from the plots)
KIND_COLORS = {"head": "#7b4fb8", "neuron": "#1b9e77", "group": "#2e8fb8",
               "channel": "#8c564b"}  # never orange (= prunable)
KIND_DASH = {"head": "solid", "neuron": "dash", "group": "dot", "channel": "dashdot"}  # equal curves stay visible
KIND_NAMES = {"head": "attention heads", "neuron": "FFN neurons", "group": "resnet channel groups",
              "channel": "conditioning channels"}
LOSS_STYLE = {"loss": {"color": "#555555"}, "recon": {"color": "#999999", "dash": "dash"}}


LOSS_DECADES = 4  # the loss axis spans at most this many powers of ten below its largest value


def _loss_range(h: pd.DataFrame) -> list[float] | None:
    """The log axis range (log10 units) of the loss panel: from the largest value down at most
    ``LOSS_DECADES`` decades, so a near-zero image part at the first step (all gates open) does not
    stretch the axis over ten decades and flatten the curves that matter.

    >>> _loss_range(pd.DataFrame({"loss": [1000.0, 900.0], "recon": [1e-6, 0.5]}))
    [-1.0, 3.176]
    """
    cols = [c for c in ("loss", "recon") if c in h.columns]
    vals = pd.concat([h[c] for c in cols]) if cols else pd.Series([], dtype=float)
    vals = vals[(vals > 0) & vals.notna() & (vals != float("inf"))]
    if not len(vals):
        return None
    top = math.log10(float(vals.max())) + 0.176  # 1.5x headroom
    bottom = max(math.log10(float(vals.min())) - 0.176, top - 0.176 - LOSS_DECADES)
    return [round(bottom, 3), round(top, 3)]


def loss_plot(history: pd.DataFrame, title: str = "EcoDiff optimization", subtitle: str = "",
              target: float | None = None) -> go.Figure:
    """Loss and its image part (top, log scale); expected sparsity = 1 - expected kept fraction
    per kind (bottom), with the target sparsity as a dotted line when given."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.14,  # room for a two-line panel title
                        subplot_titles=[broken(t, PANEL_CHARS) for t in (
                            "loss (total, and its image part: lower = closer to the original)",
                            "expected sparsity of the gates (fraction of units off)")])
    fig.update_annotations(font={"size": PANEL_SIZE})  # the two panel titles
    h = history if len(history) else pd.DataFrame({"step": [], "loss": [], "recon": []})
    for col in ("loss", "recon"):
        if col in h.columns:
            fig.add_trace(go.Scatter(x=h["step"], y=h[col], mode="lines+markers", name=col,
                                     line=LOSS_STYLE[col]), row=1, col=1)
    for col in [c for c in h.columns if c.startswith("kept_")]:
        kind = col.removeprefix("kept_")
        fig.add_trace(go.Scatter(x=h["step"], y=1 - h[col], mode="lines+markers",
                                 name=f"expected sparsity ({kind})",
                                 line={"color": KIND_COLORS.get(kind), "dash": KIND_DASH.get(kind, "solid")}),
                      row=2, col=1)
    if target is not None:
        fig.add_hline(y=target, line={"dash": "dot", "color": "#8a8f98"}, row=2, col=1,
                      annotation_text=f"your target {target:.0%} (slider)", annotation_position="top left")
    fig.update_yaxes(type="log", range=_loss_range(h), row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=2, col=1)
    fig.update_xaxes(title="optimizer step", row=2, col=1)
    fig.update_xaxes(tickformat="d", dtick=1 if len(h) <= 12 else None)  # whole steps, never half-step ticks
    fig.update_layout(height=HEIGHT, margin={"l": 60, "r": 20, "b": 40})
    return apply_theme(set_title(fig, title, subtitle, top=110, gap=2 * PANEL_SIZE + 16))  # room: a panel title


def mask_sparsity_plot(kept: pd.DataFrame, title: str = "Kept fraction per layer", subtitle: str = "") -> go.Figure:
    """Grouped bars: kept fraction of heads, neurons, channel groups and conditioning channels per
    layer (depth order).

    ``kept`` has one row per structure: fqn, kind (head/neuron/group/channel), kept (fraction in [0, 1]),
    optionally units and depth.

    >>> df = pd.DataFrame({"fqn": ["mid_block.resnets.0", "mid_block.attentions.0.transformer_blocks.0.ff"],
    ...                    "kind": ["group", "neuron"], "kept": [0.5, 0.75], "units": [8, 128]})
    >>> fig = mask_sparsity_plot(df)
    >>> sorted(t.name for t in fig.data), fig.layout.height
    (['FFN neurons', 'resnet channel groups'], 480)
    """
    df = kept.copy()
    df["layer"] = layer_names(df)
    if "depth" in df.columns:
        df = df.sort_values("depth", kind="stable")
    layers = list(dict.fromkeys(df["layer"]))
    if "units" not in df.columns:
        df["units"] = None
    fig = go.Figure()
    for kind in [k for k in KIND_COLORS if k in set(df["kind"])]:
        part = df[df["kind"] == kind].groupby("layer", sort=False).agg(
            kept=("kept", "mean"), fqn=("fqn", lambda s: "<br>".join(s)), units=("units", "sum"))
        fig.add_trace(go.Bar(x=list(part.index), y=part["kept"], name=KIND_NAMES[kind],
                             marker_color=KIND_COLORS[kind], customdata=part[["fqn", "units"]].to_numpy(),
                             hovertemplate="%{customdata[0]}<br>kept: %{y:.1%} of %{customdata[1]} units"
                                           "<extra></extra>"))
    fig.update_layout(height=HEIGHT, barmode="group", margin={"l": 60, "r": 20, "b": 90},
                      # below the layer names: at the right it took half a phone's width from the bars
                      legend={"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"},
                      yaxis={"range": [0, 1.05], "title": "kept fraction (1 = untouched)", "tickformat": ".0%"},
                      xaxis={"type": "category", "categoryorder": "array", "categoryarray": layers})
    return apply_theme(set_title(fig, title, subtitle))
