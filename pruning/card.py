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
from .labels import plural, source_name
from .plan import EDITED, PruningPlan, describe
from .prompts import evaluation_prompts, is_shapes_model
from .sampling import count_inputs
from .validate import py_str  # noqa: F401 (re-exported: the card's snippets use it)

CARD = "README.md"
GRID = "grid.png"
CARD_PROMPTS = 4
EVALUATE_BELOW_PARAMS = 50_000_000  # evaluate=None: measure only below this many denoiser params
PIPELINE_TAG = "text-to-image"
KIND_WORDS = {"operator": "whole operators", "head": "attention heads", "neuron": "FFN neurons",
              "group": "resnet channel groups", "channel": "conditioning channels"}


# The package's published install line (README, "Install the library"): the library installs from
# the Space that hosts it; <owner>/<space> stands for that Space until one is known.
PUBLISHED_INSTALL = 'pip install "pruning @ git+https://huggingface.co/spaces/<owner>/<space>"'


def install_line() -> str:
    """How to install the loader on the reader's own machine, never a path of the machine that
    wrote the export: ``PRUNING_INSTALL`` when set, else the Space this runs on (``SPACE_ID``),
    else the remote URL this package was installed from (pip's ``direct_url.json`` of a
    ``pip install git+https://...`` or an https archive), else the published line
    (:data:`PUBLISHED_INSTALL`).

    >>> import os
    >>> os.environ["PRUNING_INSTALL"] = "pip install pruning-fork"
    >>> install_line()
    'pip install pruning-fork'
    >>> del os.environ["PRUNING_INSTALL"]
    """
    if os.environ.get("PRUNING_INSTALL", "").strip():
        return os.environ["PRUNING_INSTALL"].strip()
    space = os.environ.get("SPACE_ID", "").strip()
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", space):
        return f'pip install "pruning @ git+https://huggingface.co/spaces/{space}"'
    return _installed_from() or PUBLISHED_INSTALL


def _installed_from() -> str | None:
    """``pip install "pruning @ <url>"`` when the installed distribution records a remote https URL
    (a VCS checkout at its commit, or an archive); None for a local path or an editable install."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("pruning").read_text("direct_url.json")
        info = json.loads(text) if text else None
    except (PackageNotFoundError, ValueError, OSError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str):
        return None
    url = info["url"]
    if not url.startswith("https://") or "@" in url.split("//", 1)[1].split("/", 1)[0]:  # no credentials, no paths
        return None
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") == "git":
        commit = vcs.get("commit_id")
        pin = f"@{commit}" if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{7,40}", commit) else ""
        return f'pip install "pruning @ git+{url}{pin}"'
    return f'pip install "pruning @ {url}"'


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
            "method_text": describe(plan), "edited_by_hand": bool(prov.get(EDITED)),
            "reconstruction": None if plan.reconstruction is None else dict(plan.reconstruction["settings"]),
            "recovery": None if recovery is None else {"steps": len(recovery.get("losses", []))}}
    text = _render(handle, plan, card, full_pipeline=full_pipeline, plan_only=plan_only,
                   folder_name=folder_name or folder.name, repo=repo, lora=lora, install=install or install_line())
    (folder / CARD).write_text(text)
    return card


def quality_rows(quality: dict | None) -> list[dict]:
    """The card's quality figures as rows the app can show (``figure``, ``original``, ``pruned``,
    ``meaning``), from a card's ``quality`` (``write_card(...)["quality"]``, the manifest's
    ``card.quality``); ``[]`` when the export was not measured.

    >>> q = {"prompts": ["a", "b"], "seeds": [0, 1], "steps": 10, "latent_mse": 0.071, "ssim": 0.9,
    ...      "task_accuracy_original": 1.0, "task_accuracy": 0.5}
    >>> [(r["figure"], r["original"], r["pruned"]) for r in quality_rows(q)]
    [('latent MSE (lower is better)', '0', '0.071'), ('SSIM (higher is better)', '1', '0.9000'), ('shapes task accuracy (higher is better)', '100%', '50%')]
    """
    if not quality:
        return []
    q = quality
    rows = [{"figure": "latent MSE (lower is better)", "original": "0", "pruned": f"{float(q['latent_mse']):.6g}",
             "meaning": "mean squared difference of the final latents from the original's, same prompt and seed"},
            {"figure": "SSIM (higher is better)", "original": "1", "pruned": f"{float(q['ssim']):.4f}",
             "meaning": "structural similarity of the images to the original's (1 = identical)"}]
    if "task_accuracy" in q:
        rows.append({"figure": "shapes task accuracy (higher is better)",
                     "original": f"{100 * float(q['task_accuracy_original']):.0f}%",
                     "pruned": f"{100 * float(q['task_accuracy']):.0f}%",
                     "meaning": "images that show the prompt's colour, shape and position, checked on the pixels"})
    elif "clip_score" in q:
        rows.append({"figure": "CLIP score (higher is better)", "original": f"{float(q['clip_score_original']):.2f}",
                     "pruned": f"{float(q['clip_score']):.2f}", "meaning": "100 x cos(image, prompt) in CLIP space"})
    return rows


def quality_table(quality: dict | None):
    """:func:`quality_rows` as a pandas DataFrame (columns figure, original, pruned, meaning)."""
    import pandas as pd

    return pd.DataFrame(quality_rows(quality), columns=["figure", "original", "pruned", "meaning"])


def quality_line(quality: dict) -> str:
    """What the card's figures are computed on, in one line.

    >>> quality_line({"prompts": ["a", "b", "c", "d"], "seeds": [0, 1, 2, 3], "steps": 10})
    'Measured at export on 4 prompts x 1 seed each (seeds 0-3), 10 steps'
    """
    seeds = list(quality["seeds"])
    return (f"Measured at export on {plural(len(quality['prompts']), 'prompt')} x 1 seed each "
            f"(seeds {seeds[0]}-{seeds[-1]}), {plural(int(quality['steps']), 'step')}")


def _settings_text(settings) -> str:
    """``k=v, ...`` of a settings mapping, the values as JSON, as inline code."""
    return code(", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in dict(settings).items()))


def _render(handle, plan, card, *, full_pipeline, plan_only, folder_name, repo, lora, install) -> str:
    """The card's text, built from data: the YAML front matter by a YAML emitter, every user string in
    the body escaped (:func:`md`, :func:`code`) and quoted in the code snippets (:func:`py_str`)."""
    s, q, method = card["summary"], card["quality"], card["method"]
    base = handle.source
    tags = ["pruning", "structural-pruning", *_method_tag(method), "diffusers", PIPELINE_TAG]
    if plan.provenance.get(EDITED) is True:
        tags.insert(3, "hand-edited")
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
    out += [f"# {md(source_name(handle))}, structurally pruned ({_pct(s['params_fraction'])} of the {den}'s params)",
            "", f"Pruned from {code(base)} (weights {code(plan.base)}) with the `pruning` library; this export "
            f"holds {kind}.", "", "## What was removed", "",
            f"**{s['params_removed']:,} of {s['params_total']:,} params ({_pct(s['params_fraction'])})** and "
            f"**{s['macs_removed']:,} of {s['macs_total']:,} MACs per denoiser call ({_pct(s['macs_fraction'])})** "
            f"at {md(handle.defaults['resolution'])} px.", ""]
    out += [_table([(KIND_WORDS[k], f"{v:,}", _pct(v / s["params_total"]))
                    for k, v in s["params_removed_by_kind"].items() if v], ("by kind", "params removed", "share")), ""]
    if s["removed_operators"]:
        out += [f"{plural(len(s['removed_operators']), 'operator')} removed: "
                + ", ".join(code(f) for f in s["removed_operators"]) + ".", ""]
    if s["kept_fraction"]:
        out += ["Kept fraction of every slimmed layer (and of the conditioning channels, which every block's "
                "modulation reads):", "",
                _table([(code(f) + (" (conditioning channels)" if f in plan.kept_channels else ""), f"{v:.2f}")
                        for f, v in s["kept_fraction"].items()], ("layer", "kept")), ""]
    settings = plan.provenance.get("settings")
    target = plan.provenance.get("target_sparsity")
    text = card.get("method_text") or describe(plan)
    out += ["## Method", "", f"Method: **{md(text)}**" + (f" (provenance: method {code(method)}"
                                                          + (f", target sparsity {md(target)}" if "target_sparsity"
                                                             in plan.provenance else "")
                                                          + (", then edited by hand" if plan.provenance.get(EDITED)
                                                             is True else "") + ")") + ".", ""]
    if isinstance(settings, dict) and settings:
        out += [f"Settings: {_settings_text(settings)}.", ""]
    rec = card["reconstruction"]
    out += [("Reconstruction: applied (closed-form re-fit of the slim model's layers to the original's outputs; settings "
             + _settings_text(rec) + ").") if rec else "Reconstruction: not applied.",
            "", f"Recovery finetune: applied ({int(card['recovery']['steps'])} steps)." if card["recovery"]
            else "Recovery finetune: not applied.", ""]
    out += ["## Quality against the base model", ""]
    if q is None:
        out += [f"Quality {md(card['quality_note'])}.", ""]
    else:
        rows = [(r["figure"], md(r["original"]), md(r["pruned"])) for r in quality_rows(q)]
        if "task_accuracy" in q:
            clip = "CLIP score: not measured (the shapes task accuracy replaces it on the bundled models)."
        elif "clip_score" in q:
            clip = ""
        else:
            clip = f"CLIP score: unavailable ({md(q.get('clip_score_skipped', 'not measured'))})."
        out += [f"{md(quality_line(q))}, against the base model's outputs for the same seeds:", "",
                _table(rows, ("figure", "original", "pruned")), ""]
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
           "py_str", "quality_rows", "quality_table", "quality_line", "PUBLISHED_INSTALL",
           "CARD", "GRID"]
