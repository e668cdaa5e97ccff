"""Training-free reconstruction: re-fit the slim model's layers to the original's outputs, in closed form
(by default every Linear / Conv2d it runs, ``layers="all"``; or only the layers that consume pruned units).

Pruning a head, an FFN neuron or a resnet channel group removes columns of the layer that
reads those units (its *consumer*): ``to_out[0]`` (and FLUX's ``to_add_out``), ``ff.net[2]``,
a FLUX single block's ``proj_out`` (head and MLP columns), a resnet's ``conv2`` (``k x k``
patches of the kept channels, the exact im2col form). ``reconstruct`` records the consumer's
inputs on the **original** model's own trajectories (calibration prompts and seeds, every
denoising step, the model's sampler and guidance) and, for each consumer, solves

    min_{W', b'}  E || W x + b - (W' x_K + b') ||^2  +  ridge * mean(diag G_KK) * || W' - W0 ||^2

over the kept inputs ``K`` from the accumulated Gram matrix ``G = E[x x^T]`` and mean ``E[x]``.
The ridge pulls towards the **start** weights ``W0``: plain pruning's ``W_K``, or, for a plan that
comes compensated by its method (OBS-Diff's plans record the run that compensated them), that
method's compensated weights; so a huge ridge keeps the start's weights (the plain slim model, or
the method's) and a tiny one gives the least-squares fit. A removed operator (attention / FFN branch, resnet, whole
transformer, FLUX or SD3 block) gets a fitted stand-in (:mod:`pruning.standin`, ``standin``): a
least-squares linear map from its input (fitted on the original's inputs, or ``"sequential"``:
one operator at a time on the pruned model's), its mean output as a bias, or nothing (the
default: measured on the 64 held-out captions of tiny-shapes-sd, every fit raised LD-Pruner's
20% latent MSE, although on the first 32 they lowered it and accuracy rose; see the module).

**Every layer, judged one at a time** (the defaults since 2026-12-07: ``layers="all"``,
``check_by="layer"``, ``groups=32``). With ``layers="all"`` (and ``inputs="pruned"``) not only
the consumers but every Linear / Conv2d the slim model runs is re-fitted, in the order one forward
runs them (:func:`refit_layers`, :func:`run_order`): each fitted on what the pruned model, its
earlier layers already re-fitted, feeds it, against the original layer's output. So a layer after
a removed operator, or after a badly pruned block, is pulled back towards what the original
computed there: LD-Pruner's whole-operator plans, which leave no consumer, get something to
re-fit. A layer that reads exactly the original's inputs and keeps them all (before the first
pruned part, a producer that only loses rows, a cross-attention's key and value) is left alone
(``report["unchanged"]``): its fit would be its start weights. A removed operator's stand-in (a
resnet's kept ``conv_shortcut``, a linear map) is not re-fitted; with ``inputs="original"`` only the
consumers are. With ``check_by="layer"`` each layer's fit is kept only if it
does not raise the final latents' error on the held-out calibration batches (one sampling run
of those batches per layer), so a fit that is good locally but hurts downstream is undone alone,
not with its whole group. Measured on a validation set (96 training captions apart from the
calibration ones, latent MSE, plain -> the old defaults: consumers, group checks, 8 groups ->
every layer, layer checks, 8 groups -> the same with 32 groups): LD-Pruner 20% on tiny-shapes-sd
0.0071 -> 0.0071 -> 0.0021 -> 0.0015, on tiny-shapes-flux 0.054 -> 0.054 -> 0.028 -> 0.024, on
tiny-shapes-sd3 0.151 -> 0.151 -> 0.091 -> 0.067; EcoDiff 30% on tiny-shapes-sd 0.0185 -> 0.0113
-> 0.0082 -> 0.0052; random 30% on tiny-shapes-flux 0.56 -> 0.140 -> 0.183 -> 0.129, on
tiny-shapes-sd3 0.71 -> 0.51 -> 0.56 -> 0.60 (the one cell the old defaults won: a random half of
every head and neuron leaves little to re-fit); re-fitting every layer with the group check made
EcoDiff worse (0.0148), so the two go together. On the 64 held-out prompts (the README's quality
tables, reconstructed / plain latent MSE at 20% and 30% on the three bundled models): LD-Pruner
0.06-0.51x (1.0x before), EcoDiff, Diff-Pruning and magnitude 0.03-0.30x (0.04-0.67x), random
0.10-0.78x (0.17-0.89x), OBS-Diff's plans 0.65-1.02x of its own compensation (0.63-1.01x).

**Sequential groups and the checks.** The layers are cut into ``groups`` (default 32)
groups in run order, each one calibration pass. With ``inputs="pruned"`` a group is fitted on
what the model, its earlier groups already re-fitted, feeds it, against the original's output
(asymmetric); ``timestep_weights="linear"`` weights the steps from 1.2 (noisiest) to 0.8
(OBS-Diff); ``guard`` judges each layer's fit on held-out calibration batches (every fourth)
and keeps the start weights where the fit raised that error; ``check`` (default on)
keeps a group's fits (``check_by="group"``) or each layer's (``"layer"``) only if they do not raise
the final latents' error against the original on those held-out batches (else they keep the start
weights; with fewer than four calibration batches none is held out and nothing is checked). So on a method's compensated plan a
reconstruction can only keep or improve on the method's compensation on those batches. Measured
on OBS-Diff's plans (64 held-out prompts, reconstructed / OBS-Diff's latent MSE at 20% / 30%):
tiny-shapes-sd 0.97 / 0.94, tiny-shapes-flux 1.02 / 1.01, tiny-shapes-sd3 0.97 / 1.02 (from the
plain slim weights it was 1.67 / 1.07, 1.22 / 1.15, 1.00 / 1.05;
``benchmarks/results/obsdiff_recon.md``). Measured on tiny-shapes-sd (32
held-out prompts, reconstructed / plain latent MSE at 20% / 30%): ridge 0.1 with the original's
inputs, Taylor 0.92 / 0.23, magnitude 0.47 / 0.28; ridge 0.01: Taylor 0.84 / 0.21, magnitude
0.38 / 0.26, EcoDiff 0.22 / 0.22; ridge 0.01 with 4 checked groups (the defaults then): Taylor
0.80 / 0.21, magnitude 0.43 / 0.23, EcoDiff 0.22 / 0.29; the pruned model's inputs (ridge 0.1,
4 groups): Taylor 0.99 / 0.22, magnitude 0.70 / 0.41; linear timestep weights and the layer
guard changed nothing measurable. What mattered most was the calibration prompts: fitted on
the first 32 training captions (all red circles) every re-fit raised the held-out latent MSE
(Taylor 20%: 1.63x); :func:`~pruning.prompts.calibration_prompts` now spreads them.

The earlier defaults (``inputs="pruned"``, ``timestep_weights="linear"``, 8 checked groups) were measured
again with scores from those prompts (64 held-out prompts, latent MSE / acc_all, the old defaults
"original" / "flat" / 4 groups first): Taylor 20% on tiny-shapes-sd 0.0134 / 0.938 -> 0.0086 /
0.922; Taylor 30% 0.0209 / 0.891 -> 0.0222 / 0.906; magnitude 20% 0.0281 / 0.891 -> 0.0288 / 0.906;
Taylor 30% on tiny-shapes-sd3 0.0331 / 0.859 -> 0.0310 / 0.922 (pruned inputs alone 0.891, with
the weights 0.906, 8 groups on the original inputs 0.859). Not measured on tiny-shapes-flux.

The result is a slim model: the same shapes as ``slim(denoiser, plan)``, other consumer weights,
plus the compensation biases; its ``pruning_plan`` records the settings (``plan.reconstruction``,
with the method's own record as ``settings["start"]`` when it started from a method's compensation),
so ``export`` writes it like any export and ``load_pruned`` rebuilds it bit for bit.

**Replay.** The original's sampling of the calibration prompts is run once and its denoiser
calls recorded (:func:`record_calls`: their latents and timesteps; the conditioning is shared);
every pass replays them on the original and the pruned model, and a call stops as soon as the
group's layers have all run (not under accelerate's offload hooks). The statistics are bit for
bit those of whole calls (tested); on the bundled models a default reconstruction took about
25-45% less time.

**Memory.** Statistics are float64 (``D x D`` per consumer, ``D`` its input width: ``C*k*k``
for a conv) and are gathered in groups of consumers whose Grams fit ``max_gram_mb``; each group
is one calibration pass, so the peak is about the largest group plus the model. SDXL's largest
FFN consumer (``net[2]``, input 10240) needs 10240^2 x 8 B = 0.84 GB; a FLUX single block's
``proj_out`` (input 3072 + 12288 = 15360) 1.89 GB; SD 1.5's widest ``conv2`` (1280 x 3 x 3 =
11520 inputs) 1.06 GB. The default budget (2048 MB) holds any one of them; with
``inputs="pruned"`` each consumer also keeps the pruned-input moments (up to about 3x that), and
a consumer larger than the budget gets a pass of its own. The statistics are accumulated in
place (no Gram-sized temporary) and each layer's are freed as soon as its fit is written, so no
pass holds an earlier group's; a solve holds about 2.5 kept-input Grams (the kept block, its
Cholesky factor, ``cholesky_solve``'s copy of it). :func:`pruning.estimate.reconstruction_cost` counts all this
for the estimate (R7 checks it against the RSS of a run at SD 1.5 size).

**Offload.** On a pipeline with diffusers' model or sequential CPU offload
(:func:`pruning.memory.enable_memory_savers`), the original denoiser runs through its hooks, a
sequentially offloaded layer's weights are read from its hook, and the slim model is offloaded
like the denoiser while it runs (:func:`pruning.memory.offloaded_like`); the statistics live on
the execution device. The result equals the plain run's bit for bit (tested on the CPU).

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> from pruning.plan import PruningPlan
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
>>> plan = PruningPlan(family="sd", base="tiny:sd", kept_heads={attn: (0,)})
>>> small = reconstruct(h, plan, ReconstructSettings(prompts=("a red circle",), steps=2))
>>> small.get_submodule(attn).heads, small.pruning_plan.reconstruction["settings"]["ridge"]
(1, 0.01)
>>> r = small.reconstruction["layers"][attn + ".to_out.0"]
>>> r["rel_error_after"] <= r["rel_error_before"]
True
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .catalog import catalog, discover
from .errors import RunStopped, SettingsError
from .memory import offloaded, offloaded_like, own_tensor
from .methods.base import opt
from .plan import PruningPlan
from .prompts import calibration_prompts
from .rollout import prepare, rollout, step
from .runs import RunControl, as_control
from .slim import keep_masks, slim
from .specs import inside
from .standin import MODES as STANDIN_MODES
from .standin import fit as fit_standins

DEFAULT_RIDGE = 0.01
DEFAULT_GROUPS = 32
DEFAULT_INPUTS, DEFAULT_WEIGHTS = "pruned", "linear"  # measured 2026-12-07 (module docstring)
DEFAULT_LAYERS, DEFAULT_CHECK_BY = "all", "layer"  # measured 2026-12-07 (module docstring)
DEFAULT_STANDIN_RIDGE = 0.3  # tiny-shapes-sd, LD-Pruner 30%: 0.01 fitted the calibration prompts (1.33x plain), 0.3 0.87x
TIMESTEP_WEIGHTS = ("flat", "linear")
LAYER_CHOICES = ("consumers", "all")
CHECK_BY = ("group", "layer")
HOLDOUT_EVERY = 4  # the guard-rail holds out every fourth calibration prompt
LEGACY = {"groups": 1, "timestep_weights": "flat", "guard": False, "check": False, "layers": "consumers",
          "check_by": "group"}  # what a plan recorded before these settings
DEFAULT_PROMPTS = 32
SEED_OFFSET = 10_000  # calibration seeds 10000.. stay apart from the evaluation seeds 0..
MAX_GRAM_MB = 1 << 20


@dataclass(frozen=True)
class ReconstructSettings:
    """What reconstruction calibrates on and how it regularises (frozen; every value checked).

    ``prompts``: calibration prompts (default: the model's first 32 calibration prompts, apart
    from the evaluation prompts); ``seeds`` pair with them (default 10000, 10001, ...);
    ``steps`` / ``guidance`` / ``resolution``: the model's defaults when unset. ``ridge``: the
    regulariser relative to the mean kept-input energy. ``compensate_operators``: fold removed
    operators' mean output into a bias. ``max_gram_mb``: memory for the statistics of one pass.
    """

    prompts: tuple[str, ...] | None = opt(None, f"calibration prompts (default: {DEFAULT_PROMPTS} of the model's "
                                          "calibration prompts, apart from the evaluation ones)", "strs")
    seeds: tuple[int, ...] | None = opt(None, f"one seed per prompt (default {SEED_OFFSET}, {SEED_OFFSET + 1}, ...)",
                                        "ints")
    steps: int | None = opt(None, "sampling steps of the calibration trajectories (default: the model's)", "int")
    guidance: float | None = opt(None, "guidance scale (default: the model's)", "float")
    resolution: int | None = opt(None, "image side in pixels (default: the model's)", "int")
    ridge: float = opt(DEFAULT_RIDGE, "ridge: how strongly the re-fit stays near the start weights (plain pruning's, "
                       "or the compensation of the plan's method), relative to the inputs' mean energy (0 = pure "
                       "least squares)", "float")
    compensate_operators: bool = opt(False, "fold each removed operator's mean output into a bias (the same as "
                                     "standin='bias'; kept for plans recorded before standin)", "bool", hidden=True)
    standin: str = opt("none", "what stands in for a removed operator: 'linear' (a least-squares linear map from its "
                       "input, merged into a kept weight where possible), 'sequential' (the same, fitted operator by "
                       "operator on the pruned model's inputs), 'bias' (its mean output), 'none' (the default: on "
                       "tiny-shapes-sd's held-out captions every fit raised the latent MSE), or 'auto': whichever gives "
                       "the lowest error on held-out calibration prompts (pruning.standin)", "choice", STANDIN_MODES)
    standin_ridge: float = opt(DEFAULT_STANDIN_RIDGE, "ridge of the stand-ins' linear maps, relative to their inputs' "
                               "mean energy (larger = closer to the mean-output bias)", "float")
    inputs: str = opt(DEFAULT_INPUTS, "which inputs the re-fit reads: 'pruned' (what the pruned model feeds the layer, "
                      "layers re-fitted in order) or 'original' (the original model's)", "choice",
                      ("pruned", "original"))
    groups: int = opt(DEFAULT_GROUPS, "sequential groups: the layers re-fitted are split into this many groups in "
                      "order (the order the model runs them; the consumers' depth order), each re-fitted on the "
                      "inputs of the model whose earlier groups are already re-fitted (with inputs='pruned'; one "
                      "calibration pass per group)", "int")
    timestep_weights: str = opt(DEFAULT_WEIGHTS, "weight of each sampling step in the statistics: 'flat', or 'linear' from "
                                "1.2 at the first (noisiest) step to 0.8 at the last (OBS-Diff)", "choice",
                                TIMESTEP_WEIGHTS)
    guard: bool = opt(False, "guard-rail: a re-fit that raises the output error on held-out calibration prompts "
                      "(every fourth batch) falls back to the start weights for that layer (plain pruning's, or "
                      "the compensation of the plan's method)", "bool")
    check: bool = opt(True, "end-to-end check: each layer's re-fit (check_by='layer') or each group's re-fits "
                      "('group') are kept only if they do not raise the final latents' error against the original "
                      "on the held-out calibration batches (every fourth batch; else they keep the start weights)",
                      "bool")
    layers: str = opt(DEFAULT_LAYERS, "which layers are re-fitted: 'consumers' (the layers that read pruned units) or "
                      "'all' (every linear and convolution the slim model runs, in the order it runs them: "
                      "with inputs='pruned' each is fitted to the original's output, which also corrects the "
                      "error the layers before it accumulated; inputs='original' re-fits only the consumers)",
                      "choice", LAYER_CHOICES)
    check_by: str = opt(DEFAULT_CHECK_BY, "what the end-to-end check judges: each 'group' of re-fits as a whole, or each "
                        "'layer' (a re-fit that raises the error on the held-out batches is undone alone; one "
                        "held-out sampling run per layer)", "choice", CHECK_BY)
    batch_size: int = opt(8, "prompts per calibration batch", "int")
    max_gram_mb: float = opt(2048.0, "memory for the layer statistics of one calibration pass, in MB (more "
                             "layers per pass = fewer passes)", "float")

    def __post_init__(self):
        v = validate
        values = {**v.sampling_fields(prompts=self.prompts, seeds=self.seeds, steps=self.steps,
                                      guidance=self.guidance, resolution=self.resolution),
                  "ridge": v.number("ridge", self.ridge, lo=0, hi=1e6),
                  "inputs": v.choice("inputs", self.inputs, ("pruned", "original")),
                  "layers": v.choice("layers", self.layers, LAYER_CHOICES),
                  "check_by": v.choice("check_by", self.check_by, CHECK_BY),
                  "standin": v.choice("standin", self.standin, STANDIN_MODES),
                  "standin_ridge": v.number("standin_ridge", self.standin_ridge, lo=0, hi=1e6),
                  "batch_size": v.integer("batch_size", self.batch_size, lo=1, hi=v.LIMITS.max_prompts),
                  "groups": v.integer("groups", self.groups, lo=1, hi=1000),
                  "timestep_weights": v.choice("timestep_weights", self.timestep_weights, TIMESTEP_WEIGHTS),
                  "max_gram_mb": v.number("max_gram_mb", self.max_gram_mb, lo=0.01, hi=MAX_GRAM_MB)}
        for name in ("compensate_operators", "guard", "check"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for k, val in values.items():
            object.__setattr__(self, k, val)
        if self.compensate_operators and self.standin == "none":  # the older switch: the mean-output bias
            object.__setattr__(self, "standin", "bias")

    def resolved(self, handle) -> ReconstructSettings:
        """These settings with the prompts and seeds filled in (what a plan records)."""
        prompts = self.prompts or calibration_prompts(handle.model_ref, DEFAULT_PROMPTS)
        seeds = self.seeds or tuple(SEED_OFFSET + i for i in range(len(prompts)))
        return replace(self, prompts=tuple(prompts), seeds=tuple(seeds))

    @classmethod
    def from_record(cls, record: Mapping) -> ReconstructSettings:
        """The settings a plan's ``reconstruction["settings"]`` recorded (checked again; its
        ``"start"``, the method's record it started from, is the plan's, not a setting)."""
        known = set(cls.__dataclass_fields__) | {"start"}
        unknown = sorted(set(record) - known)
        if unknown:
            raise SettingsError(f"reconstruction settings have unknown field(s) {validate.few(unknown)}")
        d = {**LEGACY, **record}  # a plan recorded before a setting existed was made without it
        d.pop("start", None)
        d.setdefault("standin", "bias" if d.get("compensate_operators") else "none")
        for k in ("prompts", "seeds"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------- consumers


@dataclass(frozen=True)
class Consumer:
    """A layer that reads pruned units: its weight's input columns ``keep`` (over ``D`` inputs)."""

    fqn: str  # the Linear / Conv2d module
    keep: torch.Tensor  # (D,) bool over the layer's flattened inputs (C*kh*kw for a conv)
    # (out,) bool: the outputs the plan keeps, where it cuts them too (a UNet resnet's time_emb_proj
    # reads the conditioning channels and loses the rows of its channel groups); None: all
    rows: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.keep.numel()

    def gram_bytes(self, paired: bool = False) -> int:
        """Memory of its statistics in float64: (D+1)^2, plus (D+1)(k+1) + (k+1)^2 when paired with
        the pruned model's inputs (k the kept inputs)."""
        d, k = self.width + 1, int(self.keep.sum()) + 1
        return 8 * (d * d + (d * k + k * k if paired else 0))


def consumers(denoiser: nn.Module, plan: PruningPlan) -> list[Consumer]:
    """The consumer layers of a (normalized) plan's pruned structures, with their kept inputs,
    in the order the denoiser runs them."""
    found = discover(denoiser)
    masks = keep_masks(denoiser, found.structures, plan)
    owner = {c.param: s.fqn for s in found.structures.values() for c in s.cuts if c.dim == 1}
    depth = catalog(denoiser)[1].set_index("fqn")["depth"].to_dict()
    out = []
    for param, dims in masks.items():
        if 1 not in dims:
            continue  # rows of producers (to_q, net[0].proj, conv1...): nothing to re-fit
        fqn = param.rsplit(".", 1)[0]
        layer = denoiser.get_submodule(fqn)
        keep = dims[1]
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                continue
            keep = keep.repeat_interleave(layer.kernel_size[0] * layer.kernel_size[1])  # (C*kh*kw,)
        out.append((depth.get(owner[param], -1), fqn, Consumer(fqn, keep, dims.get(0))))
    return [c for _, _, c in sorted(out, key=lambda t: t[:2])]


def refit_layers(denoiser: nn.Module, plan: PruningPlan, which: str = "consumers",
                 order: list[str] | None = None) -> list[Consumer]:
    """The layers ``reconstruct`` re-fits for a (normalized) ``plan``, in the order the denoiser runs
    them: its :func:`consumers` (``which="consumers"``), or (``"all"``) every Linear / Conv2d
    (groups 1) the slim model keeps, the consumers with their kept inputs and every other layer
    with all its inputs and the outputs the plan keeps. Layers inside a removed operator are gone.
    ``order``: the denoiser's :func:`run_order`, where the caller has it already.

    >>> from pruning.testing import tiny_pipeline
    >>> den = tiny_pipeline("sd").unet
    >>> attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    >>> plan = PruningPlan(family="sd", base="tiny:sd", kept_heads={attn: (0,)}).normalized(den)
    >>> [c.fqn for c in refit_layers(den, plan)]
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0']
    >>> every = refit_layers(den, plan, "all")
    >>> every[0].fqn, len(every) == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in den.modules())
    ('time_embedding.linear_1', True)
    >>> q = next(c for c in every if c.fqn == attn + ".to_q")  # a producer: all inputs, the kept rows
    >>> bool(q.keep.all()), int(q.rows.sum()) < q.rows.numel()
    (True, True)
    """
    own = consumers(denoiser, plan)
    if which == "consumers":
        return own
    own = {c.fqn: c for c in own}
    masks = keep_masks(denoiser, discover(denoiser).structures, plan)
    out = []
    for fqn in order if order is not None else run_order(denoiser):
        layer = denoiser.get_submodule(fqn)
        if fqn in plan.removed_operators or any(inside(fqn, op) for op in plan.removed_operators):
            continue  # replaced whole (or by its stand-in)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue
        c = own.get(fqn) or Consumer(fqn, torch.ones(layer.weight[0].numel(), dtype=torch.bool),
                                     masks.get(fqn + ".weight", {}).get(0))
        if c.keep.any() and (c.rows is None or c.rows.any()):
            out.append(c)
    return out


def run_order(denoiser: nn.Module) -> list[str]:
    """The Linear / Conv2d layers of ``denoiser`` in the order one forward on example inputs first
    runs them (layers it never runs are left out)."""
    seen: dict[str, None] = {}
    trace_layers(denoiser, lambda fqn, x: seen.setdefault(fqn, None))
    return list(seen)


def trace_layers(model: nn.Module, record, kwargs: dict | None = None) -> None:
    """One no-grad forward of ``model`` on ``kwargs`` (default: seeded example inputs) that calls
    ``record(fqn, x)`` with each Linear / Conv2d's input at every call; no hook is left behind."""
    from .metrics import example_inputs

    kwargs = kwargs if kwargs is not None else example_inputs(model, batch=1, generator=torch.Generator().manual_seed(0))
    hooks = [m.register_forward_pre_hook(lambda m, a, f=f: record(f, a[0]))
             for f, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        for h in hooks:
            h.remove()


def layer_inputs(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as rows of its flattened receptive field: (rows, D)."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                        stride=layer.stride)  # (B, C*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B*L, C*kh*kw)
    return x.reshape(-1, x.shape[-1])  # (B*N, D)


def flat_weight(layer: nn.Module) -> torch.Tensor:
    """The weight as (out, D) float64, D in the order of :func:`layer_inputs` (also of a layer
    whose weights sequential offload keeps in its hook)."""
    w = own_tensor(layer, "weight")
    return w.detach().double().reshape(w.shape[0], -1)  # (out, C*kh*kw) for a conv


def _augment(rows: torch.Tensor) -> torch.Tensor:
    x = rows.detach().double()
    return torch.cat([x, x.new_ones(x.shape[0], 1)], 1)  # (rows, width+1): x~ = [x, 1]


class Stats:
    """Running second moments of a consumer's inputs, with a constant 1 appended (x~ = [x, 1]):
    ``G = E[x~ x~^T]`` of the original model's inputs ``x`` (D), ``H = E[h~ h~^T]`` of the
    inputs ``h`` (k) the pruned model gives the kept columns, and ``X = E[x~ h~^T]``.

    Given ``keep`` (no pruned model: ``h`` is ``x``'s kept part), only ``G`` is accumulated and
    ``X``, ``H`` are its kept columns and block."""

    def __init__(self, width: int, kept: int, device, keep: torch.Tensor | None = None):
        f64 = dict(dtype=torch.float64, device=device)
        self.G = torch.zeros(width + 1, width + 1, **f64)  # (D+1, D+1)
        self.cols = None if keep is None else torch.cat([keep.nonzero().flatten().to(device),
                                                         torch.tensor([width], device=device)])  # K and the 1
        self.H = None if keep is not None else torch.zeros(kept + 1, kept + 1, **f64)  # (k+1, k+1)
        self.X = None if keep is not None else torch.zeros(width + 1, kept + 1, **f64)  # (D+1, k+1)
        self.rows = 0

    def add(self, x: torch.Tensor, h: torch.Tensor | None = None, weight: float = 1.0) -> None:
        """``x``: (rows, D) original inputs; ``h``: (rows, k) the pruned model's, same positions
        (omitted with ``keep``); ``weight``: these rows' weight (a timestep weight). Accumulated in
        place (``addmm_``): no Gram-sized temporary."""
        self._projected = None
        xa = _augment(x)
        self.G.addmm_(xa.T, xa, alpha=weight)
        if self.cols is None:
            ha = _augment(h)
            self.H.addmm_(ha.T, ha, alpha=weight)
            self.X.addmm_(xa.T, ha, alpha=weight)
        self.rows += weight * xa.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes these statistics hold."""
        return sum(t.numel() * t.element_size() for t in (self.G, self.H, self.X) if t is not None)

    def merged(self, other: Stats) -> Stats:
        """These statistics and ``other``'s (same layer) pooled."""
        out = Stats.__new__(Stats)
        out.cols, out.rows = self.cols, self.rows + other.rows
        out.G = self.G + other.G
        out.H = None if self.H is None else self.H + other.H
        out.X = None if self.X is None else self.X + other.X
        return out

    def means(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E[x~ x~^T]`` (D+1, D+1), ``E[x~ h~^T]`` (D+1, k+1), ``E[h~ h~^T]`` (k+1, k+1): copies."""
        n = max(self.rows, 1)
        G = self.G / n
        if self.cols is not None:
            return G, G[:, self.cols], G[self.cols[:, None], self.cols]
        return G, self.X / n, self.H / n

    def kept_gram(self) -> torch.Tensor:
        """``E[h~ h~^T]`` (k+1, k+1), a new tensor (the only Gram-sized one a solve makes besides its
        Cholesky factor)."""
        n = max(self.rows, 1)
        if self.cols is None:
            return self.H / n
        out = self.G.new_empty(len(self.cols), len(self.cols))  # (k+1, k+1)
        for i in range(0, len(self.cols), 1024):  # row blocks: no (k+1)^2 index tensors, no other copy
            torch.index_select(self.G.index_select(0, self.cols[i:i + 1024]), 1, self.cols, out=out[i:i + 1024])
        return out.div_(n)

    def projected(self, W: torch.Tensor, b: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """For the layer's weight ``W`` (out, D) and bias ``b``: the output energy ``E||W x + b||^2``
        and ``E[y h~^T]`` (out, k+1), without copying a Gram. Kept for the same ``W``, ``b`` (the
        same tensor objects, unchanged): the fit and its error figures share one ``[W, b] G``."""
        version = (W._version, None if b is None else b._version)
        cached = getattr(self, "_projected", None)
        if cached is not None and cached[0] is W and cached[1] is b and cached[2] == version:
            return cached[3]
        full = _full(W, b)
        n = max(self.rows, 1)
        fg = full @ self.G  # (out, D+1)
        energy = float((fg * full).sum()) / n
        out = energy, (fg[:, self.cols] if self.cols is not None else full @ self.X) / n
        self._projected = (W, b, version, out)  # holds W and b: their identity cannot be reused meanwhile
        return out


def _full(W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([W, (b if b is not None else W.new_zeros(W.shape[0]))[:, None]], 1)  # (out, D+1)


def solve(W: torch.Tensor, b: torch.Tensor | None, stats: Stats, keep: torch.Tensor,
          ridge: float, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The re-fitted ``(W' (out, k), b')`` minimising ``E||W x + b - W' h - b'||^2 +
    lam ||W' - W0||^2`` with ``lam = ridge * mean(diag E[h h^T])``; ``W0`` is ``start`` (out, k),
    by default plain pruning's ``W_K`` (the bias is not pulled).

    >>> W = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    >>> x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    >>> keep = torch.tensor([True, True, False])
    >>> s = Stats(3, 2, "cpu"); s.add(x, x[:, keep])
    >>> Wk, bk = solve(W, None, s, keep, 0.0)
    >>> [round(v, 9) for v in Wk[0].tolist()]  # the third input is always 0: the fit is the kept columns
    [1.0, 2.0]
    >>> start = torch.tensor([[5.0, 5.0]], dtype=torch.float64)
    >>> [round(v, 3) for v in solve(W, None, s, keep, 1e9, start)[0][0].tolist()]  # a huge ridge keeps the start
    [5.0, 5.0]
    """
    k = int(keep.sum())
    cols = torch.cat([keep.nonzero().flatten(), torch.tensor([keep.numel()], device=keep.device)])  # K and the 1
    full = _full(W, b)
    _, C = stats.projected(W, b)  # (out, k+1): E[y h~^T], y the original layer's output
    prior = full[:, cols].clone() if start is None else _full(start, None)  # W0 (plain pruning: W_K) and b
    prior[:, -1] = 0  # the bias is not pulled
    A = stats.kept_gram()  # (k+1, k+1), solved in place of a copy
    lam = ridge * float(A.diagonal()[:k].mean()) if k else 0.0
    A.diagonal()[:k] += lam
    rhs = C + lam * torch.cat([prior[:, :k], prior.new_zeros(prior.shape[0], 1)], 1)
    if b is None:  # no bias to fit: drop the constant column
        A, rhs = A[:k, :k], rhs[:, :k]
    held = [A]
    del A  # handed over: freed once factored
    sol = _solve_symmetric(held, rhs.T).T  # A symmetric: sol A = rhs
    return (sol[:, :k], sol[:, k]) if b is not None else (sol, None)


def _solve_symmetric(held: list[torch.Tensor], B: torch.Tensor) -> torch.Tensor:
    """``X`` with ``A X = B`` for a symmetric ``A`` (``held = [A]``, emptied: the caller hands it
    over, so it is freed once factored; ``cholesky_solve`` copies the factor, and ``A``, the factor
    and that copy at once would be three kept-Gram-sized tensors): Cholesky when ``A`` is positive
    definite (the ridge makes it so; reproducible bit for bit, which LAPACK's least squares here is
    not), else the least-squares solution.

    >>> A = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> [round(v, 12) for v in _solve_symmetric([A], torch.tensor([[2.0], [2.0]], dtype=torch.float64)).flatten().tolist()]
    [1.0, 0.5]
    """
    A = held.pop()
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        del A
        return torch.cholesky_solve(B, L)
    return torch.linalg.lstsq(A, B).solution


def rel_error(W: torch.Tensor, b: torch.Tensor | None, stats: Stats, Wk: torch.Tensor,
              bk: torch.Tensor | None) -> float:
    """``E||y - (Wk h + bk)||^2 / E||y||^2`` on the recorded inputs (y the original output)."""
    new = _full(Wk, bk)  # (out, k+1)
    energy, C = stats.projected(W, b)
    cross = float((C * new).sum())  # E[y^T (Wk h + bk)]
    err = energy - 2 * cross + float(((new @ stats.kept_gram()) * new).sum())
    return max(err, 0.0) / max(energy, 1e-30)


# --------------------------------------------------------------------------- calibration


def _trajectories(handle, s: ReconstructSettings, control: RunControl) -> list:
    out = []
    for i in range(0, len(s.prompts), s.batch_size):
        if control.stopped():
            raise RunStopped(f"reconstruction {control.reason or 'stopped'} while preparing the calibration set; "
                             "nothing was changed")
        out.append(prepare(handle, list(s.prompts[i:i + s.batch_size]), list(s.seeds[i:i + s.batch_size]),
                           steps=s.steps, guidance=s.guidance, resolution=s.resolution))
    return out


def sequential_groups(items: list[Consumer], budget_bytes: float, paired: bool = False,
                      n: int = 1) -> list[list[Consumer]]:
    """``items`` (in depth order) cut into ``n`` contiguous groups of about equal count, each then
    packed by :func:`consumer_groups`.

    >>> cs = [Consumer(str(i), torch.ones(3, dtype=torch.bool)) for i in range(5)]
    >>> [[c.fqn for c in g] for g in sequential_groups(cs, 1e9, n=2)]
    [['0', '1'], ['2', '3', '4']]
    """
    n = max(1, min(n, len(items)))
    cuts = [round(i * len(items) / n) for i in range(n + 1)]
    parts = [items[a:b] for a, b in zip(cuts, cuts[1:])]
    return [g for part in parts for g in consumer_groups(part, budget_bytes, paired) if g] or [[]]


def consumer_groups(items: list[Consumer], budget_bytes: float, paired: bool = False) -> list[list[Consumer]]:
    """Consumers packed greedily (in order) into groups whose Grams fit the budget (one alone may not)."""
    groups, size = [[]], 0
    for c in items:
        if groups[-1] and size + c.gram_bytes(paired) > budget_bytes:
            groups.append([])
            size = 0
        groups[-1].append(c)
        size += c.gram_bytes(paired)
    return [g for g in groups if g] or [[]]


def _stat_device(handle) -> torch.device:
    return torch.device("cpu") if handle.device.type == "mps" else handle.device  # no float64 on MPS


def step_weights(steps: int, kind: str = "flat") -> list[float]:
    """Each sampling step's weight in the statistics: 1, or from 1.2 at the first (noisiest) step
    down to 0.8 at the last (OBS-Diff's alpha_t).

    >>> step_weights(3, "linear"), step_weights(2)
    ([1.2, 1.0, 0.8], [1.0, 1.0])
    """
    if kind == "flat" or steps == 1:
        return [1.0] * steps
    return [round(1.2 - 0.4 * i / (steps - 1), 12) for i in range(steps)]


@dataclass
class Recorded:
    """The original's own sampling on the calibration trajectories, recorded once: ``calls[n][i]``
    is the list of ``(args, kwargs)`` of every denoiser call at step ``i`` of batch ``n`` (each
    calibration pass replays them on both models), ``final[n]`` that batch's final latents."""

    calls: list[list[list[tuple[tuple, dict]]]]
    final: list[torch.Tensor]


def record_calls(den: nn.Module, trajs: list, control: RunControl) -> Recorded:
    """Run the original's sampling on ``trajs`` once, keeping every denoiser call's arguments
    (its latents, timesteps and conditioning: references, the conditioning shared)."""
    step_calls: list = []  # this step's calls (rebound each step; the hook reads the current list)
    hook = den.register_forward_pre_hook(lambda m, args, kwargs: step_calls.append((args, dict(kwargs))),
                                         with_kwargs=True)
    out = Recorded([], [])
    try:
        with torch.no_grad():
            for n, traj in enumerate(trajs):
                z, steps = traj.z0, []
                for i in range(traj.steps):
                    if control.stopped():
                        raise RunStopped(f"reconstruction {control.reason or 'stopped'} while recording the "
                                         f"original's sampling (batch {n + 1} of {len(trajs)}); nothing was changed")
                    step_calls = []
                    z = step(den, traj, i, z)
                    steps.append(step_calls)
                out.calls.append(steps)
                out.final.append(z)
    finally:
        hook.remove()
    return out


class _Enough(Exception):
    """Raised inside a calibration call once every layer of the group has been recorded."""


def _calibrate(handle, small: nn.Module | None, recorded: Recorded, group: list[Consumer],
               control: RunControl, what: str, weights: str = "flat",
               held: set | None = None) -> dict[str, Stats]:
    """One pass over the original model's calibration trajectories (``recorded``). Every call the
    original made is replayed: the original denoiser runs on ``z_i`` (its inputs ``x`` to
    ``group``'s layers are recorded) and, with ``small``, the pruned model runs on the same inputs
    (its inputs ``h`` to the same layers: what the re-fitted layer will read). Without ``small``,
    ``h`` is ``x``'s kept part. A call stops as soon as each of the group's layers has run as
    often as in the pass's first (whole) call: the rest of the model is not needed. Every hook is
    removed afterwards."""
    den = handle.denoiser
    device = _stat_device(handle)
    stats = {c.fqn: Stats(c.width, int(c.keep.sum()), device, keep=None if small is not None else c.keep)
             for c in group}
    held_stats = {c.fqn: Stats(c.width, int(c.keep.sum()), device, keep=None if small is not None else c.keep)
                  for c in group} if held else {}
    now = {"w": 1.0, "held": False}  # this step's weight, and whether its batch is held out
    seen: dict[str, list[torch.Tensor]] = {c.fqn: [] for c in group}  # the original's inputs, in call order
    # per model: absent until its first call (which runs whole), then how often one call runs each of the
    # group's layers (the call stops once it has), or None (it runs whole: offloaded, or a layer did not run)
    wanted: dict[int, dict[str, int] | None] = {}
    ran: dict[int, dict[str, int]] = {}
    handles = []

    def target(fqn):
        return (held_stats if now["held"] else stats)[fqn]

    def counted(model_id, fqn):
        ran[model_id][fqn] = ran[model_id].get(fqn, 0) + 1
        want = wanted.get(model_id)
        if want and all(ran[model_id].get(f, 0) >= k for f, k in want.items()):
            raise _Enough  # the rest of this call feeds none of the group's layers

    def record_original(m, args, fqn):
        x = layer_inputs(m, args[0]).to(device)
        if small is None:
            target(fqn).add(x, weight=now["w"])
        else:
            seen[fqn].append(x)
        counted(id(den), fqn)

    def record_pruned(m, args, fqn):
        target(fqn).add(seen[fqn].pop(0), layer_inputs(m, args[0]).to(device), weight=now["w"])
        counted(id(small), fqn)

    def call(model, args, kwargs):
        key = id(model)
        ran[key] = {}
        try:
            model(*args, **kwargs)
        except _Enough:
            pass
        if key not in wanted:
            complete = all(ran[key].get(c.fqn, 0) > 0 for c in group) and not offloaded(model)
            wanted[key] = dict(ran[key]) if complete else None

    try:
        for c in group:
            handles.append(den.get_submodule(c.fqn).register_forward_pre_hook(
                lambda m, args, fqn=c.fqn: record_original(m, args, fqn)))
            if small is not None:
                handles.append(small.get_submodule(c.fqn).register_forward_pre_hook(
                    lambda m, args, fqn=c.fqn: record_pruned(m, args, fqn)))
        with torch.no_grad():
            for n, steps in enumerate(recorded.calls):
                ws = step_weights(len(steps), weights)
                now["held"] = bool(held) and n in held
                for i, step_calls in enumerate(steps):
                    now["w"] = ws[i]
                    if control.stopped():
                        raise RunStopped(f"reconstruction {control.reason or 'stopped'} during {what} (batch "
                                         f"{n + 1} of {len(recorded.calls)}); nothing was changed")
                    for args, kwargs in step_calls:  # the original's call, then the pruned model on the same inputs
                        call(den, args, kwargs)
                        if small is not None:
                            call(small, args, kwargs)
    finally:
        for h in handles:
            h.remove()
    if held:
        stats = {f: (st, held_stats[f]) for f, st in stats.items()}
    return stats


# --------------------------------------------------------------------------- the step


def reconstruct(handle, plan: PruningPlan, settings: ReconstructSettings | None = None, *,
                control: RunControl | None = None) -> nn.Module:
    """The slim denoiser for ``plan`` with its layers re-fitted (``settings.layers``: every one it
    runs, or the consumers) and removed operators compensated (see the module docstring).
    ``handle.denoiser`` is only read.

    A plan compensated by its method (:func:`start_record`: OBS-Diff's) starts from that method's
    model (``Method.rebuild``) instead of the plain slim one: its weights are the ridge's ``W0``
    and what the guard-rail and the check fall back to.

    The module carries ``pruning_plan`` (``plan`` with ``reconstruction`` recorded) and
    ``reconstruction``: per re-fitted layer (``layers``) ``rows`` and the relative output error on
    the calibration set before (the start weights) and after (with the check: ``kept_by_check``;
    an undone fit's own error is ``rel_error_fit``); ``unchanged``, the layers that read the
    original's inputs (not re-fitted); ``check``, each end-to-end check (``final_error``, ``kept``)
    after ``start_error``; per compensated operator the bias norm; ``start`` (the method whose
    compensation it started from, or None); ``seconds``, ``passes`` and ``gram_mb`` (the largest
    group's statistics). Stop raises ``RunStopped`` and changes nothing.
    """
    control = as_control(control)
    t0 = time.perf_counter()
    settings = (settings or ReconstructSettings()).resolved(handle)
    den = handle.denoiser
    start = start_record(plan)
    method = _start_method(start)  # an unknown method is an error now, before any calibration
    base_plan = replace(plan.normalized(den), reconstruction=None)
    found = discover(den)
    ops = [op for op in base_plan.removed_operators if settings.standin != "none" and op in found.operators]
    trajs = _trajectories(handle, settings, control)
    paired = settings.inputs == "pruned"
    items = refit_layers(den, base_plan, settings.layers if paired else "consumers")  # "all" reads the pruned inputs
    groups = sequential_groups(items, settings.max_gram_mb * 2 ** 20 / (2 if settings.guard else 1), paired,
                               settings.groups)
    held_out = {n for n in range(len(trajs)) if n % HOLDOUT_EVERY == HOLDOUT_EVERY - 1}
    held = held_out if settings.guard else set()
    checked = [trajs[n] for n in sorted(held_out)] if settings.check else []
    held_trajs = [trajs[n] for n in sorted(held_out)]
    recorded = record_calls(den, trajs, control)  # the original's sampling, replayed by every pass
    targets = [recorded.final[n] for n in sorted(held_out)]

    def plan_for(mode: str) -> PruningPlan:  # the plan recording the stand-ins' mode (slim builds their weights)
        record = _record(replace(settings, standin=mode, compensate_operators=False))
        return replace(base_plan, reconstruction={"settings": {**record, **({"start": start} if start else {})},
                                                  "compensated": ops if mode != "none" else []})

    def start_for(mode: str) -> nn.Module:  # the plain slim model, or the method's compensated one
        if method is None:
            return slim(den, plan_for(mode))
        return method.rebuild(handle, replace(base_plan, reconstruction={"settings": start, "compensated": []}))

    small, chosen, standins = fit_standins(handle, start_for, trajs, ops,
                                           settings.standin, settings.standin_ridge, control, held_out,
                                           lambda m: _final_error(m, held_trajs, targets, handle))
    new_plan = plan_for(chosen)
    best_error = _final_error(small, checked, targets, handle) if checked else None
    report = {"start_error": best_error, "layers": {}, "operators": standins.pop("operators"), "standin": standins,
              "passes": len(groups),
              "inputs": settings.inputs, "start": start and start["method"],
              "gram_mb": round(max(sum(c.gram_bytes(paired) for c in g) for g in groups) / 2 ** 20, 3)}
    per_layer = settings.check_by == "layer"
    for n, group in enumerate(groups):
        with offloaded_like(handle, small if settings.inputs == "pruned" else None):  # on the device only while it runs
            stats = _calibrate(handle, small if settings.inputs == "pruned" else None, recorded, group,
                               control, f"calibration pass {n + 1} of {len(groups)}",
                               settings.timestep_weights, held)  # the operators' stand-ins are fitted above
        saved = {}  # the start weights of the layers the next check judges
        for c in group:  # written into `small` now: the next group's pass reads through them
            layer, new = den.get_submodule(c.fqn), small.get_submodule(c.fqn)
            st = stats.pop(c.fqn)  # dropped from the dict: freed as soon as this layer's fit is written
            st, st_held = st if isinstance(st, tuple) else (st, None)
            if _unchanged(c, st, st_held):  # it reads what the original's layer reads: nothing to correct
                report.setdefault("unchanged", []).append(c.fqn)
                continue
            if checked:
                saved[c.fqn] = [t.detach().clone() for t in (new.weight, new.bias) if t is not None]
            keep = c.keep.to(st.G.device)
            W, b = _weights(layer, st.G.device, c.rows)  # (out, D): the original layer (its kept outputs)
            W0, b0 = _weights(new, st.G.device)  # (out, k): the start (plain pruning's W_K and b, or the method's)
            Wk, bk = solve(W, b, st, keep, settings.ridge, W0)
            entry = {}
            if st_held is not None:  # the guard-rail: judged on prompts the fit did not see
                start_err, fit_err = rel_error(W, b, st_held, W0, b0), rel_error(W, b, st_held, Wk, bk)
                entry = {"held_out_before": start_err, "held_out_after": fit_err, "fallback": fit_err > start_err}
                st = st.merged(st_held)
                Wk, bk = (W0, b0) if entry["fallback"] else solve(W, b, st, keep, settings.ridge, W0)
            report["layers"][c.fqn] = {"rows": st.rows, "inputs_kept": int(keep.sum()), "inputs": c.width,
                                       "rel_error_before": rel_error(W, b, st, W0, b0),
                                       "rel_error_after": rel_error(W, b, st, Wk, bk), **entry}
            with torch.no_grad():
                new.weight.copy_(Wk.reshape(new.weight.shape).to(new.weight))  # (out, k) -> (out, k', kh, kw) for a conv
                if bk is not None:
                    new.bias.copy_(bk.to(new.bias))
            st = st_held = None  # this layer's statistics go now, not when the next pass has made its own
            if checked and per_layer:
                best_error = _judge(small, saved, best_error, checked, targets, handle, report)
                saved = {}
        del stats
        if checked and not per_layer and saved:  # the end-to-end check of this group's re-fits
            best_error = _judge(small, saved, best_error, checked, targets, handle, report)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    small.pruning_plan = new_plan
    small.reconstruction = report
    return small


def _unchanged(c: Consumer, *stats: Stats | None) -> bool:
    """The layer keeps all its inputs and the pruned model fed it exactly the original's inputs
    (paired statistics equal): its re-fit would be its start weights up to rounding."""
    return bool(c.keep.all()) and all(st is None or (st.H is not None and torch.equal(st.G, st.H)) for st in stats)


def _judge(small: nn.Module, saved: dict, best_error: float, checked: list, targets: list, handle,
           report: dict) -> float:
    """The end-to-end check of the re-fits just written to the layers ``saved`` (their start
    weights): kept if the final latents' error on the ``checked`` batches is at most
    ``best_error``, else those layers get their start weights back. Returns the new best error."""
    error = _final_error(small, checked, targets, handle)
    kept = error <= best_error
    if not kept:
        with torch.no_grad():
            for fqn, tensors in saved.items():
                m = small.get_submodule(fqn)
                for t, v in zip([t for t in (m.weight, m.bias) if t is not None], tensors):
                    t.copy_(v)
    for fqn in saved:
        r = report["layers"][fqn]
        r["kept_by_check"] = kept
        if not kept:  # the start weights stand again: so does their error; the fit's is kept apart
            r["rel_error_fit"], r["rel_error_after"] = r["rel_error_after"], r["rel_error_before"]
    report.setdefault("check", []).append({"layers": len(saved), "final_error": error, "kept": kept})
    return error if kept else best_error


def fit_summary(report: dict) -> dict:
    """A reconstruction's report in figures: how many layers were re-fitted (their fit stands),
    how many fits were undone (by the check or the guard-rail), and the mean relative output error
    of those layers on the calibration set before and after (an undone layer counts its start).

    >>> e = {"rel_error_before": 0.2, "rel_error_after": 0.1}
    >>> fit_summary({"layers": {"a": e, "b": {**e, "rel_error_after": 0.2, "kept_by_check": False}}})
    {'refitted': 1, 'undone': 1, 'before': 0.2, 'after': 0.15000000000000002}
    """
    layers = list(report["layers"].values())
    undone = sum(1 for x in layers if x.get("kept_by_check") is False or x.get("fallback"))
    n = max(len(layers), 1)
    return {"refitted": len(layers) - undone, "undone": undone,
            "before": sum(x["rel_error_before"] for x in layers) / n,
            "after": sum(x["rel_error_after"] for x in layers) / n}


def _weights(layer: nn.Module, device, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's flat weight (out, D) and bias as float64 on ``device`` (only the outputs ``rows``)."""
    b = own_tensor(layer, "bias")
    W, b = flat_weight(layer).to(device), None if b is None else b.detach().double().to(device)
    if rows is not None:
        W, b = W[rows.to(device)], None if b is None else b[rows.to(device)]
    return W, b


def start_record(plan: PruningPlan) -> dict | None:
    """The settings of the method whose compensation ``reconstruct`` starts from on ``plan``: the
    plan's own record when its method compensated it (OBS-Diff's plans), or the ``"start"`` a
    reconstruction of such a plan recorded; None (plain slimming) otherwise.

    >>> rec = {"settings": {"method": "obsdiff", "damping": 0.01}, "compensated": []}
    >>> plan = PruningPlan(family="sd", base="tiny:sd", reconstruction=rec)
    >>> start_record(plan)["method"], start_record(PruningPlan(family="sd", base="tiny:sd"))
    ('obsdiff', None)
    >>> refit = {"settings": {"ridge": 0.01, "start": rec["settings"]}, "compensated": []}
    >>> start_record(replace(plan, reconstruction=refit)) == rec["settings"]
    True
    """
    settings = (plan.reconstruction or {}).get("settings") or {}
    if settings.get("method"):
        return dict(settings)
    return dict(settings["start"]) if "start" in settings else None


def _start_method(start: Mapping | None):
    """The registered method whose compensation ``start`` records (its ``rebuild`` gives the start
    model), or None for plain slimming; ``UnknownName`` naming an unregistered one."""
    from . import methods

    return None if start is None else methods.get(start["method"])


def _final_error(small: nn.Module, trajs: list, targets: list[torch.Tensor], handle) -> float:
    """Mean squared error of ``small``'s final latents against ``targets`` on ``trajs`` (offloaded
    like ``handle``'s denoiser, if it is)."""
    with torch.no_grad(), offloaded_like(handle, small):
        errs = [float(F.mse_loss(rollout(small, t)[-1].double(), z.double())) for t, z in zip(trajs, targets)]
    return sum(errs) / max(len(errs), 1)


def _record(s: ReconstructSettings) -> dict:
    d = asdict(s)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def reapply(handle, plan: PruningPlan, control: RunControl | None = None) -> nn.Module:
    """The reconstructed slim denoiser a plan with ``reconstruction`` recorded describes, computed
    again from the base weights with the recorded settings (deterministic on one device), from the
    compensation of the method it started from, if it records one (``settings["start"]``)."""
    settings = ReconstructSettings.from_record(plan.reconstruction["settings"])
    start = start_record(plan)
    base = replace(plan, reconstruction=None if start is None else {"settings": start, "compensated": []})
    mode = settings.standin if plan.compensated else "none"  # recorded as chosen (never "auto")
    small = reconstruct(handle, base, replace(settings, standin=mode if mode != "auto" else "bias",
                                              compensate_operators=False), control=control)
    if tuple(small.pruning_plan.compensated) != tuple(plan.compensated):
        raise SettingsError("the plan's recorded compensated operators do not match a reconstruction "
                                     "with its settings")
    return small


__all__ = ["ReconstructSettings", "reconstruct", "reapply", "start_record", "consumers", "refit_layers", "run_order",
           "trace_layers",
           "fit_summary",
           "consumer_groups",
           "sequential_groups", "step_weights", "Stats", "solve", "rel_error", "layer_inputs", "flat_weight"]
