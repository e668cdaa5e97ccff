"""One look for every figure that reads on a light and on a dark page: transparent
backgrounds, a mid-grey font and translucent grid lines (the app's theme shows through).

>>> import plotly.graph_objects as go
>>> fig = apply_theme(go.Figure())
>>> fig.layout.paper_bgcolor, fig.layout.font.color
('rgba(0,0,0,0)', '#8a8f98')
"""

from __future__ import annotations

import plotly.graph_objects as go

FONT = "#8a8f98"  # readable on white and on near-black
GRID = "rgba(138,143,152,0.25)"


def apply_theme(fig: go.Figure) -> go.Figure:
    fig.update_layout(template="none", paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      font={"color": FONT}, legend={"bgcolor": "rgba(0,0,0,0)"})
    fig.update_xaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
    fig.update_yaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
    return fig
