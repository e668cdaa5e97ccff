"""Command line: ``python -m pruning.tiny train --arch sd|flux|sd3`` (and ``vae``, ``eval``)."""

from __future__ import annotations

import argparse
import json

from ..loading import load_pipeline
from ..quality import evaluate
from . import train as T


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pruning.tiny", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train one bundled model (and the shared VAE if needed)")
    tr.add_argument("--arch", choices=["sd", "flux", "sd3"], required=True)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--steps", type=int, default=None, help="denoiser steps (default: the documented recipe)")
    tr.add_argument("--threads", type=int, default=None, help="torch threads (1 to train both at once)")
    tr.add_argument("--out", default=None, help="output folder (default: pruning/assets/tiny-shapes-<arch>)")
    va = sub.add_parser("vae", help="train only the shared VAE into the work dir")
    va.add_argument("--threads", type=int, default=None)
    de = sub.add_parser(
        "defaults", help="re-run the steps x guidance grid of a saved model, rewrite its defaults"
    )
    de.add_argument("path")
    ev = sub.add_parser("eval", help="held-out accuracy of a saved model at its defaults")
    ev.add_argument("path")
    args = ap.parse_args(argv)

    if args.cmd == "train":
        T.train(args.arch, seed=args.seed, steps=args.steps, threads=args.threads, out=args.out)
    elif args.cmd == "vae":
        T.get_vae(threads=args.threads)
    elif args.cmd == "defaults":
        T.redo_defaults(args.path)
    else:
        res = evaluate(load_pipeline(args.path), T.HELDOUT_PROMPTS, list(range(len(T.HELDOUT_PROMPTS))))
        print(json.dumps({k: res[k] for k in ("color", "shape", "position", "all")}, indent=1))


if __name__ == "__main__":
    main()
