"""R1: slimming at real size. The real SD 1.5 and SDXL UNet configs and SD3.5-medium's transformer
at real width (``pruning.reference``) with random weights, fp32, on this CPU, small latents,
batch 1, no download. SD3.5-medium runs **at reduced depth** (``sd35-medium-12``: its real width,
heads and FFN, 12 of its 24 blocks, dual attention in the first 6 of them as the real one has in
13 of 24): the full 2.24B model needs 9 GB plus a 7 GB slim copy plus two 0.9 GB position tables,
about 19 GB, too close to what this shared 24 GiB machine has free. It runs at 16x16 latents
(64 image tokens) with 77 text tokens.

For uniform plans (the same fraction of every head, FFN neuron and resnet channel group kept)
at about -20/-30/-50% MACs: masked vs slim max abs error on one forward, ``plan.summary`` vs
the slim model's measured params and MACs, and the latency / MAC efficiency
``(1 - latency ratio) / (1 - MAC ratio)`` from interleaved medians (original and slim timed in
alternating rounds). One slim copy exists at a time (SDXL in fp32 is 10.3 GB). Target:
efficiency >= 0.9 on every plan; the value is the worst.
"""

from __future__ import annotations

import gc
import time

import torch

from . import common

TARGETS = (0.2, 0.3, 0.5)
TARGET_EFFICIENCY = 0.9
SIDES = {"sd15": 32, "sdxl": 16, "sd35-medium-12": 16}  # latent side: 256 px and 128 px images
TEXT_LEN = {"sd35-medium-12": 77}  # text tokens (default: the family's reference length)
# reduced-depth variants: name -> (reference, config overrides)
VARIANTS = {"sd35-medium-12": ("sd35-medium", {"num_layers": 12, "dual_attention_layers": list(range(6))})}
REPEATS = 7


def build(name: str) -> torch.nn.Module:
    """The real config with random weights (seeded), on the CPU, in fp32."""
    from pruning import families
    from pruning.reference import PIPELINES, REFERENCE_CONFIGS

    ref, overrides = VARIANTS.get(name, (name, {}))
    torch.manual_seed(0)
    config = {**REFERENCE_CONFIGS[ref], **overrides}
    return families.get(PIPELINES[ref]["family"]).denoiser_class.from_config(config).eval()


def plan_near(denoiser, target: float, side: int, family: str = "sd", text_len: int | None = None):
    """The uniform plan whose predicted MAC reduction at ``side`` is closest to ``target``."""
    best = None
    for i in range(5, 101):
        plan = common.uniform_plan(denoiser, i / 100, family=family)
        frac = plan.summary(denoiser, sample_size=side, text_len=text_len)["macs_fraction"]
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (plan, frac)
    return best[0]


def measure(name: str, targets=TARGETS, repeats: int = REPEATS) -> dict:
    from pruning.masks import masked
    from pruning.metrics import count_params, example_inputs, total_macs
    from pruning.reference import PIPELINES
    from pruning.slim import slim

    t0 = time.perf_counter()
    original = build(name)
    side, text, family = SIDES[name], TEXT_LEN.get(name), PIPELINES[VARIANTS.get(name, (name,))[0]]["family"]
    kw = example_inputs(original, batch=1, sample_size=side, text_len=text, generator=torch.Generator().manual_seed(0))
    out = {"params": count_params(original), "macs": total_macs(original, sample_size=side, text_len=text),
           "latent_side": side, "text_len": text, "build_s": round(time.perf_counter() - t0, 1), "plans": []}
    for target in targets:
        plan = plan_near(original, target, side, family, text)
        s = plan.summary(original, sample_size=side, text_len=text)
        with torch.no_grad():
            with masked(original, plan):
                want = original(**kw)[0]
            small = slim(original, plan).eval()
            got = small(**kw)[0]
        params, macs = count_params(small), total_macs(small, sample_size=side, text_len=text)
        times = common.interleaved([common.forward(original, kw), common.forward(small, kw)], repeats=repeats,
                                   warmup=1)
        ratio = common.paired_ratio(times["wall"][1], times["wall"][0])
        mac_ratio = macs / s["macs_total"]
        out["plans"].append({
            "target_mac_reduction": target, "keep": plan.provenance["keep"],
            "masked_vs_slim_max_abs": float((got - want).abs().max()),
            "masked_vs_slim_rel_l2": float((got - want).norm() / want.norm()),
            "params_predicted": s["params_total"] - s["params_removed"], "params_measured": params,
            "macs_predicted": s["macs_total"] - s["macs_removed"], "macs_measured": macs,
            "summary_equals_measured": bool(params == s["params_total"] - s["params_removed"]
                                            and abs(macs - (s["macs_total"] - s["macs_removed"])) <= 1e-6 * macs),
            "mac_ratio": mac_ratio, "latency_original_s": common.median(times["wall"][0]),
            "latency_slim_s": common.median(times["wall"][1]), "latency_ratio": ratio,
            "efficiency": (1 - ratio) / (1 - mac_ratio)})
        del small, got, want
        gc.collect()
    del original
    gc.collect()
    return out


def run(quick: bool = False) -> dict:
    """Headline: the worst efficiency over every model's plans (``quick``: SD 1.5, one plan, 2 rounds)."""
    threads = common.set_threads()  # one thread, as every latency row: the steadiest ratios here
    names = ("sd15",) if quick else ("sd15", "sdxl", "sd35-medium-12")
    detail = {n: measure(n, (0.3,) if quick else TARGETS, 2 if quick else REPEATS) for n in names}
    plans = [p for n in names for p in detail[n]["plans"]]
    value = min(p["efficiency"] for p in plans)
    ok = value >= TARGET_EFFICIENCY and all(p["summary_equals_measured"] for p in plans) \
        and all(p["masked_vs_slim_rel_l2"] < 1e-5 for p in plans)
    detail.update(threads=threads, batch=1, dtype="float32", repeats=2 if quick else REPEATS,
                  clock="wall (interleaved medians)")
    return {"value": round(value, 3), "target": TARGET_EFFICIENCY, "ok": bool(ok),
            "unit": "min (1-latency ratio)/(1-MAC ratio), real SD 1.5 and SDXL UNets, SD3.5-medium's transformer at 12 of 24 blocks", "detail": detail}
