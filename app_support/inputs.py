"""Input components whose errors name the input: a wrong-typed value from an API client (None,
"abc", a string for a number) is a toast that says which field and what it got, never
gradio's generic "verbose error reporting" message.

>>> Number(3, label="seed").preprocess(4.0)
4.0
>>> Number(3, label="seed").preprocess("abc")
Traceback (most recent call last):
...
gradio.exceptions.Error: "seed must be a number, got 'abc'"
"""

from __future__ import annotations

import math

import gradio as gr


def _check_number(label: str, payload, allow_none: bool):
    if payload is None and allow_none:
        return
    ok = isinstance(payload, (int, float)) and not isinstance(payload, bool) and math.isfinite(payload)
    if not ok:
        raise gr.Error(f"{label} must be a number, got {payload!r}", print_exception=False)


class Number(gr.Number):
    def get_block_name(self) -> str:
        return "number"

    def preprocess(self, payload):
        _check_number(self.label or "this number", payload, allow_none=True)
        return super().preprocess(payload)


class Slider(gr.Slider):
    def get_block_name(self) -> str:
        return "slider"

    def preprocess(self, payload):
        _check_number(self.label or "this slider", payload, allow_none=False)
        return super().preprocess(payload)


def _table_model(label: str):
    """Dataframe's data model whose validation error is a toast naming the table."""
    from gradio.components.dataframe import DataframeData

    class TableData(DataframeData):
        @classmethod
        def model_validate(cls, obj, *a, **k):
            try:
                return DataframeData.model_validate(obj, *a, **k)
            except Exception:
                raise gr.Error(f"{label} must be a table ({{'headers': [...], 'data': [[...]]}}), got "
                               f"{repr(obj)[:80]}", print_exception=False) from None
    return TableData


class Table(gr.Dataframe):
    """An editable table whose malformed input (a string, missing headers) names the table.
    (No ``__init__`` of its own: gradio reads a component's props from its signature.)"""

    @property
    def data_model(self):
        return _table_model(getattr(self, "label", None) or "the table")

    @data_model.setter
    def data_model(self, value):  # the base class assigns its default; ours is derived from the label
        pass

    def get_block_name(self) -> str:
        return "dataframe"
