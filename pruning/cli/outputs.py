"""``export`` (the slimmed model) and ``recover`` (a short distillation, then export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import check_target, export
from ..manifest import read_manifest
from ..metrics import count_params
from ..recover import RecoverSettings, recover
from .common import add_command, add_model_args, add_plan_arg, human, load_handle, load_plan, work_done


def _export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_plan_arg(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (must not exist unless --overwrite)")
    p.add_argument("--full-pipeline", action="store_true", help="also save the VAE, text encoders, scheduler")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export folder (only one written by an earlier export)")


def _report(folder: Path, before: int, recovered: str = "") -> None:
    after = read_manifest(folder)[1]["params"]
    print(f"exported  {folder}{recovered}")
    print(f"params    {human(before)} -> {human(after)}: {before - after:,} removed ({1 - after / before:.1%})")


@add_command("export", help="write the slimmed model: safetensors + pruning_plan.json", arguments=_export_args)
def cmd_export(args) -> int:
    check_target(Path(args.out).expanduser().resolve(), args.overwrite)  # before loading anything
    h = load_handle(args)
    plan = load_plan(args.plan, h)
    folder = export(h, plan, args.out, full_pipeline=args.full_pipeline, overwrite=args.overwrite)
    work_done()
    _report(folder, count_params(h.denoiser), " (full pipeline)" if args.full_pipeline else "")
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


@add_command("recover", help="short recovery finetune (distillation) of a slimmed model, then export",
             arguments=_recover_args)
def cmd_recover(args) -> int:
    settings = RecoverSettings(prompts=args.prompt, steps=args.steps, iters=args.iters, lr=args.lr)  # checked now
    check_target(Path(args.out).expanduser().resolve(), args.overwrite)
    handle = load_handle(args)
    plan = load_plan(args.plan, handle)
    small = recover(handle, plan, settings)
    losses = small.recovery["losses"]
    folder = export(handle, plan, args.out, full_pipeline=args.full_pipeline, denoiser=small, overwrite=args.overwrite)
    work_done()
    note = f" (recovered for {len(losses)} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g})" if losses else ""
    _report(folder, count_params(handle.denoiser), note)
    return 0
