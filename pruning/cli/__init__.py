"""``python -m pruning <command>``: the library, headless. One module per command group:

* :mod:`~pruning.cli.inspect`: ``info``, ``generate``
* :mod:`~pruning.cli.score`: ``score <method>`` for every registered method, with the shortcuts
  each method names (``sweep`` = LD-Pruner, ``ecodiff``, ``diffpruning`` and its older name
  ``taylor``), and ``prune``
* :mod:`~pruning.cli.outputs`: ``export``, ``materialize``, ``reconstruct``, ``recover``, ``lora``
* :mod:`~pruning.cli.compare`: ``compare``

Every :class:`~pruning.errors.PruningError`, ``OSError`` and usage error ends as one line on
stderr and exit code 2, never a traceback. Exit code 3: a chunked run (``--chunk-s`` /
``--chunk-units`` with ``--state``) ended its chunk before the run was finished; run the same
command again. Nothing heavy is imported until a handler runs.

>>> main(["info"])
2
>>> {"export", "generate", "info", "score", "prune", "compare"} <= set(build_parser()._commands)
True
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

import diffusers.utils.logging as dlog
import transformers.utils.logging as tlog

from .. import _interrupted_while_starting
from ..errors import PruningError
from .common import COMMANDS, Parser, UsageError, one_line

PROG = "python -m pruning"
GROUPS = ("pruning.cli.inspect", "pruning.cli.score", "pruning.cli.outputs", "pruning.cli.compare")


def build_parser() -> argparse.ArgumentParser:
    """The parser with one subparser per registered command (the groups register themselves)."""
    for module in GROUPS:
        importlib.import_module(module)
    commands = {}
    for name, cmd in COMMANDS.items():  # each method's shortcuts right after `score`, from the registry now
        commands[name] = cmd
        if name == "score":
            commands.update(importlib.import_module("pruning.cli.score").shortcut_commands())
    parser = Parser(prog=PROG, description="Structural pruning of diffusion models (SD, SDXL, FLUX).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and progress bars")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    sub.required = True
    for cmd in commands.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.arguments(p)
        p.set_defaults(_run=cmd.run)
    parser._commands = commands
    return parser


def _quiet() -> None:
    """No progress bars or info logs from diffusers/transformers (errors still raise)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 2 usage or pruning error, 3 a chunk done but not the
    run, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{one_line(e)} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if not args.verbose:
        _quiet()
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is _interrupted_while_starting:  # the imports are done: Ctrl-C now ends the work cleanly
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (PruningError, OSError) as e:
        print(f"pruning {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not print a traceback
        print(f"pruning {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)  # called in-process (tests, scripts): give Ctrl-C back
