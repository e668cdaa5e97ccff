"""``score <method>`` for every registered method (options generated from its settings class, each
with the help its settings field gives), the shortcuts each method names in its ``commands``
(``sweep`` for LD-Pruner, ``ecodiff``, ``diffpruning`` and its older name ``taylor``), and
``prune`` (a plan from any scores file)::

    python -m pruning score ldpruner --model tiny-shapes-sd --n-gen 8 --out scores.csv
    python -m pruning sweep --model tiny-shapes-sd --out scores.csv                 # the same
    python -m pruning ecodiff --model tiny-shapes-sd --epochs 2 --out mask.safetensors
    python -m pruning prune --model tiny-shapes-sd --scores mask.safetensors --target-sparsity 0.2 --out plan.json

Under ``accelerate launch --num_processes N -m pruning sweep|ecodiff|diffpruning ...`` the work is
split across the processes (a ``sharded`` method's own split, the sweep's operators; a
``data_parallel`` method's prompts, EcoDiff's and Diff-Pruning's, their gradients summed, see
:mod:`pruning.parallel`) and rank 0 writes the result, equal to a single-process run (within
float tolerance for the data-parallel ones).

Chunked runs (:mod:`pruning.chunks`): ``--chunk-s SECONDS`` (or ``--chunk-units N``) runs at
most one chunk and ``--state FILE`` keeps where the run stands. Run the same command again
until it exits 0: exit code 3 (:data:`CHUNK_NOT_DONE`) means "chunk done, the run is not
finished, the state is saved"; the scores are written to ``--out`` once the run is finished.
The state file is never deleted (it is not needed any more once the run is done)::

    python -m pruning diffpruning --model tiny-shapes-sd --out s.csv --chunk-s 60 --state run.safetensors

>>> from pruning.cli import build_parser
>>> a = build_parser().parse_args(["sweep", "--model", "m", "--out", "s.csv", "--prompts", "a", "b", "--n-gen", "4"])
>>> a.prompts, a.n_gen, a.granularity
(['a', 'b'], 4, None)
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch.distributed as dist
from accelerate import PartialState
from tqdm.auto import tqdm

from .. import methods
from ..chunks import score_chunk
from ..errors import RunDiverged, SettingsError, StateMismatch
from ..estimate import estimate
from ..files import atomic_write
from ..methods.select import plan_from_operator_scores
from ..methods.sweep_table import mac_resolution
from ..native import describe, report
from ..parallel import Processes
from ..runs import Budget, RunControl, RunState
from ..sampling import count_inputs
from .common import (
    Command,
    Parser,
    add_command,
    add_estimate_args,
    add_model_args,
    add_settings_args,
    check_budget,
    check_io,
    human,
    load_handle,
    print_estimate,
    settings_from_args,
    work_done,
    writable,
)

CHUNK_NOT_DONE = 3  # exit code: one chunk done, the run is not finished (its state is saved)


def shortcuts() -> dict[str, str]:
    """Command -> method name: the shortcuts the registered methods name (``Method.commands``).

    >>> shortcuts()["sweep"], shortcuts()["taylor"]
    ('ldpruner', 'diffpruning')
    """
    return {c: name for name in methods.names() for c in methods.get(name).commands}


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
    p.add_argument("--chunk-s", type=float, metavar="SECONDS",
                   help="run at most one chunk of this many seconds (the next unit of work must fit), keep the state "
                        f"in --state and exit with code {CHUNK_NOT_DONE} if the run is not finished: run the same "
                        "command again to continue")
    p.add_argument("--chunk-units", type=int, metavar="N",
                   help="like --chunk-s, a chunk of at most N units of work (operators, optimizer steps, timesteps)")
    p.add_argument("--state", metavar="FILE",
                   help="the run's state (.safetensors): resumed from when it exists, written when a chunk ends "
                        "before the run is finished (never deleted)")


def _score_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="method", metavar="<method>", parser_class=Parser)
    sub.required = True
    for name in methods.names():
        m = methods.get(name)
        _method_args(sub.add_parser(name, aliases=list(m.aliases), help=m.summary,
                                    description=f"{m.title}: {m.summary}"), m)


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _control(args, desc: str, processes: Processes | None = None):
    """A RunControl whose progress drives a tqdm bar (shown on a terminal or with -v, by the main
    process), spanning the launched ``processes`` (None: this process alone)."""

    main = processes is None or processes.main
    bar = tqdm(desc=desc, disable=not (main and (args.verbose or sys.stderr.isatty())), leave=False)

    def progress(done, total, info):
        bar.total = total
        bar.n = done
        bar.refresh()
    return RunControl(progress=progress, processes=processes), bar


def _chunking(args) -> tuple[Budget | None, object]:
    """(the chunk budget or None, the --state path or None), checked before any work."""
    if args.chunk_s is not None and not 0 < args.chunk_s < math.inf:
        raise SettingsError(f"--chunk-s must be a positive number of seconds, got {args.chunk_s:g}")
    if args.chunk_units is not None and args.chunk_units < 1:
        raise SettingsError(f"--chunk-units must be an integer >= 1, got {args.chunk_units}")
    chunked = args.chunk_s is not None or args.chunk_units is not None
    if chunked and not args.state:
        raise SettingsError("--chunk-s / --chunk-units need --state FILE to keep the unfinished run between calls")
    path = writable(args.state, "--state") if args.state else None
    return (Budget(args.chunk_s, args.chunk_units) if chunked else None), path


def _launch(args) -> PartialState:
    """This process's place in an ``accelerate launch``; a GPU device becomes this process's GPU."""
    state = PartialState(cpu=args.device == "cpu")
    if args.device in ("cuda", "auto"):  # one GPU per process
        args.device = str(state.device)
    return state


def _end_launch() -> None:
    if dist.is_initialized():
        dist.barrier()  # the main process has written its files
        dist.destroy_process_group()


def _run_chunk(h, name: str, settings, control, budget, path):
    """One chunk (or the whole run without a budget), resumed from ``path`` when it exists."""
    state = RunState.load(path) if path is not None and path.exists() else None
    try:
        return score_chunk(h, name, settings, state, budget, control)
    except StateMismatch as e:
        raise StateMismatch(f"--state {str(path)!r}: {e}") from None


def run_score(args, name: str) -> int:
    m = methods.get(name)
    name = m.name  # an older name given on the command line
    if args.estimate:
        seconds = check_budget(args)
        settings = settings_from_args(m, args)
        h = load_handle(args)
        if getattr(args, "preset", None):
            settings = settings_from_args(m, args, preset=args.preset, family=h.family)
        _preset_note(m, args, h)
        print_estimate(estimate(h, name, settings, budget_s=seconds))
        return 0
    if not args.out:
        raise SettingsError("--out is required (or --estimate to only predict the cost)")
    out = writable(args.out, "--out")
    if out.suffix == ".safetensors" and m.level != "unit":
        raise SettingsError(f"{name} scores whole operators: write them as .csv or .parquet, not .safetensors")
    settings = settings_from_args(m, args)  # checked now, before loading anything
    budget, state_path = _chunking(args)
    side = None if out.suffix == ".safetensors" else f"{out}.json"
    check_io(args, {"--out": out, "--out's side file": side}, inputs={"--state": state_path})
    check_io(args, {"--state": state_path})
    processes = None
    if _distributed():
        if m.sharded:
            if budget is not None or state_path is not None:
                raise SettingsError(f"{m.title} split by accelerate launch runs in one go: drop --chunk-s / "
                                    "--chunk-units / --state, or run it in one process")
            return _sharded(args, m, settings)
        if not m.data_parallel:
            splits = [n for n in methods.names() if methods.get(n).sharded or methods.get(n).data_parallel]
            raise SettingsError(f"{name} does not split across processes ({', '.join(splits)} do): run it "
                                "without accelerate launch")
        processes = Processes.launched(_launch(args))
    main = processes is None or processes.main
    h = load_handle(args)
    if getattr(args, "preset", None):  # a family's preset: known once the model is loaded
        settings = settings_from_args(m, args, preset=args.preset, family=h.family)
    _preset_note(m, args, h)
    control, bar = _control(args, m.title, processes)
    resume = None
    try:
        if budget is None and state_path is None:
            scores = m.score(h, settings, control=control)
        else:
            scores, resume = _run_chunk(h, name, settings, control, budget, state_path)
    except RunDiverged as e:
        if e.result is not None and main:
            e.result.to_scores().write(out)
            raise RunDiverged(f"{e} (the last finite state was written to {str(out)!r})") from None
        raise
    finally:
        bar.close()
    count = processes.count if processes is not None else 1
    if resume is not None:  # the chunk ended before the run did
        if main:
            resume.save(state_path)
            work_done()
            done, total = control.done
            where = f"at {done}/{total} {m.work_unit}" if total else "while preparing (nothing scored yet)"
            print(f"chunk     ended {where}{f' on {count} processes' if count > 1 else ''}: the run is not "
                  f"finished, nothing written to {str(out)!r} yet")
            print(f"state     saved to {state_path}: run the same command again to continue "
                  f"(exit code {CHUNK_NOT_DONE} until the run is finished)")
        _end_launch()
        return CHUNK_NOT_DONE
    if main:
        scores.write(out)
        work_done()
        _report(scores, out, count)
        if state_path is not None and state_path.exists():
            print(f"state     {state_path} is no longer needed: the run is finished")
    _end_launch()
    return 0


def _preset_note(m, args, handle) -> None:
    """The chosen preset's note, when the method has one (the sweep's proxy or fast score: its
    measured agreement with the full sweep)."""
    preset = getattr(args, "preset", None)
    note = m.preset_note(preset, handle.model_ref) if preset else None
    if note:
        print(f"{preset:<9} {note}")


def _report(scores, path, processes: int = 1) -> None:
    t = scores.table
    what = "operators" if scores.level == "operator" else f"units of {t['fqn'].nunique()} structures"
    print(f"scored    {len(t)} {what} with {scores.method}{f' on {processes} processes' if processes > 1 else ''}"
          f"{' (partial: ' + str(scores.info.get('stopped')) + ')' if scores.partial else ''}")
    for row in t.sort_values("score", kind="stable").head(5).itertuples():
        unit = f"[{row.index}]" if scores.level == "unit" else ""
        print(f"  {row.fqn + unit:<64} score {row.score:.4g}")
    print(f"wrote     {path}" + ("" if path.suffix == ".safetensors" else f" (+ {path.name}.json)"))


def _sharded(args, m, settings) -> int:
    """A ``sharded`` method's own split of its work across the launched processes."""
    state = _launch(args)
    h = load_handle(args)
    if getattr(args, "preset", None):  # as in run_score: the preset is known once the model is loaded
        settings = settings_from_args(m, args, preset=args.preset, family=h.family)
    if state.is_main_process:
        _preset_note(m, args, h)
    scores = m.score_sharded(h, settings, state=state, show_progress=bool(args.verbose))
    if state.is_main_process:
        _report(scores, scores.write(args.out), state.num_processes)
    _end_launch()
    return 0


@add_command("score", help="score what can be pruned with any registered method", arguments=_score_args)
def cmd_score(args) -> int:
    return run_score(args, args.method)


def _shortcut(command: str, method: str) -> Command:
    def arguments(p):
        _method_args(p, methods.get(method))

    def run(args):
        return run_score(args, method)

    m = methods.get(method)
    return Command(command, f"{m.title}: the same as `score {m.name}`", arguments, run)


def shortcut_commands() -> dict[str, Command]:
    """One command per shortcut the methods registered now name (``Method.commands``): the parser
    asks for them each time it is built, so a method registered at run time has its own."""
    return {command: _shortcut(command, method) for command, method in shortcuts().items()}


# ----------------------------------------------------------------------------- prune


def _prune_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--scores", "--mask", "--taylor", dest="scores", required=True, metavar="PATH",
                   help="scores written by `score` or a method's own command (any method)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-sparsity", metavar="F", help="remove the lowest-scoring parts until this "
                        "fraction of the params is gone, in (0, 1)")
    target.add_argument("--target-macs", metavar="F", help="operator scores: the same, for the fraction of MACs")
    target.add_argument("--operators", nargs="+", metavar="FQN", help="operator scores: remove exactly these")
    p.add_argument("--scope", default=None, choices=("global", "local"),
                   help="unit scores: rank all units together (global, normalised and capped per layer) or remove "
                        "the same fraction per layer (default: the scores' own setting, else global)")
    p.add_argument("--native", action="store_true", help="whole blocks only: a plan stock diffusers loads "
                   "(export --native); with --target-sparsity")
    p.add_argument("--out", required=True, metavar="PLAN_JSON", help="where to write the plan")


@add_command("prune", help="a pruning plan from any method's scores", arguments=_prune_args)
def cmd_prune(args) -> int:
    out = writable(args.out, "--out")
    check_io(args, {"--out": out})
    scores = methods.Scores.read(args.scores)
    h = load_handle(args)
    methods.check_scores_fit(h, scores)
    if args.target_sparsity is not None:
        plan = methods.to_plan(h, scores, target_sparsity=args.target_sparsity, scope=args.scope, native=args.native)
    elif args.native:
        raise SettingsError("--native cuts scores at --target-sparsity (not --target-macs or --operators)")
    elif scores.level != "operator":
        raise SettingsError(f"{scores.method} scores units: cut them with --target-sparsity "
                            "(--target-macs and --operators take operator scores)")
    else:
        prov = {"method": scores.method, "settings": dict(scores.settings), "partial_scores": scores.partial}
        plan = plan_from_operator_scores(h, scores.table, target_macs=args.target_macs, operators=args.operators,
                                         provenance=prov, resolution=mac_resolution(scores.settings))
    s = plan.summary(h.denoiser, **count_inputs(h))
    with atomic_write(out) as tmp:
        tmp.write_text(plan.to_json() + "\n")
    work_done()
    print(f"plan      {s['operators_removed']} operators removed, {s['structures_pruned']} structures pruned: "
          f"{s['params_fraction']:.1%} of params ({human(s['params_removed'])}), "
          f"{s['macs_fraction']:.1%} of MACs")
    print(f"native    {describe(report(h.denoiser, plan))}")
    print(f"wrote     {out}")
    return 0
