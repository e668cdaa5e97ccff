"""EcoDiff: differentiable masks trained end to end on the final latent, with time-step
gradient checkpointing (seed 000, DESIGN.md section 5).

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

>>> from pruning.testing import tiny_pipeline
>>> from pruning.loading import handle_from_pipe
>>> h = handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd")
>>> s = EcoDiffSettings(prompts=["a red circle", "a blue square"], steps=2, epochs=1, batch_size=2)
>>> state = optimize(h, s)
>>> len(state.history), sorted(set(state.kinds.values()))
(1, ['head', 'neuron'])
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..catalog import discover
from ..errors import ExportError, PlanError, PruningError
from ..masks import GATE_TYPES, GateSet, gated
from ..plan import PruningPlan
from ..rollout import Trajectory, prepare, rollout, step
from .select import KINDS, SCOPES, check_sparsity, plan_from_unit_scores

DEFAULT_LR = 0.5  # per structure kind; lr 0.2 for 2 epochs lost to random on tiny-shapes-sd
DEFAULT_EPOCHS = 4
REGULARIZERS = ("l0", "l1")
CHECKPOINTING = ("timestep", "none")


@dataclass
class EcoDiffSettings:
    """What to optimize and how. ``lr`` maps a structure kind to its learning rate."""

    prompts: Sequence[str]
    seeds: Sequence[int] | None = None  # default: 0..len(prompts)-1
    steps: int | None = None  # T; default from the model
    guidance: float | None = None
    resolution: int | None = None
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 4
    lr: dict = field(default_factory=lambda: dict.fromkeys(KINDS, DEFAULT_LR))
    beta: float = 0.1
    regularizer: str = "l0"
    gate: str = "hard_concrete"
    kinds: Sequence[str] = ("head", "neuron")
    checkpointing: str = "timestep"
    init: float = 3.0
    seed: int = 0  # gate noise

    def validate(self) -> None:
        if not self.prompts or any(not isinstance(p, str) for p in self.prompts):
            raise PruningError("EcoDiff needs a non-empty list of prompt strings")
        if self.seeds is not None and len(self.seeds) != len(self.prompts):
            raise PruningError(f"{len(self.seeds)} seeds for {len(self.prompts)} prompts; they must pair up")
        if self.steps is not None and int(self.steps) < 1:
            raise PruningError(f"steps T must be >= 1, got {self.steps}")
        if not self.kinds:
            raise PruningError(f"choose at least one structure kind to mask from {KINDS}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise PruningError(f"unknown structure kind {bad[0]!r}; choose from {KINDS}")
        for name, value, allowed in (("regularizer", self.regularizer, REGULARIZERS),
                                     ("gate", self.gate, tuple(GATE_TYPES)),
                                     ("checkpointing", self.checkpointing, CHECKPOINTING)):
            if value not in allowed:
                raise PruningError(f"unknown {name} {value!r}; choose one of {allowed}")
        if self.epochs < 1 or self.batch_size < 1:
            raise PruningError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"], d["kinds"] = list(self.prompts), list(self.kinds)
        d["seeds"] = list(self.seeds) if self.seeds is not None else None
        return d


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

    def save(self, path: str | Path) -> Path:
        """safetensors with the lambdas; settings and history go in the string metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "pruning-mask/1", "model_ref": self.model_ref, "family": self.family,
                "kinds": json.dumps(self.kinds), "settings": json.dumps(self.settings),
                "history": self.history.to_json(orient="records"), "partial": json.dumps(self.partial)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.lambdas.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MaskState:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"mask file {str(path)!r} does not exist")
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            lambdas = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ExportError(f"corrupt mask file {str(path)!r}: {e}") from e
        if meta.get("format") != "pruning-mask/1":
            raise ExportError(f"{str(path)!r} is not a pruning mask file (format {meta.get('format')!r})")
        history = pd.DataFrame(json.loads(meta["history"]))
        return cls(lambdas, json.loads(meta["kinds"]), history, meta["model_ref"], meta["family"],
                   json.loads(meta["settings"]), json.loads(meta.get("partial", "false")))

    def expected_kept(self) -> dict[str, float]:
        """Kept fraction per kind if the gates were thresholded at lambda > 0."""
        out: dict[str, list] = {}
        for fqn, lam in self.lambdas.items():
            out.setdefault(self.kinds[fqn], []).append((lam > 0).float())
        return {k: float(torch.cat(v).mean()) for k, v in out.items()}


# --------------------------------------------------------------------------- gradients


def _kept_fraction(gates: GateSet, kinds: dict[str, str]) -> dict[str, float]:
    per: dict[str, list] = {}
    for fqn, g in zip(gates.fqns, gates.gates):
        p = g.expected_l0().detach() / g.log_alpha.numel()
        per.setdefault(kinds[fqn], []).append((p.item(), g.log_alpha.numel()))
    return {k: sum(p * n for p, n in v) / sum(n for _, n in v) for k, v in per.items()}


def regularizer(gates: GateSet, kind: str = "l0") -> torch.Tensor:
    """Mean expected L0 (the expected kept fraction of units), or mean L1 of lambda."""
    units = sum(g.log_alpha.numel() for g in gates.gates)
    if kind == "l0":
        return gates.expected_l0() / units
    return sum(g.log_alpha.abs().sum() for g in gates.gates) / units


def recon_grads(denoiser, traj: Trajectory, target: torch.Tensor, gates: GateSet, noise: list[dict],
                checkpointing: str = "timestep") -> float:
    """Accumulate d MSE(z_T, target) / d lambda into the gates' ``.grad``; return the MSE.

    ``noise[i]`` is the gate noise of step i (reused in the replay). Only the gates receive
    gradients (``inputs=``), never the denoiser's parameters.
    """
    lambdas = [g.log_alpha for g in gates.gates]
    if checkpointing == "none":  # full autograd through all T steps: for checks and memory baselines
        z = traj.z0
        for i in range(traj.steps):
            with gated(denoiser, gates.values(noise[i])):
                z = step(denoiser, traj, i, z)
        loss = torch.nn.functional.mse_loss(traj.unpack(z), target)
        loss.backward(inputs=lambdas)
        return loss.item()
    with torch.no_grad():  # 1. rollout: keep only the latents
        zs = [traj.z0]
        for i in range(traj.steps):
            with gated(denoiser, gates.values(noise[i])):
                zs.append(step(denoiser, traj, i, zs[-1]))
    z_final = zs[-1].detach().requires_grad_(True)  # 2. loss -> d loss / d z_T
    loss = torch.nn.functional.mse_loss(traj.unpack(z_final), target)
    (grad_z,) = torch.autograd.grad(loss, z_final)
    for i in reversed(range(traj.steps)):  # 3. reverse replay, one step in memory at a time
        z_in = zs[i].detach().requires_grad_(i > 0)
        with gated(denoiser, gates.values(noise[i])):
            z_out = step(denoiser, traj, i, z_in)
        torch.autograd.backward(z_out, grad_tensors=grad_z, inputs=lambdas + ([z_in] if i > 0 else []))
        grad_z = z_in.grad if i > 0 else None
        del z_out
    return loss.item()


def _frozen(denoiser):
    """Context: the denoiser's params stop requiring grad; flags are restored on exit."""
    class _Ctx:
        def __enter__(self):
            self.flags = [(p, p.requires_grad) for p in denoiser.parameters()]
            for p, _ in self.flags:
                p.requires_grad_(False)

        def __exit__(self, *exc):
            for p, flag in self.flags:
                p.requires_grad_(flag)
    return _Ctx()


# --------------------------------------------------------------------------- optimization


def _batches(settings: EcoDiffSettings) -> list[tuple[list[str], list[int]]]:
    seeds = list(settings.seeds) if settings.seeds is not None else list(range(len(settings.prompts)))
    prompts = list(settings.prompts)
    b = settings.batch_size
    return [(prompts[i:i + b], seeds[i:i + b]) for i in range(0, len(prompts), b)]


def optimize(handle, settings: EcoDiffSettings, *, progress: Callable | None = None,
             stop: threading.Event | None = None) -> MaskState:
    """Train the gates; returns the state reached (``partial=True`` if ``stop`` was set)."""
    settings.validate()
    den = handle.denoiser
    gates = GateSet.for_denoiser(den, kinds=tuple(settings.kinds), gate=settings.gate, init=settings.init)
    found = discover(den)
    kinds = {f: found.structures[f].kind for f in gates.fqns}
    groups: dict[str, list] = {}
    for fqn, g in zip(gates.fqns, gates.gates):
        groups.setdefault(kinds[fqn], []).append(g.log_alpha)
    opt = torch.optim.AdamW([{"params": ps, "lr": float(settings.lr.get(k, DEFAULT_LR))} for k, ps in groups.items()],
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    rows, partial = [], False
    with _frozen(den):
        data = []
        for prompts, seeds in _batches(settings):  # targets: computed once, unmasked
            traj = prepare(handle, prompts, seeds, steps=settings.steps, guidance=settings.guidance,
                           resolution=settings.resolution)
            with torch.no_grad():
                data.append((traj, traj.unpack(rollout(den, traj)[-1])))
        total = settings.epochs * len(data)
        bar = tqdm(total=total, desc="EcoDiff", disable=progress is False)
        gates.train()
        for epoch in range(settings.epochs):
            for traj, target in data:
                if stop is not None and stop.is_set():
                    partial = True
                    break
                opt.zero_grad(set_to_none=True)
                noise = [gates.noise(gen) for _ in range(traj.steps)]
                recon = recon_grads(den, traj, target, gates, noise, settings.checkpointing)
                reg = regularizer(gates, settings.regularizer)
                (settings.beta * reg).backward()
                opt.step()
                row = {"step": len(rows), "epoch": epoch, "recon": recon, "reg": reg.item(),
                       "loss": recon + settings.beta * reg.item(),
                       **{f"kept_{k}": v for k, v in _kept_fraction(gates, kinds).items()}}
                rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}", recon=f"{recon:.4g}", reg=f"{row['reg']:.3f}")
                if callable(progress):
                    progress(len(rows), total, row)
            if partial:
                break
        bar.close()
    return MaskState(gates.lambdas(), kinds, pd.DataFrame(rows), handle.model_ref, handle.family,
                     settings.to_dict(), partial)


# --------------------------------------------------------------------------- binarization


def check_state(handle, state: MaskState) -> None:
    """Refuse a mask learned on other weights or naming structures this model lacks."""
    if state.family != handle.family:
        raise PlanError(f"mask is for family {state.family!r}, model {handle.source!r} is {handle.family!r}")
    structures = discover(handle.denoiser).structures
    for fqn, lam in state.lambdas.items():
        s = structures.get(fqn)
        if s is None:
            raise PlanError(f"mask names {fqn!r}, which is not a prunable structure of {handle.model_ref}")
        if lam.numel() != s.units:
            raise PlanError(f"mask for {fqn!r} has {lam.numel()} units, the model has {s.units}")
    from ..export import same_base

    if not same_base(state.model_ref, handle.model_ref):
        raise PlanError(f"mask was learned on {state.model_ref!r}, not on {handle.model_ref!r}")


def to_plan(handle, state: MaskState, *, target_sparsity: float | None = None, scope: str = "global",
            threshold: float | None = None) -> PruningPlan:
    """Binarize: keep the top units by lambda (globally, or the same fraction per layer) so the
    slimmed denoiser's param sparsity is within 1 point of ``target_sparsity``; or remove every
    unit whose lambda is below ``threshold``."""
    check_state(handle, state)
    if threshold is None:
        check_sparsity(target_sparsity)
    if scope not in SCOPES:
        raise PlanError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    prov = {"method": "ecodiff", "settings": state.settings, "scope": scope, "target_sparsity": target_sparsity,
            "threshold": threshold, "mask_partial": state.partial}
    return plan_from_unit_scores(handle, state.lambdas, target_sparsity=target_sparsity, scope=scope,
                                 threshold=threshold, provenance=prov)
