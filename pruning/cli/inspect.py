"""``info`` (what a model is made of) and ``generate`` (images, original and pruned)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import validate
from ..errors import ExportError
from ..facts import denoiser_facts, model_facts
from ..files import atomic_write
from ..loading import DTYPES
from ..metrics import count_params, total_macs
from ..reference import PIPELINES, meta_denoiser
from ..sampling import generate_images, pair_samples, spec
from ..slim import slim
from .common import add_command, add_model_args, add_plan_arg, check_io, human, load_handle, load_plan

# ----------------------------------------------------------------------------- info


def _info_args(p: argparse.ArgumentParser) -> None:
    from_ = p.add_mutually_exclusive_group(required=True)
    from_.add_argument("--model", metavar="SRC", help="bundled name, diffusers folder or Hub id")
    from_.add_argument("--reference", choices=list(PIPELINES),
                       help="a full-size public config on the meta device (no download)")
    p.add_argument("--sample-size", type=int, metavar="N",
                   help="latent side for MACs (default: the model's resolution / VAE factor)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights dtype (default: float32)")


def info_facts(args) -> dict:
    """Everything ``info`` prints, as plain data (the same summary as the app's Model tab)."""
    size = None if args.sample_size is None else validate.integer("--sample-size", args.sample_size, lo=1, hi=1024)
    if args.reference:
        meta = PIPELINES[args.reference]
        side = size or meta["resolution"] // 8
        return {"source": args.reference, "family": meta["family"], "model_ref": f"reference:{meta['hub_id']}",
                "resolution": meta["resolution"], "sample_size": side, "text_len": None,
                **denoiser_facts(meta_denoiser(args.reference), sample_size=side)}
    h = load_handle(args)
    facts = model_facts(h)
    if size is not None:
        facts.update(sample_size=size, **denoiser_facts(h.denoiser, sample_size=size, text_len=facts["text_len"]))
    return facts


def _print_info(f: dict) -> None:
    print(f"model:      {f['source']}")
    print(f"family:     {f['family']}")
    print(f"model_ref:  {f['model_ref']}")
    print(f"denoiser:   {f['denoiser_class']}, {human(f['params'])} params ({f['params']:,})")
    print(f"MACs:       {human(f['macs'])} per denoiser call at {f['resolution']} px "
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
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="repeat for several prompts")
    p.add_argument("--seed", action="append", type=int, metavar="N",
                   help="repeat for several seeds; every prompt runs with every seed (default: 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--resolution", type=int, help="image side in pixels (default: the model's)")
    add_plan_arg(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)")


def _png(out: Path, variant: str, prompt: int, seed: int) -> Path:
    return out / f"{variant}_p{prompt}_seed{seed}.png"


def _size_line(name: str, params: int, macs: int, base: tuple[int, int] | None = None) -> str:
    line = f"{name:<9} params {human(params):>8} ({params:,})  MACs {human(macs):>8}"
    if base:
        line += f"  ({1 - params / base[0]:.1%} params, {1 - macs / base[1]:.1%} MACs removed)"
    return line


@add_command("generate", help="images from the original (and pruned) model, same prompts and seeds",
             arguments=_generate_args)
def cmd_generate(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a file, not a folder")
    for name, value, check in (("--steps", args.steps, validate.steps), ("--guidance", args.guidance, validate.guidance)):
        if value is not None:
            check(value, name=name)  # before loading anything
    if args.resolution is not None:
        validate.integer("--resolution", args.resolution, lo=8, hi=validate.LIMITS.max_resolution)
    validate.seed_list(args.seed or [0], "--seed")
    seeds = args.seed or [0]
    pairs = [(i, p, s) for i, p in enumerate(args.prompt) for s in seeds]
    names = ["original"] + (["pruned"] if args.plan else [])
    check_io(args, {"--out": out, **{f"--out's {n}_p{i}_seed{s}.png": _png(out, n, i, s)
                                     for n in names for i, _, s in pairs}})
    h = load_handle(args)
    plan = load_plan(args.plan, h) if args.plan else None
    prompts, pair_seeds = pair_samples([p for _, p, _ in pairs], [s for _, _, s in pairs])
    g = spec(h, steps=args.steps, guidance=args.guidance, resolution=args.resolution)  # checked before any work
    variants = [("original", h.denoiser)] + ([("pruned", slim(h.denoiser, plan))] if plan else [])
    base = None
    for name, den in variants:
        images = generate_images(h, prompts, pair_seeds, denoiser=den, steps=g.steps, guidance=g.guidance,
                                 resolution=g.resolution)
        size = (count_params(den), total_macs(den, **g.count_inputs()))
        print(_size_line(name, *size, base))
        base = base or size
        for (i, _, s), im in zip(pairs, images):
            path = _png(out, name, i, s)
            with atomic_write(path) as tmp:
                im.save(tmp, format="PNG")
            print(f"  {path}")
    return 0
