"""Generation time of the bundled tiny models: a batch of 4 images at default settings.

`run()` loads each bundled model offline, warms it up once, then times `repeats` full
pipeline calls (text encoding, denoising with guidance, VAE decode, PIL output) and reports
the median in seconds. Target: under 3 s per batch on a 2-core CPU. The models are so small
that one torch thread is fastest and least noisy (two threads on a busy 2-core machine were
4-25x slower), so `run()` times with `threads=1` unless told otherwise.
"""

from __future__ import annotations

import statistics
import time

TARGET_S = 3.0
PROMPTS = [
    "a red circle at the top left on a white background",
    "a blue square in the center on a black background",
    "a yellow triangle at the bottom right on a gray background",
    "a cyan circle at the top right on a black background",
]


def time_model(path, repeats: int = 5) -> dict:
    import torch

    from pruning.quality import load_bundled, pipeline_family

    pipe, d = load_bundled(path)
    kw = dict(num_inference_steps=d["steps"], height=d["resolution"], width=d["resolution"])
    if pipeline_family(pipe) == "flux":
        kw.update(
            true_cfg_scale=d["guidance"],
            negative_prompt=[d.get("negative_prompt", "")] * 4,
            max_sequence_length=d.get("max_sequence_length", 16),
        )
    else:
        kw.update(guidance_scale=d["guidance"])
    times = []
    for i in range(repeats + 1):
        gen = [torch.Generator().manual_seed(j) for j in range(4)]
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(PROMPTS, generator=gen, **kw)
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - t0)
    return {
        "seconds": statistics.median(times),
        "steps": d["steps"],
        "guidance": d["guidance"],
        "threads": torch.get_num_threads(),
    }


def run(repeats: int = 5, threads: int | None = 1) -> dict:
    """{"value": slowest model's median seconds, "target", "ok", "unit", "detail": per model}."""
    import torch

    from pruning.tiny import BUNDLED

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        detail = {name: time_model(path, repeats) for name, path in BUNDLED.items()}
    finally:
        torch.set_num_threads(before)
    worst = max(r["seconds"] for r in detail.values())
    return {
        "value": round(worst, 3),
        "target": TARGET_S,
        "ok": worst < TARGET_S,
        "unit": "s per batch of 4",
        "detail": detail,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
