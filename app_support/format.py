"""Numbers for people: units, signs and which direction is better.

>>> count(1_078_000), count(30_253_056, "MACs"), percent(0.172209), change(1000, 828)
('1.08 M', '30.3 M MACs', '17.2%', '-17.2%')
>>> seconds(0.0031), seconds(75)
('3.1 ms', '1.2 min')
"""

from __future__ import annotations

import math


def count(n: float, unit: str = "") -> str:
    """``n`` with k / M / G and three significant digits (``unit`` appended)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            text = f"{n / div:.3g} {prefix}"
            break
    else:
        text = f"{n:.3g}" if isinstance(n, float) else str(n)
    return f"{text} {unit}".strip()


def percent(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def change(before: float, after: float) -> str:
    """Relative change with its sign (negative = smaller)."""
    if not before:
        return "-"
    return f"{100 * (after - before) / before:+.1f}%"


def seconds(s: float) -> str:
    if s < 1:
        return f"{1000 * s:.2g} ms" if s < 0.01 else f"{1000 * s:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    return f"{s / 60:.1f} min"


def number(x: float, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"
