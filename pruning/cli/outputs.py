"""``export`` (the slimmed model), ``materialize`` (the same export, streamed from the base's files),
``reconstruct`` (re-fit the consumer layers, then export) and ``recover`` (a short distillation, then export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SettingsError
from ..estimate import estimate_export, estimate_reconstruction
from ..export import check_removes_something, check_target, export, inplace_refusal
from ..labels import method_name, plural
from ..manifest import read_manifest
from ..metrics import count_params
from ..reconstruct import ReconstructSettings, fit_summary, reconstruct
from ..recover import RecoverSettings, recover
from .common import (
    add_command,
    add_estimate_args,
    add_model_args,
    add_plan_arg,
    add_settings_args,
    check_budget,
    check_io,
    human,
    load_handle,
    load_plan,
    print_estimate,
    work_done,
)


def _export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_plan_arg(p, required=True)
    p.add_argument("--out", metavar="DIR", help="export folder (must not exist unless --overwrite); not needed with "
                   "--estimate")
    p.add_argument("--full-pipeline", action="store_true", help="also save the VAE, text encoders, scheduler")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export folder (only one written by an earlier export)")
    p.add_argument("--reconstruct", action="store_true",
                   help="re-fit the slim model's layers to the original's outputs first, with the default settings "
                        "(the `reconstruct` command sets them)")
    p.add_argument("--lora", metavar="LORA", help="a LoRA (.safetensors, diffusers/peft or kohya) for the base model: "
                   "exported sliced for the plan into lora/ (layers of removed operators are dropped and listed)")
    p.add_argument("--plan-only", action="store_true",
                   help="no weights: the plan, the model card and any reconstruction deltas, re-applied to the base "
                        "weights by load_pruned")
    p.add_argument("--native", action="store_true", help="write the denoiser in stock diffusers form (rewritten "
                   "config, renumbered keys): loads with DiffusionPipeline.from_pretrained without pruning; only for "
                   "plans that remove whole blocks (the error names the layer that prevents it)")
    p.add_argument("--single-file", action="store_true", help="with --native (FLUX, SD3): also the denoiser as one "
                   "safetensors file in the original key layout (BFL's / Stability's), for single-file loaders")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="then upload the export folder to this Hub model repo "
                   "(token from HF_TOKEN or `huggingface-cli login`)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    card = p.add_mutually_exclusive_group()
    card.add_argument("--card-eval", dest="card_eval", action="store_true", default=None,
                      help="measure the card's quality figures (2 x 4 images) even on a large model")
    card.add_argument("--no-card-eval", dest="card_eval", action="store_false",
                      help="write the card without measuring (default: measured below 50M denoiser params)")


def _export_only_args(p: argparse.ArgumentParser) -> None:
    _export_args(p)
    add_estimate_args(p)


def _need_out(args) -> None:
    if not args.out:
        raise SettingsError("--out is required (or --estimate to only predict the cost)")


def _report(folder: Path, before: int, recovered: str = "") -> None:
    manifest = read_manifest(folder)[1]
    after = manifest["params"]
    print(f"exported  {folder}{recovered}" + (" (plan only: no weights)" if manifest.get("plan_only") else ""))
    print(f"params    {human(before)} -> {human(after)}: {before - after:,} removed ({1 - after / before:.1%})")
    q = (manifest.get("card") or {}).get("quality")
    if q:
        print(f"card      README.md: latent MSE {q['latent_mse']:.4g}, SSIM {q['ssim']:.4f} on {len(q['prompts'])} "
              "prompts vs the base" + (f", task accuracy {q['task_accuracy']:.2f}" if "task_accuracy" in q else ""))
    if manifest.get("native"):
        print("native    the denoiser is in stock diffusers form: DiffusionPipeline.from_pretrained / "
              f"{manifest['denoiser']['class']}.from_pretrained read it without pruning")
        if manifest["native"].get("single_file"):
            print(f"single    {manifest['native']['single_file']}: {manifest['native']['single_file_layout']} key "
                  "layout, for from_single_file and ComfyUI")
    for d in (manifest.get("lora") or {}).get("dropped", []):
        print(f"lora      dropped {d} (its operator was removed)")


@add_command("export", help="write the slimmed model: safetensors + pruning_plan.json", arguments=_export_only_args)
def cmd_export(args) -> int:
    if args.estimate:
        seconds = check_budget(args)
        h = load_handle(args)
        plan = load_plan(args.plan, h)
        inplace = not args.reconstruct and inplace_refusal(h, plan, plan_only=args.plan_only, native=args.native,
                                                           evaluate=args.card_eval) is None
        print_estimate(estimate_export(h, reconstruct=args.reconstruct, budget_s=seconds, inplace=inplace,
                                       plan=plan))
        return 0
    _need_out(args)
    check_io(args, {"--out": args.out}, folders=["--out"])  # before loading anything
    check_target(Path(args.out).expanduser().resolve(), args.overwrite)
    _check_hub(args)
    h = load_handle(args)
    plan = load_plan(args.plan, h)
    check_removes_something(plan, h)  # before a reconstruction
    small = reconstruct(h, plan) if args.reconstruct else None
    before = count_params(h.denoiser)
    native_note = None
    if not args.native:  # would --native work for this plan? (asked of the base, before an in-place slim)
        from ..native import describe, report

        native_note = describe(report(h.denoiser, plan))
    # the handle was loaded for this command alone: slim it in place where the export allows (half the memory)
    inplace = small is None and inplace_refusal(h, plan, plan_only=args.plan_only, evaluate=args.card_eval,
                                                 native=args.native) is None
    folder = export(h, plan if small is None else small.pruning_plan, args.out, full_pipeline=args.full_pipeline,
                    denoiser=small, overwrite=args.overwrite, inplace=inplace, **_export_kw(args))
    work_done()
    note = (" (full pipeline)" if args.full_pipeline else "") + ("" if small is None else _fitted(small))
    _report(folder, before, note)
    if native_note is not None:
        print(f"native    {native_note}")
    return 0


def _check_hub(args) -> None:
    if args.push_to_hub:
        from ..hub import check_reachable

        check_reachable(args.push_to_hub)  # offline: fails here, before loading anything


def _export_kw(args) -> dict:
    """The card, plan-only, LoRA and Hub options every exporting command shares."""
    return {"plan_only": args.plan_only, "evaluate": args.card_eval, "push_to_hub": args.push_to_hub,
            "private": args.private, "lora": args.lora, "native": args.native, "single_file": args.single_file}


def _fitted(small) -> str:
    r = small.reconstruction
    f = fit_summary(r)
    on = f" on {method_name(r['start'])}'s compensation" if r.get("start") else ""
    undone = f", {plural(f['undone'], 'fit')} undone (they raised the error on held-out prompts)" if f["undone"] else ""
    return (f" (reconstructed{on} in {r['seconds']:.1f} s: {plural(f['refitted'], 'layer')} re-fitted{undone}, mean "
            f"relative output error {f['before']:.3g} -> {f['after']:.3g} on the calibration set; "
            f"{plural(len(r['operators']), 'operator')} compensated)")


def _reconstruct_args(p: argparse.ArgumentParser) -> None:
    _export_args(p)
    p.set_defaults(reconstruct=True)
    add_settings_args(p, ReconstructSettings)
    add_estimate_args(p)
    p.add_argument("--compensate-operators", action="store_true",
                   help="also fold each removed operator's mean output into a bias on its stand-in")


@add_command("reconstruct", help="re-fit the slim model's layers to the original's outputs (closed-form least "
             "squares on the original's and the pruned model's activations), then export", arguments=_reconstruct_args)
def cmd_reconstruct(args) -> int:
    values = {f: getattr(args, f) for f in ReconstructSettings.__dataclass_fields__
              if getattr(args, f, None) is not None}  # --compensate-operators is one of them (a flag)
    settings = ReconstructSettings(**values)  # checked now, before loading anything
    if args.estimate:
        seconds = check_budget(args)
        h = load_handle(args)
        plan = load_plan(args.plan, h)
        print_estimate(estimate_reconstruction(h, settings, plan=plan, budget_s=seconds))
        return 0
    _need_out(args)
    check_io(args, {"--out": args.out}, folders=["--out"])
    check_target(Path(args.out).expanduser().resolve(), args.overwrite)
    _check_hub(args)
    h = load_handle(args)
    plan = load_plan(args.plan, h)
    check_removes_something(plan, h)
    small = reconstruct(h, plan, settings)
    folder = export(h, small.pruning_plan, args.out, full_pipeline=args.full_pipeline, denoiser=small,
                    overwrite=args.overwrite, **_export_kw(args))
    work_done()
    _report(folder, count_params(h.denoiser), _fitted(small))
    return 0


def _recover_args(p: argparse.ArgumentParser) -> None:
    d = RecoverSettings()
    add_model_args(p)
    add_plan_arg(p, required=True)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="repeatable (default: the model's "
                   "calibration prompts)")
    p.add_argument("--steps", type=int, help="sampling steps of the teacher trajectories (default: the model's)")
    p.add_argument("--iters", type=int, default=d.iters, help=f"finetune iterations (default {d.iters})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--out", required=True, help="export folder for the recovered model")
    p.add_argument("--full-pipeline", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export folder")
    add_estimate_args(p)


@add_command("recover", help="short recovery finetune (distillation) of a slimmed model, then export",
             arguments=_recover_args)
def cmd_recover(args) -> int:
    settings = RecoverSettings(prompts=args.prompt, steps=args.steps, iters=args.iters, lr=args.lr)  # checked now
    if args.estimate:
        seconds = check_budget(args)
        h = load_handle(args)
        load_plan(args.plan, h)
        print_estimate(estimate_export(h, recover_iters=settings.iters, recover_batch=settings.batch_size,
                                       budget_s=seconds))
        return 0
    check_io(args, {"--out": args.out}, folders=["--out"])
    check_target(Path(args.out).expanduser().resolve(), args.overwrite)
    handle = load_handle(args)
    plan = load_plan(args.plan, handle)
    check_removes_something(plan, handle)  # before the finetune
    small = recover(handle, plan, settings)
    losses = small.recovery["losses"]
    folder = export(handle, plan, args.out, full_pipeline=args.full_pipeline, denoiser=small, overwrite=args.overwrite)
    work_done()
    note = f" (recovered for {len(losses)} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g})" if losses else ""
    _report(folder, count_params(handle.denoiser), note)
    return 0


def _lora_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_plan_arg(p, required=True)
    p.add_argument("--lora", required=True, metavar="LORA", help="the LoRA for the base model (.safetensors: "
                   "diffusers/peft, kohya, or another format diffusers' load_lora_weights converts)")
    p.add_argument("--out", required=True, metavar="FILE", help="the sliced LoRA (.safetensors), loadable with "
                   "load_lora_weights onto the pruned pipeline")


@add_command("lora", help="slice a LoRA for a plan: the LoRA of the pruned model", arguments=_lora_args)
def cmd_lora(args) -> int:
    from ..files import check_writable_file
    from ..lora import read_lora, slice_lora, write_lora

    out = check_writable_file(args.out, "--out")
    if out.suffix != ".safetensors":
        raise SettingsError(f"--out {args.out!r} must end in .safetensors")
    check_io(args, {"--out": out})
    h = load_handle(args)
    plan = load_plan(args.plan, h)
    lora = read_lora(h, args.lora)
    small = slice_lora(h, plan, lora)
    if not small.layers:
        raise SettingsError(f"every layer the LoRA {args.lora!r} adapts is removed by the plan")
    write_lora(small, out)
    work_done()
    print(f"lora      {out}: {len(small.layers)} of {len(lora.layers)} layers kept (sliced where the plan slims them)")
    for d in small.dropped:
        print(f"dropped   {d}")
    return 0


def _materialize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, metavar="PLAN", help="a plan JSON or an export folder (a plan-only "
                   "export brings its re-fitted tensors)")
    p.add_argument("--base", required=True, metavar="MODEL", help="the base model: a diffusers folder, a bundled "
                   "model, or a Hub id org/name[@revision] (its denoiser files are fetched; offline only from the cache)")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder (only one written "
                   "by an earlier export)")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest weights file (default 5GB)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the weights (default: as stored)")


@add_command("materialize", help="write the full export of a plan straight from the base model's files (tensor by "
             "tensor: the model is never loaded)", arguments=_materialize_args)
def cmd_materialize(args) -> int:
    from ..loading import DTYPES
    from ..materialize import materialize

    folder = materialize(args.plan, args.base, args.out, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
                         dtype=DTYPES[args.dtype] if args.dtype else None)
    work_done()
    manifest = read_manifest(folder)[1]
    weights = [f for f in manifest["files"] if f.endswith(".safetensors")]
    print(f"exported  {folder} (from the files of {args.base}: {len(weights)} weights file(s))")
    print(f"params    {human(manifest['params'])} in the slim {manifest['denoiser']['name']}")
    return 0
