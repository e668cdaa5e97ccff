"""The model card of an export: ``README.md`` with Hugging Face YAML metadata, and ``grid.png``.

The card says what was removed (params and MACs, by kind, the kept fraction of every pruned
layer), the method and its settings, whether reconstruction or recovery was applied, the
quality measured at export time against the base model (latent MSE, SSIM, the shapes task
accuracy on the bundled models, the CLIP score on real models when CLIP can be loaded) on
four prompts with an original-vs-pruned image grid, and the lines that install the loader and
load the folder as downloaded. The same figures go into the manifest (``card``), so a card and
its export never disagree.

The evaluation generates 2 x 4 images: cheap on the tiny models, minutes on a real one, so
``evaluate=None`` measures only denoisers below ``EVALUATE_BELOW_PARAMS`` and the card says
when it was skipped and how to ask for it.

>>> front_matter("---\\nbase_model: x\\ntags: [pruning]\\n---\\n# card")
{'base_model': 'x', 'tags': ['pruning']}
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import yaml
from huggingface_hub import ModelCardData
from PIL import Image

from .catalog import UNIT_KINDS, discover
from .errors import ExportError, ModelLoadError
from .plan import PruningPlan
from .prompts import evaluation_prompts, is_shapes_model
from .sampling import count_inputs
from .validate import py_str  # noqa: F401 (re-exported: the card's snippets use it)

CARD = "README.md"
GRID = "grid.png"
CARD_PROMPTS = 4
EVALUATE_BELOW_PARAMS = 50_000_000  # evaluate=None: measure only below this many denoiser params
PIPELINE_TAG = "text-to-image"
KIND_WORDS = {"operator": "whole operators", "head": "attention heads", "neuron": "FFN neurons",
              "group": "resnet channel groups"}


def install_line() -> str:
    """How to install the loader: ``PRUNING_INSTALL``, the Space this runs on, this checkout, or
    the installed version (the one that wrote the export)."""
    if os.environ.get("PRUNING_INSTALL"):
        return os.environ["PRUNING_INSTALL"]
    if os.environ.get("SPACE_ID"):
        return f'pip install "pruning @ git+https://huggingface.co/spaces/{os.environ["SPACE_ID"]}"'
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return f'pip install "{checkout}"'
    from importlib.metadata import version

    return f"pip install pruning=={version('pruning')}"


def front_matter(text: str) -> dict:
    """The YAML metadata block at the top of a card (``{}`` when it has none)."""
    if not text.startswith("---\n"):
        return {}
    block = text[4:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as e:
        raise ExportError(f"the card's metadata block is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    if data is not None and not isinstance(data, dict):
        raise ExportError(f"the card's metadata block must be a YAML mapping, got {type(data).__name__}")
    return data or {}


def summary_figures(handle, plan: PruningPlan) -> dict:
    """What the plan removes at the model's generation size (``plan.summary``) and the kept fraction
    of every pruned structure (``{fqn: kept / units}``; removed operators listed apart)."""
    s = plan.summary(handle.denoiser, **count_inputs(handle))
    found = discover(handle.denoiser)
    kept = {fqn: round(len(k) / found.structures[fqn].units, 4)
            for kind in UNIT_KINDS for fqn, k in plan.kept(kind).items()}
    return {"params_total": int(s["params_total"]), "params_removed": int(s["params_removed"]),
            "params_fraction": round(float(s["params_fraction"]), 6), "macs_total": int(s["macs_total"]),
            "macs_removed": int(s["macs_removed"]), "macs_fraction": round(float(s["macs_fraction"]), 6),
            "params_removed_by_kind": {k: int(v) for k, v in s["params_removed_by_kind"].items()},
            "removed_operators": list(plan.removed_operators), "kept_fraction": dict(sorted(kept.items()))}


def measure(handle, small, *, prompts=None, seeds=None) -> dict:
    """Original and ``small`` on ``CARD_PROMPTS`` evaluation prompts (seeds 0..): the figures and images."""
    from .quality import evaluate  # generation: imported only when a card is measured

    prompts = list(prompts or evaluation_prompts(handle.model_ref, CARD_PROMPTS))
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    ref = evaluate(handle, prompts, seeds)
    got = evaluate(handle, prompts, seeds, denoiser=small, reference=ref)
    fig = {"prompts": prompts, "seeds": seeds, "steps": handle.defaults["steps"],
           "latent_mse": round(got["latent_mse"], 6), "ssim": round(got["ssim"], 4)}
    if "all" in got:
        fig.update(task_accuracy_original=round(float(ref["all"]), 4), task_accuracy=round(float(got["all"]), 4))
    elif not is_shapes_model(handle.model_ref):
        try:
            from .clipscore import load_clip

            clip = load_clip(device=handle.device)
            fig.update(clip_score_original=round(float(clip.per_image(ref["images"], prompts).mean()), 3),
                       clip_score=round(float(clip.per_image(got["images"], prompts).mean()), 3))
        except ModelLoadError as e:
            fig["clip_score_skipped"] = str(e)
    return {"figures": fig, "images": (ref["images"], got["images"])}


def grid(original: np.ndarray, pruned: np.ndarray) -> Image.Image:
    """Two rows of images (uint8 ``(N, H, W, 3)``): the original above, the pruned model below."""
    rows = [np.concatenate(list(x), axis=1) for x in (original, pruned)]
    return Image.fromarray(np.concatenate(rows, axis=0))


_PLAIN = re.compile(r"[A-Za-z0-9_.:/@=+,\- ]*")  # text shown as is in a code span
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()!|~$])")
_TAG = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


def md(value) -> str:
    r"""Any text as inert Markdown on one line: whitespace (newlines too) collapsed, Markdown's
    punctuation backslash-escaped, HTML's characters as entities.

    >>> print(md("a *b*\n---\n<script>`x`"))
    a \*b\* --- &lt;script&gt;\`x\`
    """
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))
    return html.escape(text, quote=True)


def code(value) -> str:
    r"""Text as inline code: a Markdown code span when it is plain (names, FQNs, paths), else an
    HTML ``<code>`` element with the text escaped (a backtick cannot end it, no HTML gets through).

    >>> print(code("mid_block.resnets.0"), code("a`b<i>"))
    `mid_block.resnets.0` <code>a\`b&lt;i&gt;</code>
    """
    text = " ".join(str(value).split())
    return f"`{text}`" if text and _PLAIN.fullmatch(text) else f"<code>{md(text)}</code>"


def _fence(body: str, lang: str) -> list[str]:
    """A fenced code block longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, body, fence]


def _method_tag(method: str) -> list[str]:
    """``pruning-<method>`` when the method is a plain name (a tag must not carry arbitrary text)."""
    slug = method.strip().lower()
    return [f"pruning-{slug}"] if _TAG.fullmatch(slug) else []


def _table(rows: list[tuple], head: tuple) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def load_lines(folder_name: str, *, full_pipeline: bool, plan_only: bool, base: str, denoiser: str,
               prompt: str, repo: str | None = None, lora: str | None = None) -> str:
    """The Python lines that load the export as downloaded (the unzipped folder, or the Hub repo)."""
    where, base, denoiser = py_str(repo or folder_name), py_str(base), md(denoiser)
    lines = ["from pruning import generate_images, load_pruned"]
    if full_pipeline:
        lines.append(f'pruned = load_pruned({where})  # the pipeline with the slim {denoiser}')
    elif plan_only and repo:
        lines.append(f'pruned = load_pruned({where})  # the plan re-applied to the base model\'s own Hub weights')
    elif plan_only:
        lines.append(f'pruned = load_pruned({where}, base={base})  # the plan re-applied to the base weights')
    else:
        lines.append(f'pruned = load_pruned({where}, base={base})  # the slim {denoiser} in the base pipeline')
    if lora:
        sub, _, name = lora.rpartition("/")
        lines.append(f'pruned.pipe.load_lora_weights({where}, subfolder={py_str(sub)}, weight_name={py_str(name)})'
                     "  # the LoRA, sliced for this plan")
    lines += [f'image = generate_images(pruned, [{py_str(prompt)}], [0])[0]', 'image.save("pruned.png")']
    return "\n".join(lines)


def write_card(folder: Path, handle, plan: PruningPlan, small, *, full_pipeline: bool, plan_only: bool = False,
               evaluate: bool | None = None, folder_name: str | None = None, repo: str | None = None,
               lora: dict | None = None, install: str | None = None) -> dict:
    """Write ``README.md`` (and ``grid.png`` when measured) into ``folder``; returns the manifest's ``card``."""
    figures = summary_figures(handle, plan)
    n_params = sum(p.numel() for p in handle.denoiser.parameters())
    if evaluate is None:
        evaluate = n_params < EVALUATE_BELOW_PARAMS
    quality, note = None, None
    if evaluate:
        m = measure(handle, small)
        quality = m["figures"]
        grid(*m["images"]).save(folder / GRID)
    else:
        note = (f"not measured at export: the denoiser has {n_params / 1e6:.0f}M params (the card measures "
                f"below {EVALUATE_BELOW_PARAMS / 1e6:.0f}M by default); pass evaluate=True to export (CLI "
                "--card-eval) to generate the 2 x 4 images and figures")
    prov = dict(plan.provenance)
    method = str(prov.get("method", "manual"))
    recovery = getattr(small, "recovery", None)
    card = {"summary": figures, "quality": quality, "quality_note": note, "method": method,
            "reconstruction": None if plan.reconstruction is None else dict(plan.reconstruction["settings"]),
            "recovery": None if recovery is None else {"steps": len(recovery.get("losses", []))}}
    text = _render(handle, plan, card, full_pipeline=full_pipeline, plan_only=plan_only,
                   folder_name=folder_name or folder.name, repo=repo, lora=lora, install=install or install_line())
    (folder / CARD).write_text(text)
    return card


def _settings_text(settings) -> str:
    """``k=v, ...`` of a settings mapping, the values as JSON, as inline code."""
    return code(", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in dict(settings).items()))


def _render(handle, plan, card, *, full_pipeline, plan_only, folder_name, repo, lora, install) -> str:
    """The card's text, built from data: the YAML front matter by a YAML emitter, every user string in
    the body escaped (:func:`md`, :func:`code`) and quoted in the code snippets (:func:`py_str`)."""
    s, q, method = card["summary"], card["quality"], card["method"]
    base = handle.source
    tags = ["pruning", "structural-pruning", *_method_tag(method), "diffusers", PIPELINE_TAG]
    if lora:
        tags.append("lora")
    data = ModelCardData(base_model=base, library_name="diffusers", pipeline_tag=PIPELINE_TAG, tags=tags)
    meta = data.to_dict()
    meta["pruning"] = {k: s[k] for k in ("params_total", "params_removed", "params_fraction", "macs_total",
                                         "macs_removed", "macs_fraction")}
    if q is not None:
        meta["pruning"]["quality"] = {k: v for k, v in q.items() if k not in ("prompts", "seeds")}
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    den = md(handle.denoiser_name)
    kind = "the full pipeline" if full_pipeline else ("the plan only" if plan_only else f"the slim {den}")
    out += [f"# {md(base)}, structurally pruned ({_pct(s['params_fraction'])} of the {den}'s params)",
            "", f"Pruned from {code(base)} (weights {code(plan.base)}) with the `pruning` library; this export "
            f"holds {kind}.", "", "## What was removed", "",
            f"**{s['params_removed']:,} of {s['params_total']:,} params ({_pct(s['params_fraction'])})** and "
            f"**{s['macs_removed']:,} of {s['macs_total']:,} MACs per denoiser call ({_pct(s['macs_fraction'])})** "
            f"at {md(handle.defaults['resolution'])} px.", ""]
    out += [_table([(KIND_WORDS[k], f"{v:,}", _pct(v / s["params_total"]))
                    for k, v in s["params_removed_by_kind"].items() if v], ("by kind", "params removed", "share")), ""]
    if s["removed_operators"]:
        out += ["Removed operators: " + ", ".join(code(f) for f in s["removed_operators"]) + ".", ""]
    if s["kept_fraction"]:
        out += ["Kept fraction of every slimmed layer:", "",
                _table([(code(f), f"{v:.2f}") for f, v in s["kept_fraction"].items()], ("layer", "kept")), ""]
    settings = plan.provenance.get("settings")
    target = plan.provenance.get("target_sparsity")
    out += ["## Method", "", f"Method: **{md(method)}**" + (f", target sparsity {md(target)}"
                                                             if "target_sparsity" in plan.provenance else "") + ".", ""]
    if isinstance(settings, dict) and settings:
        out += [f"Settings: {_settings_text(settings)}.", ""]
    rec = card["reconstruction"]
    out += [("Reconstruction: applied (closed-form re-fit of the layers that read pruned units; settings "
             + _settings_text(rec) + ").") if rec else "Reconstruction: not applied.",
            "", f"Recovery finetune: applied ({int(card['recovery']['steps'])} steps)." if card["recovery"]
            else "Recovery finetune: not applied.", ""]
    out += ["## Quality against the base model", ""]
    if q is None:
        out += [f"Quality {md(card['quality_note'])}.", ""]
    else:
        rows = [("latent MSE (lower is better)", f"{q['latent_mse']:.6g}"), ("SSIM (higher is better)", f"{q['ssim']:.4f}")]
        if "task_accuracy" in q:
            rows.append(("shapes task accuracy (original -> pruned)",
                         f"{q['task_accuracy_original']:.2f} -> {q['task_accuracy']:.2f}"))
            clip = "CLIP score: not measured (the shapes task accuracy replaces it on the bundled models)."
        elif "clip_score" in q:
            rows.append(("CLIP score (original -> pruned)", f"{q['clip_score_original']:.2f} -> {q['clip_score']:.2f}"))
            clip = ""
        else:
            clip = f"CLIP score: unavailable ({md(q.get('clip_score_skipped', 'not measured'))})."
        out += [f"Measured at export on {len(q['prompts'])} prompts (seeds {md(q['seeds'][0])}-{md(q['seeds'][-1])}, "
                f"{md(q['steps'])} steps), against the base model's outputs for the same seeds:", "",
                _table(rows, ("figure", "value")), ""]
        out += ([clip, ""] if clip else []) + ["Prompts: " + "; ".join(f'"{md(p)}"' for p in q["prompts"]) + ".", "",
                                               f"![original (top) vs pruned (bottom)]({GRID})", ""]
    if lora:
        out += ["## LoRA", "", f"{code(lora['file'])}: the LoRA {code(lora['source'])} sliced for this plan "
                f"({int(lora['sliced'])} layers sliced, {len(lora['dropped'])} dropped with the operators they adapted"
                + (": " + ", ".join(code(d) for d in lora["dropped"]) if lora["dropped"] else "") + ").", ""]
    prompt = q["prompts"][0] if q else evaluation_prompts(handle.model_ref, 1)[0]
    lora_file = lora["file"] if lora else None
    snippet = load_lines(folder_name, full_pipeline=full_pipeline, plan_only=plan_only, base=base,
                         denoiser=handle.denoiser_name, prompt=prompt, lora=lora_file)
    out += ["## Use it", "", *_fence(install, "bash"), "", f"In the folder that holds {code(folder_name + '/')}:", "",
            *_fence(snippet, "python"), ""]
    if repo:
        out += ["From the Hub:", "",
                *_fence(load_lines(folder_name, full_pipeline=full_pipeline, plan_only=plan_only, base=base,
                                   denoiser=handle.denoiser_name, prompt=prompt, repo=repo, lora=lora_file), "python"),
                ""]
    return "\n".join(out)


__all__ = ["write_card", "front_matter", "install_line", "load_lines", "summary_figures", "measure", "grid", "md", "code",
           "py_str",
           "CARD", "GRID"]
