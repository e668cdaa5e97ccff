"""P2: time-step gradient checkpointing keeps backward memory O(1) in T.

Two measures, checkpointed against naive full autograd, at T = 5, 10, 20, 50:

* peak bytes saved for backward (``SavedTensorMeter``), in this process;
* peak RSS of a fresh subprocess doing one gradient computation, minus its RSS just before.

Targets: checkpointed T=50 / T=5 <= 1.25, and naive / checkpointed at T=20 >= 10.
Also E1: one EcoDiff optimization with T=10 and 8 prompts, target under 300 s.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time

import torch

STEPS = (5, 10, 20, 50)
PROMPT = "a red circle at the top left on a white background"


def _handle():
    from pruning.loading import BUNDLED, handle_from_pipe, load_pipeline
    from pruning.testing import tiny_pipeline

    if (BUNDLED["tiny-shapes-sd"] / "model_index.json").is_file():
        return load_pipeline("tiny-shapes-sd")
    return handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")


def _one_gradient(handle, steps: int, checkpointing: str, meter=None) -> None:
    from pruning.grads import requires_grad
    from pruning.masks import GateSet
    from pruning.methods.ecodiff import recon_grads
    from pruning.rollout import prepare

    traj = prepare(handle, [PROMPT], [0], steps=steps)
    target = torch.zeros_like(traj.unpack(traj.z0))
    gates = GateSet.for_denoiser(handle.denoiser, kinds=("head", "neuron"), gate="sigmoid", init=1.0)
    with requires_grad(handle.denoiser.parameters(), False):  # only the gates get gradients, as in EcoDiff
        if meter is None:
            recon_grads(handle.denoiser, traj, target, gates, [None] * steps, checkpointing)
        else:
            with meter:
                recon_grads(handle.denoiser, traj, target, gates, [None] * steps, checkpointing)


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()  # resident pages


def peak_rss(fn) -> dict:
    """Run ``fn()`` while sampling this process's RSS every millisecond: {"before", "peak", "seconds"}."""
    before, peak, done = _rss_now(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_now())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return {"before": before, "peak": max(peak[0], _rss_now()), "seconds": time.perf_counter() - t0}


def _child(steps: int, checkpointing: str) -> None:
    """The RSS while one gradient is computed (after a warm-up: lazily allocated buffers)."""
    torch.set_num_threads(1)
    handle = _handle()
    _one_gradient(handle, 1, "timestep")
    print(json.dumps(peak_rss(lambda: _one_gradient(handle, steps, checkpointing))))


def _rss_increase(steps: int, checkpointing: str) -> int:
    out = subprocess.run([sys.executable, "-m", "benchmarks.p2_checkpointing", str(steps), checkpointing],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return max(data["peak"] - data["before"], 1)


def run(quick: bool = False) -> dict:
    from pruning.metrics import SavedTensorMeter

    torch.set_num_threads(1)
    handle = _handle()
    steps = (2, 4) if quick else STEPS
    saved, rss = {}, {}
    for t in steps:
        for mode in ("timestep", "none"):
            meter = SavedTensorMeter()
            _one_gradient(handle, t, mode, meter)
            saved[f"{mode}@{t}"] = meter.peak
            if not quick:
                rss[f"{mode}@{t}"] = _rss_increase(t, mode)
    lo, hi = steps[0], steps[-1]
    mid = 20 if 20 in steps else steps[-1]
    growth = saved[f"timestep@{hi}"] / saved[f"timestep@{lo}"]
    naive_ratio = saved[f"none@{mid}"] / saved[f"timestep@{mid}"]
    detail = {"model": handle.model_ref, "saved_bytes": saved, "rss_increase_bytes": rss,
              f"saved_ckpt_T{hi}_over_T{lo}": growth, f"saved_naive_over_ckpt_T{mid}": naive_ratio}
    if rss:
        detail[f"rss_ckpt_T{hi}_over_T{lo}"] = rss[f"timestep@{hi}"] / rss[f"timestep@{lo}"]
        detail[f"rss_naive_over_ckpt_T{mid}"] = rss[f"none@{mid}"] / rss[f"timestep@{mid}"]
    ok = growth <= 1.25 and naive_ratio >= 10
    return {"value": round(naive_ratio, 2), "target": ">= 10 (naive/ckpt at T=20) and <= 1.25 (ckpt T=50/T=5)",
            "ok": ok, "unit": "x saved-for-backward bytes", "detail": detail}


def run_e1(quick: bool = False) -> dict:
    """E1: wall time of one EcoDiff optimization, T=10, 8 prompts (default epochs and batch)."""
    from pruning.methods.ecodiff import EcoDiffSettings, optimize
    from pruning.tiny import heldout_prompts

    torch.set_num_threads(2)
    handle = _handle()
    prompts = list(heldout_prompts())[: 2 if quick else 8]
    settings = EcoDiffSettings(prompts=prompts, steps=2 if quick else 10, epochs=1 if quick else 4)
    t0 = time.perf_counter()
    state = optimize(handle, settings, show_progress=False)
    seconds = time.perf_counter() - t0
    return {"value": round(seconds, 1), "target": 300, "ok": seconds < 300, "unit": "s",
            "detail": {"model": handle.model_ref, "steps": settings.steps, "prompts": len(prompts),
                       "optimizer_steps": len(state.history), "threads": 2}}


if __name__ == "__main__":
    _child(int(sys.argv[1]), sys.argv[2])
