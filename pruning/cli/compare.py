"""``compare``: every method at several sparsities (params, MACs, latent MSE, PSNR, accuracy)."""

from __future__ import annotations

import argparse

from .. import methods
from ..compare import CompareSettings, check_sparsities, compare_methods
from ..files import atomic_write
from .common import add_command, add_model_args, load_handle, work_done, writable


def _compare_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--sparsities", nargs="+", default=["0.1", "0.2", "0.3", "0.5"], metavar="F",
                   help="target fractions of params to remove, each in (0, 1) (default 0.1 0.2 0.3 0.5)")
    p.add_argument("--methods", nargs="+", default=methods.names(), choices=methods.names(), metavar="METHOD",
                   help=f"any of {', '.join(methods.names())} (default: all)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--out", required=True, help="comparison table (.csv)")


@add_command("compare", help="all methods at several sparsities: params, MACs, latent MSE, PSNR, accuracy",
             arguments=_compare_args)
def cmd_compare(args) -> int:
    out = writable(args.out, "--out")
    sparsities = check_sparsities(args.sparsities)
    settings = CompareSettings(steps=args.steps)
    handle = load_handle(args)
    df = compare_methods(handle, sparsities, args.methods, settings=settings)
    with atomic_write(out) as tmp:
        df.to_csv(tmp, index=False)
    work_done()
    print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out}")
    return 0
