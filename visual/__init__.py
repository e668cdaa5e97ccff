"""Plotly figures for the app: take DataFrames or dicts, return ``go.Figure`` (no torch here).

>>> import pandas as pd
>>> from visual import operator_heatmap
>>> df = pd.DataFrame({"fqn": ["mid_block.resnets.0"], "kind": ["resnet"], "score": [0.5], "params": [10]})
>>> operator_heatmap(df).data[0].type
'heatmap'
"""

from .heatmaps import layer_of, operator_heatmap, placeholder, structure_heatmap
from .masks import loss_plot, mask_sparsity_plot
from .quality import quality_vs_sparsity

__all__ = ["layer_of", "placeholder", "operator_heatmap", "structure_heatmap", "loss_plot", "mask_sparsity_plot",
           "quality_vs_sparsity"]
