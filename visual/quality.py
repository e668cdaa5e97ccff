"""Quality-versus-sparsity curves across methods (the output of ``compare_methods``): the
answer to "how much can I prune, and what do I lose".

The ``original`` row (sparsity 0), when present, starts every method's line. Only finished
rows are drawn (a stopped comparison shows what it finished); ``mark`` draws a vertical line
at the visitor's own plan.

>>> import pandas as pd
>>> df = pd.DataFrame({"method": ["original", "ldpruner", "ldpruner", "ecodiff"], "params_fraction": [0, 0.1, 0.2, 0.1],
...                    "latent_mse": [0.0, 0.01, 0.05, 0.02]})
>>> fig = quality_vs_sparsity(df, "latent_mse")
>>> [t.name for t in fig.data], [float(x) for x in fig.data[1].x], fig.layout.height
(['ldpruner', 'ecodiff'], [0.0, 0.1], 480)

Rows with ``reconstructed`` true (``compare_methods(..., reconstruct=True)``) get their own
dashed line in the method's colour; ``latent_mse_se`` and ``acc_*_lo`` / ``_hi`` become error bars.
The "fewer steps" baseline (the original at the steps that spend a plan's MACs per image) is a
grey dotted line drawn at the target sparsity of the plans it matches.

>>> few = pd.DataFrame({"method": ["fewer steps"], "sparsity": [0.2], "params_fraction": [0.0],
...                     "latent_mse": [0.03], "reconstructed": [False]})
>>> fig = quality_vs_sparsity(pd.concat([df, few]), "latent_mse")
>>> [(t.name, [float(v) for v in t.x]) for t in fig.data][-1]
('fewer steps (same MACs per image)', [0.0, 0.2])

>>> df["reconstructed"] = [False, False, False, False]
>>> rec = pd.DataFrame({"method": ["ldpruner"], "params_fraction": [0.1], "latent_mse": [0.005],
...                     "latent_mse_se": [0.001], "reconstructed": [True]})
>>> fig = quality_vs_sparsity(pd.concat([df, rec]), "latent_mse")
>>> [(t.name, t.line.dash) for t in fig.data]
[('ldpruner', 'solid'), ('ldpruner + reconstruction', 'dash'), ('ecodiff', 'solid')]

PSNR has no finite value for identical images (the original against itself): those points are
left out and the subtitle says so, rather than drawn at the 100 dB cap:

>>> df["psnr"] = [100.0, 30.0, 25.0, 28.0]
>>> fig = quality_vs_sparsity(df, "psnr")
>>> [float(v) for v in fig.data[0].x], "no finite PSNR" in fig.layout.title.text
([0.1, 0.2], True)

Each curve's legend is its ``label`` (the method and the settings it ran with) when the table has
one; the visitor's own plan (method "your plan") is one star at its measured point:

>>> df["label"] = [None, "LD-Pruner (defaults)", "LD-Pruner (defaults)", "EcoDiff (authors' configs)"]
>>> mine = pd.DataFrame({"method": ["your plan"], "label": ["EcoDiff 20%, edited by hand"],
...                      "params_fraction": [0.19], "latent_mse": [0.03], "reconstructed": [False]})
>>> fig = quality_vs_sparsity(pd.concat([df, mine]), "latent_mse", mark=0.19)
>>> [(t.name, t.mode) for t in fig.data][-2:], len(fig.layout.shapes)
([("EcoDiff (authors' configs)", 'lines+markers'), ('your plan: EcoDiff 20%, edited by hand', 'markers')], 0)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .theme import apply_theme, broken, set_title

HEIGHT = 420
AXIS_CHARS = 32  # a line of the y axis title, along the plot's height (about 300 px)
PSNR_IDENTICAL = 100.0  # pruning.quality's PSNR of identical images (a cap, not a measurement)
FEWER_STEPS = "fewer steps"  # pruning.compare.FEWER_STEPS (kept in step by tests/test_visual.py)
METRICS = {  # column -> (axis label, direction)
    "latent_mse": ("latent MSE vs the original", "lower is better"),
    "psnr": ("PSNR vs the original (dB)", "higher is better"),
    "ssim": ("SSIM vs the original", "higher is better"),
    "acc_all": ("task accuracy: color, shape and position right", "higher is better"),
    "acc_shape": ("task accuracy: shape right", "higher is better"),
    "acc_color": ("task accuracy: color right", "higher is better"),
    "acc_position": ("task accuracy: position right", "higher is better"),
}


OWN_PLAN = "your plan"  # pruning.compare.OWN_PLAN: the visitor's own plan, one point
OWN_COLOR = "#e4572e"  # the orange of "your plan" (never a method's colour)
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22")  # not orange (your plan)


def _error_bars(part: pd.DataFrame, metric: str) -> dict | None:
    """The latent MSE's standard error, or an accuracy's 95% interval, as Plotly error bars."""
    if metric == "latent_mse" and "latent_mse_se" in part:
        return {"type": "data", "array": part["latent_mse_se"].fillna(0).tolist(), "visible": True, "thickness": 1}
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    if lo in part and hi in part:
        return {"type": "data", "symmetric": False, "visible": True, "thickness": 1,
                "array": (part[hi] - part[metric]).fillna(0).clip(lower=0).tolist(),
                "arrayminus": (part[metric] - part[lo]).fillna(0).clip(lower=0).tolist()}
    return None


def quality_vs_sparsity(df: pd.DataFrame, metric: str = "latent_mse", x: str = "params_fraction",
                        title: str | None = None, subtitle: str = "", mark: float | None = None) -> go.Figure:
    """One line per method: ``metric`` against ``x`` (the fraction of params removed)."""
    fig = go.Figure()
    label, direction = METRICS.get(metric, (metric, ""))
    xs = []
    if len(df) and metric in df.columns and x in df.columns:
        df = df.dropna(subset=[x, metric]).copy()
        few = df["method"] == FEWER_STEPS
        if few.any() and "sparsity" in df:
            df.loc[few, x] = df.loc[few, "sparsity"]  # beside the plans whose MACs it matches
        df["reconstructed"] = df["reconstructed"].fillna(False).astype(bool) if "reconstructed" in df else False
        if metric == "psnr":  # identical images have no finite PSNR: the capped points are not drawn
            identical = df[metric] >= PSNR_IDENTICAL
            if identical.any():
                subtitle = " · ".join(filter(None, [subtitle, "the original (and any identical result) is not drawn: "
                                                   "identical images have no finite PSNR"]))
            df = df[~identical]
        original = df[df["method"] == "original"]
        own = df[df["method"] == OWN_PLAN]
        colours, traces = {}, []
        lines = df[~df["method"].isin(["original", OWN_PLAN])]
        for (method, rebuilt), part in lines.groupby(["method", "reconstructed"], sort=False):
            part = pd.concat([original, part]).sort_values(x)
            xs += list(part[x])
            colour = colours.setdefault(method, "#555555" if method == FEWER_STEPS
                                        else PALETTE[len(colours) % len(PALETTE)])
            named = part.loc[part["method"] == method, "label"].dropna() if "label" in part else pd.Series([])
            name = str(named.iloc[0]) if len(named) and method != FEWER_STEPS else str(method)
            name = f"{name} + reconstruction" if rebuilt else name
            name = f"{FEWER_STEPS} (same MACs per image)" if method == FEWER_STEPS else name
            dash = "dot" if method == FEWER_STEPS else ("dash" if rebuilt else "solid")
            traces.append((list(colours).index(method), go.Scatter(
                x=part[x], y=part[metric], mode="lines+markers", name=name, line={"color": colour, "dash": dash},
                error_y=_error_bars(part, metric),
                hovertemplate=f"{name}<br>params removed: %{{x:.1%}}<br>{label}: %{{y:.4g}}<extra></extra>")))
        traces.sort(key=lambda t: t[0])  # a method's plain and reconstructed lines together
        fig.add_traces([t for _, t in traces])
        for _, row in own.iterrows():  # the visitor's own plan: its own measured point
            name = f"{OWN_PLAN}: {row['label']}" if "label" in own and pd.notna(row.get("label")) else OWN_PLAN
            xs.append(row[x])
            fig.add_trace(go.Scatter(x=[row[x]], y=[row[metric]], mode="markers", name=name,
                                     marker={"color": OWN_COLOR, "size": 14, "symbol": "star",
                                             "line": {"width": 1, "color": "#222222"}},
                                     error_y=_error_bars(own.loc[[_]], metric),
                                     hovertemplate=f"{name}<br>params removed: %{{x:.1%}}<br>{label}: "
                                                   "%{y:.4g}<extra></extra>"))
        if len(own):
            mark = None  # the point says it
    if mark is not None:
        fig.add_vline(x=mark, line={"dash": "dot", "color": OWN_COLOR},
                      annotation_text=f"your plan: {mark:.0%}", annotation_position="top")
        xs.append(mark)
    hi = max(xs + [0.1]) * 1.08
    fig.update_layout(height=HEIGHT + 60, margin={"l": 60, "r": 20, "b": 40},
                      legend={"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"},  # below: long labels, phones
                      xaxis={"title": "params removed", "tickformat": ".0%", "range": [-0.01, hi]},
                      yaxis={"title": broken(label, AXIS_CHARS) + (f"<br>({direction})" if direction else ""),
                             "automargin": True,  # room for its lines
                             **({"range": [-0.02, 1.02]} if metric.startswith("acc") else {"rangemode": "tozero"})})
    set_title(fig, title or f"Quality vs sparsity: {label} ({direction})", subtitle,
              gap=16 if mark is None else 32)  # room above the plot for the mark's label
    return apply_theme(fig)
