"""Helpers for the Gradio app (``app.py``): the model cache, runs owned by their request,
selection tables, the side-by-side comparison, zipped exports, and the app's words.

Everything here returns plain data (DataFrames, dicts, PIL images, paths); ``app.py`` turns
it into widgets. The ``pruning`` library never imports this package (nor gradio).
"""
