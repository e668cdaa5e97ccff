"""Quality-versus-sparsity curves across methods (the output of ``compare_methods``).

The ``original`` row (sparsity 0), when present, starts every method's line:

>>> import pandas as pd
>>> df = pd.DataFrame({"method": ["original", "ldpruner", "ldpruner", "ecodiff"], "sparsity": [0, 0.1, 0.2, 0.1],
...                    "latent_mse": [0.0, 0.01, 0.05, 0.02]})
>>> fig = quality_vs_sparsity(df, "latent_mse")
>>> [t.name for t in fig.data], [float(x) for x in fig.data[1].x], fig.layout.height
(['ldpruner', 'ecodiff'], [0.0, 0.1], 420)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

HEIGHT = 420
LABELS = {"latent_mse": "latent MSE (lower is better)", "psnr": "PSNR dB (higher is better)",
          "acc_all": "task accuracy (higher is better)", "accuracy": "task accuracy (higher is better)"}


def quality_vs_sparsity(df: pd.DataFrame, metric: str = "latent_mse", x: str = "sparsity",
                        title: str | None = None) -> go.Figure:
    """One line per method: ``metric`` against ``x`` (the fraction of params removed)."""
    fig = go.Figure()
    if len(df) and metric in df.columns and x in df.columns:
        df = df.dropna(subset=[x, metric])
        original = df[df["method"] == "original"]
        for method, part in df[df["method"] != "original"].groupby("method", sort=False):
            part = pd.concat([original, part]).sort_values(x)
            fig.add_trace(go.Scatter(x=part[x], y=part[metric], mode="lines+markers", name=str(method),
                                     hovertemplate=f"{method}<br>{x}: %{{x:.1%}}<br>{metric}: %{{y:.4g}}"
                                                   "<extra></extra>"))
    fig.update_layout(title=title or f"Quality vs sparsity: {metric}", height=HEIGHT,
                      xaxis={"title": "params removed", "tickformat": ".0%"},
                      yaxis={"title": LABELS.get(metric, metric)},
                      margin={"l": 60, "r": 20, "t": 50, "b": 40})
    return fig
