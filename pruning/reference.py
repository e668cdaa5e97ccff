"""The public configs of the real denoisers, built on the meta device (no weights, no download).

These let tests and the catalog check numbers at full size without touching the Hub.

>>> m = meta_denoiser("sd15")
>>> sum(p.numel() for p in m.parameters())
859520964
>>> next(m.parameters()).device.type
'meta'
>>> sorted(REFERENCE_CONFIGS)
['flux-dev', 'flux-schnell', 'sd15', 'sd21', 'sd3-medium', 'sd35-large', 'sd35-medium', 'sdxl']
>>> PIPELINES["sdxl"]["family"], PIPELINES["sdxl"]["resolution"]
('sdxl', 1024)
"""

from __future__ import annotations

import copy

from torch import nn

from . import families
from .families.flux import FLUX_DEV_TRANSFORMER, FLUX_SCHNELL_TRANSFORMER  # noqa: F401 (re-exported)
from .families.sd import SD15_UNET, SD21_UNET, SDXL_UNET  # noqa: F401 (re-exported)
from .validate import registered

# name -> config and pipeline-level facts, from every family's `references` (pruning.families)
REFERENCE_CONFIGS: dict[str, dict] = {
    name: ref["config"] for f in families.all_families() for name, ref in f.references.items()
}

# Pipeline-level facts: family, Hub id, default resolution and sampling settings.
PIPELINES: dict[str, dict] = {
    name: {"family": f.name, **{k: v for k, v in ref.items() if k != "config"}}
    for f in families.all_families() for name, ref in f.references.items()
}


def meta_denoiser(name: str) -> nn.Module:
    """Build the named reference denoiser on the meta device (fast, no memory for weights).

    >>> t = meta_denoiser("flux-dev")
    >>> len(t.transformer_blocks), len(t.single_transformer_blocks)
    (19, 38)
    """
    registered("reference model", name, sorted(REFERENCE_CONFIGS))
    return families.get(PIPELINES[name]["family"]).meta_denoiser(copy.deepcopy(REFERENCE_CONFIGS[name]))
