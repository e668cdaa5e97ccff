"""The table of an LD-Pruner score (the full sweep and the fast one-step score share it): which
operators are scored, LD-Pruner's distance between two sets of latents, the table's columns and
ranks, and the steps of the resumable loop that fills it. Below both scorers: ``ldpruner`` and
``ablation`` import it, never each other.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..catalog import catalog
from ..errors import PlanError
from ..sampling import count_inputs

GRANULARITIES = ("fine", "block", "all")
_GRANULARITY_ROWS = {"fine": ("fine", "both"), "block": ("block", "both"), "all": ("fine", "block", "both")}
POSITION_COLUMNS = ("stage", "level", "block", "depth")
SCORE_COLUMNS = ("avg_dist", "std_dist", "score", "rank")
COLUMNS = ("operator", "fqn", "kind", "granularity", *POSITION_COLUMNS, "params", "param_share", "macs",
           "mac_share", *SCORE_COLUMNS)


def latent_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and (unbiased) std over the samples of ``(N_gen, ...)`` latents, in float64."""
    z = latents.detach().to("cpu", torch.float64).flatten(1)  # (N_gen, C*H*W)
    return z.mean(0), z.std(0)


def ldpruner_score(original: torch.Tensor, modified: torch.Tensor) -> dict[str, float]:
    """``avg_dist``, ``std_dist`` and ``score`` between two sets of N_gen latents.

    >>> a = torch.zeros(2, 1, 2, 2); b = a.clone(); b[1] += 2.0   # b: mean 1, std sqrt(2) per element
    >>> {k: round(v, 4) for k, v in ldpruner_score(a, b).items()}
    {'avg_dist': 2.0, 'std_dist': 2.8284, 'score': 4.8284}
    """
    if original.shape != modified.shape:
        raise ValueError(f"latent shapes differ: {tuple(original.shape)} vs {tuple(modified.shape)}")
    (m0, s0), (m1, s1) = latent_stats(original), latent_stats(modified)
    avg, std = float(torch.linalg.vector_norm(m0 - m1)), float(torch.linalg.vector_norm(s0 - s1))
    return {"avg_dist": avg, "std_dist": std, "score": avg + std}


def mac_resolution(settings) -> int | None:
    """The resolution at which MACs are counted for a sweep's table and the plans cut from it
    (``settings``: SweepSettings or their dict): the sweep's own, except for a proxy, whose lower
    resolution is a scoring shortcut: there, None (the model's resolution).

    >>> mac_resolution({"resolution": 48}), mac_resolution({"resolution": 32, "proxy": True})
    (48, None)
    """
    get = settings.get if isinstance(settings, dict) else lambda k: getattr(settings, k, None)
    return None if get("proxy") else get("resolution")


def select_operators(handle, settings) -> pd.DataFrame:
    """The catalog rows (in catalog order) of the operators this sweep scores, with params and
    MACs at the sweep's resolution (the model's for a proxy: see :func:`mac_resolution`).

    Raises ``PlanError`` naming an FQN that is not a removable operator of the denoiser.
    """
    ops, _ = catalog(handle.denoiser, **count_inputs(handle, mac_resolution(settings)))
    if settings.operators is None:
        return ops[ops["granularity"].isin(_GRANULARITY_ROWS[settings.granularity])].reset_index(drop=True)
    known = set(ops["fqn"])
    for fqn in settings.operators:
        if fqn not in known:
            raise PlanError(f"unknown operator {fqn!r}: not a removable operator of this denoiser "
                            f"({len(known)} operators, e.g. {ops['fqn'].iloc[0]!r})")
    return ops[ops["fqn"].isin(settings.operators)].reset_index(drop=True)


def resumed_rows(resume: pd.DataFrame | None, todo: pd.DataFrame) -> dict[str, dict]:
    """The rows of the partial table ``resume`` whose operators ``todo`` still scores, by FQN
    ({} without one)."""
    if resume is None or not len(resume):
        return {}
    fqns = set(todo["fqn"])
    return {r["fqn"]: r for r in resume.to_dict("records") if r["fqn"] in fqns}


def halted(control) -> str | None:
    """Why a sweep ends before its next operator: ``"stopped"`` (Stop or the time limit),
    ``"chunk"`` (the chunk is full, see :mod:`pruning.chunks`), or None to go on."""
    if control.stopped():
        return "stopped"
    return "chunk" if control.chunk_full() else None


def scored_table(results: dict[str, dict], todo: pd.DataFrame, settings, *, model_ref: str, partial: bool,
                 chunk_ended: bool) -> pd.DataFrame:
    """The table of a sweep's scored rows ``results`` (by FQN; in ``todo``'s order), of the
    ``len(todo)`` operators it was asked to score; ``attrs["chunk_ended"]`` says whether a chunk
    boundary ended it."""
    rows = pd.DataFrame([results[f] for f in todo["fqn"] if f in results], columns=[*todo.columns, *SCORE_COLUMNS[:3]])
    df = _table(rows, settings, partial=partial, model_ref=model_ref, total=len(todo))
    df.attrs["chunk_ended"] = chunk_ended
    return df


def _table(rows: pd.DataFrame, settings, *, partial: bool, model_ref: str,
           total: int) -> pd.DataFrame:
    df = rows.copy()
    df.insert(0, "operator", df["fqn"])
    df = df.reindex(columns=[*COLUMNS, *[c for c in df.columns if c not in COLUMNS]])
    df = finalize_ranks(df)
    df.attrs = {"partial": bool(partial), "settings": settings.to_dict(), "model_ref": model_ref,
                "scored": int(len(df)), "total": int(total), "method": "ldpruner"}
    return df


def finalize_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """Recompute ``rank`` (1 = lowest score = most prunable; ties by table order)."""
    df = df.reset_index(drop=True)
    df["rank"] = df["score"].rank(method="first").astype("int64") if len(df) else pd.Series(dtype="int64")
    return df
