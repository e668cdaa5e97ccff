"""``python -m pruning taylor|recover|compare``: Diff-Pruning, recovery and the method table.

    python -m pruning taylor --model tiny-shapes-sd --out taylor.csv
    python -m pruning prune --model tiny-shapes-sd --taylor taylor.csv --target-sparsity 0.2 --out plan.json
    python -m pruning recover --model tiny-shapes-sd --plan plan.json --iters 200 --out recovered/
    python -m pruning compare --model tiny-shapes-sd --sparsities 0.1 0.2 0.3 0.5 --out quality.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli import add_command, add_model_args, add_plan_arg, load_handle, load_plan, positive_int


def _prompts(args) -> list[str]:
    from ..tiny import heldout_prompts

    return list(args.prompt or list(heldout_prompts())[: args.n_prompts])


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="repeatable; default: shapes held-out prompts")
    p.add_argument("--n-prompts", type=positive_int, default=8, help="how many default prompts (default 8)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's)")


def _taylor_args(p):
    _common(p)
    p.add_argument("--images", metavar="FOLDER", help="use these images as x0 instead of generating them")
    p.add_argument("--stride", type=positive_int, default=50, help="timestep stride (default 50)")
    p.add_argument("--thr", type=float, default=0.05, help="stop once L_t < thr * L_max (default 0.05)")
    p.add_argument("--kinds", nargs="+", default=["head", "neuron", "group"], choices=("head", "neuron", "group"))
    p.add_argument("--out", required=True, help="importance table (.csv)")


@add_command("taylor", help="Diff-Pruning: Taylor importance accumulated over timesteps", arguments=_taylor_args)
def cmd_taylor(args) -> int:
    from .diffpruning import TaylorSettings, importance

    handle = load_handle(args)
    settings = TaylorSettings(prompts=[] if args.images and not args.prompt else _prompts(args), images=args.images,
                              steps=args.steps, stride=args.stride, thr=args.thr, kinds=tuple(args.kinds))
    df = importance(handle, settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    out.with_name(out.name + ".json").write_text(json.dumps({k: v for k, v in df.attrs.items()}, default=str))
    print(f"scored {len(df)} units over timesteps {df.attrs['timesteps']}; wrote {out}")
    return 0


def _recover_args(p):
    _common(p)
    add_plan_arg(p, required=True)
    p.add_argument("--iters", type=positive_int, default=200)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--out", required=True, help="export folder for the recovered model")
    p.add_argument("--full-pipeline", action="store_true")


@add_command("recover", help="short recovery finetune (distillation) of a slimmed model, then export",
             arguments=_recover_args)
def cmd_recover(args) -> int:
    from ..export import export
    from ..recover import RecoverSettings, recover

    handle = load_handle(args)
    plan = load_plan(args.plan, handle)
    small = recover(handle, plan, RecoverSettings(prompts=_prompts(args), steps=args.steps, iters=args.iters,
                                                  lr=args.lr))
    losses = small.recovery["losses"]
    folder = export(handle, plan, args.out, full_pipeline=args.full_pipeline, denoiser=small)
    print(f"recovered for {len(losses)} steps (loss {losses[0]:.4g} -> {losses[-1]:.4g}); exported to {folder}")
    return 0


def _compare_args(p):
    add_model_args(p)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.5])
    p.add_argument("--methods", nargs="+", default=["ldpruner", "ecodiff", "taylor", "magnitude", "random"],
                   choices=("ldpruner", "ecodiff", "taylor", "magnitude", "random"))
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--out", required=True, help="comparison table (.csv)")


@add_command("compare", help="all methods at several sparsities: params, MACs, latent MSE, PSNR, accuracy",
             arguments=_compare_args)
def cmd_compare(args) -> int:
    from ..compare import CompareSettings, compare_methods

    handle = load_handle(args)
    df = compare_methods(handle, args.sparsities, args.methods, settings=CompareSettings(steps=args.steps))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out}")
    return 0
