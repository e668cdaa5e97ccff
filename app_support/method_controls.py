"""The Score tab's controls of a method, built from its settings dataclass (the fields' help,
kind, default and choices, as the CLI reads them), and the settings read back from them.

A method needs nothing of the app: one group of controls per registered method, one control per
user-facing field. The prompts and steps are the tab's own (shared by every method that takes
them); free-text fields (a folder on the server) are not offered. The first few fields with a
default of their own are shown, the rest sit under "more settings" (blank = the model's default).

>>> from dataclasses import dataclass
>>> from pruning.methods.base import opt
>>> @dataclass(frozen=True)
... class S:
...     prompts: tuple | None = opt(None, "prompts", "strs")
...     power: float = opt(1.0, "how strongly", "float")
...     kinds: tuple = opt(("head",), "units", "choices", ("head", "neuron"))
...     where: str = opt(None, "a folder", "str")
>>> [(f["name"], main) for f, main in offered(S)]
[('power', True), ('kinds', True)]
>>> "seeds" in common_fields() and "n_gen" not in common_fields()
True
>>> values(S, {"power": "2", "kinds": ["neuron"], "prompts": ["a"]})
{'power': 2.0, 'kinds': ('neuron',)}
"""

from __future__ import annotations

from dataclasses import fields

import gradio as gr

from pruning import methods
from pruning.errors import SettingsError
from pruning.methods.base import settings_fields
from pruning.validate import shown

from .inputs import Checkbox, Number, Slider
from .runs import APP_LIMITS, check_size

SHARED = ("prompts", "steps")  # the tab's own controls, read for every method that has them
TYPED = ("int", "float", "choice", "choices", "bool", "ints")  # kinds the app offers ("str"/"strs": free text)
MAIN = 4  # plain fields shown before "more settings"


def _extra(settings_cls, name: str) -> dict:
    return next((dict(f.metadata) for f in fields(settings_cls) if f.name == name), {})


def common_fields() -> set[str]:
    """Settings that three or more registered methods share (seeds, guidance, resolution...): the
    sampling knobs, shown under "more settings" so each method's own settings come first."""
    from collections import Counter

    counts = Counter(f.name for n in methods.names() for f in fields(methods.get(n).Settings))
    return {name for name, k in counts.items() if k >= 3}


def offered(settings_cls, common: set[str] | frozenset = frozenset()) -> list[tuple[dict, bool]]:
    """(field, shown at once) for every field the app offers, in the class's order: the fields the
    method marks ``basic``; for a method that marks none, the unit-kind choices and the first
    :data:`MAIN` fields of its own (not in ``common``)."""
    out, shown_ = [], 0
    every = settings_fields(settings_cls)
    marked = any(f.get("basic") for f in every)
    for f in every:
        if f["name"] in SHARED or f["kind"] not in TYPED:
            continue
        if marked:
            primary = bool(f.get("basic"))
        else:
            primary = f["kind"] == "choices" or (f["name"] not in common and f["kind"] != "ints" and shown_ < MAIN)
        shown_ += bool(primary) and f["kind"] != "choices"
        out.append((f, bool(primary)))
    return out


def label(name: str) -> str:
    return name.replace("_", " ")


def first_value(f: dict):
    """What a control shows first: the field's value for a quick interactive run (its default
    unless the method says otherwise)."""
    return f.get("quick", f["default"])


def is_text(f: dict) -> bool:
    """A number whose first value is "the model's default": a text box (blank = that default)."""
    return f["kind"] in ("int", "float") and first_value(f) is None


def control(f: dict, elem_id: str):
    """One input for one settings field (its help as the info line)."""
    kind, default, info = f["kind"], first_value(f), f["help"] or None
    kw = {"label": f.get("label") or label(f["name"]), "info": info, "elem_id": elem_id}
    if kind == "choices":
        return gr.CheckboxGroup(list(f["choices"]), value=list(default or ()), **kw)
    if kind == "choice" and default is not None and len(f["choices"]) <= 4:
        return gr.Radio([(str(c), c) for c in f["choices"]], value=default, **kw)
    if kind == "choice":
        choices = [("(the default)", None)] if default is None else []
        return gr.Dropdown(choices + [(str(c), c) for c in f["choices"]], value=default, **kw)
    if kind == "bool":
        return Checkbox(bool(default), **kw)
    if kind == "ints":
        return gr.Textbox(", ".join(map(str, default or ())), placeholder="blank = the default", **kw)
    if is_text(f):  # a number box cannot be blank in the browser (it sends 0): blank text = the default
        return gr.Textbox("", placeholder="blank = the default", **kw)
    if f.get("low") is not None and f.get("high") is not None:
        return Slider(f["low"], f["high"], value=default, step=f.get("step") or (1 if kind == "int" else None), **kw)
    return Number(default, precision=0 if kind == "int" else None, **kw)


def values(settings_cls, data: dict) -> dict:
    """The settings named in ``data`` (a JSON object from the page or an API client), each read by
    its field's kind; blank values are left out (the default holds). Unknown names are refused by
    the method's ``settings``; the prompts and steps are read by the tab."""
    kinds = {f["name"]: f for f in settings_fields(settings_cls)}
    out = {}
    for name, v in data.items():
        f = kinds.get(name)
        if f is None or name in SHARED or v is None or (isinstance(v, str) and not v.strip()):
            continue
        kind = f["kind"]
        try:
            if kind == "int":
                v = check_size(name, v) if name in APP_LIMITS else int(_number(name, v, whole=True))
            elif kind == "float":
                v = float(_number(name, v))
            elif kind in ("choices", "strs"):
                v = tuple(v if isinstance(v, (list, tuple)) else str(v).splitlines())
            elif kind == "ints":
                v = tuple(int(_number(name, x, whole=True)) for x in
                          (v if isinstance(v, (list, tuple)) else str(v).replace(",", " ").split()))
        except SettingsError as e:  # our own message names the field by its label
            raise SettingsError(str(e).replace(f"{label(name)} must", f"{f.get('label') or label(name)} must", 1)) from None
        except (TypeError, ValueError):
            what = {"int": "a whole number", "float": "a number", "ints": "whole numbers"}.get(kind, f"a {kind}")
            raise SettingsError(f"{f.get('label') or label(name)} must be {what}, got {shown(v)}") from None
        out[name] = v
    return out


def _number(name: str, v, whole: bool = False) -> float:
    if isinstance(v, bool):
        raise SettingsError(f"{label(name)} must be a number, got {shown(v)}")
    x = float(v)
    if whole and not x.is_integer():
        raise SettingsError(f"{label(name)} must be a whole number, got {shown(v)}")
    return x


def settings(name: str, data, family: str, prompts=None, steps=None):
    """A method's validated settings from the named data ``{"preset": ..., field: value, ...}``
    (``prompts`` and ``steps`` come from the tab for the methods that take them)."""
    m = methods.get(name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"the settings must be a JSON object of name: value, got {shown(data)}")
    names = {f.name for f in fields(m.Settings)}
    given = values(m.Settings, data)
    unknown = sorted(str(k) for k in data if k not in names and k != "preset" and k not in SHARED)
    if unknown:
        raise SettingsError(f"{m.title} has no setting {unknown[0]!r}; it has {sorted(names - set(SHARED)) or 'none'}")
    shared = {"prompts": prompts if not m.data_free else None, "steps": steps}
    given.update({k: v for k, v in shared.items() if k in names and v is not None})
    preset = data.get("preset")
    if preset is not None and preset not in m.presets:
        raise SettingsError(f"{m.title} has no preset {preset!r}; it has {list(m.presets)}")
    return m.settings(preset=preset, family=family, **given)


def shown_values(name: str, preset: str | None, family: str) -> dict:
    """The value each offered control shows for ``preset`` (the model ``family``'s): the preset's
    values, and a quick run's where the preset leaves a field at its default."""
    from dataclasses import asdict

    m = methods.get(name)
    base = asdict(m.settings())
    values = asdict(m.settings(preset=preset, family=family))
    out = {}
    for f, _ in offered(m.Settings, common_fields()):
        v = values.get(f["name"])
        if v == base.get(f["name"]):
            v = first_value(f)
        out[f["name"]] = ((", ".join(map(str, v)) if v else "") if f["kind"] == "ints" else
                          list(v) if f["kind"] == "choices" else
                          ("" if v is None else str(v)) if is_text(f) else v)
    return out
