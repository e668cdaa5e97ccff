"""What every command shares: the command registry, ``--model``/``--plan`` arguments, loading,
numbers for humans, and options generated from a settings dataclass.

>>> human(859520964), human(401636720640), human(999)
('859.5M', '401.6G', '999')
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import validate
from ..bundled import BUNDLED
from ..errors import PlanError
from ..export import check_base, read_plan
from ..files import check_writable_file
from ..loading import DTYPES, check_device, load_pipeline
from ..memory import OFFLOAD_MODES, enable_memory_savers
from ..methods.base import settings_fields


class UsageError(Exception):
    """A bad command line (raised instead of argparse's print-usage-and-exit)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


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


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def work_done() -> None:
    """The command's work is complete (files written): from here on Ctrl-C is ignored, so an
    interrupt during the report or the interpreter's shutdown prints no traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- shared arguments


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` (bundled name, folder or Hub id), ``--device``, ``--dtype``, ``--offload``, ``--vae-tiling``."""
    p.add_argument("--model", required=True, metavar="SRC",
                   help=f"bundled name ({', '.join(BUNDLED)}), a diffusers folder or a Hub id org/name[@rev]")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N, mps (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="weights dtype (default: float32). All three run on CPU: bfloat16 is fast where the CPU "
                        "has bf16 instructions, float16 is ~10x slower than float32 on CPUs; on GPUs both halve "
                        "memory")
    p.add_argument("--offload", choices=list(OFFLOAD_MODES),
                   help="keep the weights in CPU memory and move each model (model) or each layer (sequential, "
                        "slower) to the accelerator only while it runs: --device when it is one, else the first "
                        "found; needs a GPU or MPS")
    p.add_argument("--vae-tiling", action="store_true",
                   help="decode images in overlapping tiles, one image at a time: less memory at large resolutions, "
                        "slight seams")
    p.add_argument("--fuse-lora", metavar="LORA", help="fuse this LoRA (.safetensors) into the model first: scores, "
                   "plans and exports are then of the model with the LoRA")


def add_plan_arg(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--plan", required=required, metavar="PLAN_JSON",
                   help="a pruning plan JSON, or an export's pruning_plan.json")


def add_estimate_args(p: argparse.ArgumentParser) -> None:
    """``--estimate`` (print the predicted time and memory, run nothing) and ``--budget``."""
    p.add_argument("--estimate", action="store_true",
                   help="print the predicted wall time and peak memory on this device and dtype (from a few timed "
                        "denoiser calls), and run nothing")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="with --estimate: say what to change when the run would take longer (e.g. a Space's GPU "
                        "duration)")


def print_estimate(e) -> None:
    print(e.text())
    print("counted   " + ", ".join(f"{k} {v}" for k, v in e.calls.items()))


def add_out_file(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", required=True, metavar="PATH", help=help)


def load_handle(args: argparse.Namespace):
    """The :class:`~pruning.loading.Handle` for ``args.model``/``--device``/``--dtype``/``--offload``/
    ``--vae-tiling``. With ``--offload`` the weights are loaded into CPU memory, never onto the GPU."""
    offload, tiling = getattr(args, "offload", None), getattr(args, "vae_tiling", False)
    on = check_device(args.device)
    handle = load_pipeline(args.model, device="cpu" if offload else on, dtype=args.dtype)
    if getattr(args, "fuse_lora", None):
        from ..lora import fuse_lora

        handle = fuse_lora(handle, args.fuse_lora)
    if offload or tiling:
        on = None if on.type == "cpu" else on
        handle = enable_memory_savers(handle, offload=offload, vae_tiling=tiling, vae_slicing=tiling, device=on)
    return handle


def load_plan(path: str, handle):
    """Read the plan at ``path`` and check it fits ``handle``; errors name the plan file."""
    plan, _ = read_plan(path)
    try:
        check_base(plan, handle, path)
    except PlanError as e:
        raise PlanError(f"plan {path!r} does not fit model {handle.source!r}: {e}") from None
    return plan


def writable(path: str, what: str = "output file") -> Path:
    """Check an output file path before any work starts (not a folder, parent writable)."""
    return check_writable_file(path, what)


def model_folder(source: str | None) -> Path | None:
    """The local folder behind ``--model`` (a bundled name or a folder), None for a Hub id."""
    if not source:
        return None
    if source in BUNDLED:
        return Path(BUNDLED[source])
    path = Path(source).expanduser()
    return path if path.exists() else None


def inputs_of(args: argparse.Namespace) -> dict:
    """Every input path a command reads: the model folder, plan, LoRA, fused LoRA, scores (and
    their side file), images."""
    found = {"--model": model_folder(getattr(args, "model", None))}
    for flag in ("plan", "lora", "fuse_lora", "scores"):
        value = getattr(args, flag, None)
        if value:
            found["--" + flag.replace("_", "-")] = value
    if getattr(args, "scores", None):
        found["the scores' side file"] = f"{args.scores}.json"
    return found


def check_io(args: argparse.Namespace, outputs: dict, *, folders=(), inputs: dict | None = None) -> None:
    """Before any work: no output of the command may be (or hold, or lie inside) one of its inputs;
    the error names both paths. ``inputs``: more inputs than :func:`inputs_of` finds."""
    validate.check_outputs(outputs, {**inputs_of(args), **(inputs or {})}, folders=folders)


def check_budget(args: argparse.Namespace) -> float | None:
    """``--budget`` checked: a positive, finite number of seconds (or None)."""
    value = getattr(args, "budget", None)
    return None if value is None else validate.number("--budget", value, lo=0, open_lo=True,
                                                       why="seconds of a run, e.g. a Space's GPU duration")


def human(n: float) -> str:
    """``1234567 -> '1.23M'``."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            value = n / div
            return f"{value:.1f}{unit}" if abs(value) >= 100 else f"{value:.3g}{unit}"
    return f"{n:g}"


# ----------------------------------------------------------------------------- settings as options


_TYPES = {"int": int, "float": float, "str": str, "ints": int, "strs": str}


def add_settings_args(p: argparse.ArgumentParser, settings_cls, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per user-facing field of ``settings_cls`` (help and defaults from the
    dataclass, so the CLI never copies them). Values are checked by the settings class."""
    for f in settings_fields(settings_cls):
        if f["name"] in skip:
            continue
        flag = "--" + f["name"].replace("_", "-")
        kind, default = f["kind"], f["default"]
        shown = f" (default: {list(default) if isinstance(default, tuple) else default})" if default is not None else ""
        kw = {"dest": f["name"], "default": None, "help": (f["help"] + shown).replace("%", "%%")}  # argparse formats %
        if kind in ("strs", "ints"):
            kw.update(nargs="+", type=_TYPES[kind], metavar=kind[:-1].upper())
        elif kind == "choices":
            kw.update(nargs="+", choices=list(f["choices"]), metavar="KIND")
        elif kind == "choice":
            kw.update(choices=list(f["choices"]))
        else:
            kw.update(type=_TYPES.get(kind, str), metavar=kind.upper())
        p.add_argument(flag, **kw)
        if f["name"] == "prompts":  # --prompt TEXT, repeatable, as in `generate`
            p.add_argument("--prompt", action="append", dest="prompts", help=argparse.SUPPRESS)


def settings_from_args(method, args: argparse.Namespace, **extra):
    """The method's settings from the generated options (unset ones keep the class defaults)."""
    values = {f["name"]: getattr(args, f["name"]) for f in settings_fields(method.Settings)
              if getattr(args, f["name"], None) is not None}
    return method.settings(**{**values, **extra})
