"""EcoDiff: differentiable masks trained end to end on the final latent, with time-step
gradient checkpointing ("Effortless Efficiency: Low-Cost Pruning of Diffusion Models", arXiv:2412.02852,
December 2024).

One gate per unit (attention head, FFN neuron, optionally resnet channel group) multiplies
its activation. The loss is ``MSE(z_0 masked, z_0 original) + beta * reg`` for the same
prompt and seed, where z_0 is the final latent after all T steps.

Time-step gradient checkpointing (``checkpointing="timestep"``):

1. a no-grad rollout over the T steps stores only the latents z_i;
2. the loss is backpropagated to z_T (the final latent);
3. the steps are replayed in reverse, each recomputed from its stored z_i with grad on:
   gate gradients accumulate and d loss / d z_i is carried back to the previous step.

Memory is one denoiser step plus T latents instead of T steps of activations. Each replayed
step is a pure function of (z_i, i, gates, that step's gate noise): the scheduler is
single-step with its index set explicitly (``pruning.rollout``), and the hard-concrete noise
is drawn once per step and reused in the replay.

Data parallel (``control.processes``, :mod:`pruning.parallel`): each batch's prompts are split
across the processes; each rolls out its share (targets included) and the gate gradients and
the MSE are summed, each weighted by its share of the batch, so every process takes the same
optimizer step as one process would (the gate noise is per step and per gate, not per prompt:
the same seeded draw on every process). The regularizer's gradient is added after the sum.

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = EcoDiffSettings(prompts=["a red circle", "a blue square"], steps=2, epochs=1, batch_size=2)
>>> state = optimize(h, s)
>>> len(state.history), sorted(set(state.kinds.values()))
(1, ['head', 'neuron'])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import families, validate
from ..catalog import UNIT_KINDS, discover
from ..errors import RunDiverged, RunStopped, SettingsError
from ..grads import requires_grad
from ..masks import GATE_TYPES, GateSet, gated
from ..parallel import SINGLE, Processes
from ..prompts import calibration_prompts
from ..rollout import Trajectory, prepare, rollout, step
from ..runs import RunControl, RunState, StateSchema, as_control
from .base import Method, Scores, opt
from .cost import MethodCost, generation_calls, latent_bytes, prompt_count, run_spec

DEFAULT_LR = 0.5  # lr 0.2 for 2 epochs lost to random on tiny-shapes-sd
DEFAULT_EPOCHS = 4
DEFAULT_BETA = 0.1
REGULARIZERS = ("l0", "l1")
REG_NORMS = ("unit", "layer")
CHECKPOINTING = ("timestep", "none")
MAX_EPOCHS = 100
# The authors' released configs (their code, not the paper): masking_eps in the gate noise,
# the regulariser normalised per layer (attention and FFN apart) and L1 ("reg: 1"); beta 0.5
# for SDXL (used here for every UNet), 0.01 for FLUX: each family's `ecodiff_authors`
# (pruning.families) holds its values, which the "authors" preset reads.
PRESETS = ("ours", "authors")


@dataclass(frozen=True)
class EcoDiffSettings:
    """What to optimize and how (frozen; every value is checked here)."""

    prompts: tuple[str, ...] | None = opt(None, "prompts to optimize on (default: the model's calibration "
                                          "prompts)", "strs")
    seeds: tuple[int, ...] | None = opt(None, "one seed per prompt (default 0, 1, ...)", "ints")
    steps: int | None = opt(None, "T: denoising steps of each rollout (default: the model's)", "int")
    guidance: float | None = opt(None, "guidance scale (default: the model's)", "float")
    resolution: int | None = opt(None, "image side in pixels (default: the model's)", "int")
    epochs: int = opt(DEFAULT_EPOCHS, f"passes over the prompts while learning the gates, 1..{MAX_EPOCHS}", "int",
                      basic=True, low=1, high=50, step=1)
    batch_size: int = opt(4, "prompts per learning step (optimizer step)", "int", label="batch size", basic=True,
                          low=1, high=16, step=1)
    lr: float = opt(DEFAULT_LR, "learning rate of the gates (AdamW on their logits); too high and the run diverges "
                    "(it then stops with a message)", "float", label="learning rate", basic=True)
    beta: float = opt(DEFAULT_BETA, "how hard the gates are pushed to close [beta in the EcoDiff paper, the weight "
                      "of the sparsity regularizer]: higher = sparser, less faithful", "float", label="sparsity push",
                      basic=True)
    regularizer: str = opt("l0", "l0: expected kept gates; l1: |lambda|", "choice", REGULARIZERS)
    reg_norm: str = opt("unit", "unit: the regulariser is a mean over all units (the kept fraction); layer: a sum "
                        "over each layer's units, averaged over the layers of each kind (attention, FFN) and "
                        "summed over the kinds, as the authors' code does", "choice", REG_NORMS)
    masking_eps: float = opt(0.0, "eps in the gate noise log(u+eps) - log(1-u+eps): 0 is the paper's formula, "
                             "the authors' configs use 0.5 (SDXL) and 0.1 (FLUX): calmer gates", "float")
    gate: str = opt("hard_concrete", "hard_concrete (the paper's noisy gates) or sigmoid", "choice",
                    tuple(GATE_TYPES))
    kinds: tuple[str, ...] = opt(("head", "neuron"), "which units get a gate: attention heads (head), FFN neurons "
                                 "(neuron), resnet channel groups (group), conditioning channels (channel: the time / "
                                 "text embedding every modulation layer reads)", "choices", UNIT_KINDS, label="gates on",
                                 basic=True)
    checkpointing: str = opt("timestep", "timestep: memory O(1) in T; none: plain autograd (for checks)",
                             "choice", CHECKPOINTING)
    init: float = opt(3.0, "initial gate logit lambda (3: the gates start open)", "float")
    seed: int = opt(0, "seed of the gate noise", "int")

    def __post_init__(self):
        v = validate
        values = {
            **v.sampling_fields(prompts=self.prompts, seeds=self.seeds, steps=self.steps, guidance=self.guidance,
                                resolution=self.resolution, steps_name="steps T"),
            "epochs": v.integer("epochs", self.epochs, lo=1, hi=MAX_EPOCHS),
            "batch_size": v.integer("batch_size", self.batch_size, lo=1, hi=v.LIMITS.max_prompts),
            "lr": v.number("lr", self.lr, lo=0, hi=100, open_lo=True),
            "beta": v.number("beta", self.beta, lo=0, hi=1e6),
            "regularizer": v.choice("regularizer", self.regularizer, REGULARIZERS),
            "reg_norm": v.choice("reg_norm", self.reg_norm, REG_NORMS),
            "masking_eps": v.number("masking_eps", self.masking_eps, lo=0, hi=10),
            "gate": v.choice("gate", self.gate, tuple(GATE_TYPES)),
            "kinds": v.subset("kinds", self.kinds, UNIT_KINDS),
            "checkpointing": v.choice("checkpointing", self.checkpointing, CHECKPOINTING),
            "init": v.number("init", self.init, lo=-50, hi=50),
            "seed": v.seed("seed", self.seed),
        }
        for k, val in values.items():
            object.__setattr__(self, k, val)

    @classmethod
    def preset(cls, name: str, family: str, **values) -> EcoDiffSettings:
        """Settings of a named preset for a model family, with ``values`` on top: "ours" (the class
        defaults) or "authors" (EcoDiff's released configs: masking_eps, layer-normalised L1).

        >>> s = EcoDiffSettings.preset("authors", "flux")
        >>> s.masking_eps, s.beta, s.regularizer, s.reg_norm
        (0.1, 0.01, 'l1', 'layer')
        """
        validate.choice("preset", name, PRESETS)
        base = {} if name == "ours" else {**families.get(family).ecodiff_authors, "regularizer": "l1",
                                           "reg_norm": "layer"}
        return cls(**{**base, **values})

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(val) if isinstance(val, tuple) else val for k, val in d.items()}


@dataclass
class MaskState:
    """Learned gate logits (lambda) per structure FQN, with the optimization history."""

    lambdas: dict[str, torch.Tensor]
    kinds: dict[str, str]
    history: pd.DataFrame
    model_ref: str
    family: str
    settings: dict
    partial: bool = False
    stopped: str | None = None
    resume: RunState | None = None  # where a partial run stands (pruning.chunks)

    def to_scores(self) -> Scores:
        """The unit scores (lambda: low = prunable) with the loss history in ``info``."""
        rows = [{"fqn": f, "kind": self.kinds[f], "index": i, "score": float(v)}
                for f, lam in self.lambdas.items() for i, v in enumerate(lam.tolist())]
        info = {"history": self.history.to_dict("records"), **({"stopped": self.stopped} if self.stopped else {})}
        return Scores("ecodiff", "unit", pd.DataFrame(rows, columns=["fqn", "kind", "index", "score"]),
                      self.model_ref, self.settings, self.partial, info)


# --------------------------------------------------------------------------- gradients


def _kept_fraction(gates: GateSet, kinds: dict[str, str]) -> dict[str, float]:
    per: dict[str, list] = {}
    for fqn, g in zip(gates.fqns, gates.gates):
        p = g.expected_l0().detach() / g.log_alpha.numel()
        per.setdefault(kinds[fqn], []).append((p.item(), g.log_alpha.numel()))
    return {k: sum(p * n for p, n in v) / sum(n for _, n in v) for k, v in per.items()}


def regularizer(gates: GateSet, kind: str = "l0", norm: str = "unit", kinds: dict[str, str] | None = None
                ) -> torch.Tensor:
    """The sparsity penalty: expected L0 (kept gates) or L1 of lambda, summed over units, then

    * ``norm="unit"``: divided by the number of units (the expected kept fraction, for L0);
    * ``norm="layer"``: per unit kind (``kinds``: FQN -> head / neuron / group), divided by the
      number of layers of that kind, and summed over the kinds (the authors' normalisation).

    >>> from pruning.masks import GateSet
    >>> gs = GateSet({"a": 4, "b": 4, "c": 128}, init=3.0)
    >>> kinds = {"a": "head", "b": "head", "c": "neuron"}
    >>> ours, theirs = regularizer(gs), regularizer(gs, norm="layer", kinds=kinds)
    >>> round(float(theirs.detach() / ours.detach()), 1)  # 8 heads in 2 layers + 128 neurons in 1: 4 + 128
    132.0
    """
    def total(g):
        return g.expected_l0() if kind == "l0" else g.log_alpha.abs().sum()

    if norm == "unit":
        return sum(total(g) for g in gates.gates) / sum(g.log_alpha.numel() for g in gates.gates)
    per: dict[str, list] = {}
    for fqn, g in zip(gates.fqns, gates.gates):
        per.setdefault((kinds or {}).get(fqn, "unit"), []).append(total(g))
    return sum(sum(v) / len(v) for v in per.values())


def recon_grads(denoiser, traj: Trajectory, target: torch.Tensor, gates: GateSet, noise: list[dict],
                checkpointing: str = "timestep", control: RunControl | None = None) -> float:
    """Accumulate d MSE(z_T, target) / d lambda into the gates' ``.grad``; return the MSE.

    ``noise[i]`` is the gate noise of step i (reused in the replay). Only the gates receive
    gradients (``inputs=``), never the denoiser's parameters. ``control`` is checked at every
    denoising step (forward and replay): a stop raises ``RunStopped`` and the step is discarded.
    """
    def check():
        if control is not None and control.stopped():
            raise RunStopped(control.reason or "stopped")

    lambdas = [g.log_alpha for g in gates.gates]
    if checkpointing == "none":  # full autograd through all T steps: for checks and memory baselines
        z = traj.z0
        for i in range(traj.steps):
            check()
            with gated(denoiser, gates.values(noise[i])):
                z = step(denoiser, traj, i, z)
        z32 = z.float()
        loss = torch.nn.functional.mse_loss(traj.unpack(z32), target.float())
        (grad_z,) = torch.autograd.grad(loss, z32, retain_graph=True)
        _backward_scaled(z, grad_z, lambdas)
        return loss.item()
    with torch.no_grad():  # 1. rollout: keep only the latents
        zs = [traj.z0]
        for i in range(traj.steps):
            check()
            with gated(denoiser, gates.values(noise[i])):
                zs.append(step(denoiser, traj, i, zs[-1]))
    z_final = zs[-1].detach().float().requires_grad_(True)  # 2. loss -> d loss / d z_T (float32)
    loss = torch.nn.functional.mse_loss(traj.unpack(z_final), target.float())
    (grad_z,) = torch.autograd.grad(loss, z_final)
    for i in reversed(range(traj.steps)):  # 3. reverse replay, one step in memory at a time
        check()
        z_in = zs[i].detach().requires_grad_(i > 0)
        with gated(denoiser, gates.values(noise[i])):
            z_out = step(denoiser, traj, i, z_in)
        grad_z = _backward_scaled(z_out, grad_z, lambdas, z_in if i > 0 else None)
        del z_out
    return loss.item()


def _backward_scaled(out: torch.Tensor, grad_out: torch.Tensor, lambdas: list[torch.Tensor],
                     wrt: torch.Tensor | None = None) -> torch.Tensor | None:
    """Backpropagate ``grad_out`` (float32) from ``out`` into the gates' ``.grad``; return
    d loss / d ``wrt`` in float32 (None without ``wrt``).

    d MSE / d z is about 1e-7 to 1e-6 per element on real latents, below float16's normal range: in a
    float16 denoiser's backward most of it would flush to zero and the gates would not learn.
    So ``grad_out`` is scaled by a power of two that brings its largest entry into [1, 2)
    (exact in every float format, so float32 results are unchanged) and the float32 gate
    gradients are unscaled. The denoiser's weights get no gradient, so nothing sums over
    positions at that scale except the gates' own (float32) gradients.
    """
    m = grad_out.abs().max().item()
    scale = 2.0 ** -math.floor(math.log2(m)) if 0 < m < math.inf else 1.0
    inputs = lambdas + ([wrt] if wrt is not None else [])
    grads = torch.autograd.grad(out, inputs, grad_outputs=(grad_out * scale).to(out.dtype), allow_unused=True)
    for lam, g in zip(lambdas, grads):
        if g is not None:
            g = g.float() / scale
            lam.grad = g if lam.grad is None else lam.grad + g
    return grads[-1].float() / scale if wrt is not None else None


# --------------------------------------------------------------------------- optimization


def _reduce_recon(processes: Processes, params: list[torch.Tensor], recon: float, weight: float) -> float:
    """Sum the gate ``.grad``s and the MSE over the processes, each weighted by its share of the
    batch: the gradient and value of the MSE over the whole batch (a mean over its elements).
    A process without prompts in this batch adds zeros."""
    local = [p.grad * weight if p.grad is not None else torch.zeros_like(p) for p in params]
    loss = torch.tensor([recon * weight], dtype=torch.float32, device=params[0].device)  # (1,)
    *grads, loss = processes.all_reduce_sum([*local, loss])
    for p, g in zip(params, grads):
        p.grad = g
    return loss.item()


def _batches(settings: EcoDiffSettings) -> list[tuple[list[str], list[int]]]:
    seeds = list(settings.seeds) if settings.seeds is not None else list(range(len(settings.prompts)))
    prompts = list(settings.prompts)
    b = settings.batch_size
    return [(prompts[i:i + b], seeds[i:i + b]) for i in range(0, len(prompts), b)]


def optimize(handle, settings: EcoDiffSettings | None = None, *, control: RunControl | None = None,
             show_progress: bool = False, state: RunState | None = None) -> MaskState:
    """Train the gates; returns the state reached (``partial=True`` when ``control`` stopped it).

    A non-finite loss or gate (a diverging run: too high a learning rate) ends the run with
    :class:`~pruning.errors.RunDiverged`, whose ``result`` is the last finite state.

    Units of work, for chunked runs (:mod:`pruning.chunks`): each batch's target rollout, then
    each optimizer step. When ``control.chunk_full()`` ends a chunk, the result's ``resume`` is
    a :class:`~pruning.runs.RunState` (gate logits, AdamW moments, the gate-noise RNG state,
    the targets so far, the history) that ``state`` resumes exactly.

    With ``control.processes`` (data parallel, see the module docstring) every process returns
    the same state; a saved state holds whole batches' targets, so it resumes on any number of
    processes. Stops and chunk ends are agreed between optimizer steps (``control.ending()``),
    never inside one.
    """
    control = as_control(control)
    ps = control.processes or SINGLE
    inner = control if ps.count == 1 else None  # a stop inside a rollout would leave the others waiting
    settings = settings or EcoDiffSettings()
    if settings.prompts is None:
        settings = replace(settings, prompts=calibration_prompts(handle.model_ref, 8))
    den = handle.denoiser
    gates = GateSet.for_denoiser(den, kinds=tuple(settings.kinds), gate=settings.gate, init=settings.init,
                                 eps=settings.masking_eps)
    found = discover(den)
    kinds = {f: found.structures[f].kind for f in gates.fqns}
    params = [g.log_alpha for g in gates.gates]
    opt_ = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    batches = _batches(settings)
    shares = [ps.share(len(prompts)) for prompts, _ in batches]
    rows, targets = [], []  # targets: this process's rows of each batch's (None: no rows here)
    if state is not None:
        state.check("ecodiff", handle.model_ref, settings.to_dict())
        _check_state(state, settings, gates, batches)
        rows, targets = _restore(state, gates, opt_, gen)
        targets = [t[sh] if sh.stop > sh.start else None for t, sh in zip(targets, shares)]
    last_good = gates.lambdas()

    def result(partial_: bool, lambdas=None, chunk_ended: bool = False) -> MaskState:
        out = MaskState(lambdas or gates.lambdas(), kinds, pd.DataFrame(rows), handle.model_ref, handle.family,
                        settings.to_dict(), partial_, (control.reason or "chunk ended") if partial_ else None)
        if partial_:
            whole = targets if ps.count == 1 else [ps.gather_rows(t) for t in targets]
            out.resume = _snapshot(handle, settings, gates, opt_, gen, rows, whole)
        return out

    with requires_grad(den.parameters(), False):
        data = []  # (trajectory of this process's prompts, their targets or None, weight in the batch)
        for k, ((prompts, seeds), sh) in enumerate(zip(batches, shares)):  # targets: computed once, unmasked
            mine = sh.stop > sh.start
            # without prompts here, the batch's first one gives the step count (nothing is rolled out)
            traj = prepare(handle, prompts[sh] if mine else prompts[:1], seeds[sh] if mine else seeds[:1],
                           steps=settings.steps, guidance=settings.guidance, resolution=settings.resolution)
            weight = ps.weight(len(prompts))
            if k < len(targets):
                # a stored target has the shape of this batch's final latents, (B, C, H, W)
                StateSchema(state).tensor(f"target.{k}", shape=(len(prompts), *traj.unpack(traj.z0).shape[1:]))
                data.append((traj, targets[k], weight))
                continue
            if control.ending():
                return result(True)
            try:
                with torch.no_grad():
                    targets.append(traj.unpack(rollout(den, traj, control=inner)[-1]) if mine else None)
            except RunStopped:
                return result(True)
            data.append((traj, targets[-1], weight))
            control.unit_done()
        total = settings.epochs * len(data)
        bar = tqdm(total=total, initial=len(rows), desc="EcoDiff", disable=not (show_progress and ps.main),
                   leave=False)
        gates.train()
        for n in range(len(rows), total):
            epoch, (traj, target, weight) = n // len(data), data[n % len(data)]
            if control.ending():
                bar.close()
                return result(True)
            opt_.zero_grad(set_to_none=True)
            rng = gen.get_state()
            noise = [gates.noise(gen) for _ in range(traj.steps)]
            try:
                recon = 0.0 if target is None else recon_grads(den, traj, target, gates, noise,
                                                               settings.checkpointing, inner)
            except RunStopped:  # mid-step: that step is discarded, its noise drawn again on resume
                gen.set_state(rng)
                bar.close()
                return result(True)
            if ps.count > 1:
                recon = _reduce_recon(ps, params, recon, weight)
            reg = regularizer(gates, settings.regularizer, settings.reg_norm, kinds)
            (settings.beta * reg).backward()
            opt_.step()
            lam = gates.lambdas()
            if not math.isfinite(recon) or not all(torch.isfinite(v).all() for v in lam.values()):
                bar.close()
                raise RunDiverged(f"EcoDiff diverged at step {len(rows) + 1} (loss {recon:.4g}); lower the "
                                  f"learning rate (lr={settings.lr:g})", result=result(True, last_good))
            last_good = lam
            row = {"step": len(rows), "epoch": epoch, "recon": recon, "reg": reg.item(),
                   "loss": recon + settings.beta * reg.item(),
                   **{f"kept_{k}": v for k, v in _kept_fraction(gates, kinds).items()}}
            rows.append(row)
            control.unit_done()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4g}", recon=f"{recon:.4g}", reg=f"{row['reg']:.3f}")
            control.report(len(rows), total, **row)
        bar.close()
    return result(False)


def _snapshot(handle, settings, gates: GateSet, opt_, gen, rows, targets) -> RunState:
    """Everything the next chunk needs, as plain data and CPU tensors."""
    tensors = {f"lambda.{f}": v.cpu() for f, v in gates.lambdas().items()}
    for i, st in opt_.state_dict()["state"].items():
        tensors.update({f"adam.{i}.{k}": v.detach().cpu().clone() for k, v in st.items()})
    tensors["rng"] = gen.get_state()
    tensors.update({f"target.{k}": t.detach().cpu() for k, t in enumerate(targets)})
    return RunState("ecodiff", handle.model_ref, settings.to_dict(),
                    {"history": [dict(r) for r in rows], "targets": len(targets)}, tensors)


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _check_state(state: RunState, settings: EcoDiffSettings, gates: GateSet, batches: list) -> None:
    """A resumed state checked against this model's gates and these settings, before any of it is used.

    ``data.targets`` counts the batches whose target latents are stored (``target.<k>``, one row per
    prompt); the optimizer steps (``data.history``, one row each) start once every target is there.
    ``lambda.<fqn>`` holds each gate's logits, ``adam.<i>.{step, exp_avg, exp_avg_sq}`` the AdamW
    state of gate i after ``len(history)`` steps (none before the first), ``rng`` the gate noise's
    generator state."""
    sc = StateSchema(state)
    sc.data_keys(required=("history", "targets"))
    n_targets = sc.integer("data.targets", state.data["targets"], lo=0, hi=len(batches))
    total = settings.epochs * len(batches)
    history = sc.items("history", max_len=total)
    if history and n_targets < len(batches):
        sc.fail("data.history", f"has {len(history)} optimizer steps before all {len(batches)} target batches "
                "were computed")
    kinds = tuple(settings.kinds)
    for i, row in enumerate(history):
        name = f"data.history[{i}]"
        r = sc.record(name, row, {
            "step": lambda n, v: sc.integer(n, v, lo=0), "epoch": lambda n, v: sc.integer(n, v, lo=0),
            "recon": lambda n, v: sc.number(n, v, lo=0), "reg": lambda n, v: sc.number(n, v),
            "loss": lambda n, v: sc.number(n, v)},
            {f"kept_{k}": (lambda n, v: sc.number(n, v, lo=0, hi=1)) for k in kinds})
        if r["step"] != i or r["epoch"] != i // len(batches):
            sc.fail(name, f"is step {r['step']} of epoch {r['epoch']}, expected step {i} of epoch {i // len(batches)}")
    names = {"rng"}
    sc.tensor("rng", shape=tuple(torch.Generator().get_state().shape), dtype=torch.uint8)
    for f, g in zip(gates.fqns, gates.gates):
        names.add(f"lambda.{f}")
        sc.tensor(f"lambda.{f}", shape=tuple(g.log_alpha.shape), dtype=torch.float32)
    for i, g in enumerate(gates.gates):
        if not history:
            break
        names.update(f"adam.{i}.{k}" for k in ("step", *ADAM_MOMENTS))
        step_ = sc.tensor(f"adam.{i}.step", shape=(), dtype=torch.float32)
        if float(step_) != len(history):
            sc.fail(f"tensor 'adam.{i}.step'", f"is {float(step_):g}, the history has {len(history)} steps")
        for k in ADAM_MOMENTS:
            m = sc.tensor(f"adam.{i}.{k}", shape=tuple(g.log_alpha.shape), dtype=torch.float32)
            if k == "exp_avg_sq" and bool((m < 0).any()):
                sc.fail(f"tensor 'adam.{i}.{k}'", "holds negative values")
    for k in range(n_targets):
        names.add(f"target.{k}")
        t = sc.tensor(f"target.{k}")
        n = len(batches[k][0])
        if t.dim() != 4 or t.shape[0] != n:
            sc.fail(f"tensor 'target.{k}'", f"has shape {tuple(t.shape)}, these settings give {n} latents "
                    "(B, C, H, W)")
    sc.only_tensors(names)


def _restore(state: RunState, gates: GateSet, opt_, gen) -> tuple[list, list]:
    """Load a snapshot into the fresh gates, optimizer and generator; returns (history, targets)."""
    t = state.tensors
    try:
        with torch.no_grad():
            for f, g in zip(gates.fqns, gates.gates):
                g.log_alpha.copy_(t[f"lambda.{f}"])
        sd = opt_.state_dict()
        moments = {}
        for i in range(len(gates.gates)):
            keys = [k for k in t if k.startswith(f"adam.{i}.")]
            if keys:
                moments[i] = {k.split(".", 2)[2]: t[k] for k in keys}
        opt_.load_state_dict({"state": moments, "param_groups": sd["param_groups"]})
        gen.set_state(t["rng"])
        targets = [t[f"target.{k}"] for k in range(int(state.data["targets"]))]
    except (KeyError, RuntimeError, ValueError) as e:
        raise SettingsError(f"cannot resume EcoDiff: the state does not fit this model's gates ({e})") from None
    return [dict(r) for r in state.data["history"]], targets


class EcoDiff(Method):
    name = "ecodiff"
    title = "Mask optimization (EcoDiff)"
    summary = ("Learns one gate per head and FFN neuron so that the pruned model's final image stays close to "
               "the original's, with a penalty that pushes gates to close: low gate = safe to remove.")
    level = "unit"
    Settings = EcoDiffSettings
    commands = ("ecodiff",)
    work_unit = "optimizer steps"
    data_parallel = True
    history = True  # the loss of every optimizer step
    tie_floor = 1e-3  # gate-logit units: gates closer than this are the same gate
    presets = PRESETS
    preset_titles = {"ours": "ours (default)", "authors": "the authors' configs"}
    preset_help = ("ours: per-unit L0 penalty, the paper's gate noise (measured better on the bundled models); the "
                   "authors' configs: their released SDXL/FLUX settings (calmer gate noise, a per-layer L1 penalty, "
                   "beta 0.5 for UNets and 0.01 for FLUX). Choosing one fills the sparsity push and learning rate.")

    def cost(self, handle, settings: EcoDiffSettings, step) -> MethodCost:
        """One rollout per batch for the targets, then per epoch and batch T replayed calls, each
        with its backward to the input (one call's graph at a time with timestep checkpointing)."""
        s = run_spec(handle, settings)
        prompts = prompt_count(handle, settings)
        b = min(settings.batch_size, prompts)
        batches = math.ceil(prompts / b)
        calls, batch = generation_calls(handle, s, b)
        epochs = settings.epochs
        target = batches * calls * step.call(batch)
        train = epochs * batches * calls * (step.call(batch) + step.grad_call(batch))
        # the rollout's latents (kept for the replay) and every batch's target
        latents = (s.steps + 1) * latent_bytes(handle, s, batch) + prompts * latent_bytes(handle, s, 1)
        working = step.working_bytes(batch, "input") + latents
        if settings.checkpointing == "none":  # the graph of all T steps is held
            train = epochs * batches * calls * step.grad_call(batch)
            working = s.steps * step.working_bytes(batch, "input") + latents
        return MethodCost(target + train, {"optimizer steps": epochs * batches,
                                           "denoiser calls": batches * calls * (1 + 2 * epochs), "batch": batch},
                          working, ["fewer epochs or steps T", "a lower resolution", "fewer prompts per batch"])

    def preset_settings(self, preset: str, family: str, **values) -> EcoDiffSettings:
        return EcoDiffSettings.preset(preset, family, **values)

    def score(self, handle, settings: EcoDiffSettings | None = None, *, control: RunControl | None = None) -> Scores:
        return optimize(handle, settings, control=control).to_scores()

    def check_state(self, handle, settings: EcoDiffSettings | None, state: RunState) -> None:
        settings = settings or EcoDiffSettings()
        if settings.prompts is None:
            settings = replace(settings, prompts=calibration_prompts(handle.model_ref, 8))
        state.check(self.name, handle.model_ref, settings.to_dict())
        gates = GateSet.for_denoiser(handle.denoiser, kinds=tuple(settings.kinds), gate=settings.gate,
                                     init=settings.init, eps=settings.masking_eps)
        _check_state(state, settings, gates, _batches(settings))

    def run(self, handle, settings: EcoDiffSettings | None = None, *, state: RunState | None = None,
            control: RunControl | None = None):
        out = optimize(handle, settings, control=control, state=state)
        return out.to_scores(), out.resume


METHOD = EcoDiff()
