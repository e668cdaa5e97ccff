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


def titled(title: str, subtitle: str = "", width: int = 70) -> dict:
    """A left-aligned title whose subtitle (which model, method and settings made the figure) is
    broken into lines at its ' · ' separators, so it stays readable on a phone.

    >>> titled("Scores", "model a · method b")["text"]
    'Scores<br><sup>model a · method b</sup>'
    """
    lines, line = [], ""
    for part in (subtitle.split(" · ") if subtitle else []):
        if line and len(line) + len(part) + 3 > width:
            lines.append(line)
            line = part
        else:
            line = f"{line} · {part}" if line else part
    if line:
        lines.append(line)
    text = title + "".join(f"<br><sup>{ln}</sup>" for ln in lines)
    return {"text": text, "x": 0.01, "xanchor": "left", "font": {"size": 15}}
