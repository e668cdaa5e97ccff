"""The benchmark rows: id -> (module, title). Add a row with one ``register`` line.

A row's module exposes ``run(quick: bool = False) -> dict`` (``quick`` is optional: rows
whose ``run`` takes no argument are called without it). Modules are imported only when run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    id: str
    module: str
    title: str
    func: str = "run"

    def load(self) -> Callable[..., dict]:
        return getattr(importlib.import_module(self.module), self.func)

    def run(self, quick: bool = False) -> dict:
        fn = self.load()
        return fn(quick=quick) if "quick" in inspect.signature(fn).parameters else fn()


ROWS: dict[str, Row] = {}


def register(id: str, module: str, title: str, func: str = "run", optional: bool = False) -> None:
    """Add a row; an ``optional`` one only when its module can be found."""
    if optional and importlib.util.find_spec(module) is None:
        return
    ROWS[id] = Row(id, module, title, func)


register("P1", "benchmarks.p1_slimming", "slimming is real")
register("P4", "benchmarks.p4_masks", "masks overhead")
register("P3", "benchmarks.p3_sweep", "sweep efficiency")
register("G1", "benchmarks.tiny_generation", "tiny-model generation", optional=True)
register("P2", "benchmarks.p2_checkpointing", "time-step checkpointing memory")
register("E1", "benchmarks.p2_checkpointing", "EcoDiff run time, T=10, 8 prompts", func="run_e1")
register("Q1", "benchmarks.quality_tables", "method comparison tables (both bundled models)")
register("Q2", "benchmarks.quality_tables", "reconstruction: MSE ratio, accuracy, time", func="run_q2")
register("Q3", "benchmarks.quality_tables", "best training-free plan: accuracy gap at 20% / 30%, and fewer steps",
         func="run_q3")
register("P5", "benchmarks.p5_app", "app start and first comparison")
register("R0", "benchmarks.r0_ui_latency", "UI call under model load")
register("R1", "benchmarks.r1_real_size", "real-size slimming: SD 1.5, SDXL")
register("R2", "benchmarks.r2_real_checkpointing", "real-size EcoDiff memory: SD 1.5")
register("R3", "benchmarks.r3_estimator", "cost estimator: predicted / measured time")
register("R4", "benchmarks.r4_proxy", "sweep proxy: rank agreement")
register("R5", "benchmarks.r5_ablation", "LD-Pruner fast score (one-step ablation): agreement, plans, cost")
register("R6", "benchmarks.r6_streaming", "big models: FLUX.1-dev streaming export, SDXL slim in place (memory)")
register("R7", "benchmarks.r3_estimator", "reconstruction's estimate at SD 1.5 size: predicted / measured memory and time",
         func="run_reconstruction")
register("C1", "benchmarks.checks", "checks: method quality (the suite's thorough version)", func="run_c1")
register("C2", "benchmarks.checks", "checks: fresh processes and memory (the suite's thorough version)", func="run_c2")
register("C3", "benchmarks.checks", "checks: the suite's thorough parametrizations (fuzzing, dtypes)", func="run_c3")
