"""One look for every figure that reads on a light and on a dark page: transparent
backgrounds, a mid-grey font and translucent grid lines (the app's theme shows through).

>>> import plotly.graph_objects as go
>>> fig = apply_theme(go.Figure())
>>> fig.layout.paper_bgcolor, fig.layout.font.color
('rgba(0,0,0,0)', '#8a8f98')

Plotly never wraps a title, so every text drawn across a figure (title, subtitle, placeholder
message, panel title) is broken into lines here, short enough for a 390 px phone: SVG text that
is wider than the figure is cut off, not wrapped.
"""

from __future__ import annotations

import re
import textwrap

import plotly.graph_objects as go

FONT = "#8a8f98"  # readable on white and on near-black
GRID = "rgba(138,143,152,0.25)"
TITLE_SIZE = 15
# Characters per line, for a figure about 350 px wide (a 390 px phone less the page's padding) in the
# widest font a browser may draw Plotly's "Open Sans, verdana, arial" with: Verdana (an iPhone has it,
# not Open Sans), about 0.58 em a character; tests/e2e/test_journey.py checks the drawn title fits.
TITLE_CHARS = 36  # a title line at TITLE_SIZE
SUBTITLE_CHARS = 50  # a subtitle line (Plotly draws <sup> at 70% of the title's size)
LINE_PX = 1.3 * TITLE_SIZE  # Plotly's line spacing: every line of a title, <sup> or not, takes this much
TITLE_TOP = 42  # px above the title: the app's plot label ("scores per layer") sits there, over the figure


def apply_theme(fig: go.Figure) -> go.Figure:
    fig.update_layout(template="none", paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      font={"color": FONT}, legend={"bgcolor": "rgba(0,0,0,0)"})
    fig.update_xaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
    fig.update_yaxes(gridcolor=GRID, zerolinecolor=GRID, linecolor=GRID)
    return fig


def wrap(text: str, width: int) -> list[str]:
    """``text`` as lines of at most ``width`` characters, broken at its ' · ' separators where it
    has them and between words inside a part too long for one line (a single word longer than
    ``width``, such as a path, is cut); no word is dropped.

    >>> wrap("tiny-shapes-sd, float32 · LD-Pruner (defaults) · 4 prompts", 32)
    ['tiny-shapes-sd, float32', 'LD-Pruner (defaults) · 4 prompts']
    >>> wrap("Quality vs sparsity: PSNR vs the original (dB) (higher is better)", 36)
    ['Quality vs sparsity: PSNR vs the', 'original (dB) (higher is better)']
    """
    lines, line = [], ""
    for part in filter(None, (p.strip() for p in text.split(" · "))):
        if line and len(line) + 3 + len(part) <= width:
            line = f"{line} · {part}"
            continue
        if line:
            lines.append(line)
        *full, line = textwrap.wrap(part, width, break_on_hyphens=False) or [""]
        lines += full
    return lines + ([line] if line else [])


def titled(title: str, subtitle: str = "") -> dict:
    """A left-aligned title over its subtitle (which model, method and settings made the figure),
    each wrapped to fit a phone (:func:`wrap`); with :func:`top_margin` the plot starts below it.

    >>> titled("Scores", "model a · method b")["text"]
    'Scores<br><sup>model a · method b</sup>'
    """
    lines = wrap(title, TITLE_CHARS) + [f"<sup>{ln}</sup>" for ln in wrap(subtitle, SUBTITLE_CHARS)]
    return {"text": "<br>".join(lines), "x": 0.01, "xanchor": "left", "xref": "container",
            "y": 1, "yanchor": "top", "yref": "container", "pad": {"t": TITLE_TOP}, "automargin": True,
            "font": {"size": TITLE_SIZE}}


def top_margin(title: dict, gap: int = 16) -> int:
    """The figure's top margin under a :func:`titled` title: its lines, its padding and ``gap``
    (room for what sits just above the plot: a panel title, a marker's label).

    >>> top_margin(titled("Scores", "model a · method b"))
    97
    """
    lines = title["text"].count("<br>") + 1
    return round(title["pad"]["t"] + lines * LINE_PX + gap)


def set_title(fig: go.Figure, title: str, subtitle: str = "", top: int = 100, gap: int = 16) -> go.Figure:
    """Title ``fig`` (:func:`titled`) with a top margin for all its lines (:func:`top_margin`); the
    figure grows by what the title takes beyond ``top`` px, so a long subtitle on a phone does not
    squeeze the plot (or push a legend below it onto the axis title).

    >>> fig = set_title(go.Figure(layout={"height": 400}), "Scores", "a · b · c · d · " * 8)
    >>> fig.layout.margin.t, fig.layout.height
    (136, 436)
    """
    head = titled(title, subtitle)
    t = top_margin(head, gap)
    fig.update_layout(title=head, margin={"t": t}, height=fig.layout.height + max(0, t - top))
    return fig


def plain(text: str) -> str:
    """A wrapped title as one line of words (what it says, without its line breaks and tags).

    >>> plain(titled("Scores", "model a · method b")["text"])
    'Scores model a · method b'
    """
    return " ".join(re.sub(r"<[^>]+>", " ", text.replace("<br>", " ")).split())


def broken(text: str, width: int = TITLE_CHARS) -> str:
    """``text`` wrapped (:func:`wrap`) into Plotly's line breaks, for an annotation or an axis title.

    >>> broken("Run a method to see this plot", 16)
    'Run a method to<br>see this plot'
    """
    return "<br>".join(wrap(text, width))
