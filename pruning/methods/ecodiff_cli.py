"""``python -m pruning ecodiff``: train EcoDiff masks and save them as safetensors.

Binarize with ``python -m pruning prune --mask mask.safetensors --target-sparsity 0.2``.
"""

from __future__ import annotations

import argparse

from ..cli import add_command, add_model_args, load_handle, positive_int
from .ecodiff import DEFAULT_EPOCHS, DEFAULT_LR


def _arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="repeatable; default: the held-out prompts of the bundled shapes models")
    p.add_argument("--n-prompts", type=positive_int, default=8, help="how many default prompts (default 8)")
    p.add_argument("--steps", type=positive_int, help="denoising steps T (default: the model's)")
    p.add_argument("--guidance", type=float)
    p.add_argument("--resolution", type=positive_int)
    p.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate for every kind")
    p.add_argument("--beta", type=float, default=0.1, help="regularizer weight")
    p.add_argument("--regularizer", choices=("l0", "l1"), default="l0")
    p.add_argument("--gate", choices=("hard_concrete", "sigmoid"), default="hard_concrete")
    p.add_argument("--kinds", nargs="+", default=["head", "neuron"], choices=("head", "neuron", "group"))
    p.add_argument("--checkpointing", choices=("timestep", "none"), default="timestep")
    p.add_argument("--out", required=True, help="mask file (.safetensors)")


@add_command("ecodiff", help="train EcoDiff differentiable masks (time-step gradient checkpointing)",
             arguments=_arguments)
def run(args: argparse.Namespace) -> int:
    from .ecodiff import EcoDiffSettings, optimize

    handle = load_handle(args)
    prompts = args.prompt or default_prompts(args.n_prompts)
    settings = EcoDiffSettings(prompts=prompts, steps=args.steps, guidance=args.guidance,
                               resolution=args.resolution, epochs=args.epochs, batch_size=args.batch_size,
                               lr={k: args.lr for k in ("head", "neuron", "group")}, beta=args.beta,
                               regularizer=args.regularizer, gate=args.gate, kinds=tuple(args.kinds),
                               checkpointing=args.checkpointing)
    state = optimize(handle, settings)
    path = state.save(args.out)
    last = state.history.iloc[-1].to_dict() if len(state.history) else {}
    print(f"mask: {path}  ({len(state.lambdas)} structures, {len(state.history)} steps)")
    if last:
        print("last step: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))
    return 0


def default_prompts(n: int) -> list[str]:
    """The first ``n`` held-out prompts of the bundled shapes data set."""
    from ..tiny import heldout_prompts

    return list(heldout_prompts())[:n]
