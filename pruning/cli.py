"""``python -m pruning <command>``: the library, headless.

Commands live in a registry: a module adds one with :func:`add_command` (a name, a function
that adds its arguments, and a handler ``run(args) -> int``). Modules named in
``COMMAND_MODULES`` are imported when the parser is built, so later commands (``sweep``,
``prune``, ``ecodiff``, ...) register themselves without touching :func:`main`.

Every :class:`~pruning.errors.PruningError` and every usage error ends as one line on stderr
and exit code 2, never a traceback. Nothing heavy is imported until a handler runs.

>>> main(["info"])
2
>>> {"export", "generate", "info"} <= set(COMMANDS)
True
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROG = "python -m pruning"
COMMAND_MODULES: tuple[str, ...] = (  # imported when the parser is built, to register their commands
    "pruning.methods.ecodiff_cli",
    "pruning.methods.diffpruning_cli",
    "pruning.methods.ldpruner_cli",
)
DTYPES = ("float32", "float16", "bfloat16")


class UsageError(Exception):
    """A bad command line (raised instead of argparse's print-usage-and-exit)."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def add_command(name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``run(args) -> int`` as ``python -m pruning <name>``."""
    def wrap(run):
        COMMANDS[name] = Command(name, help, arguments, run)
        return run
    return wrap


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


# ----------------------------------------------------------------------------- shared arguments


def add_model_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model`` (bundled name, folder or Hub id), ``--device``, ``--dtype``."""
    p.add_argument("--model", required=required, metavar="SRC",
                   help="bundled name (tiny-shapes-sd, tiny-shapes-flux), a diffusers folder or a Hub id org/name[@rev]")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype (default: float32)")


def add_plan_arg(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--plan", required=required, metavar="PLAN_JSON",
                   help="a pruning plan JSON, or an export's pruning_plan.json")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """``--prompt``/``--seed`` (repeatable) and ``--steps``/``--guidance``/``--resolution``."""
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="repeat for several prompts")
    p.add_argument("--seed", action="append", type=int, metavar="N",
                   help="repeat for several seeds; every prompt runs with every seed (default: 0)")
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--resolution", type=positive_int, help="image side in pixels (default: the model's)")


def load_handle(args: argparse.Namespace):
    """The :class:`~pruning.loading.Handle` for ``args.model``/``--device``/``--dtype``."""
    import torch

    from .loading import load_pipeline

    return load_pipeline(args.model, device=args.device, dtype=getattr(torch, args.dtype))


def load_plan(path: str, handle):
    """Read the plan at ``path`` and check it fits ``handle``; errors name the plan file."""
    from .errors import PlanError
    from .export import read_plan, same_base

    plan, _ = read_plan(path)
    try:
        plan.validate(handle.denoiser, family=handle.family)
    except PlanError as e:
        raise PlanError(f"plan {path!r} does not fit model {handle.source!r}: {e}") from e
    if not same_base(plan.base, handle.model_ref):
        raise PlanError(f"plan {path!r} was made for {plan.base!r}, not for model {handle.model_ref!r}")
    return plan


def reference_sample_size(handle) -> int:
    """Latent side at the model's default resolution (before FLUX's 2x2 packing)."""
    return int(handle.defaults["resolution"]) // int(getattr(handle.pipe, "vae_scale_factor", 8))


def text_len(handle) -> int | None:
    """Text tokens for MACs: FLUX's ``max_sequence_length``; None (the default, 77) for UNets."""
    if handle.family == "flux" and "max_sequence_length" in handle.defaults:
        return int(handle.defaults["max_sequence_length"])
    return None


def warn(message: str) -> None:
    print(f"pruning: warning: {message}", file=sys.stderr)


def human(n: float) -> str:
    """``1234567 -> '1.23M'``.

    >>> human(859520964), human(401636720640), human(999)
    ('859.5M', '401.6G', '999')
    """
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            value = n / div
            return f"{value:.1f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"
    return f"{n:g}"


# ----------------------------------------------------------------------------- info


def _info_args(p: argparse.ArgumentParser) -> None:
    from_ = p.add_mutually_exclusive_group(required=True)
    from_.add_argument("--model", metavar="SRC", help="bundled name, diffusers folder or Hub id")
    from_.add_argument("--reference", choices=("sd15", "sd21", "sdxl", "flux-dev", "flux-schnell"),
                       help="a full-size public config on the meta device (no download)")
    p.add_argument("--sample-size", type=positive_int, metavar="N",
                   help="latent side for MACs (default: the model's resolution / VAE factor)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", choices=DTYPES, help=argparse.SUPPRESS)


def _info_target(args) -> dict:
    """The denoiser to describe and its facts: from ``--model`` or ``--reference``."""
    if args.reference:
        from .reference import PIPELINES, meta_denoiser

        meta = PIPELINES[args.reference]
        return dict(denoiser=meta_denoiser(args.reference), source=args.reference, family=meta["family"],
                    model_ref=f"reference:{meta['hub_id']}", resolution=meta["resolution"],
                    sample_size=args.sample_size or meta["resolution"] // 8, text_len=None)
    h = load_handle(args)
    return dict(denoiser=h.denoiser, source=args.model, family=h.family, model_ref=h.model_ref,
                resolution=h.defaults["resolution"], sample_size=args.sample_size or reference_sample_size(h),
                text_len=text_len(h))


def info_facts(args) -> dict:
    """Everything ``info`` prints, as plain data."""
    from .catalog import catalog, kind_shares

    t = _info_target(args)
    den = t.pop("denoiser")
    ops, st = catalog(den, sample_size=t["sample_size"], text_len=t["text_len"])
    op_kinds = ops.groupby("kind", sort=False).agg(
        count=("fqn", "size"), params=("params", "sum"), param_share=("param_share", "sum"),
        macs=("macs", "sum"), mac_share=("mac_share", "sum"))
    st_kinds = st.groupby("kind", sort=False).agg(
        count=("fqn", "size"), units=("units", "sum"), params=("params", "sum"), param_share=("param_share", "sum"))
    return {**t, "denoiser_class": type(den).__name__, "params": int(ops.attrs["total_params"]),
            "macs": int(ops.attrs["total_macs"]), "operators": _records(op_kinds),
            "structures": _records(st_kinds), "kind_shares": kind_shares(den, st)}


def _records(df) -> dict[str, dict]:
    """``{kind: {column: python scalar}}`` from a per-kind DataFrame."""
    return {str(k): {c: v.item() if hasattr(v, "item") else v for c, v in row.items()}
            for k, row in df.to_dict("index").items()}


def _print_info(f: dict) -> None:
    print(f"model:      {f['source']}")
    print(f"family:     {f['family']}")
    print(f"model_ref:  {f['model_ref']}")
    print(f"denoiser:   {f['denoiser_class']}, {human(f['params'])} params ({f['params']:,})")
    print(f"MACs:       {human(f['macs'])} per forward at {f['resolution']} px "
          f"(latent {f['sample_size']}x{f['sample_size']}, batch 1)")
    print("\noperators by kind (they nest: a whole block holds its finer operators):")
    print(_table(f["operators"], ["count", "params", "param_share", "macs", "mac_share"]))
    print("\nstructures by kind:")
    print(_table(f["structures"], ["count", "units", "params", "param_share"]))
    shares = ", ".join(f"{k} {v:.1%}" for k, v in f["kind_shares"].items() if v)
    print(f"\nparams share by module kind: {shares}")


def _table(rows: dict[str, dict], cols: list[str]) -> str:
    head = [["kind", *cols]]
    body = [[k, *(_cell(c, r[c]) for c in cols)] for k, r in rows.items()]
    widths = [max(len(row[i]) for row in head + body) for i in range(len(cols) + 1)]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))) for row in head + body)


def _cell(col: str, v) -> str:
    if col.endswith("share"):
        return f"{v:.1%}"
    return human(v) if col in ("params", "macs") else str(v)


@add_command("info", help="params, MACs and the prunable parts of a model", arguments=_info_args)
def cmd_info(args) -> int:
    facts = info_facts(args)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        _print_info(facts)
    return 0


# ----------------------------------------------------------------------------- generate


def _generate_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_sampling_args(p)
    add_plan_arg(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)")


def _size_line(name: str, params: int, macs: int, base: tuple[int, int] | None = None) -> str:
    line = f"{name:<9} params {human(params):>8} ({params:,})  MACs {human(macs):>8}"
    if base:
        line += f"  ({1 - params / base[0]:.1%} params, {1 - macs / base[1]:.1%} MACs removed)"
    return line


def _save_images(images, names: list[str], out: Path) -> list[Path]:
    paths = [out / n for n in names]
    for im, path in zip(images, paths):
        im.save(path)
    return paths


@add_command("generate", help="images from the original (and pruned) model, same prompts and seeds",
             arguments=_generate_args)
def cmd_generate(args) -> int:
    from .metrics import count_params, total_macs
    from .sampling import generate_images
    from .slim import slim

    h = load_handle(args)
    plan = load_plan(args.plan, h) if args.plan else None
    seeds = args.seed or [0]
    pairs = [(i, p, s) for i, p in enumerate(args.prompt) for s in seeds]
    prompts, pair_seeds = [p for _, p, _ in pairs], [s for _, _, s in pairs]
    kw = dict(steps=args.steps, guidance=args.guidance, resolution=args.resolution)
    mac_kw = dict(sample_size=(args.resolution or h.defaults["resolution"]) // h.pipe.vae_scale_factor,
                  text_len=text_len(h))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [("original", h.denoiser)] + ([("pruned", slim(h.denoiser, plan))] if plan else [])
    base = None
    for name, den in variants:
        images = generate_images(h, prompts, pair_seeds, denoiser=den, **kw)
        paths = _save_images(images, [f"{name}_p{i}_seed{s}.png" for i, _, s in pairs], out)
        size = (count_params(den), total_macs(den, **mac_kw))
        print(_size_line(name, *size, base))
        base = base or size
        for path in paths:
            print(f"  {path}")
    return 0


# ----------------------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_plan_arg(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (must not exist unless --overwrite)")
    p.add_argument("--full-pipeline", action="store_true", help="also save the VAE, text encoders, scheduler")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")


@add_command("export", help="write the slimmed model: safetensors + pruning_plan.json", arguments=_export_args)
def cmd_export(args) -> int:
    from .export import MANIFEST, export
    from .metrics import count_params

    h = load_handle(args)
    plan = load_plan(args.plan, h)
    folder = export(h, plan, args.out, full_pipeline=args.full_pipeline, overwrite=args.overwrite)
    before = count_params(h.denoiser)
    after = json.loads((folder / MANIFEST).read_text())["params"]
    print(f"exported  {folder}{' (full pipeline)' if args.full_pipeline else ''}")
    print(f"params    {human(before)} -> {human(after)}: {before - after:,} removed ({1 - after / before:.1%})")
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The parser with one subparser per registered command."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = _Parser(prog=PROG, description="Structural pruning of diffusion models (SD, SDXL, FLUX).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and progress bars")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _quiet() -> None:
    """No progress bars or info logs from diffusers/transformers (errors still raise)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 2 usage or pruning error)."""
    from .errors import PruningError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{_one_line(e)} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if not args.verbose:
        _quiet()
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (PruningError, OSError) as e:
        print(f"pruning {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pruning {args.command}: interrupted", file=sys.stderr)
        return 130
