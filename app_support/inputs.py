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

from pruning.validate import shown

from .wiring import toast

MAX_ROWS = 20_000  # far more rows than any supported denoiser has operators or structures


def _check_number(label: str, payload, allow_none: bool, integer: bool = False):
    if payload is None and allow_none:
        return
    ok = isinstance(payload, (int, float)) and not isinstance(payload, bool) and math.isfinite(payload)
    if not ok:
        raise toast(f"{label} must be a number, got {shown(payload)}")
    if integer and not float(payload).is_integer():  # never rounded: 1.5 steps is a mistake, not 2
        raise toast(f"{label} must be an integer, got {payload!r}")


class Number(gr.Number):
    """A number input; with ``precision=0`` an integer input that refuses fractions (1.5)."""

    def get_block_name(self) -> str:
        return "number"

    def preprocess(self, payload):
        _check_number(self.label or "this number", payload, allow_none=True, integer=self.precision == 0)
        return super().preprocess(payload)


class Slider(gr.Slider):
    """A slider; one whose minimum and step are whole numbers takes integers only."""

    def get_block_name(self) -> str:
        return "slider"

    def preprocess(self, payload):
        whole = float(self.step).is_integer() and float(self.minimum).is_integer()
        _check_number(self.label or "this slider", payload, allow_none=False, integer=whole)
        return super().preprocess(payload)


class Checkbox(gr.Checkbox):
    """A checkbox whose value from an API client must be true or false (a string such as
    "/etc/passwd" is refused, never taken as True).

    >>> Checkbox(label="full pipeline").preprocess("/etc/passwd")
    Traceback (most recent call last):
    ...
    gradio.exceptions.Error: "full pipeline must be true or false, got '/etc/passwd'"
    """

    def get_block_name(self) -> str:
        return "checkbox"

    def preprocess(self, payload):
        if payload is not None and not isinstance(payload, bool):
            raise toast(f"{self.label or 'this checkbox'} must be true or false, got {shown(payload)}")
        return super().preprocess(payload)


def _table_model(label: str):
    """Dataframe's data model whose validation error is a toast naming the table."""
    from gradio.components.dataframe import DataframeData

    class TableData(DataframeData):
        @classmethod
        def model_validate(cls, obj, *a, **k):
            rows = obj.get("data") if isinstance(obj, dict) else None
            if isinstance(rows, list) and len(rows) > MAX_ROWS:  # before validating every cell
                raise toast(f"{label} has {len(rows)} rows, at most {MAX_ROWS}: its rows must be the model's "
                            "operators or structures")
            try:
                return DataframeData.model_validate(obj, *a, **k)
            except Exception:
                raise toast(f"{label} must be a table ({{'headers': [...], 'data': [[...]]}}), got "
                            f"{shown(obj)}") from None
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
