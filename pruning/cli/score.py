"""``score <method>`` for every registered method (options generated from its settings class),
the paper-named shortcuts ``sweep`` (LD-Pruner), ``ecodiff`` and ``taylor``, and ``prune``
(a plan from any scores file)::

    python -m pruning score ldpruner --model tiny-shapes-sd --n-gen 8 --out scores.csv
    python -m pruning sweep --model tiny-shapes-sd --out scores.csv                 # the same
    python -m pruning ecodiff --model tiny-shapes-sd --epochs 2 --out mask.safetensors
    python -m pruning prune --model tiny-shapes-sd --scores mask.safetensors --target-sparsity 0.2 --out plan.json

Under ``accelerate launch --num_processes N -m pruning sweep ...`` the LD-Pruner operators
are split across the processes and rank 0 writes the merged table, equal to a single run.

>>> from pruning.cli import build_parser
>>> a = build_parser().parse_args(["sweep", "--model", "m", "--out", "s.csv", "--prompts", "a", "b", "--n-gen", "4"])
>>> a.prompts, a.n_gen, a.granularity
(['a', 'b'], 4, None)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch.distributed as dist
from accelerate import PartialState
from tqdm.auto import tqdm

from .. import methods
from ..errors import RunDiverged, SettingsError
from ..estimate import estimate
from ..files import atomic_write
from ..methods import Scores, ldpruner
from ..methods.select import plan_from_operator_scores
from ..runs import RunControl
from ..sampling import count_inputs
from .common import (
    Parser,
    add_command,
    add_estimate_args,
    add_model_args,
    add_settings_args,
    human,
    load_handle,
    print_estimate,
    settings_from_args,
    work_done,
    writable,
)

SHORTCUTS = {"sweep": "ldpruner", "ecodiff": "ecodiff", "taylor": "taylor"}  # command -> method


def _method_args(p: argparse.ArgumentParser, method) -> None:
    add_model_args(p)
    add_settings_args(p, method.Settings)
    if len(method.presets) > 1:
        p.add_argument("--preset", choices=list(method.presets), default=None,
                       help=f"starting values for the settings (default {method.presets[0]}); options given "
                            "override them")
    kinds = ".csv (+ a .json of settings), .parquet" + (", or .safetensors" if method.level == "unit" else "")
    p.add_argument("--out", metavar="PATH", help=f"where to write the scores: {kinds} (required unless --estimate)")
    add_estimate_args(p)


def _score_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="method", metavar="<method>", parser_class=Parser)
    sub.required = True
    for name in methods.names():
        m = methods.get(name)
        _method_args(sub.add_parser(name, help=m.summary, description=f"{m.title}: {m.summary}"), m)


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _control(args, desc: str):
    """A RunControl whose progress drives a tqdm bar (shown on a terminal or with -v)."""

    bar = tqdm(desc=desc, disable=not (args.verbose or sys.stderr.isatty()), leave=False)

    def progress(done, total, info):
        bar.total = total
        bar.n = done
        bar.refresh()
    return RunControl(progress=progress), bar


def run_score(args, name: str) -> int:
    m = methods.get(name)
    if args.estimate:
        settings = settings_from_args(m, args)
        h = load_handle(args)
        if getattr(args, "preset", None):
            settings = settings_from_args(m, args, preset=args.preset, family=h.family)
        _preset_note(name, args, h)
        print_estimate(estimate(h, name, settings, budget_s=args.budget))
        return 0
    if not args.out:
        raise SettingsError("--out is required (or --estimate to only predict the cost)")
    out = writable(args.out, "--out")
    if out.suffix == ".safetensors" and m.level != "unit":
        raise SettingsError(f"{name} scores whole operators: write them as .csv or .parquet, not .safetensors")
    settings = settings_from_args(m, args)  # checked now, before loading anything
    if name == "ldpruner" and _distributed():
        return _sharded_sweep(args, settings)
    h = load_handle(args)
    if getattr(args, "preset", None):  # a family's preset: known once the model is loaded
        settings = settings_from_args(m, args, preset=args.preset, family=h.family)
    _preset_note(name, args, h)
    control, bar = _control(args, m.title)
    try:
        scores = m.score(h, settings, control=control)
    except RunDiverged as e:
        if e.result is not None:
            e.result.to_scores().write(out)
            raise RunDiverged(f"{e} (the last finite state was written to {str(out)!r})") from None
        raise
    finally:
        bar.close()
    scores.write(out)
    work_done()
    _report(scores, out)
    return 0


def _preset_note(name: str, args, handle) -> None:
    """The sweep's proxy: one line with its measured agreement with the full sweep."""
    if name == "ldpruner" and getattr(args, "preset", None) == "proxy":
        print(f"proxy     {ldpruner.proxy_note(handle.model_ref)}")


def _report(scores, path, processes: int = 1) -> None:
    t = scores.table
    what = "operators" if scores.level == "operator" else f"units of {t['fqn'].nunique()} structures"
    print(f"scored    {len(t)} {what} with {scores.method}{f' on {processes} processes' if processes > 1 else ''}"
          f"{' (partial: ' + str(scores.info.get('stopped')) + ')' if scores.partial else ''}")
    for row in t.sort_values("score", kind="stable").head(5).itertuples():
        unit = f"[{row.index}]" if scores.level == "unit" else ""
        print(f"  {row.fqn + unit:<64} score {row.score:.4g}")
    print(f"wrote     {path}" + ("" if path.suffix == ".safetensors" else f" (+ {path.name}.json)"))


def _sharded_sweep(args, settings) -> int:

    state = PartialState(cpu=args.device == "cpu")
    if args.device in ("cuda", "auto"):  # one GPU per process
        args.device = str(state.device)
    h = load_handle(args)
    if getattr(args, "preset", None):  # as in run_score: the preset is known once the model is loaded
        settings = settings_from_args(methods.get("ldpruner"), args, preset=args.preset, family=h.family)
    if state.is_main_process:
        _preset_note("ldpruner", args, h)
    df = ldpruner.sweep_sharded(h, settings, state=state, show_progress=bool(args.verbose))
    state.wait_for_everyone()
    if state.is_main_process:
        scores = Scores("ldpruner", "operator", df, h.model_ref, df.attrs["settings"], False,
                        {"scored": len(df), "total": len(df)})
        _report(scores, scores.write(args.out), state.num_processes)

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


@add_command("score", help="score what can be pruned with any registered method", arguments=_score_args)
def cmd_score(args) -> int:
    return run_score(args, args.method)


def _shortcut(command: str, method: str):
    def arguments(p):
        _method_args(p, methods.get(method))

    def run(args):
        return run_score(args, method)


    m = methods.get(method)
    add_command(command, help=f"{m.title}: the same as `score {method}`", arguments=arguments)(run)


for _command, _method in SHORTCUTS.items():
    _shortcut(_command, _method)


# ----------------------------------------------------------------------------- prune


def _prune_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--scores", "--mask", "--taylor", dest="scores", required=True, metavar="PATH",
                   help="scores written by `score` / `sweep` / `ecodiff` / `taylor` (any method)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-sparsity", metavar="F", help="remove the lowest-scoring parts until this "
                        "fraction of the params is gone, in (0, 1)")
    target.add_argument("--target-macs", metavar="F", help="operator scores: the same, for the fraction of MACs")
    target.add_argument("--operators", nargs="+", metavar="FQN", help="operator scores: remove exactly these")
    p.add_argument("--scope", default="global", choices=("global", "local"),
                   help="unit scores: rank all units together (global) or remove the same fraction per layer")
    p.add_argument("--out", required=True, metavar="PLAN_JSON", help="where to write the plan")


@add_command("prune", help="a pruning plan from any method's scores", arguments=_prune_args)
def cmd_prune(args) -> int:
    out = writable(args.out, "--out")
    scores = methods.Scores.read(args.scores)
    h = load_handle(args)
    methods.check_scores_fit(h, scores)
    if args.target_sparsity is not None:
        plan = methods.to_plan(h, scores, target_sparsity=args.target_sparsity, scope=args.scope)
    elif scores.level != "operator":
        raise SettingsError(f"{scores.method} scores units: cut them with --target-sparsity "
                            "(--target-macs and --operators take operator scores)")
    else:
        prov = {"method": scores.method, "settings": dict(scores.settings), "partial_scores": scores.partial}
        plan = plan_from_operator_scores(h, scores.table, target_macs=args.target_macs, operators=args.operators,
                                         provenance=prov, resolution=ldpruner.mac_resolution(scores.settings))
    s = plan.summary(h.denoiser, **count_inputs(h))
    with atomic_write(out) as tmp:
        tmp.write_text(plan.to_json() + "\n")
    work_done()
    print(f"plan      {s['operators_removed']} operators removed, {s['structures_pruned']} structures pruned: "
          f"{s['params_fraction']:.1%} of params ({human(s['params_removed'])}), "
          f"{s['macs_fraction']:.1%} of MACs")
    print(f"wrote     {out}")
    return 0
