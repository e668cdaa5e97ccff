"""P3 "sweep efficiency": LD-Pruner sweep wall time / ((k+1) x one batched N_gen generation).

The ideal sweep costs k+1 generations (the originals, then one per operator); anything above
1.0 is the sweep's own overhead (plans, masks, bookkeeping). Measured on the bundled
``tiny-shapes-sd`` when it exists, else on the in-memory tiny SD. The one-generation time is
the median of plain generations run between the sweep's operators (from its progress
callback, a :class:`pruning.runs.RunControl`; their time is taken out of the sweep's), so drift
on a shared machine cancels; the same ratio in this thread's CPU time is reported beside it.
"""

from __future__ import annotations

import statistics
import time

from . import common

TARGET = 1.2


def _handle():
    from pruning.errors import ModelLoadError
    from pruning.loading import handle_from_pipe, load_pipeline
    from pruning.testing import tiny_pipeline

    try:
        return load_pipeline("tiny-shapes-sd"), "tiny-shapes-sd"
    except ModelLoadError:
        return handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd"), "tiny (in-memory)"


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def measure(handle, settings, repeats: int) -> dict:
    """Times one sweep, and one plain generation after some operators (from the progress
    callback of the sweep's ``RunControl``; its time is taken out of the sweep's), so every
    reference generation runs under the same load as the operator it follows."""
    from pruning.methods import ldpruner
    from pruning.runs import RunControl

    s = settings.resolved(handle)
    k = len(ldpruner.select_operators(handle, s))
    gen = lambda: ldpruner._generate(handle, s)  # noqa: E731  (exactly what the sweep runs per operator)
    gen()  # warm-up
    ref: list[tuple[float, float]] = []
    seen: list[str] = []

    def between(done, total, info):
        seen.append(info["fqn"])
        if done % max(1, k // repeats) == 0 or done == total:
            ref.append(_timed(gen))

    def run_sweep():
        ldpruner.clear_cache()
        return ldpruner.sweep(handle, s, show_progress=False, control=RunControl(progress=between))

    t0, c0 = time.perf_counter(), time.thread_time()
    df = run_sweep()
    total_wall, total_cpu = time.perf_counter() - t0, time.thread_time() - c0
    if df.attrs["partial"] or len(df) != k or seen != list(df["fqn"]):
        raise RuntimeError(f"the sweep scored {len(df)} of {k} operators and reported {len(seen)}")
    sweep_wall = total_wall - sum(t[0] for t in ref)
    sweep_cpu = total_cpu - sum(t[1] for t in ref)
    gen_wall = statistics.median(t[0] for t in ref)
    gen_cpu = statistics.median(t[1] for t in ref)
    return {"operators": k, "n_gen": s.n_gen, "steps": s.steps, "resolution": s.resolution,
            "reference_generations": len(ref),
            "sweep_wall_s": round(sweep_wall, 3), "generation_wall_s": round(gen_wall, 4),
            "sweep_cpu_s": round(sweep_cpu, 3), "generation_cpu_s": round(gen_cpu, 4),
            "ratio_wall": sweep_wall / ((k + 1) * gen_wall), "ratio_cpu": sweep_cpu / ((k + 1) * gen_cpu)}


def run(quick: bool = False) -> dict:
    """Headline: the wall-clock ratio over all fine operators (``quick``: 6 operators)."""
    from pruning.methods.ldpruner import SweepSettings, select_operators
    from pruning.tiny import heldout_prompts

    threads = common.set_threads()
    handle, name = _handle()
    settings = SweepSettings(prompts=tuple(heldout_prompts()[:8]), n_gen=8)
    if quick:
        ops = select_operators(handle, settings.resolved(handle))["fqn"].tolist()[:6]
        settings = SweepSettings(prompts=settings.prompts, n_gen=4, steps=2, operators=tuple(ops))
    detail = measure(handle, settings, repeats=3 if quick else 11)
    value = detail["ratio_" + common.CLOCK]
    detail.update(model=name, threads=threads, clock=common.CLOCK,
                  ratio_wall=round(detail["ratio_wall"], 3), ratio_cpu=round(detail["ratio_cpu"], 3))
    return {"value": round(value, 3), "target": TARGET, "ok": value <= TARGET,
            "unit": "x (sweep / (k+1) generations)", "detail": detail}
