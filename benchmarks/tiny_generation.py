"""G1: generation time of the bundled tiny models, a batch of 4 images at their default settings.

Times the one generation path the app and the evaluator use:
``pruning.sampling.generate_images(load_pipeline(name), prompts, seeds)`` (text encoding,
denoising with the model's own steps, guidance and resolution from ``sampling.spec``, VAE
decode, PIL images). Each model is warmed up once, then ``repeats`` calls are timed and the
median is reported, in seconds. Target: under 3 s per batch on a 2-core CPU. The models are so
small that one torch thread is fastest and least noisy (two threads on a busy 2-core machine
were 4-25x slower), so ``run()`` times with ``threads=1`` unless told otherwise.
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
SEEDS = [0, 1, 2, 3]


def time_model(name: str, repeats: int = 5) -> dict:
    import torch

    from pruning.loading import load_pipeline
    from pruning.sampling import generate_images, spec

    handle = load_pipeline(name)
    s = spec(handle)  # what generate_images uses when nothing is overridden
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        images = generate_images(handle, PROMPTS, SEEDS)  # exactly the app's and the evaluator's call
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - t0)
    if len(images) != len(PROMPTS):
        raise RuntimeError(f"{name}: {len(images)} images for {len(PROMPTS)} prompts")
    return {
        "seconds": statistics.median(times),
        "model": handle.model_ref,
        "steps": s.steps,
        "guidance": s.guidance,
        "guidance_mode": s.guidance_mode,
        "resolution": s.resolution,
        "image_size": list(images[0].size),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def run(quick: bool = False, repeats: int | None = None, threads: int | None = 1) -> dict:
    """{"value": slowest model's median seconds, "target", "ok", "unit", "detail": per model}."""
    import torch

    from pruning.bundled import BUNDLED

    repeats = repeats or (2 if quick else 5)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        detail = {name: time_model(name, repeats) for name in BUNDLED}
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
