"""Plotly figures for the app: take DataFrames or dicts, return ``go.Figure`` (no torch here).

Every figure follows one colour rule for "prunable" (see :mod:`visual.heatmaps`) and one
theme that reads on light and dark pages (:mod:`visual.theme`).

>>> import pandas as pd
>>> from visual import operator_heatmap
>>> df = pd.DataFrame({"fqn": ["mid_block.resnets.0"], "kind": ["resnet"], "score": [0.5], "params": [10]})
>>> operator_heatmap(df).data[0].type
'heatmap'
"""

from .heatmaps import (
           COLORSCALE,
           PRUNABLE_COLOR,
           layer_of,
           operator_heatmap,
           placeholder,
           rank_scale,
           structure_heatmap,
)
from .masks import loss_plot, mask_sparsity_plot
from .quality import METRICS, quality_vs_sparsity
from .theme import apply_theme

__all__ = ["layer_of", "placeholder", "operator_heatmap", "structure_heatmap", "loss_plot", "mask_sparsity_plot",
           "quality_vs_sparsity", "rank_scale", "apply_theme", "COLORSCALE", "PRUNABLE_COLOR", "METRICS"]
