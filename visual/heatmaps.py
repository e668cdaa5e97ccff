"""Per-layer heatmaps: rows are layers in depth order, columns are operator kinds or components.

**One colour rule for every method**: every score is "low = prunable", and every heatmap
colours a cell by the *rank* of its score among the cells (so one outlier cannot flatten the
rest), from ``PRUNABLE_COLOR`` (the lowest scores: remove first) to ``KEEP_COLOR`` (the
highest: keep). Hovering shows the score itself.

A *layer* groups what sits at one place in the denoiser: resnet ``i`` and attention ``i`` of a
UNet block share the row ``down.0 · 0``; FLUX blocks are ``double.3`` and ``single.7``; the
conditioning channels (kind ``channel``, component ``cond``: the time / text embedding every block's
modulation reads, whatever the family calls it) are the row ``embedding``, first, as in the denoiser
(:func:`layers`).

>>> layer_of("down_blocks.1.attentions.0.transformer_blocks.0.attn2")
'down.1 · 0'
>>> layer_of("up_blocks.2.attentions.1.transformer_blocks.3.ff"), layer_of("mid_block.resnets.1")
('up.2 · 1.3', 'mid · 1')
>>> layer_of("single_transformer_blocks.7.proj_mlp"), layer_of("conv_in")
('single.7', 'conv_in')
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .theme import apply_theme, broken, set_title

HEIGHT = 560
PRUNABLE_COLOR, MID_COLOR, KEEP_COLOR = "#e4572e", "#f3d9a4", "#2e5eaa"  # remove first ... keep
COLORSCALE = [[0.0, PRUNABLE_COLOR], [0.5, MID_COLOR], [1.0, KEEP_COLOR]]
KIND_ORDER = ("resnet", "attn1", "attn2", "ff", "transformer", "attn", "ff_context", "double_block",
              "single_attn", "proj_mlp", "single_block")
_UNET = re.compile(r"^(down|up)_blocks\.(\d+)\.(?:resnets|attentions)\.(\d+)(?:\.transformer_blocks\.(\d+))?")
_MID = re.compile(r"^mid_block\.(?:resnets|attentions)\.(\d+)(?:\.transformer_blocks\.(\d+))?")
_FLUX = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)")
EMBEDDING = "embedding"  # the conditioning channels' row: as wide as "double.0" (their FQNs did not fit the margin)


def layer_of(fqn: str) -> str:
    """The heatmap row of an operator or structure FQN (see the module docstring)."""
    if m := _UNET.match(fqn):
        stage, block, i, j = m.groups()
        return f"{stage}.{block} · {i}" + (f".{j}" if j not in (None, "0") else "")
    if m := _MID.match(fqn):
        i, j = m.groups()
        return f"mid · {i}" + (f".{j}" if j not in (None, "0") else "")
    if m := _FLUX.match(fqn):
        return f"{'double' if m.group(1) == 'transformer_blocks' else 'single'}.{m.group(2)}"
    return fqn


def layers(df: pd.DataFrame) -> pd.Series:
    """Each row's layer: :func:`layer_of` its FQN, or ``embedding`` for the conditioning channels (a
    row of kind ``channel`` or component ``cond``, as the catalog and the score tables say).

    >>> layers(pd.DataFrame({"fqn": ["time_text_embed", "single_transformer_blocks.7.attn"],
    ...                      "kind": ["channel", "head"]})).tolist()
    ['embedding', 'single.7']
    """
    cond = pd.Series(False, index=df.index)
    for column, value in (("kind", "channel"), ("component", "cond")):
        if column in df.columns:
            cond |= df[column] == value
    return df["fqn"].map(layer_of).where(~cond, EMBEDDING)


def _columns(values) -> list[str]:
    seen = list(dict.fromkeys(values))
    return [k for k in KIND_ORDER if k in seen] + [k for k in seen if k not in KIND_ORDER]


def rank_scale(values: np.ndarray) -> np.ndarray:
    """Scores -> their rank among the finite cells in [0, 1] (0 = lowest = most prunable); ties share.

    >>> rank_scale(np.array([5.0, 17.0, 0.1, np.nan])).tolist()[:3]
    [0.5, 1.0, 0.0]
    """
    out = np.full(values.shape, np.nan)
    ok = np.isfinite(values)
    if ok.sum() == 1:
        out[ok] = 0.5
    elif ok.any():
        ranks = pd.Series(values[ok]).rank(method="average").to_numpy()
        out[ok] = (ranks - 1) / (ok.sum() - 1)
    return out


def _grid(df: pd.DataFrame, column: str, value: str, extras: list[str]):
    """(rows, cols, z, customdata): one cell per (layer, column); rows by first depth."""
    df = df.copy()
    df["layer"] = layers(df)
    order = df["depth"] if "depth" in df.columns else pd.Series(range(len(df)), index=df.index)
    rows = list(df.assign(_o=order).groupby("layer", sort=False)["_o"].min().sort_values(kind="stable").index)
    cols = _columns(df[column])
    z = np.full((len(rows), len(cols)), np.nan)
    custom = np.full((len(rows), len(cols), 2 + len(extras)), None, dtype=object)
    r_idx, c_idx = {r: i for i, r in enumerate(rows)}, {c: i for i, c in enumerate(cols)}
    for rec in df.to_dict("records"):
        i, j = r_idx[rec["layer"]], c_idx[rec[column]]
        if np.isnan(z[i, j]):
            z[i, j] = float(rec[value])
            custom[i, j] = [rec["fqn"], float(rec[value]), *(rec.get(e) for e in extras)]
    return rows, cols, z, custom


FLAT = [[0.0, MID_COLOR], [1.0, MID_COLOR]]  # near-tied scores: one colour (a rank would look decisive)


def _figure(rows, cols, z, custom, hover: str, title: str, subtitle: str, flat: bool = False) -> go.Figure:
    bar = ({"title": {"text": "scores barely differ", "side": "right"}, "tickvals": [0.5], "len": 0.9,
            "ticktext": ["near-tie:<br>no ranking"]} if flat else
           {"title": {"text": "score rank", "side": "right"}, "tickvals": [0, 0.5, 1], "len": 0.9,
            "ticktext": ["lowest:<br>prune first", "median", "highest:<br>keep"]})
    fig = go.Figure(go.Heatmap(
        z=rank_scale(z), x=cols, y=rows, customdata=custom, hovertemplate=hover + "<extra></extra>",
        colorscale=FLAT if flat else COLORSCALE, zmin=0, zmax=1, hoverongaps=False, xgap=1, ygap=1, colorbar=bar))
    fig.update_layout(height=HEIGHT, margin={"l": 90, "r": 10, "b": 60},
                      yaxis={"autorange": "reversed", "type": "category", "title": "layer (depth order)",
                             "showgrid": False},
                      xaxis={"type": "category", "title": None, "showgrid": False})
    return apply_theme(set_title(fig, title, subtitle))


def operator_heatmap(scores: pd.DataFrame, value: str = "score", title: str | None = None,
                     subtitle: str = "", flat: bool = False) -> go.Figure:
    """Operator scores per layer (rows) and operator kind (columns), coloured by rank.

    ``scores`` needs fqn, kind and ``value``; params and depth are used when present.

    >>> df = pd.DataFrame({"fqn": ["down_blocks.0.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0.ff"],
    ...                    "kind": ["resnet", "ff"], "score": [1.0, 0.2], "params": [100, 50], "depth": [0, 1]})
    >>> fig = operator_heatmap(df)
    >>> list(fig.data[0].y), list(fig.data[0].x), fig.data[0].z.tolist()
    (['down.0 · 0'], ['resnet', 'ff'], [[1.0, 0.0]])
    """
    df = scores if "params" in scores.columns else scores.assign(params=None)
    rows, cols, z, custom = _grid(df, "kind", value, ["params"])
    hover = "%{customdata[0]}<br>score: %{customdata[1]:.4g} (low = prunable)<br>params: %{customdata[2]:,}"
    return _figure(rows, cols, z, custom, hover, title or "Operator scores (low = prunable)", subtitle, flat)


def structure_heatmap(units: pd.DataFrame, value: str = "score", title: str | None = None,
                      subtitle: str = "", flat: bool = False) -> go.Figure:
    """Per-structure scores (e.g. the mean unit score) by layer and component, coloured by rank.

    ``units`` has one row per structure: fqn, component and ``value`` (optionally units, depth).

    >>> df = pd.DataFrame({"fqn": ["mid_block.resnets.0", "mid_block.attentions.0.transformer_blocks.0.attn1"],
    ...                    "component": ["resnet", "attn1"], "score": [3.0, 1.5], "units": [8, 2]})
    >>> structure_heatmap(df).data[0].z.tolist()
    [[1.0, 0.0]]

    ``flat``: the scores barely differ (``pruning.ties``): one colour, and the colour bar says so.

    >>> {c for _, c in structure_heatmap(df, flat=True).data[0].colorscale} == {MID_COLOR}
    True
    """
    df = units if "units" in units.columns else units.assign(units=None)
    rows, cols, z, custom = _grid(df, "component", value, ["units"])
    hover = "%{customdata[0]}<br>mean unit score: %{customdata[1]:.4g} (low = prunable)<br>units: %{customdata[2]}"
    return _figure(rows, cols, z, custom, hover, title or "Structure scores (low = prunable)", subtitle, flat)


def placeholder(title: str = "Run a method to see this plot", height: int = HEIGHT) -> go.Figure:
    """An empty figure of fixed height with a message (keeps the layout still before a run),
    wrapped to fit a phone.

    >>> fig = placeholder("No comparison for tiny-shapes-sd yet. Run the comparison to see quality.")
    >>> fig.layout.height, fig.layout.annotations[0].text
    (560, 'No comparison for tiny-shapes-sd<br>yet. Run the comparison to see<br>quality.')
    """
    fig = go.Figure()
    fig.update_layout(height=height, xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": broken(title), "showarrow": False, "xref": "paper", "yref": "paper",
                                    "x": 0.5, "y": 0.5, "font": {"size": 15}}])
    return apply_theme(fig)
