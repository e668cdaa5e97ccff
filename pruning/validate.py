"""The one validation layer for user-supplied values: the library, the CLI and the app all call it.

Every check returns the clean value or raises :class:`~pruning.errors.SettingsError` (a
``ValueError``) whose message names the value, its limit and why the limit exists. Nothing
is silently clamped, truncated or rounded.

>>> integer("steps", 4.0, lo=1, hi=LIMITS.max_steps)
4
>>> integer("steps", 0, lo=1, hi=LIMITS.max_steps)
Traceback (most recent call last):
...
pruning.errors.SettingsError: steps must be an integer in 1..1000, got 0
>>> integer("index", 1.7, lo=0)
Traceback (most recent call last):
...
pruning.errors.SettingsError: index must be an integer >= 0, got 1.7
>>> number("guidance", float("nan"), lo=0, hi=LIMITS.max_guidance)
Traceback (most recent call last):
...
pruning.errors.SettingsError: guidance must be a finite number in [0, 50], got nan
>>> seed_list([0, 2**70])
Traceback (most recent call last):
...
pruning.errors.SettingsError: seeds[1] must be an integer in 0..9223372036854775807 (torch generators take 63-bit seeds), got 1180591620717411303424
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SettingsError, UnknownName


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one call may ask for, and why (quoted in the errors)."""

    max_steps: int = 1000  # the schedulers are trained on 1000 timesteps; more steps only repeat them
    max_guidance: float = 50.0  # far beyond any useful guidance; larger values only saturate images
    max_seed: int = 2**63 - 1  # torch.Generator.manual_seed takes 63-bit seeds
    max_prompts: int = 256  # prompts (samples) in one call
    max_prompt_chars: int = 2000  # CLIP reads 77 tokens and T5 512; longer text is cut by the tokenizer
    resolution_factor: int = 4  # at most 4x the model's native side: memory grows with the square
    max_resolution: int = 4096
    max_json_bytes: int = 16 * 2**20  # plan, manifest, scores side files
    max_json_depth: int = 32


LIMITS = Limits()


def _is_int_like(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def shown(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said (errors quote user
    input, which may be any size).

    >>> shown("abc"), shown("x" * 1000)
    ("'abc'", "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (1002 characters)")
    """
    text = repr(value) if not isinstance(value, (list, tuple, set, frozenset, dict)) or len(value) < 1000 \
        else f"<{type(value).__name__} of {len(value)} items>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def few(values, n: int = 3) -> str:
    """At most ``n`` items of an unbounded collection (each :func:`shown`), and how many more.

    >>> few(["extra"]), few(range(2_000_000))
    ("['extra']", '[0, 1, 2] and 1999997 more')
    """
    items = list(values) if not isinstance(values, list) else values
    head = "[" + ", ".join(shown(v) for v in items[:n]) + "]"
    return head if len(items) <= n else f"{head} and {len(items) - n} more"


def _range_text(lo, hi, *, integer: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {lo}..{hi}" if integer else f"in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f">= {lo}" if integer else f">= {lo:g}"
    if hi is not None:
        return f"<= {hi}" if integer else f"<= {hi:g}"
    return ""


def integer(name: str, value, *, lo: int | None = None, hi: int | None = None, why: str = "",
            strict: bool = False) -> int:
    """An integer in [lo, hi]. Integral floats (``4.0``) and digit strings pass unless ``strict``;
    bools, fractions, NaN and other types never do.

    >>> integer("seed", "7"), integer("n", 3, lo=1, hi=3)
    (7, 3)
    >>> integer("kept index", 2.0, strict=True)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: kept index must be an integer, got 2.0
    """
    rng = _range_text(lo, hi, integer=True)
    what = f"{name} must be an integer" + (f" {rng}" if rng else "") + (f" ({why})" if why else "")
    if _is_int_like(value):
        out = int(value)
    elif strict or isinstance(value, bool) or value is None:
        raise SettingsError(f"{what}, got {shown(value)}")
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        out = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        out = int(value.strip())
    else:
        raise SettingsError(f"{what}, got {shown(value)}")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise SettingsError(f"{what}, got {out}")
    return out


def number(name: str, value, *, lo: float | None = None, hi: float | None = None, open_lo: bool = False,
           open_hi: bool = False, why: str = "") -> float:
    """A finite float in [lo, hi] (``open_lo``/``open_hi`` exclude the ends).

    >>> number("lr", "0.5", lo=0, open_lo=True)
    0.5
    >>> number("target sparsity", 1.5, lo=0, hi=1, open_lo=True, open_hi=True)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: target sparsity must be a finite number in (0, 1), got 1.5
    """
    left, right = "(" if open_lo else "[", ")" if open_hi else "]"
    if lo is not None and hi is not None:
        rng = f"in {left}{lo:g}, {hi:g}{right}"
    elif lo is not None:
        rng = f"{'>' if open_lo else '>='} {lo:g}"
    elif hi is not None:
        rng = f"{'<' if open_hi else '<='} {hi:g}"
    else:
        rng = ""
    what = "must be a finite number" + (f" {rng}" if rng else "") + (f" ({why})" if why else "")
    if isinstance(value, bool) or value is None:
        raise SettingsError(f"{name} {what}, got {shown(value)}")
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(f"{name} {what}, got {shown(value)}") from None
    bad = not math.isfinite(out)
    bad = bad or (lo is not None and (out < lo or (open_lo and out == lo)))
    bad = bad or (hi is not None and (out > hi or (open_hi and out == hi)))
    if bad:
        raise SettingsError(f"{name} {what}, got {out:g}")
    return out


def fraction(name: str, value) -> float:
    """A fraction strictly inside (0, 1), e.g. a target sparsity; the error says it in plain words
    (and how to write a percentage).

    >>> fraction("target sparsity", "150%")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: target sparsity must be a fraction between 0 and 1, like 0.2, got '150%' (write 20% as 0.2)
    """
    try:
        return number(name, value, lo=0, hi=1, open_lo=True, open_hi=True)
    except SettingsError:
        raise SettingsError(f"{name} must be a fraction between 0 and 1, like 0.2, got {_plain_shown(value)}"
                            + percent_hint(value)) from None


def _plain_shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) and math.isfinite(value) else shown(value)


def percent_hint(value) -> str:
    """`` (write 20% as 0.2)`` when ``value`` is a percentage written as text; when it is a number
    above 1 that reads as a percentage (``5``: 5%?), how to write that one; else ``""``.

    >>> percent_hint("150%"), percent_hint(5), percent_hint(" 5"), percent_hint(150), percent_hint(0.5)
    (' (write 20% as 0.2)', ' (write 5% as 0.05)', ' (write 5% as 0.05)', '', '')
    """
    if isinstance(value, str) and value.strip().endswith("%"):
        return " (write 20% as 0.2)"
    if isinstance(value, bool):
        return ""
    try:
        x = float(value)  # float() reads " 5" too
    except (TypeError, ValueError):
        return ""
    return f" (write {x:g}% as {x / 100:g})" if 1 < x < 100 else ""


def choice(name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices``.

    >>> choice("scope", "per-layer", ("global", "local"))
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: scope must be one of ['global', 'local'], got 'per-layer'
    """
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(f"{name} must be one of {list(choices)}, got {shown(value)}")
    return value


def registered(what: str, name, known: Sequence[str]) -> str:
    """A name held by a registry (methods, model families, reference models): else
    :class:`~pruning.errors.UnknownName`, listing the registered names.

    >>> registered("model family", "sd4", ("sd", "flux"))
    Traceback (most recent call last):
    ...
    pruning.errors.UnknownName: model family must be one of ['sd', 'flux'], got 'sd4'
    """
    if not isinstance(name, str) or name not in known:
        raise UnknownName(f"{what} must be one of {list(known)}, got {shown(name)}")
    return name


def subset(name: str, values, choices: Sequence[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    """A duplicate-free tuple of items of ``choices`` (a single string is one item)."""
    items = (values,) if isinstance(values, str) else tuple(values or ())
    for v in items:
        choice(f"{name} item", v, choices)
    if not items and not allow_empty:
        raise SettingsError(f"{name} must name at least one of {list(choices)}")
    return tuple(dict.fromkeys(items))


def seed(name: str, value) -> int:
    return integer(name, value, lo=0, hi=LIMITS.max_seed, why="torch generators take 63-bit seeds")


def seed_list(values, name: str = "seeds") -> tuple[int, ...]:
    """Seeds, each in 0..2**63-1; a single int is one seed."""
    items = [values] if _is_int_like(values) or isinstance(values, str) else list(values)
    return tuple(seed(f"{name}[{i}]", v) for i, v in enumerate(items))


def prompt_list(values, name: str = "prompts", *, allow_empty: bool = False,
                limits: Limits = LIMITS) -> tuple[str, ...]:
    """1..max_prompts prompts of at most max_prompt_chars characters; a string is one prompt.
    Blank prompts are refused unless ``allow_empty`` (unconditional generation).

    >>> prompt_list("a red circle")
    ('a red circle',)
    >>> prompt_list(["a", "  "])
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: prompts[1] is empty: every prompt needs some text
    """
    items = [values] if isinstance(values, str) else (list(values) if isinstance(values, Iterable) else None)
    if items is None:
        raise SettingsError(f"{name} must be a list of strings, got {type(values).__name__}")
    if not items:
        raise SettingsError(f"{name} is empty: give at least one prompt")
    if len(items) > limits.max_prompts:
        raise SettingsError(f"{name}: {len(items)} prompts, at most {limits.max_prompts} in one call")
    out = []
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise SettingsError(f"{name}[{i}] must be a string, got {type(p).__name__}")
        if not p.strip() and not allow_empty:
            raise SettingsError(f"{name}[{i}] is empty: every prompt needs some text")
        if len(p) > limits.max_prompt_chars:
            raise SettingsError(f"{name}[{i}] has {len(p)} characters, at most {limits.max_prompt_chars} "
                                "(the text encoders read far fewer tokens)")
        out.append(p)
    return tuple(out)


def steps(value, name: str = "steps") -> int:
    return integer(name, value, lo=1, hi=LIMITS.max_steps, why="the schedulers have 1000 training timesteps")


def guidance(value, name: str = "guidance") -> float:
    return number(name, value, lo=0, hi=LIMITS.max_guidance)


def resolution(value, *, multiple: int, native: int, name: str = "resolution") -> int:
    """An image side in pixels: a multiple of ``multiple`` (VAE factor x patch size), at least
    one multiple and at most ``resolution_factor`` x the model's native side (and 4096).

    >>> resolution(64, multiple=8, native=64)
    64
    >>> resolution(12, multiple=8, native=64)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: resolution must be a multiple of 8 (the VAE's downscale factor x the patch size), got 12
    >>> resolution(100000, multiple=8, native=512)
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: resolution must be an integer in 8..2048 (4x the model's native 512 px at most: memory grows with the square), got 100000
    """
    hi = min(LIMITS.max_resolution, LIMITS.resolution_factor * int(native))
    hi -= hi % multiple
    out = integer(name, value, lo=multiple, hi=max(hi, multiple),
                  why=f"{LIMITS.resolution_factor}x the model's native {native} px at most: memory grows with the square")
    if out % multiple:
        raise SettingsError(f"{name} must be a multiple of {multiple} (the VAE's downscale factor x the patch "
                            f"size), got {out}")
    return out


def sampling_fields(*, prompts=None, seeds=None, steps=None, guidance=None, resolution=None,
                    steps_name: str = "steps") -> dict:
    """The generation fields every settings class shares, checked (None stays None = the model's
    default); seeds, when given, pair one to one with the prompts.

    >>> sampling_fields(prompts=["a", "b"], seeds=[3, 4], steps=2.0)["steps"]
    2
    >>> sampling_fields(prompts=["a"], seeds=[1, 2])
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: 2 seeds for 1 prompts; they must pair up
    """
    prompts = None if prompts is None else prompt_list(prompts)
    seeds = None if seeds is None else seed_list(seeds)
    if seeds is not None and (prompts is None or len(seeds) != len(prompts)):
        raise SettingsError(f"{len(seeds)} seeds for {len(prompts or ())} prompts; they must pair up")
    return {"prompts": prompts, "seeds": seeds,
            "steps": None if steps is None else globals()["steps"](steps, name=steps_name),
            "guidance": None if guidance is None else globals()["guidance"](guidance),
            "resolution": None if resolution is None else integer("resolution", resolution, lo=8,
                                                                    hi=LIMITS.max_resolution)}


# --------------------------------------------------------------------------- tensors and files


def finite(name: str, tensor) -> None:
    """Refuse a tensor with NaN or infinite entries, naming where the first one is.

    >>> import torch
    >>> finite("scores['a.b']", torch.tensor([1.0, float("nan")]))
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: scores['a.b'] has a non-finite value (nan) at index 1
    """
    t = torch.as_tensor(tensor)
    if t.is_floating_point():
        bad = (~torch.isfinite(t)).flatten().nonzero()
        if len(bad):
            i = int(bad[0])
            raise SettingsError(f"{name} has a non-finite value ({float(t.flatten()[i])}) at index {i}")


def read_json(path: str | os.PathLike, what: str, *, limits: Limits = LIMITS):
    """Parse a JSON file: UTF-8, at most ``max_json_bytes``, nested at most ``max_json_depth``;
    errors name ``what`` and the path. NaN/Infinity literals are refused.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.json"; _ = p.write_bytes(b"\\xff\\xfe")
    >>> read_json(p, "plan file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: plan file '...x.json' is not UTF-8 text: ...
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_json_bytes:
            raise SettingsError(f"{what} {str(path)!r} has {size} bytes, at most {limits.max_json_bytes}")
        raw = path.read_bytes()
    except OSError as e:
        raise SettingsError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SettingsError(f"{what} {str(path)!r} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    return parse_json(text, f"{what} {str(path)!r}", limits=limits)


def parse_json(text: str, what: str, *, limits: Limits = LIMITS):
    """``json.loads`` with the depth limit and without NaN/Infinity; errors name ``what``.

    >>> parse_json("[" * 40 + "]" * 40, "plan")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: plan is nested deeper than 32 levels
    """
    json_size_check(text, what, limits)

    def no_constants(name):
        raise ValueError(f"{name} is not allowed")
    try:
        return json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        raise SettingsError(f"{what} is not valid JSON: {e}") from None


def _max_depth(text: str) -> int:
    """Bracket nesting depth outside strings (cheap, before json.loads can recurse)."""
    depth = best = 0
    in_str = escape = False
    for ch in text:
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` resolved (symlinks followed) and checked to lie inside ``root``.

    >>> inside("unet/x.safetensors", "/exports/a")
    PosixPath('/exports/a/unet/x.safetensors')
    >>> inside("../outside/unet", "/exports/a")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: path '../outside/unet' leaves its folder '/exports/a'
    """
    root = Path(root).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else root / p).resolve()
    if full != root and root not in full.parents:
        raise SettingsError(f"path {shown(str(path), 200)} leaves its folder {str(root)!r}")
    return full


def check_device(device) -> torch.device:
    """A device that exists on this machine; errors say what is available.

    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("foo")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: device 'foo' is not a torch device (use 'cpu', 'cuda' or 'cuda:N', 'mps')
    """
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError, ValueError):
        raise SettingsError(f"device {device!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:N', 'mps')") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {device!r} is not available: this machine has no CUDA GPU; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SettingsError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {device!r} is not available on this machine; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SettingsError(f"device {device!r} is not supported (use 'cpu', 'cuda' or 'mps')")
    return dev


# --------------------------------------------------------------------------- outputs versus inputs


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:  # hard links, or another spelling of the same file on a case-insensitive file system
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _within(child: Path, folder: Path) -> bool:
    """``child`` lies inside ``folder`` (both resolved), by path or by an existing folder's identity."""
    if folder in child.parents:
        return True
    for parent in child.parents:
        if parent.exists() and folder.is_dir() and _same(parent, folder):
            return True
    return False


def check_outputs(outputs, inputs, *, folders: Iterable[str] = ()) -> None:
    """Refuse, before any work, an output that would overwrite or change an input. ``outputs`` and
    ``inputs`` map a name (the CLI flag, the argument) to a path (None: not given); ``folders``
    names the outputs that are folders replaced as a whole. An output must not resolve to an
    input (symlinks, ``..``, another spelling of the same file), lie inside an input folder (a
    model folder), or, for a folder output, contain an input. Outputs must differ from each other.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "style.safetensors").write_bytes(b"x")
    >>> check_outputs({"--out": d / "sliced.safetensors"}, {"--lora": d / "style.safetensors"})
    >>> check_outputs({"--out": f"{d}/sub/../style.safetensors"}, {"--lora": d / "style.safetensors"})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: --out '.../sub/../style.safetensors' is --lora '.../style.safetensors': an output may not overwrite an input (nothing was written)
    >>> check_outputs({"--out": d}, {"--lora": d / "style.safetensors"}, folders=["--out"])
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: --out '...' contains --lora '.../style.safetensors': an output folder may not hold an input (nothing was written)
    """
    folders = set(folders)
    ins = [(name, str(p), _resolved(p)) for name, p in inputs.items() if p is not None and str(p) != ""]
    outs = [(name, str(p), _resolved(p)) for name, p in outputs.items() if p is not None and str(p) != ""]
    tail = "(nothing was written)"
    for name, raw, out in outs:
        for in_name, in_raw, inp in ins:
            if _same(out, inp):
                raise SettingsError(f"{name} {raw!r} is {in_name} {in_raw!r}: an output may not overwrite an "
                                    f"input {tail}")
            if inp.is_dir() and _within(out, inp):
                raise SettingsError(f"{name} {raw!r} is inside {in_name} {in_raw!r}: an output may not be written "
                                    f"into an input folder {tail}")
            if name in folders and _within(inp, out):
                raise SettingsError(f"{name} {raw!r} contains {in_name} {in_raw!r}: an output folder may not hold "
                                    f"an input {tail}")
    for i, (name, raw, out) in enumerate(outs):
        for other, other_raw, o in outs[i + 1:]:
            if _same(out, o):
                raise SettingsError(f"{name} {raw!r} and {other} {other_raw!r} are the same file {tail}")


def py_str(value) -> str:
    r"""A Python string literal (for code we write: model cards, snippets) for ``value`` (``json.dumps``: valid Python), with ``<``, ``>``, ``&`` and
    backticks as escapes, so that it reads the same in Python and stays inert in Markdown and HTML.

    >>> import ast
    >>> text = 'evil"); import os; os.system("x") <b>`'
    >>> print(py_str(text))
    "evil\"); import os; os.system(\"x\") \u003cb\u003e\u0060"
    >>> ast.literal_eval(py_str(text)) == text
    True
    """
    out = json.dumps(str(value), ensure_ascii=True)
    for ch in "<>&`":
        out = out.replace(ch, f"\\u{ord(ch):04x}")
    return out


__all__ = [
    "Limits", "LIMITS", "integer", "number", "fraction", "choice", "subset", "seed", "seed_list", "prompt_list",
    "steps", "guidance", "resolution", "sampling_fields", "finite", "read_json", "parse_json", "inside",
    "check_device", "check_outputs", "shown", "few", "registered", "py_str",
]


# --------------------------------------------------------------------------- JSON size (issue 20)

MAX_JSON_ITEMS = 2_000_000  # values in one JSON text: a plan of SDXL's every kept neuron has under 1M
_JSON_STRING = None


def json_shape(text: str) -> tuple[int, int]:
    """(nesting depth, number of values at most) of a JSON text, from one vectorised pass outside its
    strings: cheap next to ``json.loads`` and bounded in memory by the text's size.

    >>> json_shape('{"a": [1, 2, {"b": "[[["}], "c": 3}')
    (3, 7)
    """
    import re

    import numpy as np

    global _JSON_STRING
    if _JSON_STRING is None:
        _JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
    bare = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    opens = (bare == ord("[")) | (bare == ord("{"))
    steps = opens.astype(np.int64) - ((bare == ord("]")) | (bare == ord("}")))
    depth = int(np.cumsum(steps).max()) if len(steps) else 0
    return max(depth, 0), int(opens.sum() + (bare == ord(",")).sum()) + 1


def json_size_check(text: str, what: str, limits: Limits = LIMITS) -> None:
    """Refuse a JSON text nested deeper than ``limits.max_json_depth`` or holding more than
    ``MAX_JSON_ITEMS`` values, before ``json.loads`` builds it (each value costs tens of bytes).

    >>> json_size_check("[" + "0," * 2_000_000 + "0]", "plan")
    Traceback (most recent call last):
    ...
    pruning.errors.SettingsError: plan holds about 2000002 JSON values, at most 2000000
    """
    depth, items = json_shape(text)
    if depth > limits.max_json_depth:
        raise SettingsError(f"{what} is nested deeper than {limits.max_json_depth} levels")
    if items > MAX_JSON_ITEMS:
        raise SettingsError(f"{what} holds about {items} JSON values, at most {MAX_JSON_ITEMS}")
