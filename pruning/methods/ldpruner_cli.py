"""``python -m pruning sweep`` and ``python -m pruning prune``: LD-Pruner from the command line.

``sweep`` scores operators and writes a CSV (or ``.parquet``) plus ``<out>.json`` with the
settings. Under ``accelerate launch --num_processes N -m pruning sweep ...`` (or
``torchrun --nproc_per_node N``) the operators are split across the processes and rank 0
writes the merged table, equal to a single-process run::

    python -m pruning sweep --model tiny-shapes-sd --out scores.csv --n-gen 8 --steps 10
    accelerate launch --num_processes 2 -m pruning sweep --model tiny-shapes-sd --out scores.csv
    python -m pruning prune --model tiny-shapes-sd --scores scores.csv --target-sparsity 0.2 --out plan.json
    python -m pruning prune --model tiny-shapes-sd --mask mask.safetensors --target-sparsity 0.2 --out plan.json

>>> from pruning.cli import build_parser
>>> a = build_parser().parse_args(["sweep", "--model", "m", "--out", "s.csv", "--prompts", "a", "b", "--n-gen", "4"])
>>> a.prompts, a.n_gen, a.granularity
(['a', 'b'], 4, 'fine')
"""

from __future__ import annotations

import argparse
import os
import sys

from pruning.cli import add_command, add_model_args, human, load_handle, positive_int

DEFAULT_N_GEN = 8


def default_prompts() -> list[str]:
    """Prompts used when none are given: held-out captions of the shapes data set."""
    from pruning.tiny import heldout_prompts

    return list(heldout_prompts()[:DEFAULT_N_GEN])


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _sweep_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)  # under accelerate launch, --device cuda puts each process on its own GPU
    p.add_argument("--out", required=True, metavar="PATH", help="scores table: .csv (default) or .parquet")
    p.add_argument("--granularity", default="fine", choices=("fine", "block", "all"),
                   help="fine: attn1/attn2/ff/resnet (FLUX attn/ff/ff_context); block: whole blocks; all")
    p.add_argument("--operators", nargs="+", metavar="FQN", help="score only these operators")
    p.add_argument("--prompts", nargs="+", dest="prompts", metavar="TEXT",
                   help="prompts, cycled over the seeds (default: shapes held-out captions)")
    p.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT", help=argparse.SUPPRESS)
    p.add_argument("--n-gen", type=int, metavar="N",
                   help=f"samples per set, >= 2 (default: {DEFAULT_N_GEN}, or the number of --seeds)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="N", help="explicit seeds (default: 0 .. n_gen-1)")
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--resolution", type=positive_int, help="image side in pixels (default: the model's)")


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@add_command("sweep", help="LD-Pruner: score each operator by the change in generated latents",
             arguments=_sweep_args)
def cmd_sweep(args) -> int:
    from pruning.methods import ldpruner

    n_gen = args.n_gen if args.n_gen is not None else (None if args.seeds else DEFAULT_N_GEN)
    settings = ldpruner.SweepSettings(
        prompts=tuple(args.prompts or default_prompts()), seeds=args.seeds, n_gen=n_gen, steps=args.steps,
        guidance=args.guidance, resolution=args.resolution, granularity=args.granularity,
        operators=tuple(args.operators) if args.operators else None)
    show = bool(args.verbose or sys.stderr.isatty())
    if _distributed():
        from accelerate import PartialState

        state = PartialState(cpu=args.device == "cpu")
        if args.device in ("cuda", "auto"):  # one GPU per process
            args.device = str(state.device)
        h = load_handle(args)
        df = ldpruner.sweep_sharded(h, settings, state=state, show_progress=show)
        main = state.is_main_process
        state.wait_for_everyone()
        if main:
            _report(ldpruner.write_scores(df, args.out), df, state.num_processes)
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    h = load_handle(args)
    df = ldpruner.sweep(h, settings, show_progress=show)
    _report(ldpruner.write_scores(df, args.out), df, 1)
    return 0


def _report(path, df, processes: int) -> None:
    s = df.attrs["settings"]
    print(f"scored    {len(df)} operators ({s['granularity'] if s['operators'] is None else 'subset'}) "
          f"with N_gen={s['n_gen']}, {s['steps']} steps, guidance {s['guidance']}, {s['resolution']} px"
          f"{f' on {processes} processes' if processes > 1 else ''}")
    for row in df.sort_values("rank").head(5).itertuples():
        print(f"  #{row.rank:<3} {row.fqn:<60} score {row.score:.4g}  params {human(row.params)}")
    print(f"wrote     {path} (+ {path.name}.json)")


def _prune_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scores", metavar="PATH", help="an LD-Pruner scores table from `sweep`")
    source.add_argument("--mask", metavar="PATH", help="an EcoDiff mask from `ecodiff` (.safetensors)")
    source.add_argument("--taylor", metavar="PATH", help="a Diff-Pruning importance table from `taylor` (.csv)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-sparsity", type=_fraction, metavar="F",
                        help="remove the lowest-scoring operators until this fraction of params is gone")
    target.add_argument("--target-macs", type=_fraction, metavar="F", help="the same, for the MACs fraction")
    target.add_argument("--operators", nargs="+", metavar="FQN", help="remove exactly these operators")
    p.add_argument("--out", required=True, metavar="PLAN_JSON", help="where to write the plan")


@add_command("prune", help="a pruning plan from LD-Pruner scores, an EcoDiff mask or Taylor importance",
             arguments=_prune_args)
def cmd_prune(args) -> int:
    from pathlib import Path

    from pruning.errors import PlanError
    from pruning.methods import ldpruner

    h = load_handle(args)
    if args.mask or args.taylor:
        from pruning.methods import diffpruning, ecodiff

        if args.target_sparsity is None:
            raise PlanError("unit scores are cut at --target-sparsity (not --target-macs or --operators)")
        if args.mask:
            plan = ecodiff.to_plan(h, ecodiff.MaskState.load(args.mask), target_sparsity=args.target_sparsity)
        else:
            plan = diffpruning.to_plan(h, diffpruning.read_importance(args.taylor),
                                       target_sparsity=args.target_sparsity)
        frac = plan.summary(h.denoiser)
        sel = {"params_fraction": frac["params_fraction"], "macs_fraction": frac["macs_fraction"]}
        what = f"{frac['structures_pruned']} structures pruned, {frac['operators_removed']} operators removed"
    else:
        scores = ldpruner.read_scores(args.scores)
        ref = scores.attrs.get("model_ref")
        if ref and ref != h.model_ref:
            print(f"pruning: warning: scores were computed on {ref!r}, not {h.model_ref!r}", file=sys.stderr)
        plan = ldpruner.plan_from_scores(h, scores, target_sparsity=args.target_sparsity,
                                         target_macs=args.target_macs, operators=args.operators)
        sel = plan.provenance["selection"]
        what = f"{len(plan.removed_operators)} operators removed"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plan.to_json() + "\n")
    print(f"plan      {what}: {sel['params_fraction']:.1%} of params, {sel['macs_fraction']:.1%} of MACs")
    print(f"wrote     {out}")
    return 0
