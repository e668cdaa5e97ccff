"""``compare``: every method at several sparsities (params, MACs, latent MSE, PSNR, accuracy)."""

from __future__ import annotations

import argparse

from .. import methods
from ..compare import CompareSettings, check_sparsities, compare_methods
from ..errors import SettingsError
from ..estimate import estimate_comparison
from ..files import atomic_write
from .common import (
    add_command,
    add_estimate_args,
    add_model_args,
    check_budget,
    check_io,
    load_handle,
    print_estimate,
    work_done,
    writable,
)


def _compare_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--sparsities", nargs="+", default=["0.1", "0.2", "0.3", "0.5"], metavar="F",
                   help="target fractions of params to remove, each in (0, 1) (default 0.1 0.2 0.3 0.5)")
    p.add_argument("--methods", nargs="+", default=methods.names(), choices=[*methods.names(), *methods.ALIASES],
                   metavar="METHOD", help=f"any of {', '.join(methods.names())} (default: all)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--out", help="comparison table (.csv); not needed with --estimate")
    add_estimate_args(p)


@add_command("compare", help="all methods at several sparsities: params, MACs, latent MSE, PSNR, accuracy",
             arguments=_compare_args)
def cmd_compare(args) -> int:
    sparsities = check_sparsities(args.sparsities)
    settings = CompareSettings(steps=args.steps)
    if args.estimate:
        seconds = check_budget(args)
        print_estimate(estimate_comparison(load_handle(args), sparsities, args.methods, settings, budget_s=seconds))
        return 0
    if not args.out:
        raise SettingsError("--out is required (or --estimate to only predict the cost)")
    out = writable(args.out, "--out")
    check_io(args, {"--out": out})
    handle = load_handle(args)
    df = compare_methods(handle, sparsities, args.methods, settings=settings)
    with atomic_write(out) as tmp:
        df.to_csv(tmp, index=False)
    work_done()
    print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out}")
    return 0
