"""The words of the app: the opening guide, help for every setting (plain words, the paper's
name in brackets), and rough run-time estimates measured on this device.

>>> "operator" in GLOSSARY and "structure" in GLOSSARY
True
>>> estimate_text({"ldpruner": 12.0, "magnitude": 0.1})
'ldpruner about 12 s, magnitude under a second'
"""

from __future__ import annotations

import torch

from . import format as fmt

INTRO = """\
# Diffusion Pruning Explorer
**Structural pruning** removes whole parts of a diffusion model's denoiser (attention heads, feed-forward
neurons, channel groups, or entire blocks) so the model gets physically smaller and faster. The question is
*which* parts can go without changing the images much. This app answers it for the loaded model, with three
published methods and two baselines, and lets you leave with the smaller model.
"""

STEPS = """\
**The four steps**
1. **Model**: the bundled `tiny-shapes-sd` is loaded already (a 1 M-parameter model that draws coloured shapes
   and runs on a CPU). Switch to another model at any time.
2. **Score** what can be removed. Start with **magnitude** (instant, no images needed) to see the flow, then
   **LD-Pruner** (removes each operator in turn and watches the images), **EcoDiff** (learns on/off gates) or
   **Taylor** (gradients of the training loss). {estimates}
3. **How much can I prune?** compares every method at several sizes against the original, and **Select and
   compare** lets you pick what to remove (by target or by hand) and see the same prompt and seed before and after.
4. **Export** the slimmed model (safetensors and a JSON plan) with the two lines that load it.
"""

GLOSSARY = """\
**Words used here.** An **operator** is a whole branch that can be switched off: a self-attention (`attn1`), a
cross-attention (`attn2`), a feed-forward network (`ff`), a resnet block (`resnet`) or a whole block. A
**structure** is a layer whose small **units** can be removed one by one: attention **heads**, FFN **neurons**,
and resnet channel **groups**. **Sparsity** is the fraction of the denoiser's parameters removed. Every score in
this app means the same: **low = prunable** (remove first), drawn in orange; high = keep, drawn in blue.
"""

HELP = {
    "model": "A bundled tiny model (offline), a preset, or any Hub id such as org/name (needs internet).",
    "device": "Where the model runs. cpu works everywhere; cuda needs an NVIDIA GPU on the server.",
    "dtype": "Number format of the weights. float32 is exact; bfloat16 and float16 halve memory on a GPU. On a "
             "CPU all three work: bfloat16 is fast if the CPU has bf16 instructions, float16 is about 10x slower.",
    "method": "How parts are scored. All scores mean low = prunable.",
    "prompts": "One prompt per line. The method generates images from these to see what matters.",
    "n_gen": "Images generated for each operator [N_gen in the LD-Pruner paper]. More = steadier scores, slower.",
    "steps": "Denoising steps per image. 0 = the model's default.",
    "granularity": "fine: attention, FFN and resnet branches one by one; block: whole blocks; all: both.",
    "operators": "Score only these operators (empty = all of the chosen granularity).",
    "epochs": "Passes over the prompts while learning the gates.",
    "batch": "Prompts per learning step.",
    "kinds": "Which units get a gate: attention heads, FFN neurons, resnet channel groups.",
    "beta": "How hard the gates are pushed to close [beta in the EcoDiff paper]. Higher = sparser, less faithful.",
    "lr": "Learning rate of the gates. Too high and the run diverges (it then stops with a message).",
    "stride": "Score every n-th of the 1000 noise levels [timestep stride, Diff-Pruning]. Larger = faster.",
    "thr": "Stop once the loss falls below this fraction of its maximum [thr in Diff-Pruning, 0-0.1].",
    "taylor_kinds": "Which units get an importance score.",
    "prefill": "Fill the table from a method's scores, cut at the target.",
    "target": "Fraction of the denoiser's parameters to remove. The slider stops at what the method can reach.",
    "scope": "global: rank all units together; local: remove the same fraction in every layer.",
    "mode": "operators: switch off whole branches; structures: keep chosen units of each layer.",
    "prompt": "What to draw. On the shapes models: '<color> <shape> at/in the <position> on a <color> background'.",
    "seed": "The same seed gives the same starting noise to the original and the pruned model.",
    "view": "side by side (default), or a slider over one image.",
    "cmp_methods": "Methods to compare (each scores the model once, then is cut at every sparsity).",
    "sparsities": "Fractions of parameters to remove, comma-separated, each between 0 and 1.",
    "metric": "What the plot shows; it redraws from the last comparison without re-running it.",
    "full": "Also save the VAE, text encoders and scheduler, so the export loads on its own.",
    "recover": "Optional short finetune of the slim model towards the original's outputs (0 = none).",
    "eco_preset": "ours: per-unit L0 penalty, the paper's gate noise (measured better on the bundled models); the "
                  "authors' configs: their released SDXL/FLUX settings (calmer gate noise, a per-layer L1 penalty, "
                  "beta 0.5 for UNets and 0.01 for FLUX). Choosing one fills the push and learning rate.",
    "obs_preset": "ours: the model's steps and resolution, 32 calibration prompts, weights falling linearly "
                  "from 1.2 to 0.8 over the steps, every block pruned; the authors' values: their released script "
                  "(100 prompts x 25 steps at 512 px, guidance 7, log-shaped weights 1.2 -> 0.8, the last block "
                  "kept). Both: 1% damping, 4 groups, rank fusion k = 60.",
    "ld_preset": "full: the model's steps and resolution; proxy: about half of each, several times faster, with "
                 "a ranking that agrees with the full one only in part (the measured agreement shows below); fast "
                 "score: no regeneration per operator, only the denoiser's output change at 2 recorded timesteps "
                 "(about 1/10 of the full sweep's work on real models; chosen for you when the full sweep exceeds "
                 "the GPU budget). Steps typed above still win.",
    "reconstruct": "Re-fit the layers that read the removed units so they best reproduce the original's outputs "
                   "(closed-form least squares, no training). Costs one pass of the original over 32 calibration "
                   "prompts: about 2-5 s on the bundled models on this CPU, like generating 32 images on others.",
    "cmp_reconstruct": "Also evaluate every plan after reconstruction (dashed lines): shows what the re-fit recovers. "
                       "Adds one calibration pass per plan.",
}

EXAMPLE_PROMPTS = {
    "shapes": ["a red circle at the top left on a white background",
               "a blue square at the bottom right on a black background",
               "a yellow triangle in the center on a gray background",
               "a green circle at the top right on a black background"],
    "other": ["a photo of a red sports car parked on a city street",
              "a bowl of fresh fruit on a wooden kitchen table",
              "a lighthouse on a rocky coast at sunset"],
}


def estimate_seconds(handle, *, n_gen: int = 4, epochs: int = 4, prompts: int = 4, stride: int = 100) -> dict:
    """Predicted wall times of each method at the app's default settings (``pruning.estimate``)."""
    from pruning import methods
    from pruning.estimate import estimate
    from pruning.prompts import calibration_prompts

    p = calibration_prompts(handle.model_ref, prompts)
    values = {"ldpruner": dict(n_gen=n_gen, prompts=p), "ecodiff": dict(epochs=epochs, prompts=p),
              "taylor": dict(stride=stride, prompts=p), "obsdiff": dict(prompts=p)}
    return {m: estimate(handle, m, methods.get(m).settings(**values.get(m, {}))).seconds
            for m in ("magnitude", "random", "ldpruner", "ecodiff", "taylor", "obsdiff")}


def estimate_text(est: dict) -> str:
    return ", ".join(f"{m} " + ("under a second" if v < 1 else f"about {fmt.seconds(v)}") for m, v in est.items())


def device_note(handle) -> str:
    return f"{'a GPU' if handle.device.type == 'cuda' else 'this CPU'} ({str(handle.dtype).removeprefix('torch.')})"


def estimates(handle, max_params: int = 100_000_000) -> str:
    """The guide's line on run times (timed here for small models; skipped for big ones on a CPU)."""
    from pruning.metrics import count_params

    if count_params(handle.denoiser) > max_params:  # timing backward passes at load could take long or run out of memory
        where = "On this CPU a model this size takes minutes per image: use a GPU for the methods that generate. " \
            if handle.device.type == "cpu" else ""
        return where + "Press **Estimate the cost** in the Score tab for a run's time and memory before you start it."
    with torch.no_grad():
        est = estimate_seconds(handle)
    return (f"On {device_note(handle)}, with the default settings: {estimate_text(est)}; comparing all "
            "methods takes about as long as running them all.")
