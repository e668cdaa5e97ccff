"""Words for what the library computed, the same on every screen: a model's name as people know
it, a method's name, the settings a run used, counts with the right plural, intervals that say
when they are too wide to mean anything, and latency only from repeated timings.

>>> plural(1, "operator") + " removed", plural(3, "operator") + " removed"
('1 operator removed', '3 operators removed')
>>> method_name("ecodiff"), method_name("magnitude"), method_name("manual")
('EcoDiff', 'Weight magnitude', 'by hand')
>>> settings_label("ecodiff", {"beta": 0.5, "regularizer": "l1", "reg_norm": "layer", "masking_eps": 0.5,
...                            "epochs": 3}, family="sd")
"EcoDiff (authors' configs, 3 epochs)"
>>> interval_text(0.0, 0.0, 0.0, n=4)
'0.0% (an interval needs >= 10 prompts, got 4)'
>>> interval_text(0.75, 0.6, 0.875, n=32)
'75.0% [60.0%-87.5%]'
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import PurePath

MIN_INTERVAL_PROMPTS = 10  # below this a bootstrap interval of a mean says little (4 prompts: 0.0% [0.0%-0.0%])
MIN_TIMINGS = 3  # latency is shown only from at least this many timings of each model
PRESET_WORDS = {"authors": "authors' configs"}  # other presets: "<name> preset"; the first preset: "defaults"
COUNTED = {"epochs": "epoch", "n_gen": "sample", "timesteps": "timestep", "num_prompts": "prompt",
           "groups": "group"}  # integer settings read as "3 epochs", "1 epoch"
# what a comparison sets for every method alike (said once, in computed_on), not part of a method's label
SHARED_FIELDS = ("prompts", "seeds", "steps", "guidance", "resolution", "images")
PLURALS = {"entry": "entries", "query": "queries", "process": "processes"}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 operator"``, ``"2 operators"``, ``"0 operators"`` (``many``: an irregular plural).

    >>> plural(1, "head"), plural(0, "head"), plural(2, "entry"), plural(1_000, "neuron")
    ('1 head', '0 heads', '2 entries', '1,000 neurons')
    """
    n = int(n)
    return f"{n:,} {word if n == 1 else (many or PLURALS.get(word, word + 's'))}"


# --------------------------------------------------------------------------- models


def weights_hash(handle_or_ref) -> str:
    """The short weights hash of a model ref (``bundled:tiny-shapes-sd@19880936...`` -> ``19880936``):
    provenance only (the card, the plan, a tooltip), never the model's name on screen.

    >>> weights_hash("bundled:tiny-shapes-sd@19880936abcd")
    '19880936'
    """
    ref = getattr(handle_or_ref, "model_ref", handle_or_ref)
    return str(ref).rpartition("@")[2][:8] if "@" in str(ref) else ""


def model_name(handle) -> str:
    """The model as people know it: its Hub id or bundled name (a local folder by its base name,
    never a server path) and its dtype, e.g. ``"tiny-shapes-sd, float32"``. The weights hash is
    not in it (see :func:`model_tooltip`).

    >>> from types import SimpleNamespace
    >>> import torch
    >>> model_name(SimpleNamespace(source="tiny-shapes-sd", dtype=torch.float32, model_ref="bundled:x@1"))
    'tiny-shapes-sd, float32'
    >>> model_name(SimpleNamespace(source="/srv/models/my-sd", dtype=torch.float16, model_ref="local:/srv/models/my-sd@2"))
    'my-sd, float16'
    """
    return f"{source_name(handle)}, {str(handle.dtype).removeprefix('torch.')}"


def source_name(handle) -> str:
    """The model's source without any folder path: a Hub id or bundled name as is, a local folder
    by its base name."""
    src = str(handle.source)
    if str(handle.model_ref).startswith("local:") or src.startswith(("/", "~", ".")) or "\\" in src:
        return PurePath(src.replace("\\", "/").rstrip("/")).name or src
    return src


def model_tooltip(handle) -> str:
    """Where the hash goes: ``"weights 19880936 (bundled:tiny-shapes-sd@19880936...)"`` for a tooltip.
    A local folder's path is left out (only its base name and hash)."""
    ref = str(handle.model_ref)
    if ref.startswith("local:"):
        ref = f"local:{source_name(handle)}@{ref.rpartition('@')[2]}"
    return f"weights {weights_hash(handle)} ({ref})"


# --------------------------------------------------------------------------- methods and settings


def method_name(name: str) -> str:
    """A method's name as every tab shows it: the short name in its title's parentheses
    ("Mask optimization (EcoDiff)" -> "EcoDiff"), a baseline's title without "(baseline)",
    ``"by hand"`` for a hand-made plan; an unknown name as given."""
    if name in ("manual", "", None):
        return "by hand"
    from .errors import SettingsError
    from .methods.registry import get  # the leaf registry (filled when pruning.methods is imported)

    try:
        title = get(name).title
    except SettingsError:
        return str(name)
    m = re.fullmatch(r"(.*?)\s*\((.+)\)", title)
    if not m:
        return title
    return m.group(1) if m.group(2) == "baseline" else m.group(2)


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _differences(full: Mapping, ref: Mapping, skip: Sequence[str]) -> list[str]:
    out = []
    for k, v in full.items():
        if k in skip:
            continue
        r = ref.get(k)
        same = list(v) == list(r) if isinstance(v, (list, tuple)) and isinstance(r, (list, tuple)) else v == r
        if not same:
            out.append(plural(v, COUNTED[k]) if k in COUNTED and isinstance(v, int) else
                       f"{k.replace('_', ' ')} {_value(v)}")
    return out


def settings_label(method: str, values: Mapping | None = None, *, family: str = "sd",
                   skip: Sequence[str] = SHARED_FIELDS, note: str | None = None) -> str:
    """A short label of the settings a run used: the method's name, the preset its settings are
    closest to ("defaults" for the first preset, "authors' configs", "<name> preset") and each
    setting that differs from that preset, e.g. ``"EcoDiff (authors' configs, 3 epochs)"``.
    ``skip``: settings not named (those a comparison shares with every method, said once in
    :func:`pruning.compare.computed_on`); ``note``: appended words (e.g. "your scores").

    >>> settings_label("magnitude"), settings_label("ldpruner", {"fast": True, "timesteps": 2, "weighting": "step"})
    ('Weight magnitude (defaults)', 'LD-Pruner (fast preset)')
    >>> settings_label("ecodiff", {"lr": 0.2}, note="your scores")
    'EcoDiff (defaults, lr 0.2; your scores)'
    >>> settings_label("ecodiff", {"epochs": 1})
    'EcoDiff (defaults, 1 epoch)'
    """
    from .methods.registry import get

    m = get(method)
    values = {str(k): v for k, v in dict(values or {}).items()}
    full = asdict(m.settings(**{k: v for k, v in values.items() if k in {f.name for f in fields(m.Settings)}}))
    best = None
    for i, preset in enumerate(m.presets):
        try:
            ref = asdict(m.settings(preset=preset, family=family))
        except Exception:  # noqa: BLE001 - a preset that needs the model (resolved later) is skipped here
            continue
        diff = _differences(full, ref, skip)
        word = "defaults" if i == 0 else PRESET_WORDS.get(preset, f"{preset} preset")
        if best is None or len(diff) < len(best[1]):
            best = (word, diff)
    word, diff = best if best is not None else ("defaults", [])
    inside = ", ".join([word, *diff]) + (f"; {note}" if note else "")
    return f"{method_name(m.name)} ({inside})"


# --------------------------------------------------------------------------- figures


def percent(x: float, digits: int = 1) -> str:
    """``0.191`` -> ``"19.1%"``."""
    return f"{100 * float(x):.{digits}f}%"


def interval_text(mean: float, lo: float, hi: float, *, n: int, as_percent: bool = True,
                  min_n: int = MIN_INTERVAL_PROMPTS, digits: int = 1) -> str:
    """A mean with its 95% interval, honestly: from fewer than ``min_n`` prompts the interval is
    left out and the text says why; an interval of zero width from enough prompts says that every
    prompt agreed (not a certainty).

    >>> interval_text(1.0, 1.0, 1.0, n=64)
    '100.0% (all 64 prompts agree; no spread to give an interval)'
    >>> interval_text(0.0123, 0.01, 0.015, n=16, as_percent=False, digits=3)
    '0.0123 [0.01-0.015]'
    """
    f = (lambda x: percent(x, digits)) if as_percent else (lambda x: f"{float(x):.{digits}g}")
    if not isinstance(n, int) or n < min_n:
        return f"{f(mean)} (an interval needs >= {min_n} prompts, got {n})"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f(mean)
    if hi - lo <= 0:
        return f"{f(mean)} (all {n} prompts agree; no spread to give an interval)"
    return f"{f(mean)} [{f(lo)}-{f(hi)}]"


def accuracy_text(row, key: str = "acc_all", *, min_n: int = MIN_INTERVAL_PROMPTS) -> str:
    """A comparison row's accuracy with its interval (``interval_text`` of ``row[key]``,
    ``row[key + "_lo"]``, ``row[key + "_hi"]`` over ``row["n_prompts"]`` prompts).

    >>> accuracy_text({"acc_all": 1.0, "acc_all_lo": 1.0, "acc_all_hi": 1.0, "n_prompts": 4})
    '100.0% (an interval needs >= 10 prompts, got 4)'
    """
    n = row.get("n_prompts")
    n = int(n) if isinstance(n, (int, float)) and math.isfinite(n) else 0
    lo, hi = row.get(f"{key}_lo", float("nan")), row.get(f"{key}_hi", float("nan"))
    return interval_text(float(row[key]), float(lo), float(hi), n=n, min_n=min_n)


def psnr_text(db: float) -> str:
    """PSNR in words the same on every tab: ``"identical"`` for identical images (the 100 dB the
    measures use for them), else ``"28.8 dB"``.

    >>> psnr_text(100.0), psnr_text(28.84)
    ('identical', '28.8 dB')
    """
    return "identical" if float(db) >= 100 else f"{float(db):.1f} dB"


def latency_change(before: Sequence[float], after: Sequence[float], *, min_timings: int = MIN_TIMINGS) -> dict | None:
    """The latency change from repeated timings (seconds) of each model, with its spread, or None
    when there are fewer than ``min_timings`` of either (then show no latency at all).

    Returns ``{"change": median(after) / median(before) - 1, "spread": the half-range of the
    changes of every (before, after) pair (its noise), "significant": |change| > spread,
    "text": "-18.5% (+-3.1%, 5 timings each)"`` or ``"no measurable change (+-7.5% timing noise, 5
    timings each)"``}.

    >>> latency_change([1.0, 1.0], [0.8, 0.8]) is None
    True
    >>> latency_change([1.0, 1.02, 0.98], [0.80, 0.81, 0.79])["text"]
    '-20.0% (+-2.6%, 3 timings each)'
    >>> latency_change([1.0, 1.1, 0.9], [1.02, 0.95, 1.05])["text"]
    'no measurable change (+-15.2% timing noise, 3 timings each)'
    """
    a, b = [float(x) for x in before], [float(x) for x in after]
    if len(a) < min_timings or len(b) < min_timings or min(a + b) <= 0:
        return None
    change = statistics.median(b) / statistics.median(a) - 1
    pairs = [y / x - 1 for x in a for y in b]
    spread = (max(pairs) - min(pairs)) / 2
    significant = abs(change) > spread
    each = f"{min(len(a), len(b))} timings each"
    text = (f"{100 * change:+.1f}% (+-{100 * spread:.1f}%, {each})" if significant
            else f"no measurable change (+-{100 * spread:.1f}% timing noise, {each})")
    return {"change": change, "spread": spread, "significant": significant, "text": text}


__all__ = ["plural", "weights_hash", "model_name", "source_name", "model_tooltip", "method_name", "settings_label",
           "percent", "interval_text", "accuracy_text", "psnr_text", "latency_change", "MIN_INTERVAL_PROMPTS", "MIN_TIMINGS"]
