"""Fitted stand-ins for removed operators: a least-squares linear map, or a mean-output bias.

A removed operator (an attention or FFN branch, a resnet, a whole transformer / FLUX / SD3
block) is replaced by its stand-in (``replacements``: zero for a branch, the shortcut for a
resnet, the identity for a block). Reconstruction can fit what the stand-in misses, per
tensor ``j`` the operator returns, from the tensor ``x_j`` it is computed from
(``StandIn.sources``: the branch's input, the resnet's input, each stream of a block):

    r_j = operator(x)_j - standin(x)_j  ~  A_j x_j + c_j      (per token / pixel, channel vectors)

fitted on the original model's calibration trajectories in closed form,
``[A c] = E[r x~^T] (E[x~ x~^T] + lam I')^-1`` with ``x~ = [x, 1]`` and
``lam = standin_ridge * mean(diag E[x x^T])`` on ``A`` only (ReplaceMe, arXiv:2505.02819; FastFLUX's
linear block replacement). ``"bias"`` keeps only ``c_j = E[r_j]`` (FLAP's bias compensation).
Where the algebra allows, ``A`` is merged into an adjacent weight instead of adding one: a
resnet whose stand-in keeps a 1x1 ``conv_shortcut`` gets ``W_s += s * A`` (``s`` its output scale),
so it costs no parameter; otherwise the stand-in holds the ``(out_j, in_j)`` matrices, which
``PruningPlan.summary`` counts (:func:`added_params`).

``"sequential"`` fits the same maps one operator at a time in depth order, each on the inputs
``h`` the pruned model (earlier stand-ins already fitted) feeds it, to the original's output:
``operator(x) - standin(h) ~ A h + c`` (asymmetric, so it also corrects the error that earlier
removals pass on; one calibration pass per operator).

``mode="auto"`` fits on the calibration
batches that are not held out and keeps whichever of none / bias / linear gives the lowest
final-latent error against the original on the held-out batches (so it never keeps a fit that
raises the held-out error). The plan records the mode chosen (``reconstruction["settings"]
["standin"]``) and the compensated operators, so ``slim`` builds the same parameters and
``export`` / ``load_pruned`` / ``reconstruct.reapply`` reproduce them bit for bit.

Measured on tiny-shapes-sd, LD-Pruner's plans (32 held-out prompts, reconstructed / plain latent
MSE): at 20% (7 operators, 21.3% of the params) the bias alone 1.03x, linear maps 0.38x (ridge
0.01) and 0.47x (ridge 0.3); at 30% (9 operators, 36.6%) the bias 1.29x, linear 0.87x (ridge 0.3),
sequential 1.18x / 0.88x / 1.09x (ridge 0.01 / 0.3 / 3). A small ridge fits the calibration
prompts and not the held-out captions, hence ``standin_ridge`` 0.3 by default. On tiny-shapes-sd3
at 30% (5 operators, 24 prompts) "auto" chose sequential: 0.84x, accuracy 0.125 -> 0.333.
On all 64 held-out captions of tiny-shapes-sd, though, LD-Pruner's 20% plan (plain latent MSE
0.0161, acc_all 0.828) got 6.75x with linear maps (acc 0.859), 3.57x with the bias (acc 0.875)
and 6.73x with sequential (chosen by "auto" on the held-out calibration prompts): a few captions
far from the calibration prompts diverge. So reconstruction's default is ``standin="none"``.

>>> import torch
>>> from pruning.replacements import ZeroBranch
>>> z = ZeroBranch().compensate([2], maps=[(2, 2)])
>>> with torch.no_grad():
...     _ = z.linear[0].copy_(torch.eye(2)); _ = z.compensation[0].fill_(1.0)
>>> z(torch.tensor([[1.0, 2.0]])).tolist()
[[2.0, 3.0]]
"""

from __future__ import annotations

import torch
from torch import nn

from .catalog import catalog, discover
from .errors import RunStopped
from .replacements import input_widths, output_widths, replacement_for
from .rollout import raw_outputs, step

MODES = ("auto", "sequential", "linear", "bias", "none")
MAPPED = ("linear", "sequential")  # the modes whose stand-ins hold linear maps
AUTO = ("none", "bias", "linear")  # what "auto" chooses from (sequential chose well on held-out calibration
# prompts and then raised the held-out captions' latent MSE 6.7x: LD-Pruner 20% on tiny-shapes-sd, 64 prompts)


def mergeable(module: nn.Module, kind: str) -> bool:
    """Whether operator ``module``'s linear map merges into a weight its stand-in keeps (a resnet's
    1x1 ``conv_shortcut``)."""
    sc = getattr(module, "conv_shortcut", None) if kind == "resnet" else None
    return isinstance(sc, nn.Conv2d) and tuple(sc.kernel_size) == (1, 1) and sc.groups == 1


def map_shapes(module: nn.Module, kind: str) -> list[tuple[int, int]] | None:
    """The ``(out_j, in_j)`` matrices a linear stand-in for ``module`` holds (None: merged, no new weight)."""
    if mergeable(module, kind):
        return None
    return list(zip(output_widths(module, kind), input_widths(module, kind)))


def linear_operators(plan) -> tuple[str, ...]:
    """The removed operators of ``plan`` whose stand-in is a fitted linear map."""
    rec = plan.reconstruction
    return tuple(plan.compensated) if rec is not None and rec["settings"].get("standin") in MAPPED else ()


def added_params(denoiser: nn.Module, plan) -> int:
    """Parameters the plan's stand-ins add: the linear maps' matrices and the compensation biases.

    >>> from pruning.testing import tiny_pipeline
    >>> from pruning.plan import PruningPlan
    >>> unet = tiny_pipeline("sd").unet
    >>> op = "down_blocks.0.attentions.0.transformer_blocks.0.ff"
    >>> rec = {"settings": {"standin": "linear"}, "compensated": [op]}
    >>> d = unet.get_submodule(op).net[2].out_features
    >>> added_params(unet, PruningPlan(family="sd", base="tiny:sd", removed_operators=(op,),
    ...                                reconstruction=rec)) == d * d + d
    True
    """
    found = discover(denoiser)
    linear = set(linear_operators(plan))
    n = 0
    for fqn in plan.compensated:
        module, kind = denoiser.get_submodule(fqn), found.operators[fqn].kind
        n += sum(output_widths(module, kind))
        if fqn in linear:
            n += sum(o * i for o, i in map_shapes(module, kind) or [])
    return n


# --------------------------------------------------------------------------- statistics


def channel_rows(t: torch.Tensor) -> torch.Tensor:
    """An activation as rows of channel vectors: (B, C, H, W) -> (B*H*W, C); (B, N, D) -> (B*N, D)."""
    if t.ndim == 4:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # (B*H*W, C)
    return t.reshape(-1, t.shape[-1])  # (B*N, D)


def _tensors(out) -> list:
    """The tensors a module returned, in order, with None kept in place (SD3's last block returns
    ``(None, hidden_states)``)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "sample"):
        return [out.sample]
    return [t if isinstance(t, torch.Tensor) else None for t in out]


class MapStats:
    """Running moments of one stand-in output: ``G = E[x~ x~^T]`` ((in+1)^2) and ``C = E[r x~^T]``
    ((out, in+1)), ``x~ = [x, 1]``, float64."""

    def __init__(self, n_in: int, n_out: int, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.G = torch.zeros(n_in + 1, n_in + 1, **f64)
        self.C = torch.zeros(n_out, n_in + 1, **f64)
        self.rows = 0

    def add(self, x: torch.Tensor, r: torch.Tensor) -> None:
        """``x``: (rows, in) inputs; ``r``: (rows, out) what the stand-in misses."""
        xa = torch.cat([x.double(), x.new_ones(x.shape[0], 1, dtype=torch.float64)], 1)  # (rows, in+1)
        self.G += xa.T @ xa
        self.C += r.double().T @ xa
        self.rows += xa.shape[0]

    def fit(self, ridge: float, linear: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(A (out, in) or None, c (out,))``: the ridge least-squares map, or (``linear=False``) the mean."""
        n = max(self.rows, 1)
        G, C = self.G / n, self.C / n
        if not linear:
            return None, C[:, -1].clone()  # E[r]: the bias alone
        k = G.shape[0] - 1
        A = G.clone()
        A.diagonal()[:k] += ridge * float(G.diagonal()[:k].mean()) if k else 0.0
        sol = solve_symmetric(A, C.T).T  # (out, in+1): sol A = C
        return sol[:, :k], sol[:, k]


def solve_symmetric(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``X`` with ``A X = B``, ``A`` symmetric: Cholesky when positive definite (the same bits on the
    same statistics), else least squares.

    >>> x = solve_symmetric(torch.eye(2, dtype=torch.float64) * 2, torch.ones(2, 1, dtype=torch.float64))
    >>> [round(v, 12) for v in x.flatten().tolist()]
    [0.5, 0.5]
    """
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.lstsq(A, B).solution


def gather(handle, trajs: list, operators: list[str], device, control, skip: set | None = None) -> dict:
    """One pass over the original model's calibration trajectories (batches in ``skip`` left out):
    per operator, one :class:`MapStats` per tensor its stand-in returns (None where the operator
    returns none)."""
    den = handle.denoiser
    found = discover(den)
    stats: dict[str, list] = {}
    handles = []
    for op in operators:
        module, kind = den.get_submodule(op), found.operators[op].kind
        standin = replacement_for(module, kind)
        stats[op] = [MapStats(i, o, device) for o, i in zip(output_widths(module, kind), input_widths(module, kind))]

        def post(m, args, kwargs, out, acc=stats[op], standin=standin):
            _accumulate(acc, _tensors(out), standin, args, kwargs, device)
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        _walk(den, trajs, skip, control, lambda n: f"batch {n + 1} of {len(trajs)}")
    finally:
        for h in handles:
            h.remove()
    return stats


def _walk(den: nn.Module, trajs: list, skip: set | None, control, where, also=None) -> None:
    """Run the original ``den`` along each calibration trajectory (those not in ``skip``), calling
    ``also(traj, i, z_i)`` after each step; a Stop raises ``RunStopped`` naming ``where(batch)``."""
    with torch.no_grad():
        for n, traj in enumerate(trajs):
            if skip and n in skip:
                continue
            z = traj.z0
            for i in range(traj.steps):
                if control.stopped():
                    raise RunStopped(f"reconstruction {control.reason or 'stopped'} while fitting the removed "
                                     f"operators' stand-ins ({where(n)}); nothing was changed")
                z_next = step(den, traj, i, z)
                if also is not None:
                    also(traj, i, z)
                z = z_next


def _accumulate(acc: list, targets, standin, args, kwargs, device) -> None:
    """Add one call's pairs to ``acc`` (a ``MapStats`` per output ``j``): from the stand-in's source
    ``x_j`` to what it misses of ``targets[j]``, ``targets[j] - standin(x)_j``."""
    base, src = _tensors(standin.compute(*args, **kwargs)), standin.sources(*args, **kwargs)
    for j, (y, b, x) in enumerate(zip(targets, base, src)):
        if y is None or acc[j] is None:
            acc[j] = None  # an output the operator does not return (never used downstream)
            continue
        acc[j].add(channel_rows(x).to(device), channel_rows(y - b).to(device))


def gather_sequential(handle, small: nn.Module, trajs: list, operators: list[str], device, control, ridge: float,
                      skip: set | None = None) -> dict:
    """The maps fitted one operator at a time in depth order, each on the inputs the pruned model
    (its earlier stand-ins already fitted) feeds it, to what the original's operator returned
    (asymmetric, as Kwon et al. 2022 re-fit layers): ``r = operator(x) - standin(h)`` from ``h``.
    Writes each fit into ``small`` before the next pass; returns the statistics."""
    den = handle.denoiser
    found = discover(den)
    depth = catalog(den)[0].set_index("fqn")["depth"].to_dict()
    out: dict[str, list] = {}
    for n_op, op in enumerate(sorted(operators, key=lambda o: (depth.get(o, -1), o))):
        module, kind = den.get_submodule(op), found.operators[op].kind
        acc = [MapStats(i, o, device) for o, i in zip(output_widths(module, kind), input_widths(module, kind))]
        queue: list[list] = []
        standin = small.get_submodule(op)

        def record(m, args, kwargs, result, queue=queue):
            queue.append([None if t is None else t.detach() for t in _tensors(result)])

        def fit_on(m, args, kwargs, result, acc=acc, queue=queue):
            _accumulate(acc, queue.pop(0), m, args, kwargs, device)  # the original's output at the same call
        hooks = [module.register_forward_hook(record, with_kwargs=True),
                 standin.register_forward_hook(fit_on, with_kwargs=True)]
        try:  # the original's own trajectory; the pruned model on the same z_i after each step
            _walk(den, trajs, skip, control, lambda n, k=n_op: f"operator {k + 1} of {len(operators)}",
                  also=lambda traj, i, z: raw_outputs(small, traj, i, z))
        finally:
            for hk in hooks:
                hk.remove()
        out[op] = acc
        write(small, {op: acc}, "linear", ridge)
    return out


# --------------------------------------------------------------------------- writing


def write(small: nn.Module, stats: dict, mode: str, ridge: float) -> dict:
    """Set the stand-ins of ``small`` (built with compensation, and maps for ``mode="linear"``) to
    the fits of ``stats``; returns per operator the norms written. ``mode="none"``: all zero."""
    report = {}
    with torch.no_grad():
        for op, accs in stats.items():
            standin = small.get_submodule(op)
            maps = standin._modules.get("linear")
            entry = {"bias_norm": 0.0, "map_norm": 0.0}
            for j, acc in enumerate(accs):
                bias = standin.compensation[j]
                if acc is None or mode == "none":
                    bias.zero_()
                    if maps is not None:
                        maps[j].zero_()
                    continue
                A, c = acc.fit(ridge, linear=mode in MAPPED)
                if A is not None and maps is None:  # merged into the kept 1x1 shortcut: W_s += s * A
                    sc, s = standin.conv_shortcut, standin.output_scale_factor
                    sc.weight.add_((s * A).reshape(sc.weight.shape).to(sc.weight))  # (out, in) -> (out, in, 1, 1)
                elif A is not None:
                    maps[j].copy_(A.to(maps[j]))
                bias.copy_(c.to(bias))
                entry["bias_norm"] += float(c.norm())
                entry["map_norm"] += 0.0 if A is None else float(A.norm())
            report[op] = entry
    return report


def fit(handle, small_for, trajs: list, operators: list[str], mode: str, ridge: float, control,
        held: set, error) -> tuple[nn.Module, str, dict]:
    """Fit the stand-ins of ``operators`` and choose the mode.

    ``small_for(mode)`` builds the slim model whose plan records ``mode`` (its stand-ins carry
    zero biases, and maps for "linear"); ``error(small)`` is its final-latent error on the held-out
    batches ``held`` (left out of the fit). ``mode="auto"`` keeps the lowest-error of none / bias /
    linear (ties: the simpler); another mode is applied as asked. Returns ``(small, mode, report)``.
    """
    device = torch.device("cpu") if handle.device.type == "mps" else handle.device  # no float64 on MPS
    candidates = ["none"] if not operators else list(AUTO) if mode == "auto" else [mode]
    skip = held if len(held) < len(trajs) else None  # always left out, so a re-application fits the same rows
    stats = gather(handle, trajs, operators, device, control, skip) \
        if operators and set(candidates) & {"bias", "linear"} else {}
    best = None
    report = {"candidates": {}}
    for m in candidates:
        small = small_for(m)
        if m == "sequential":
            seq = gather_sequential(handle, small, trajs, operators, device, control, ridge, skip)
            written = {op: {"fitted": True} for op in seq}
        else:
            written = write(small, stats, m, ridge) if m != "none" else {}
        err = error(small) if len(candidates) > 1 else None
        report["candidates"][m] = err
        if best is None or err < best[0]:
            best = (err, m, small, written)
    _, chosen, small, written = best
    report.update(chosen=chosen, operators=written)
    return small, chosen, report


__all__ = ["MODES", "fit", "gather", "write", "MapStats", "added_params", "linear_operators", "map_shapes",
           "mergeable", "channel_rows", "solve_symmetric"]
