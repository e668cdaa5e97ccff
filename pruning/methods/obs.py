"""The Optimal Brain Surgeon for structured units (OBS-Diff's solver, :mod:`pruning.methods.obsdiff`).

A consumer layer's weight ``W`` (out, D) and the Gram ``H`` (D, D) of its inputs: removing the
columns ``c`` of a unit costs ``tr(W_c (Hinv_cc)^-1 W_c^T)`` in ``E||W x - W' x||^2``, and the
others are compensated by the OBS update. :func:`select` removes a structure's units greedily
(heads and channel groups one at a time, neurons in the authors' shrinking blocks), fusing the
rankings of several consumers by reciprocal rank fusion; the final weights are the closed form
:func:`compensated` ``W H[:, K] H[K, K]^-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def prepare_hessian(H: torch.Tensor, W: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W)`` as the authors use them: dead columns (zero diagonal) get diagonal 1 and zero
    weights; then ``damping`` times the mean diagonal is added to the diagonal. Float64 copies."""
    H, W = H.double().clone(), W.double().clone()
    dead = H.diagonal() == 0
    idx = dead.nonzero().flatten()
    H[idx, idx] = 1
    W[:, dead] = 0
    H.diagonal().add_(damping * float(H.diagonal().mean()))
    return H, W


def compensated(W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The closed form OBS weights for kept columns ``keep``: ``W H[:, K] H[K, K]^-1``, zero elsewhere.

    >>> H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> compensated(torch.tensor([[1.0, 1.0]], dtype=torch.float64), H, torch.tensor([True, False])).tolist()
    [[1.5, 0.0]]
    """
    out = torch.zeros_like(W)
    K = keep.nonzero().flatten()
    out[:, K] = torch.linalg.solve(H[K][:, K], H[K] @ W.T).T  # H symmetric: (W H[:, K]) H[K, K]^-1
    return out


class OBSLayer:
    """One consumer's OBS state: its compensated weight ``W`` (out, D), ``Hinv`` the inverse of ``H``
    over the live columns (zero rows and columns elsewhere) and the live columns."""

    def __init__(self, W: torch.Tensor, H: torch.Tensor, damping: float):
        self.H, self.W0 = prepare_hessian(H, W, damping)
        self.W = self.W0.clone()
        self.Hinv = torch.cholesky_inverse(torch.linalg.cholesky(self.H))
        self.live = torch.ones(self.H.shape[0], dtype=torch.bool)

    def errors(self, cols: torch.Tensor) -> torch.Tensor:
        """OBS error ``tr(W_c (Hinv_cc)^-1 W_c^T)`` of removing each unit; ``cols``: (units, k)."""
        A = self.Hinv[cols[:, :, None], cols[:, None, :]]  # (units, k, k)
        Wc = self.W[:, cols].permute(1, 2, 0)  # (out, units, k) -> (units, k, out)
        return (Wc * torch.linalg.solve(A, Wc)).sum((1, 2))

    def remove(self, cols: torch.Tensor) -> None:
        """Remove columns ``cols`` (live ones) at once: the OBS update of the others, Hinv downdated."""
        c = cols.flatten()
        B = self.Hinv[:, c]  # (D, k)
        M = torch.linalg.inv(B[c])  # (Hinv_cc)^-1
        self.W -= self.W[:, c] @ M @ B.T
        self.Hinv -= B @ M @ B.T
        self.W[:, c] = 0
        self.Hinv[c] = 0
        self.Hinv[:, c] = 0
        self.live[c] = False

    def final(self) -> torch.Tensor:
        """The compensated weight in closed form over the live columns."""
        return compensated(self.W0, self.H, self.live)


@dataclass
class Unit:
    """A structure as the solver sees it: per consumer, the columns of each unit (units, k)."""

    fqn: str
    kind: str
    units: int
    remove: int
    cols: dict  # consumer fqn -> (units, k) long tensor


def rrf(rankings: list[list[int]], k: int) -> list[int]:
    """Reciprocal rank fusion: items ordered by ``sum 1 / (k + rank + 1)``, highest first; ties in the
    order of the first ranking (as the authors' dict does).

    >>> rrf([[2, 0, 1], [0, 1, 2]], 60)
    [0, 2, 1]
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for r, item in enumerate(ranking):
            fused[item] = fused.get(item, 0.0) + 1 / (k + r + 1)
    return sorted(fused, key=lambda i: -fused[i])


def _order(unit: Unit, layers: dict[str, OBSLayer], alive: list[int], rrf_k: int) -> tuple[list[int], dict]:
    """Live units, least error first (fused over consumers), and each one's error (summed).

    Conditioning channels rank by the summed error: their consumers read one input, so the sum is
    the exact OBS error of the consumers stacked as one layer (rank fusion is for consumers that
    read different inputs, as MMDiT's ``to_out`` and ``to_add_out``)."""
    errs = {c: layers[c].errors(cols[alive]) for c, cols in unit.cols.items()}
    total = {u: float(sum(e[j] for e in errs.values())) for j, u in enumerate(alive)}
    if unit.kind == "channel":
        return sorted(alive, key=lambda u: total[u]), total
    rankings = [[alive[j] for j in torch.argsort(e, stable=True).tolist()] for e in errs.values()]
    return (rankings[0] if len(rankings) == 1 else rrf(rankings, rrf_k)), total


def select(unit: Unit, layers: dict[str, OBSLayer], rrf_k: int) -> tuple[list[int], dict[int, float]]:
    """Remove ``unit.remove`` units greedily (heads and groups one at a time, neurons and conditioning
    channels in the authors' shrinking blocks), compensating after each removal. Returns the removal order and every unit's
    OBS error (at its removal; for a kept unit, at the end)."""
    alive, order, score = list(range(unit.units)), [], {}
    block = (unit.remove - 512) // 2
    while len(order) < unit.remove:
        ranked, err = _order(unit, layers, alive, rrf_k)
        if unit.kind in ("neuron", "channel"):
            cnt = min(unit.remove - len(order), max(block, 64), 1024)
            block = (block - 512) // 2
        else:
            cnt = 1
        gone = ranked[:cnt]
        for u in gone:
            score[u] = err[u]
        for c, cols in unit.cols.items():
            layers[c].remove(cols[gone])
        order += gone
        alive = [u for u in alive if u not in set(gone)]
    if alive:
        score.update(_order(unit, layers, alive, rrf_k)[1])
    return order, score
