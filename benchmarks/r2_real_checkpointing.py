"""R2: EcoDiff's time-step checkpointing at real size. The real SD 1.5 UNet config with random
weights (``pruning.testing.real_unet_pipeline``), fp32, CPU, 32x32 latents, classifier-free
guidance (the doubled batch), one prompt.

Each measurement is a fresh subprocess that computes one EcoDiff gradient (gates on every head
and FFN neuron) and reports its peak RSS minus its RSS just before (sampled every millisecond),
checkpointed and naive, at T = 2, 4, 8. Targets: checkpointed T=8 / T=2 <= 1.1 and naive /
checkpointed at T=4 >= 2.5. The value is the naive / checkpointed ratio at T=4.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from .p2_checkpointing import PROMPT, peak_rss

STEPS = (2, 4, 8)
SIDE = 32  # latent side: 128 px with the tiny VAE's factor 4
GUIDANCE = 7.5


def _handle():
    from pruning.loading import handle_from_pipe
    from pruning.testing import real_unet_pipeline

    return handle_from_pipe(real_unet_pipeline("sd15"), model_ref="random:sd15")


def _one_gradient(handle, steps: int, checkpointing: str) -> None:
    from pruning.grads import requires_grad
    from pruning.masks import GateSet
    from pruning.methods.ecodiff import recon_grads
    from pruning.rollout import prepare

    traj = prepare(handle, [PROMPT], [0], steps=steps, guidance=GUIDANCE, resolution=SIDE * 4)
    target = torch.zeros_like(traj.unpack(traj.z0))
    gates = GateSet.for_denoiser(handle.denoiser, kinds=("head", "neuron"), gate="sigmoid", init=1.0)
    with requires_grad(handle.denoiser.parameters(), False):
        recon_grads(handle.denoiser, traj, target, gates, [None] * steps, checkpointing)


def _child(steps: int, checkpointing: str) -> None:
    torch.set_num_threads(2)
    handle = _handle()
    _one_gradient(handle, 1, "timestep")  # warm up: lazily allocated buffers
    print(json.dumps(peak_rss(lambda: _one_gradient(handle, steps, checkpointing))))


def _measure(steps: int, checkpointing: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.r2_real_checkpointing", str(steps), checkpointing],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {"rss_increase_bytes": max(data["peak"] - data["before"], 1), "seconds": round(data["seconds"], 1)}


def run(quick: bool = False) -> dict:
    steps = (1, 2) if quick else STEPS
    got = {f"{mode}@{t}": _measure(t, mode) for t in steps for mode in ("timestep", "none")}
    inc = {k: v["rss_increase_bytes"] for k, v in got.items()}
    lo, hi, mid = steps[0], steps[-1], steps[1]
    growth = inc[f"timestep@{hi}"] / inc[f"timestep@{lo}"]
    naive = inc[f"none@{mid}"] / inc[f"timestep@{mid}"]
    gib = {k: round(v / 2 ** 30, 3) for k, v in inc.items()}
    return {"value": round(naive, 2), "target": f">= 2.5 (naive/ckpt at T={mid}) and <= 1.1 (ckpt T={hi}/T={lo})",
            "ok": bool(naive >= 2.5 and growth <= 1.1), "unit": f"x peak RSS increase, naive / checkpointed at T={mid}",
            "detail": {"model": "real SD 1.5 UNet config, random weights, fp32", "latent_side": SIDE,
                       "guidance": GUIDANCE, "cfg_batch": 2, "rss_increase_gib": gib,
                       "seconds": {k: v["seconds"] for k, v in got.items()},
                       f"ckpt_T{hi}_over_T{lo}": round(growth, 3), f"naive_over_ckpt_T{mid}": round(naive, 3),
                       "threads": 2}}


if __name__ == "__main__":
    _child(int(sys.argv[1]), sys.argv[2])
