"""Removable masks: operator skips and per-unit gates on activations, plus trainable gates.

Everything here is a hook or an instance-level ``forward`` override that is removed on exit
(also on exceptions); nothing is added to the denoiser's ``state_dict``.

* A **gate** multiplies the activations of each unit (head, neuron, channel group,
  conditioning channel) by a value: before ``to_out[0]`` (and ``to_add_out``) for heads, on a
  FLUX single block's attention output, before an FFN's output ``Linear``, on a single block's
  ``act_mlp`` output, at a resnet's ``conv2`` input, and at the input of every layer that reads
  the conditioning embedding (AdaLN ``linear``, a resnet's ``time_emb_proj``).
* A **skip** makes an operator's residual branch contribute nothing: attention/FFN output
  zeros, a resnet returns its shortcut, a transformer or FLUX block returns its input. The
  skipped module is not computed at all.

>>> import torch
>>> from pruning.testing import tiny_pipeline
>>> from pruning.metrics import example_inputs
>>> from pruning.plan import PruningPlan
>>> unet = tiny_pipeline("sd").unet
>>> kw = example_inputs(unet, generator=torch.Generator().manual_seed(0))
>>> plan = PruningPlan(family="sd", base="tiny:sd", removed_operators=("mid_block.resnets.0",))
>>> with torch.no_grad():
...     before = unet(**kw)[0]
...     with masked(unet, plan):
...         during = unet(**kw)[0]
...     after = unet(**kw)[0]
>>> bool(torch.equal(before, after)), bool(torch.equal(before, during))
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .catalog import Structure, discover
from .memory import execution_device
from .plan import PruningPlan
from .replacements import replacement_for
from .specs import UNIT_KINDS, consumers_of

# --------------------------------------------------------------------------- gates on activations


def _expand(gate: torch.Tensor, unit_size: int, like: torch.Tensor, channel_dim: int) -> torch.Tensor:
    g = gate.to(like.device, like.dtype).repeat_interleave(unit_size)  # (units * unit_size,), where x is
    shape = [1] * like.ndim
    shape[channel_dim] = g.numel()
    return g.view(shape)  # broadcastable against `like`


def _gate_points(denoiser: nn.Module, s: Structure) -> list[tuple[nn.Module, str, int]]:
    """(module, 'pre'|'post', channel dim) where the gate for ``s`` is applied."""
    get = denoiser.get_submodule
    if s.component == "single_attn":
        return [(get(s.fqn), "post", -1)]
    if s.component == "proj_mlp":
        return [(get(s.fqn.rsplit(".", 1)[0] + ".act_mlp"), "post", -1)]
    if s.kind == "head":
        attn = get(s.fqn)
        points = [(attn.to_out[0], "pre", -1)]
        if getattr(attn, "to_add_out", None) is not None:
            points.append((attn.to_add_out, "pre", -1))
        return points
    if s.kind == "neuron":
        return [(get(s.fqn).net[2], "pre", -1)]
    if s.kind == "channel":  # every consumer reads (B, D) after its activation: gating there is removal
        return [(get(c), "pre", -1) for c in consumers_of(s)]
    return [(get(s.fqn).conv2, "pre", 1)]  # resnet groups: (B, C, H, W) input of conv2


def _gate_hooks(denoiser: nn.Module, gates: Mapping[str, torch.Tensor | Callable[[], torch.Tensor]],
                handles: list) -> None:
    """Register the gate hooks, appending each handle as soon as it exists (so a bad FQN
    part-way leaves nothing behind once the caller removes ``handles``)."""
    found = discover(denoiser)
    for fqn in gates:
        s = found.structures.get(fqn)
        if s is None:
            raise KeyError(f"no prunable structure named {fqn!r} in this denoiser")

        def value(fqn=fqn):
            g = gates[fqn]
            return g() if callable(g) else g

        for module, where, dim in _gate_points(denoiser, s):
            if where == "pre":
                def pre(_m, args, s=s, dim=dim, value=value):
                    x = args[0]
                    return (x * _expand(value(), s.unit_size, x, dim), *args[1:])
                handles.append(module.register_forward_pre_hook(pre))
            else:
                def post(_m, _args, out, s=s, dim=dim, value=value):
                    return out * _expand(value(), s.unit_size, out, dim)
                handles.append(module.register_forward_hook(post))


# --------------------------------------------------------------------------- operator skips


class _ForwardOverride:
    """Replace ``module.forward`` on the instance; ``remove()`` restores exactly what was there."""

    _MISSING = object()

    def __init__(self, module: nn.Module, forward: Callable):
        self.module = module
        self.saved = module.__dict__.get("forward", self._MISSING)
        module.forward = forward

    def remove(self) -> None:
        if self.saved is self._MISSING:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self.saved


def _skip_handles(denoiser: nn.Module, fqns, handles: list) -> None:
    found = discover(denoiser)
    for fqn in fqns:
        op = found.operators.get(fqn)
        if op is None:
            raise KeyError(f"no removable operator named {fqn!r} in this denoiser")
        module = denoiser.get_submodule(fqn)
        handles.append(_ForwardOverride(module, replacement_for(module, op.kind).forward))


# --------------------------------------------------------------------------- context managers


@contextmanager
def gated(
    denoiser: nn.Module,
    gates: Mapping[str, torch.Tensor | Callable[[], torch.Tensor]] | None = None,
    skips=(),
) -> Iterator[nn.Module]:
    """Apply per-unit ``gates`` (FQN -> tensor of shape (units,), or a callable returning one,
    read at every forward so callers may update it) and operator ``skips``; restore on exit."""
    handles = []
    try:
        _skip_handles(denoiser, skips, handles)
        _gate_hooks(denoiser, gates or {}, handles)
        yield denoiser
    finally:
        for h in reversed(handles):
            h.remove()


def plan_gates(denoiser: nn.Module, plan: PruningPlan) -> dict[str, torch.Tensor]:
    """Binary gates (1 = kept) for every structure the (normalized) plan prunes."""
    found = discover(denoiser)
    device = execution_device(denoiser)  # not the weights' (CPU, or meta with sequential offload)
    gates = {}
    for kind in UNIT_KINDS:
        for fqn, kept in plan.kept(kind).items():
            g = torch.zeros(found.structures[fqn].units, device=device)
            g[list(kept)] = 1.0
            gates[fqn] = g
    return gates


@contextmanager
def masked(denoiser: nn.Module, plan: PruningPlan) -> Iterator[nn.Module]:
    """Preview ``plan`` on ``denoiser`` without copying it; everything is restored on exit."""
    plan = plan.normalized(denoiser)
    with gated(denoiser, plan_gates(denoiser, plan), plan.removed_operators) as d:
        yield d


# --------------------------------------------------------------------------- trainable gates

GAMMA, ZETA, TEMPERATURE = -0.1, 1.1, 0.83  # hard-concrete stretch and temperature (EcoDiff)


class HardConcreteGate(nn.Module):
    """One hard-concrete gate per unit (Louizos et al.), as EcoDiff uses.

    s = sigmoid((log u - log(1-u) + lambda) / T), stretched to (-0.1, 1.1), clamped to [0, 1].
    Without noise (eval) the gate is the deterministic ``sigmoid(lambda)`` stretched and clamped.

    >>> g = HardConcreteGate(4)
    >>> g.eval()(None).tolist()  # lambda starts at 3: the gates start open
    [1.0, 1.0, 1.0, 1.0]
    >>> round(g.expected_l0().item(), 3)  # 4 x sigmoid(3 - 0.83 log(0.1/1.1))
    3.973
    >>> u = (torch.arange(10000) + 0.5) / 10000  # the noise, evenly over (0, 1)
    >>> [round(float((HardConcreteGate(10000, eps=e).train()(u) < 1).float().mean()), 3) for e in (0.0, 0.5)]
    [0.267, 0.034]
    """

    def __init__(self, units: int, init: float = 3.0, eps: float = 0.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((units,), float(init)))
        self.eps = float(eps)  # EcoDiff's code: log(u + eps) - log(1 - u + eps), far less noisy gates

    def noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.log_alpha.shape, generator=generator)
        return u.clamp(1e-6, 1 - 1e-6).to(self.log_alpha.device)

    def forward(self, u: torch.Tensor | None = None) -> torch.Tensor:
        if u is None or not self.training:
            s = torch.sigmoid(self.log_alpha)
        else:
            logit = (u + self.eps).log() - (1 - u + self.eps).log()
            s = torch.sigmoid((logit + self.log_alpha) / TEMPERATURE)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def expected_l0(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - TEMPERATURE * math.log(-GAMMA / ZETA)).sum()


class SigmoidGate(nn.Module):
    """A deterministic gate ``sigmoid(lambda)`` per unit (smooth, for gradient checks).

    >>> SigmoidGate(2, init=0.0)().tolist()
    [0.5, 0.5]
    """

    def __init__(self, units: int, init: float = 3.0, eps: float = 0.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((units,), float(init)))

    def noise(self, generator: torch.Generator | None = None) -> None:
        return None

    def forward(self, u: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha)

    def expected_l0(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha).sum()


GATE_TYPES = {"hard_concrete": HardConcreteGate, "sigmoid": SigmoidGate}


class GateSet(nn.Module):
    """Trainable gates for a set of structures, kept outside the denoiser.

    ``values(noise)`` gives FQN -> gate tensor for ``gated(...)``.

    >>> from pruning.testing import tiny_pipeline
    >>> unet = tiny_pipeline("sd").unet
    >>> gs = GateSet.for_denoiser(unet, kinds=("head",), gate="sigmoid")
    >>> len(gs.fqns) > 0 and all(v.shape[0] >= 1 for v in gs.values().values())
    True
    """

    def __init__(self, units: Mapping[str, int], gate: str = "hard_concrete", init: float = 3.0,
                 eps: float = 0.0):
        super().__init__()
        if gate not in GATE_TYPES:
            raise ValueError(f"unknown gate type {gate!r}; choose one of {sorted(GATE_TYPES)}")
        self.fqns = list(units)
        self.gates = nn.ModuleList(GATE_TYPES[gate](n, init, eps) for n in units.values())

    @classmethod
    def for_denoiser(cls, denoiser: nn.Module, kinds=("head", "neuron"), gate="hard_concrete", init=3.0,
                     eps: float = 0.0) -> GateSet:
        found = discover(denoiser)
        units = {f: s.units for f, s in found.structures.items() if s.kind in kinds}
        if not units:
            raise ValueError(f"no structures of kinds {list(kinds)} in this denoiser")
        device = execution_device(denoiser)
        return cls(units, gate, init, eps).to(device)

    def noise(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor | None]:
        return {f: g.noise(generator) for f, g in zip(self.fqns, self.gates)}

    def values(self, noise: Mapping[str, torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        noise = noise or {}
        return {f: g(noise.get(f)) for f, g in zip(self.fqns, self.gates)}

    def expected_l0(self) -> torch.Tensor:
        return sum(g.expected_l0() for g in self.gates)

    def lambdas(self) -> dict[str, torch.Tensor]:
        return {f: g.log_alpha.detach().clone() for f, g in zip(self.fqns, self.gates)}
