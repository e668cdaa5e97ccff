"""LD-Pruner's fast proxy: score at about half the model's resolution and steps, and how well
that ranking agrees with the full sweep's, as measured on the bundled models (benchmark R4).

The sweep costs (operators + 1) generations of N_gen images, each of ``steps`` denoiser calls
whose cost grows with the square of the resolution; the proxy divides that by about 2 x 4. Its
ranking is a shortcut, so the measured agreement (Spearman rank correlation, overlap of the
most prunable quarter of operators, overlap of the operators removed at 20% params sparsity)
ships in ``pruning/assets/proxy_agreement.json`` and is shown wherever the proxy is chosen.

>>> proxy_generation(10, 64, multiple=16)        # the bundled models: 10 steps, 64 px
(5, 32)
>>> proxy_generation(3, 1024, multiple=8)        # SDXL with 3 steps: never below 2 steps
(2, 512)
>>> proxy_generation(10, 40, multiple=8)         # half of 40 is 20: the nearest multiple of 8 is 16
(5, 16)
>>> a = rank_agreement([0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.3, 0.4], k=2)
>>> a["spearman"], a["top_k"], a["top_k_overlap"]
(0.8, 2, 1.0)
>>> set_overlap({"a", "b"}, {"b", "c", "d"})   # shared / the larger set
0.3333
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..bundled import ASSETS
from ..errors import SettingsError
from ..loading import same_weights

AGREEMENT_FILE = ASSETS / "proxy_agreement.json"
FORMAT = "pruning-proxy-agreement/1"
FIGURES = ("spearman", "top_k_overlap", "removed_overlap", "time_ratio")  # each model entry has these


def proxy_generation(steps: int, resolution: int, *, multiple: int) -> tuple[int, int]:
    """(steps, resolution) of the proxy for a model generating with ``steps`` at ``resolution``:
    about half the steps (at least 2) and half the side, rounded to the nearest ``multiple``
    (the VAE factor x patch size that generation accepts), at least one multiple."""
    half = max(1, round(resolution / 2 / multiple))
    return max(2, (int(steps) + 1) // 2), int(half * multiple)


def rank_agreement(full: Sequence[float], proxy: Sequence[float], *, k: int) -> dict:
    """Spearman rank correlation of two score lists over the same operators (in the same order),
    and the overlap of their ``k`` lowest-scoring (most prunable) entries, ties broken by order.

    Spearman is the Pearson correlation of the average ranks (no SciPy needed).
    """
    a, b = pd.Series(full, dtype="float64"), pd.Series(proxy, dtype="float64")
    if len(a) != len(b) or len(a) < 2:
        raise SettingsError(f"rank agreement needs two score lists of the same length >= 2, got {len(a)} and {len(b)}")
    if not 1 <= k <= len(a):
        raise SettingsError(f"k must be in 1..{len(a)} (the number of operators), got {k}")
    ra, rb = a.rank(method="average").to_numpy(), b.rank(method="average").to_numpy()
    rho = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")
    low_a = set(a.rank(method="first").nsmallest(k).index)
    low_b = set(b.rank(method="first").nsmallest(k).index)
    return {"spearman": round(rho, 4), "top_k": int(k), "top_k_overlap": round(len(low_a & low_b) / k, 4)}


def set_overlap(a: Collection, b: Collection) -> float:
    """The share of two selections that is the same: |a & b| / max(|a|, |b|) (1.0 for two empty ones)."""
    a, b = set(a), set(b)
    return 1.0 if not (a or b) else round(len(a & b) / max(len(a), len(b)), 4)


# --------------------------------------------------------------------------- the measured figures


@lru_cache(maxsize=8)
def _read(path: str, mtime: float, fmt: str) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == fmt else None


def read_measured(path: Path, fmt: str) -> dict | None:
    """A shipped measured-agreement file of format ``fmt`` (this proxy's, the fast score's), read once
    per change of the file; None when it is absent, unreadable or of another format."""
    path = Path(path)
    return _read(str(path), path.stat().st_mtime, fmt) if path.is_file() else None


def model_entry(data: dict | None, model_ref: str) -> dict | None:
    """The entry of a measured-agreement file (:func:`read_measured`) for the model ``model_ref``
    (matched by content hash), with its name under ``"model"``; None where it was not measured."""
    for name, entry in ((data or {}).get("models") or {}).items():
        if same_weights(entry.get("model_ref", ""), model_ref):
            return {"model": name, **entry}
    return None


def measured(path: Path = AGREEMENT_FILE) -> dict | None:
    """The whole measured-agreement file (written by ``python -m benchmarks R4``), or None if absent."""
    return read_measured(path, FORMAT)


def proxy_agreement(model_ref: str, path: Path = AGREEMENT_FILE) -> dict | None:
    """The proxy's measured agreement for the model ``model_ref`` (a bundled model measured by R4,
    matched by content hash), or None where it was not measured.

    >>> from pruning import load_pipeline
    >>> a = proxy_agreement(load_pipeline("tiny-shapes-sd").model_ref)
    >>> a["model"], sorted(a["proxy"]), 0 < a["time_ratio"]
    ('tiny-shapes-sd', ['resolution', 'steps'], True)
    >>> proxy_agreement("hub:org/other@abc") is None
    True
    """
    return model_entry(measured(path), model_ref)


def _figures(e: dict) -> str:
    return (f"Spearman {e['spearman']:.2f} with the full ranking, {e['top_k_overlap']:.0%} of its {e['top_k']} most "
            f"prunable operators shared, {e['removed_overlap']:.0%} of those removed at {e['sparsity']:.0%} sparsity "
            f"shared, {e['time_ratio']:.1f}x faster")


def proxy_note(model_ref: str | None = None, path: Path = AGREEMENT_FILE) -> str:
    """One line for whoever chooses the proxy: its measured agreement with the full sweep, for
    this model if it was measured, else the bundled models' figures, labelled as such.

    >>> proxy_note("hub:org/other@abc").split(":")[0]
    'Proxy sweep (about half the steps and resolution)'
    >>> "not measured on this model" in proxy_note("hub:org/other@abc")
    True
    """
    data = measured(path)
    models = (data or {}).get("models") or {}
    head = "Proxy sweep (about half the steps and resolution)"
    if not models:
        return f"{head}: its agreement with the full sweep has not been measured (run `python -m benchmarks R4`)."
    own = proxy_agreement(model_ref, path) if model_ref else None
    if own is not None:
        p, f = own["proxy"], own["full"]
        return (f"{head}: {p['steps']} steps at {p['resolution']} px instead of {f['steps']} at {f['resolution']} px. "
                f"Measured on {own['model']}: {_figures(own)}.")
    parts = "; ".join(f"{name}: {_figures(e)}" for name, e in models.items())
    return (f"{head}: not measured on this model. Measured on the bundled models: {parts}. "
            "Check a plan cut from proxy scores against the original before relying on it.")


def check_entry(name: str, entry: dict) -> dict:
    """Raise ``SettingsError`` naming the model and the field unless ``entry`` is a complete figure set."""
    for key in ("model_ref", "full", "proxy", "operators", "top_k", "sparsity", *FIGURES):
        if key not in entry:
            raise SettingsError(f"proxy agreement for {name!r} has no {key!r}")
    for key in FIGURES:
        if not isinstance(entry[key], (int, float)) or not math.isfinite(entry[key]):
            raise SettingsError(f"proxy agreement for {name!r}: {key} must be a finite number, got {entry[key]!r}")
    return entry
