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
(['ldpruner', 'ecodiff'], [0.0, 0.1], 420)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .theme import apply_theme, titled

HEIGHT = 420
METRICS = {  # column -> (axis label, direction)
    "latent_mse": ("latent MSE vs the original", "lower is better"),
    "psnr": ("PSNR vs the original (dB)", "higher is better"),
    "acc_all": ("task accuracy: color, shape and position right", "higher is better"),
    "acc_shape": ("task accuracy: shape right", "higher is better"),
    "acc_color": ("task accuracy: color right", "higher is better"),
    "acc_position": ("task accuracy: position right", "higher is better"),
}


def quality_vs_sparsity(df: pd.DataFrame, metric: str = "latent_mse", x: str = "params_fraction",
                        title: str | None = None, subtitle: str = "", mark: float | None = None) -> go.Figure:
    """One line per method: ``metric`` against ``x`` (the fraction of params removed)."""
    fig = go.Figure()
    label, direction = METRICS.get(metric, (metric, ""))
    xs = []
    if len(df) and metric in df.columns and x in df.columns:
        df = df.dropna(subset=[x, metric])
        original = df[df["method"] == "original"]
        for method, part in df[df["method"] != "original"].groupby("method", sort=False):
            part = pd.concat([original, part]).sort_values(x)
            xs += list(part[x])
            fig.add_trace(go.Scatter(x=part[x], y=part[metric], mode="lines+markers", name=str(method),
                                     hovertemplate=f"{method}<br>params removed: %{{x:.1%}}<br>{label}: "
                                                   "%{y:.4g}<extra></extra>"))
    if mark is not None:
        fig.add_vline(x=mark, line={"dash": "dot", "color": "#e4572e"},
                      annotation_text=f"your plan: {mark:.0%}", annotation_position="top")
        xs.append(mark)
    hi = max(xs + [0.1]) * 1.08
    fig.update_layout(title=titled(title or f"Quality vs sparsity: {label} ({direction})", subtitle),
                      height=HEIGHT, margin={"l": 60, "r": 20, "t": 70, "b": 40},
                      xaxis={"title": "params removed", "tickformat": ".0%", "range": [-0.01, hi]},
                      yaxis={"title": f"{label} ({direction})" if direction else label,
                             **({"range": [-0.02, 1.02]} if metric.startswith("acc") else {"rangemode": "tozero"})})
    return apply_theme(fig)
