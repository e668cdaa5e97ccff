"""The bundled tiny models: where they live (package data) and how to retrain them.

They ship inside the package (``pruning/assets/<name>``), so ``pip install`` brings them and
``load_pipeline("tiny-shapes-sd")`` works offline from any directory.

>>> sorted(BUNDLED), BUNDLED["tiny-shapes-sd"].parent.name
(['tiny-shapes-flux', 'tiny-shapes-sd', 'tiny-shapes-sd3'], 'assets')
>>> TRAIN_ARCH["tiny-shapes-flux"]
'flux'
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TRAIN_ARCH = {"tiny-shapes-sd": "sd", "tiny-shapes-flux": "flux", "tiny-shapes-sd3": "sd3"}  # name -> `python -m pruning.tiny train --arch`
BUNDLED: dict[str, Path] = {name: ASSETS / name for name in TRAIN_ARCH}


def is_bundled_ref(model_ref: str) -> bool:
    """True for the model ref of a bundled model (``bundled:<name>@<hash>``).

    >>> is_bundled_ref("bundled:tiny-shapes-sd@abc"), is_bundled_ref("local:/x@abc")
    (True, False)
    """
    return model_ref.startswith("bundled:") and model_ref[len("bundled:"):].split("@")[0] in BUNDLED
