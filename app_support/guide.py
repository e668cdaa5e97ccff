"""The words of the app: the opening guide, help for every setting (plain words, the paper's
name in brackets), and rough run-time estimates measured on this device.

>>> "operator" in GLOSSARY and "structure" in GLOSSARY
True
>>> estimate_text({"Operator sweep": 12.0, "Weight magnitude": 0.1})
'Operator sweep about 12 s, Weight magnitude under a second'
"""

from __future__ import annotations

import torch

from . import format as fmt

INTRO_TEXT = """\
# Diffusion Pruning Explorer
**Structural pruning** removes whole parts of a diffusion model's denoiser (attention heads, feed-forward
neurons, channel groups, conditioning channels, or entire blocks) so the model gets physically smaller and
faster. The question is *which* parts can go without changing the images much. This app answers it for the
loaded model, with {methods}, and lets you leave with the smaller model.
"""
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def intro() -> str:
    """The opening paragraph, with the registered methods counted (a baseline's title says so).

    >>> "with four published methods and two baselines" in intro()
    True
    """
    from pruning import methods
    from pruning.labels import plural

    base = sum(methods.get(n).title.endswith("(baseline)") for n in methods.names())
    counts = [(len(methods.names()) - base, "published method"), (base, "baseline")]
    words = [plural(n, w).replace(f"{n:,}", NUMBERS[n] if n < len(NUMBERS) else f"{n:,}", 1) for n, w in counts if n]
    return INTRO_TEXT.format(methods=" and ".join(words))


STEPS = """\
**The five steps** (the tabs, in order)
1. **Model**: {model} is loaded. Switch to another model at any time.
2. **Score** what can be removed, with one of the registered methods: {methods}. Start with **{first}** (no
   images needed) to see the flow. {estimates}
3. **Select and compare**: pick what to remove (pre-filled from a method's scores at a target, or by hand) and
   see the same prompt and seed before and after.
4. **How much can I prune?** compares methods at several sizes against the original on the same prompts and seeds.
5. **Export** the slimmed model (safetensors and a JSON plan) with the lines that load it.
"""


def steps(handle, estimates_line: str = "") -> str:
    """The guide's steps for the loaded model (its name, the registered methods, their run times)."""
    from pruning import methods

    names = methods.names()
    first = next((n for n in names if methods.get(n).data_free), names[0])
    return STEPS.format(model=f"`{handle.source}`" if handle is not None else "the default model",
                        methods=", ".join(f"**{methods.get(n).title}**" for n in names),
                        first=methods.get(first).title, estimates=estimates_line)


GLOSSARY_TEXT = """\
**Words used here.** An **operator** is a whole branch that can be switched off: {parts}. A
**structure** is a layer whose small **units** can be removed one by one: attention **heads**, FFN **neurons**,
resnet channel **groups**, and the **conditioning channels** (kind `channel`, column `cond`, row `embedding`) of
the time / text embedding that every block's modulation layer reads. **Sparsity** is the fraction of the
denoiser's parameters removed. Every score in this app means the same: **low = prunable** (remove first),
drawn in orange; high = keep, drawn in blue.
"""
PARTS = {  # what the loaded family calls its operators (the glossary names the loaded model's parts)
    "sd": "a self-attention (`attn1`), a cross-attention (`attn2`), a feed-forward network (`ff`), a resnet block "
          "(`resnet`) or a whole block",
}
GLOSSARY = GLOSSARY_TEXT.format(parts=PARTS["sd"])


def glossary(handle) -> str:
    """The glossary in the loaded model's words: a UNet's parts, or a transformer's blocks.

    >>> from app_support.cache import ModelCache
    >>> text = glossary(ModelCache().get("tiny-shapes-sd3"))
    >>> "this sd3 model's operator kinds (`joint_block`" in text, "`resnet`" in text
    (True, False)
    """
    from pruning.facts import model_facts

    if handle is None or handle.family in PARTS:
        return GLOSSARY
    kinds = ", ".join(f"`{k}`" for k, r in model_facts(handle)["operators"].items() if r["count"])
    return GLOSSARY_TEXT.format(parts=f"one of this {handle.family} model's operator kinds ({kinds}) or a whole block")


HELP = {
    "model": "A bundled tiny model (offline), a preset, or any Hub id such as org/name (needs internet).",
    "device": "Where the model runs. cpu works everywhere; cuda needs an NVIDIA GPU on the server.",
    "dtype": "Number format of the weights. float32 is exact; bfloat16 and float16 halve memory on a GPU. On a "
             "CPU all three work: bfloat16 is fast if the CPU has bf16 instructions, float16 is about 10x slower.",
    "method": "How parts are scored. All scores mean low = prunable.",
    "prompts": "One prompt per line. The method generates images from these to see what matters.",
    "steps": "Denoising steps per image. 0 = the model's default.",
    "preset": "Named starting values for this method's settings; choosing one fills the settings below (which "
              "you can still change).",
    "prefill": "Fill the table from a method's scores, cut at the target.",
    "target": "Fraction of the denoiser's parameters to remove: type it, like 0.2 for 20%, or drag the slider. The "
              "slider ends at the most the chosen method can reach (the note below says how much and why).",
    "scope": ("global: rank all units together; local: remove the same fraction in every layer. OBS-Diff shares "
              "the target by its own allocation (its settings), whatever this says."),
    "mode": "operators: switch off whole branches; structures: keep chosen units of each layer.",
    "prompt": "What to draw. On the shapes models: '<color> <shape> at/in the <position> on a <color> background'.",
    "seed": "The same seed gives the same starting noise to the original and the pruned model.",
    "view": "side by side (default), or a slider over one image.",
    "cmp_methods": "Methods to compare (each scores the model once, then is cut at every sparsity).",
    "sparsities": "Fractions of parameters to remove, comma-separated, each between 0 and 1.",
    "metric": "What the plot shows; it redraws from the last comparison without re-running it.",
    "full": "Also save the VAE, text encoders and scheduler, so the export loads on its own.",
    "recover": "Optional short finetune of the slim model towards the original's outputs (0 = none).",
    "reconstruct": "Re-fit the slim model's layers, in the order it runs them, so each reproduces the original's "
                   "output there (closed-form least squares, no training); a fit is kept only if it does not raise the "
                   "final images' error on held-out prompts. Costs about 32 passes over 32 calibration prompts plus a "
                   "check per layer ('Estimate the cost' on the Export tab gives the time for your model and plan).",
    "cmp_reconstruct": "Also evaluate every plan after reconstruction (dashed lines): shows what the re-fit recovers. "
                       "Adds one reconstruction per plan (its cost: see the estimate beside Compare).",
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


def estimate_seconds(handle, *, prompts: int = 4) -> dict:
    """Predicted wall times of each registered method at its quick settings (``pruning.estimate``)."""
    from pruning import methods
    from pruning.errors import SettingsError
    from pruning.estimate import estimate
    from pruning.prompts import calibration_prompts

    p, out = calibration_prompts(handle.model_ref, prompts), {}
    for name in methods.names():
        m = methods.get(name)
        try:
            out[m.title] = estimate(handle, name, m.quick_settings(p)).seconds
        except SettingsError:  # a method that does not say what it costs: no figure, never a guess
            continue
    return out


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
    return (f"On {device_note(handle)}, at the settings the Score tab starts with: {estimate_text(est)}; comparing all "
            "methods takes about as long as running them all.")
