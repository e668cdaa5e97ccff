"""P4 "masks overhead": a forward through all-open gates on every structure / a plain forward.

``masked()`` drops fully kept structures, so this uses ``masks.gated`` with all-ones gates
for every structure ``discover`` finds: the worst case of the preview mechanism.
"""

from __future__ import annotations

import torch

from . import common

TARGET = 1.3
REPEATS = 21  # far from the target: fewer rounds than P1 suffice


def measure(name: str, repeats: int = 9) -> dict:
    """Interleaved plain and gated forwards of one model (hooks are registered outside the timing)."""
    from pruning.catalog import discover
    from pruning.masks import gated

    unet = common.MODELS[name]()
    gates = {fqn: torch.ones(s.units) for fqn, s in discover(unet).structures.items()}
    kw = common.inputs(unet)
    plain = common.forward(unet, kw)

    with gated(unet, gates):
        out_gated = plain()[0]
    same = bool(torch.equal(out_gated, plain()[0]))  # all-open gates change nothing
    times = common.interleaved([plain, plain], repeats=repeats, contexts=[None, lambda: gated(unet, gates)])
    out = {"structures": len(gates), "outputs_equal": same}
    for clock, (t_plain, t_gated) in times.items():
        out.update({f"latency_plain_{clock}_s": common.median(t_plain),
                    f"latency_gated_{clock}_s": common.median(t_gated),
                    f"ratio_{clock}": common.paired_ratio(t_gated, t_plain)})
    out["ratio"] = out[f"ratio_{common.CLOCK}"]
    return out


def run(quick: bool = False) -> dict:
    """Headline: the mid-size ratio (``quick``: the tiny UNet only, 3 rounds)."""
    threads = common.set_threads()
    models = ("tiny",) if quick else ("tiny", "mid")
    repeats = 3 if quick else REPEATS
    detail = {name: measure(name, repeats) for name in models}
    head = models[-1]
    value = detail[head]["ratio"]
    detail.update(threads=threads, batch=common.BATCH, clock=common.CLOCK, headline_model=head, repeats=repeats)
    return {"value": round(value, 3), "target": TARGET, "ok": value <= TARGET,
            "unit": "x (gated / plain forward)", "detail": detail}
