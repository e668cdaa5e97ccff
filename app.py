"""Gradio app: load a diffusion model, score what can be pruned, see how much can go, select,
compare, export.

Wiring only: each callback reads widgets, calls ``pruning`` / ``app_support`` / ``visual`` and
returns. Models live in ``CACHE`` (never loaded at import time, never mutated for one user);
session state holds plain data. Every run of the shared model is owned by its request
(``app_support.runs.owned``): Stop, a cancelled job, a closed tab or the time limit ends it.
Errors are toasts that leave what is on screen (``show_progress_on`` a status line). Run:
``python app.py``.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import threading
from dataclasses import fields
from pathlib import Path

import gradio as gr
import pandas as pd

import visual
from app_support import format as fmt
from app_support import guide, results
from app_support.cache import TINY_RANDOM, ModelCache
from app_support.comparison import compare_images, difference, display_pair, metrics_table
from app_support.exports import cleanup, export_zip, serve_in_place
from app_support.inputs import Checkbox, Number, Slider, Table
from app_support.runs import Runs, check_count, check_flag, check_size, chunk_budget, owned
from app_support.tables import (
    COLUMNS,
    DATATYPES,
    MODES,
    empty_table,
    plan_from_table,
    refresh_kept,
    selection_table,
    totals,
    unit_kept_table,
)
from pruning import methods
from pruning.chunks import compare_chunked, score_chunked
from pruning.compare import CompareSettings
from pruning.errors import PruningError
from pruning.estimate import estimate, estimate_comparison, estimate_export
from pruning.export import check_removes_something
from pruning.facts import model_facts
from pruning.loading import BUNDLED, DTYPES
from pruning.methods import Scores
from pruning.methods.ablation import fast_note
from pruning.native import describe, native_layout, report
from pruning.plan import PruningPlan
from pruning.reconstruct import reconstruct
from pruning.reference import PIPELINES

try:
    import spaces

    GPU = spaces.GPU
    ON_SPACES = True
except ImportError:  # off Spaces: a no-op, usable as @GPU and @GPU(duration=...)
    ON_SPACES = False

    def GPU(fn=None, **_kw):
        return fn if callable(fn) else (lambda f: f)

CHUNK = chunk_budget(on_spaces=ON_SPACES)  # one GPU call's share of a long run; chunks are chained
GPU_BUDGET_S = float(os.environ["PRUNING_GPU_BUDGET_S"]) if os.environ.get("PRUNING_GPU_BUDGET_S") else None

DEFAULT_MODEL = os.environ.get("PRUNING_DEFAULT_MODEL", "tiny-shapes-sd")
MODELS = [*BUNDLED, *(p["hub_id"] for p in PIPELINES.values()), *TINY_RANDOM]
PROMPTS = "\n".join(guide.EXAMPLE_PROMPTS["shapes"])
CSS = """
.pixelated img { image-rendering: pixelated; }
#pair { flex-wrap: nowrap !important; }
#pair > * { flex: 1 1 0 !important; min-width: 0 !important; }
#img-diff { max-width: 50%; }
.status { min-height: 1.6em; }
.status > [data-testid="status-tracker"]:has(.error) { display: none !important; }  /* the toast says it */
@media (max-width: 600px) {
  .tab-container button { padding-left: 6px !important; padding-right: 6px !important; font-size: 13px !important; }
  #img-diff { max-width: 100%; }
  #export-options, #export-options > .form { flex-wrap: wrap !important; }  /* gradio groups the inputs in a .form */
  #export-options > .form > * { flex: 1 1 100% !important; min-width: 100% !important; }  /* full width, no tall columns */
}
"""
CACHE, RUNS = ModelCache(), Runs()
PROGRESS = gr.Progress()  # gradio's per-call progress marker (a default argument it replaces)
EMPTY = {  # tables before their first result: the real headers, never gradio's "1 2 3"
    "kinds": pd.DataFrame(columns=["what", "kind", "count", "params", "share of params", "share of MACs"]),
    "scores": pd.DataFrame(columns=["rank", "operator / structure", "kind", "score (low = prunable)"]),
    "totals": pd.DataFrame(columns=["what", "removed", "of", "fraction"]),
    "metrics": pd.DataFrame(columns=["figure", "original", "pruned", "change / meaning"]),
    "quality": pd.DataFrame(columns=["method", "reconstructed", "target", "params removed", "MACs",
                                     "latent MSE ± SE (lower = closer)", "PSNR dB (higher = closer)",
                                     "SSIM (higher = closer)"]),
}
UI = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}  # cheap: never waits on model work
RUN = {"concurrency_id": "model", "concurrency_limit": 1}  # shared models: one job at a time


def _skip(n: int) -> tuple:
    return tuple(gr.skip() for _ in range(n))


def _message(e: Exception) -> str:
    if isinstance(e, (PruningError, ValueError, OSError)):
        return " ".join(str(e).split()) or type(e).__name__
    return f"unexpected {type(e).__name__}: {e}"


def friendly(fn):
    """Every error becomes a ``gr.Error`` toast naming the problem (never a traceback)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **k):
            try:
                yield from fn(*a, **k)
            except gr.Error:
                raise
            except Exception as e:
                raise gr.Error(_message(e), print_exception=False) from e
        return gen

    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(_message(e), print_exception=False) from e
    return wrapper


def _handle(model: dict | None):
    if not model:
        raise gr.Error("Load a model first (Model tab).", print_exception=False)
    return CACHE.get(model["source"], model["device"], model["dtype"])


def _sid(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _prompts(text) -> list[str]:
    prompts = [p.strip() for p in str(text or "").splitlines() if p.strip()]
    if not prompts:
        raise gr.Error("Give at least one prompt (one per line).", print_exception=False)
    return check_count("prompts", prompts)


def _steps(x) -> int | None:
    n = check_size("steps", x if x not in (None, "") else 0) if x not in (None, "", 0, 0.0) else None
    return n


def _plan(plan_dict) -> PruningPlan:
    if not plan_dict:
        raise gr.Error("No plan yet: tick what to remove in Select and compare (or pre-fill it).",
                       print_exception=False)
    return PruningPlan.from_dict(plan_dict)


def _queued_at(request) -> float | None:
    """When this request joined gradio's queue (``time.monotonic``, the clock of ``Runs``): the
    session's running event of the model queue. An API client has no click stamp, so a Stop it
    sent while its run still waited behind another user's is known by this time."""
    sid = getattr(request, "session_hash", None)
    queue = getattr(globals().get("demo"), "_queue", None)
    for jobs in list(getattr(queue, "active_jobs", None) or []):
        for event in list(jobs or []):
            fn = getattr(event, "fn", None)
            if getattr(event, "session_hash", None) == sid and getattr(fn, "concurrency_id", None) == RUN[
                    "concurrency_id"]:
                return getattr(event, "enqueue_time", None)
    return None


def _asked_at(clicked, request) -> float | None:
    """The earliest sign of this run: the button's click stamp or the time it joined the queue
    (a Stop of the session pressed after it stops the run before it starts)."""
    queued = _queued_at(request)
    stamps = [t for t in (clicked, queued) if isinstance(t, (int, float)) and not isinstance(t, bool)]
    return min(stamps) if stamps else None


def _run(h, work, request, clicked, progress, desc: str):
    """Forward an owned run: yields None while it works (the request can end then), the result last."""
    for msg in owned(work, runs=RUNS, session=_sid(request), lock=CACHE.lock(h),
                     clicked_at=_asked_at(clicked, request)):
        if msg[0] == "progress":
            progress((msg[1], msg[2]), desc=desc)
            yield msg
        elif msg[0] == "done":
            yield msg
        else:
            yield None


def stamp():
    """A run button's click time (unqueued), so a Stop pressed while the run still waits stops it."""
    return RUNS.clicked()


def stop_run(request: gr.Request):
    """Stop this session's runs: the running one ends after its current step; queued ones never start."""
    n = RUNS.stop(_sid(request))
    gr.Info("Stopping the current run..." if n else "Stop noted: a run waiting in the queue will not start.")


# --------------------------------------------------------------------------- heavy work (GPU on Spaces)


@GPU(duration=int((CHUNK.seconds if CHUNK and CHUNK.seconds else 270) + 30))
def _gpu_chunk(fn, *args):
    """One chunk of a long run: one GPU call on a Space (its duration covers the chunk's budget)."""
    return fn(*args)


def _score(h, method, settings, control):
    return score_chunked(h, method, settings, budget=CHUNK, control=control, call=_gpu_chunk)


@GPU(duration=120)
def _compare(h, plan, prompt, seed, steps, control, reconstructed=False):
    return compare_images(h, plan, prompt, seed, steps=steps, control=control, reconstructed=reconstructed)


def _quality(h, sparsities, chosen, settings, control):
    return compare_chunked(h, sparsities, chosen, settings=settings, budget=CHUNK, control=control, call=_gpu_chunk)


def _with_estimate(work, cost):
    """Run ``work(control)`` after reporting ``cost()`` (the estimate's text), so the estimate is on
    screen before the run starts (it times a few denoiser calls, under the run's model lock)."""
    def run(control):
        try:
            text = cost()
        except (PruningError, RuntimeError) as e:  # e.g. out of memory in a timed call: the run may still fit
            text = f"**Estimate** unavailable: {' '.join(str(e).split())[:200]}"
        control.report(0, 1, estimate=text)
        return work(control)
    return run


def _chunks_note(run) -> str:
    return f" It ran in {run.chunks} chunks of at most {_budget_words()}, resumed one after another." \
        if run.chunks > 1 else ""


def _budget_words() -> str:
    parts = [f"{CHUNK.seconds:g} s" if CHUNK and CHUNK.seconds else "",
             f"{CHUNK.units} unit{'s' * (CHUNK.units > 1)} of work" if CHUNK and CHUNK.units else ""]
    return " and ".join(p for p in parts if p)


@GPU(duration=300)
def _export(h, plan, full_pipeline, recover_iters, prompts, steps, session, control, reconstructed=False, lora=None,
            native=False):
    small = None
    if reconstructed:  # the re-fitted slim model; its plan records the reconstruction
        small = reconstruct(h, plan, control=control)
        plan = small.pruning_plan
    if recover_iters:
        from pruning.recover import RecoverSettings, recover

        small = recover(h, plan, RecoverSettings(prompts=prompts, iters=recover_iters, steps=steps), denoiser=small,
                        control=control)
        if small.recovery["partial"]:
            raise gr.Error(f"Export stopped during recovery ({control.reason}); nothing was exported.",
                           print_exception=False)
    out = export_zip(h, plan, session=session, full_pipeline=full_pipeline, denoiser=small, lora=lora, native=native)
    if reconstructed:
        out["reconstruction"] = small.reconstruction
    return out


# --------------------------------------------------------------------------- 1. model


def _cleared(h, note: str):
    """Every result output reset for a new model (nothing of the previous model stays on screen)."""
    empty = f"No results for {results.model_label(h)} yet."
    ops = selection_table(h, "operators")
    return (
        {}, None, None, None,  # results, plan, comparison table, last method
        visual.placeholder(f"{empty} Run a method above."), visual.placeholder("EcoDiff's curves appear here."),
        EMPTY["scores"], note,
        gr.update(choices=list(ops["fqn"]), value=[]),
        ops, "operators", EMPTY["totals"], visual.placeholder(empty),
        None, None, None, gr.update(value=None, visible=False), EMPTY["metrics"], "",
        visual.placeholder(f"No comparison for {results.model_label(h)} yet."), EMPTY["quality"], "",
        "No plan yet.", gr.update(visible=False), gr.update(visible=False), "",
        gr.update(value="magnitude"), gr.update(maximum=0.9, value=0.2), "",  # pre-fill method, target, its note
        "", "", "",  # the estimates (of the previous model)
    )


@friendly
def load_model(source, device, dtype, progress=PROGRESS):
    progress(0.1, desc=f"loading {source}")
    h = CACHE.get(str(source or "").strip(), device, dtype)
    f = model_facts(h)
    shares = ", ".join(f"{k} {v:.1%}" for k, v in f["kind_shares"].items() if v)
    md = (f"### {results.model_label(h)}\nfamily `{f['family']}` ({f['denoiser_class']}): "
          f"**{fmt.count(f['params'])} params**, **{fmt.count(f['macs'], 'MACs')}** per denoiser call at "
          f"{f['resolution']} px, on {f['device']} / {f['dtype']}. Generates with {f['steps']} steps, guidance "
          f"{f['guidance']:g}. Parameter shares: {shares}.\n\n{guide.estimates(h)}")
    kinds = pd.DataFrame(
        [{"what": "operator", "kind": k, "count": r["count"], "params": fmt.count(r["params"]),
          "share of params": fmt.percent(r["param_share"]), "share of MACs": fmt.percent(r["mac_share"])}
         for k, r in f["operators"].items()] +
        [{"what": "structure", "kind": k, "count": r["count"], "params": fmt.count(r["params"]),
          "share of params": fmt.percent(r["param_share"]), "share of MACs": ""}
         for k, r in f["structures"].items()])
    model = {"source": h.source, "device": str(h.device), "dtype": f["dtype"], "model_ref": h.model_ref}
    with CACHE.lock(h):  # the estimate times the shared denoiser
        steps = guide.STEPS.format(estimates=guide.estimates(h))
    return (model, md, kinds, f"Loaded {results.model_label(h)}.", steps,
            *_cleared(h, f"Ready: {results.model_label(h)}. Pick a method and press Run."))


# --------------------------------------------------------------------------- 2. score


def _settings(method, h, prompts, steps, n_gen, granularity, operators, epochs, batch, eco_kinds, beta, lr,
              stride, thr, ty_kinds, base_kinds, eco_preset=None, ld_preset=None, obs_preset=None):
    m = methods.get(method)
    names = {f.name for f in fields(m.Settings)}
    values = {"prompts": _prompts(prompts) if not m.data_free else None, "steps": _steps(steps)}
    per = {
        "ldpruner": dict(n_gen=check_size("n_gen", n_gen), granularity=granularity, operators=operators or None),
        "ecodiff": dict(epochs=check_size("epochs", epochs), batch_size=check_size("batch_size", batch),
                        kinds=eco_kinds, beta=beta, lr=lr),
        "taylor": dict(stride=check_size("stride", stride), thr=thr, kinds=ty_kinds),
        "magnitude": dict(kinds=base_kinds), "random": dict(kinds=base_kinds), "obsdiff": dict(kinds=base_kinds),
    }.get(method, {})
    values.update(per)
    preset = {"ecodiff": eco_preset, "ldpruner": ld_preset, "obsdiff": obs_preset}.get(method)
    return m.settings(preset=preset, family=h.family, **{k: v for k, v in values.items() if k in names and v is not None})


@friendly
def score_estimate(model, method, prompts, steps, n_gen, granularity, operators, epochs, batch, eco_kinds, beta, lr,
                   stride, thr, ty_kinds, base_kinds, eco_preset, ld_preset, obs_preset=None):
    """The predicted time and memory of the Run about to start (a few timed denoiser calls)."""
    if not model:
        return ""
    h = _handle(model)
    settings = _settings(method, h, prompts, steps, n_gen, granularity, operators, epochs, batch, eco_kinds,
                         beta, lr, stride, thr, ty_kinds, base_kinds, eco_preset, ld_preset, obs_preset)
    with CACHE.lock(h):  # the estimate times the shared denoiser
        return _estimate_text(h, estimate(h, method, settings, budget_s=_gpu_budget()))


def _gpu_budget() -> float | None:
    """The time one GPU call may take: the chunk budget when runs are chunked, else PRUNING_GPU_BUDGET_S."""
    return CHUNK.seconds if CHUNK and CHUNK.seconds else GPU_BUDGET_S


def _estimate_text(h, e) -> str:
    return f"**Estimate** ({results.model_label(h)}): {e.text()}."


def preset_values(model, preset):
    """The beta and learning rate a preset starts from, for the loaded model's family."""
    family = _handle(model).family if model else "sd"
    s = methods.get("ecodiff").settings(preset=preset, family=family)
    return s.beta, s.lr


def ldpruner_preset_note(model, preset):
    """The proxy's or the fast score's measured agreement with the full sweep, shown while one is
    chosen; for the fast score, also why it is suggested when the full sweep exceeds the GPU budget."""
    if preset not in ("proxy", "fast"):
        return ""
    ref = _handle(model).model_ref if model else None
    if preset == "proxy":
        return methods.ldpruner.proxy_note(ref)
    over = _sweep_over_budget(model)
    why = ""
    if over is not None:
        t, budget = over.seconds, _gpu_budget()
        when = f"about {t:.0f} s" if t < 120 else f"about {t / 60:.0f} min"
        why = (f"**Suggested for this model**: the full sweep needs {when}, over the {budget:g} s of one GPU call "
               f"(about {math.ceil(t / budget)} chunks); it stays available: choose \"full\". ")
    return why + fast_note(ref)


def _sweep_over_budget(model):
    """The full sweep's estimate (default settings) when it exceeds one GPU call's budget, else None."""
    budget = _gpu_budget()
    if not model or budget is None:
        return None
    h = _handle(model)
    with CACHE.lock(h):  # the estimate times the shared denoiser
        e = estimate(h, "ldpruner", methods.get("ldpruner").settings(), budget_s=budget)
    return e if e.seconds > budget else None


def suggest_ldpruner_preset(model):
    """On a model whose full sweep exceeds one GPU call's budget, the fast score is chosen (the
    full sweep stays one click away); elsewhere the choice is left as it is."""
    try:
        return gr.update(value="fast") if _sweep_over_budget(model) is not None else gr.update()
    except PruningError:  # no estimate (e.g. the model did not load): leave the choice alone
        return gr.update()


@friendly
def run_score(model, method, prompts, steps, n_gen, granularity, operators, epochs, batch, eco_kinds, beta, lr,
              stride, thr, ty_kinds, base_kinds, eco_preset, ld_preset, obs_preset, store, clicked, request: gr.Request,
              progress=PROGRESS):
    h = _handle(model)
    settings = _settings(method, h, prompts, steps, n_gen, granularity, operators, epochs, batch, eco_kinds,
                         beta, lr, stride, thr, ty_kinds, base_kinds, eco_preset, ld_preset, obs_preset)
    live, run, est = [], None, ""
    work = _with_estimate(lambda c: _score(h, method, settings, c),
                          lambda: _estimate_text(h, estimate(h, method, settings, budget_s=_gpu_budget())))
    for msg in _run(h, work, request, clicked, progress, method):
        if msg and msg[0] == "done":
            run = msg[1]
        elif msg and "estimate" in msg[3]:
            est = msg[3]["estimate"]
            yield (*_skip(7), est)
        elif msg and method == "ecodiff":
            live.append(msg[3])
            yield (*_skip(2), visual.loss_plot(pd.DataFrame(live), subtitle=results.model_label(h)), *_skip(5))
        else:
            yield _skip(8)
    scores = run.result
    store = {**(store or {}), method: scores.to_dict()}
    loss = visual.loss_plot(pd.DataFrame(scores.info.get("history", [])), subtitle=results.subtitle(h, scores)) \
        if method == "ecodiff" else gr.skip()
    yield (gr.update(value=results.score_table(h, scores), label=results.table_label(h, scores)),
           results.heatmap(h, scores), loss, store, method, results.status(h, scores) + _chunks_note(run),
           gr.update(value=method), est)


@friendly
def show_method(model, method, store):
    """Switching methods shows that method's own last result (or says there is none)."""
    groups = [gr.update(visible=method == k) for k in ("ldpruner", "ecodiff", "taylor", "obsdiff")]
    base = gr.update(visible=method in ("magnitude", "random", "obsdiff"))
    m = methods.get(method)
    if not model:
        return (*groups, base, gr.skip(), gr.skip(), f"{m.title}: {m.summary}", gr.update(visible=method == "ecodiff"))
    h = _handle(model)
    if method in (store or {}):
        s = Scores.from_dict(store[method])
        return (*groups, base, gr.update(value=results.score_table(h, s), label=results.table_label(h, s)),
                results.heatmap(h, s),
                f"{m.summary}\n\n{results.status(h, s)}", gr.update(visible=method == "ecodiff"))
    return (*groups, base, EMPTY["scores"], visual.placeholder(f"No {m.title} scores for {results.model_label(h)} yet."),
            f"{m.title}: {m.summary}", gr.update(visible=method == "ecodiff"))


# --------------------------------------------------------------------------- 3. select and compare


def _scores_for(h, method, store) -> Scores:
    m = methods.get(method)
    if method in (store or {}):
        return Scores.from_dict(store[method])
    if m.data_free:
        return m.score(h)
    raise gr.Error(f"Run {m.title} in the Score tab first (or pre-fill from magnitude, which needs no run).",
                   print_exception=False)


def _totals_view(h, plan):
    s = totals(h, plan)
    df = pd.DataFrame({"what": ["params", "MACs per denoiser call"],
                       "removed": [fmt.count(s["params_removed"]), fmt.count(s["macs_removed"])],
                       "of": [fmt.count(s["params_total"]), fmt.count(s["macs_total"])],
                       "fraction": [fmt.percent(s["params_fraction"]), fmt.percent(s["macs_fraction"])]})
    return df, plan.to_dict()


def _kept_plot(h, plan, label: str):
    kept = unit_kept_table(h, plan)
    return visual.mask_sparsity_plot(kept, title="Kept fraction per layer under your plan",
                                     subtitle=f"{results.model_label(h)} · {label}")


@friendly
def target_range(model, method, store):
    """The target slider stops at what the method can reach (and says why)."""
    if not model:
        return gr.skip(), gr.skip()
    h = _handle(model)
    m = methods.get(method)
    scores = Scores.from_dict(store[method]) if method in (store or {}) else (m.score(h) if m.data_free else None)
    top, why = results.slider_max(h, scores)
    note = why or f"Run {m.title} in the Score tab to pre-fill from it."
    return gr.update(maximum=top), note


@friendly
def prefill(model, method, target, scope, store, native=False):
    h = _handle(model)
    scores = _scores_for(h, method, store)
    top, why = results.slider_max(h, scores)
    if float(target) > top + 1e-9:
        raise gr.Error(f"Target {float(target):.0%} is out of reach. {why}", print_exception=False)
    plan = methods.to_plan(h, scores, target_sparsity=float(target), scope=scope, native=check_flag("native", native))
    mode = "operators" if scores.level == "operator" else "structures"
    score_map = dict(zip(scores.per_structure()["fqn"], scores.per_structure()["score"]))
    df, plan_dict = _totals_view(h, plan)
    label = f"{methods.get(method).title} at {float(target):.0%} ({scope})"
    reached = totals(h, plan)["params_fraction"]
    note = (f"Pre-filled from {methods.get(method).title}: your target {float(target):.0%}, the plan removes "
            f"{reached:.1%} of the params" + (" (whole operators overshoot the target)." if mode == "operators"
                                              and reached > float(target) + 0.005 else ".")
            + f" The plan is {describe(report(h.denoiser, plan))}.")
    return selection_table(h, mode, plan, score_map), mode, df, plan_dict, _kept_plot(h, plan, label), note


@friendly
def change_mode(model, mode):
    h = _handle(model)
    empty = PruningPlan(family=h.family, base=h.model_ref)
    return selection_table(h, mode), *_totals_view(h, empty), _kept_plot(h, empty, "nothing selected")


@friendly
def plan_totals(model, mode, table):
    h = _handle(model)
    if not isinstance(table, pd.DataFrame):
        raise gr.Error("The selection table must be a table (headers and rows).", print_exception=False)
    plan = plan_from_table(h, mode, table)
    return refresh_kept(h, mode, table), *_totals_view(h, plan), _kept_plot(h, plan, "your selection")


def _pair_outputs(out: dict, view: str):
    a, b = display_pair(out["original"], out["pruned"])
    side = view != "slider"
    return (gr.update(value=a, visible=side), gr.update(value=b, visible=side),
            gr.update(value=difference(out["original"], out["pruned"]), visible=side),
            gr.update(value=(a, b), visible=not side))


@friendly
def generate(model, plan_dict, prompt, seed, steps, view, recon, clicked, request: gr.Request, progress=PROGRESS):
    h = _handle(model)
    plan, seed, steps = _plan(plan_dict), check_size("seed", seed), _steps(steps)
    prompt = _prompts(prompt)[0]
    out, recon = None, check_flag("reconstruct", recon)
    work = lambda c: _compare(h, plan, prompt, seed, steps, c, recon)  # noqa: E731
    for msg in _run(h, work, request, clicked, progress, "compare"):
        if msg and msg[0] == "done":
            out = msg[1]
        else:
            yield _skip(7)
    pair = {"original": out["original"], "pruned": out["pruned"]}
    how = f", {results.reconstruction_note(out['reconstruction'])}" if recon else ""
    caption = (f"**{results.model_label(h)}**, seed {seed}: left the original, right the pruned model "
               f"({fmt.percent(totals(h, plan)['params_fraction'])} of params removed{how}), below their difference "
               f"(x4, black = identical).")
    label = f"original vs pruned: {results.model_label(h)}, seed {seed}"
    yield (*_pair_outputs(out, view), gr.update(value=metrics_table(out["metrics"]), label=label), pair, caption)


def switch_view(view, pair):
    if not pair:
        return (gr.update(visible=view != "slider"),) * 3 + (gr.update(visible=view == "slider"),)
    return _pair_outputs(pair, view)


# --------------------------------------------------------------------------- 4. how much can I prune?


def _sparsities(text) -> list[float]:
    from pruning.compare import check_sparsities

    items = [x for x in str(text or "").replace(";", ",").split(",") if x.strip()]
    return check_sparsities(check_count("sparsities", items))


def _quality_plot(table: dict | None, metric, plan_dict, model):
    if not table:
        whose = f"No comparison for {results.model_label(_handle(model))} yet. " if model else ""
        return visual.placeholder(f"{whose}Run the comparison to see quality against sparsity.", height=420)
    df = pd.DataFrame(table["records"])
    done = df[df["method"] != "original"] if len(df) else df
    if not len(done) or metric not in df.columns:
        return visual.placeholder("Stopped before any method was evaluated." if table["attrs"].get("partial")
                                  else f"No {metric} in this comparison.", height=420)
    mark = None
    if plan_dict and model:
        mark = totals(_handle(model), _plan(plan_dict))["params_fraction"]
    a = table["attrs"]
    sub = (f"{table['label']} · {len(a['eval_prompts'])} prompts, seeds 0-{len(a['eval_prompts']) - 1}"
           + (" · STOPPED" if a.get("partial") else ""))
    return visual.quality_vs_sparsity(df, metric, subtitle=sub, mark=mark)


def _quality_table(df: pd.DataFrame) -> pd.DataFrame:
    empty = pd.Series(dtype=float)
    rebuilt = df.get("reconstructed", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    out = pd.DataFrame({"method": df["method"], "reconstructed": rebuilt.map({True: "yes", False: ""}),
                        "target": df["sparsity"].map(fmt.percent),
                        "params removed": df.get("params_fraction", empty).map(fmt.percent),
                        "MACs": df.get("macs", empty).map(lambda v: fmt.count(v))})
    se = df.get("latent_mse_se", pd.Series(float("nan"), index=df.index))
    out["latent MSE ± SE (lower = closer)"] = [f"{fmt.number(m)} ± {fmt.number(e)}" if pd.notna(e) else fmt.number(m)
                                               for m, e in zip(df.get("latent_mse", empty), se)]
    out["PSNR dB (higher = closer)"] = df.get("psnr", empty).map(lambda v: fmt.number(v, 3))
    if "ssim" in df.columns:
        out["SSIM (higher = closer)"] = df["ssim"].map(lambda v: fmt.number(v, 3))
    if "acc_all" in df.columns:
        lo, hi = df.get("acc_all_lo", df["acc_all"]), df.get("acc_all_hi", df["acc_all"])
        out["task accuracy (95% interval)"] = [f"{fmt.percent(a)} [{fmt.percent(x)}-{fmt.percent(y)}]"
                                               if pd.notna(x) else fmt.percent(a)
                                               for a, x, y in zip(df["acc_all"], lo, hi)]
    if "error" in df.columns:
        out["note"] = df["error"].fillna("")
    return out


def _quality_settings(chosen, sparsities, prompts, steps, recon):
    """(sparsities, prompts, CompareSettings) of the How much? tab's widgets."""
    if not chosen:
        raise gr.Error("Pick at least one method to compare.", print_exception=False)
    p = _prompts(prompts)
    settings = CompareSettings(eval_prompts=p, calib_prompts=p, steps=_steps(steps), random_draws=1,
                               reconstruct=check_flag("reconstruct", recon),
                               method_settings={"ldpruner": {"n_gen": max(2, min(len(p), 8))},
                                                "taylor": {"stride": 100}})
    return _sparsities(sparsities), p, settings


@friendly
def quality_estimate(model, chosen, sparsities, prompts, steps, recon):
    """The predicted time and memory of the comparison about to start."""
    if not model:
        return ""
    h = _handle(model)
    sps, _, settings = _quality_settings(chosen, sparsities, prompts, steps, recon)
    with CACHE.lock(h):
        return _estimate_text(h, estimate_comparison(h, sps, list(chosen), settings, budget_s=_gpu_budget()))


@friendly
def run_quality(model, chosen, sparsities, prompts, steps, metric, recon, store, plan_dict, clicked,
                request: gr.Request, progress=PROGRESS):
    h = _handle(model)
    sps, p, settings = _quality_settings(chosen, sparsities, prompts, steps, recon)
    run, est = None, ""
    work = _with_estimate(lambda c: _quality(h, sps, list(chosen), settings, c),
                          lambda: _estimate_text(h, estimate_comparison(h, sps, list(chosen), settings,
                                                                        budget_s=_gpu_budget())))
    for msg in _run(h, work, request, clicked, progress, "compare"):
        if msg and msg[0] == "done":
            run = msg[1]
        elif msg and "estimate" in msg[3]:
            est = msg[3]["estimate"]
            yield (*_skip(4), est)
        else:
            yield _skip(5)
    df = run.result
    table = {"records": df.to_dict("records"), "attrs": dict(df.attrs), "label": results.model_label(h)}
    why = "" if df.attrs.get("stopped") in (None, "stopped") else f" ({df.attrs['stopped']})"
    note = (f"**Stopped**{why}: the finished rows are shown." if df.attrs.get("partial")
            else f"Done: {int((~df['method'].isin(['original', 'fewer steps'])).sum())} plans evaluated on "
                 f"{len(p)} prompts.")
    yield (_quality_plot(table, metric, plan_dict, model),
           gr.update(value=_quality_table(df), label=f"every plan against the original: {results.model_label(h)}"),
           table, note + _chunks_note(run), est)


def redraw_quality(table, metric, plan_dict, model):
    return _quality_plot(table, metric, plan_dict, model)


# --------------------------------------------------------------------------- 5. export


@friendly
def export_summary(model, plan_dict):
    if not model or not plan_dict:
        return "No plan yet: make one in **Select and compare** (pre-fill or tick rows)."
    h = _handle(model)
    plan = _plan(plan_dict)
    s = totals(h, plan)
    how = plan.provenance.get("method", "manual")
    return (f"Exports **{results.model_label(h)}** pruned by the plan from **{how}**: "
            f"{s['operators_removed']} operators removed and {s['structures_pruned']} layers slimmed, "
            f"**{fmt.percent(s['params_fraction'])} of the params** ({fmt.count(s['params_removed'])} of "
            f"{fmt.count(s['params_total'])}) and {fmt.percent(s['macs_fraction'])} of the MACs per denoiser call. "
            f"The plan is {describe(report(h.denoiser, plan))}.")


@friendly
def export_model(model, plan_dict, full_pipeline, recover_iters, prompts, steps, recon, clicked, lora_file=None,
                 native=False, request: gr.Request = None, progress=PROGRESS):
    h = _handle(model)
    lora = _lora_path(lora_file)
    plan, iters = _plan(plan_dict), check_size("recover_iters", recover_iters or 0)
    full_pipeline = check_flag("full pipeline", full_pipeline)
    check_removes_something(plan, h)  # before a recovery or reconstruction
    rec_prompts = _prompts(prompts) if iters else None
    out, recon, est = None, check_flag("reconstruct", recon), ""
    native = check_flag("native", native)
    if native:
        native_layout(h.denoiser, plan)  # not native: one toast naming the layer, before any work
    work = _with_estimate(
        lambda c: _export(h, plan, full_pipeline, iters, rec_prompts, _steps(steps), _sid(request), c, recon,
                          lora, native),
        lambda: _estimate_text(h, estimate_export(h, reconstruct=recon, recover_iters=iters, budget_s=_gpu_budget())))
    for msg in _run(h, work, request, clicked, progress, "export"):
        if msg and msg[0] == "done":
            out = msg[1]
        elif msg and "estimate" in msg[3]:
            est = msg[3]["estimate"]
            yield (*_skip(4), est)
        else:
            yield _skip(5)
    done = "Exported" + (f" ({results.reconstruction_note(out['reconstruction'])})" if recon else "")
    if out.get("lora"):
        r = out["lora"]
        done += (f", with the LoRA sliced ({r['kept']} layers kept, {r['sliced']} sliced"
                 + (f"; dropped with removed operators: {', '.join(d.split(' ')[0] for d in r['dropped'])}"
                    if r["dropped"] else "") + ")")
    yield (gr.update(value=out["zip"], visible=True), gr.update(value=out["plan_json"], visible=True),
           out["snippet"], f"{done}: download the zip, then follow the lines below.", est)


def _lora_path(lora_file) -> str | None:
    """The uploaded LoRA's path (a gr.File value: a path or a file object), or None."""
    if not lora_file:
        return None
    path = str(getattr(lora_file, "name", lora_file))
    if not path.endswith(".safetensors"):
        raise gr.Error(f"The LoRA {Path(path).name!r} is not a .safetensors file: only safetensors LoRAs are "
                       "read (nothing is unpickled).", print_exception=False)
    return path


@friendly
def export_estimate(model, plan_dict, recover_iters, recon):
    """The predicted time and memory of the export about to start."""
    if not model:
        return ""
    h = _handle(model)
    _plan(plan_dict)  # no plan: the same message as Export gives
    iters, recon = check_size("recover_iters", recover_iters or 0), check_flag("reconstruct", recon)
    with CACHE.lock(h):
        return _estimate_text(h, estimate_export(h, reconstruct=recon, recover_iters=iters, budget_s=_gpu_budget()))


def end_session(request: gr.Request):
    """A closed tab: stop its runs and remove its exports."""
    RUNS.stop(_sid(request), "the session closed")
    cleanup(session=_sid(request))


# --------------------------------------------------------------------------- layout


def build_app() -> gr.Blocks:
    """The Blocks app (no model is loaded here; the page's load event loads the default)."""
    serve_in_place()  # downloads are served from PRUNING_EXPORT_DIR, never copied into gradio's cache
    H = guide.HELP
    with gr.Blocks(title="Diffusion Pruning Explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown(guide.INTRO)
        with gr.Accordion("How it works, and the words used here", open=True):
            steps_md = gr.Markdown(guide.STEPS.format(estimates=""))
            gr.Markdown(guide.GLOSSARY)
        model, store, plan_state, cmp_state, last_method = (gr.State(None), gr.State({}), gr.State(None),
                                                            gr.State(None), gr.State(None))
        clicked, pair_state = gr.State(None), gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("1 Model", id="model"):
                gr.Markdown("### 1. Load a model")
                with gr.Row():
                    source = gr.Dropdown(MODELS, value=DEFAULT_MODEL, allow_custom_value=True, scale=3,
                                         label="model", info=H["model"])
                    device = gr.Dropdown(["cpu", "cuda"], value="cpu", label="device", info=H["device"], scale=1)
                    dtype = gr.Dropdown(list(DTYPES), value="float32", label="dtype", info=H["dtype"], scale=1)
                load_btn = gr.Button("Load", variant="primary")
                model_status = gr.Markdown("Loading the default model...", elem_classes="status", elem_id="model-status")
                info = gr.Markdown()
                kinds = gr.Dataframe(EMPTY["kinds"], label="What can be pruned, by kind", interactive=False)
                next_1 = gr.Button("Next: score what can be removed →", size="sm")
            with gr.Tab("2 Score", id="score"):
                gr.Markdown("### 2. Score what can be removed")
                method_note = gr.Markdown()
                method = gr.Radio([(methods.get(n).title, n) for n in methods.names()], value="magnitude",
                                  label="method", info=H["method"])
                with gr.Row():
                    sc_prompts = gr.Textbox(PROMPTS, lines=4, label="prompts", info=H["prompts"], scale=3)
                    sc_steps = Number(0, precision=0, label="steps", info=H["steps"], scale=1)
                with gr.Group(visible=False) as ld_group:
                    with gr.Row():
                        n_gen = Slider(2, 16, value=4, step=1, label="images per operator", info=H["n_gen"])
                        granularity = gr.Radio(["fine", "block", "all"], value="fine", label="granularity",
                                               info=H["granularity"])
                    ld_ops = gr.Dropdown([], multiselect=True, label="only these operators", info=H["operators"])
                    ld_preset = gr.Radio([("full (default)", "full"), ("fast proxy", "proxy"),
                                          ("fast score: one-step ablation", "fast")], value="full",
                                         label="sweep settings", info=H["ld_preset"])
                    ld_note = gr.Markdown(elem_id="ld-proxy-note")
                with gr.Group(visible=False) as eco_group:
                    with gr.Row():
                        eco_epochs = Slider(1, 50, value=methods.ecodiff.DEFAULT_EPOCHS, step=1, label="epochs",
                                               info=H["epochs"])
                        eco_batch = Slider(1, 16, value=4, step=1, label="batch size", info=H["batch"])
                        eco_kinds = gr.CheckboxGroup(["head", "neuron", "group"], value=["head", "neuron"],
                                                     label="gates on", info=H["kinds"])
                        eco_beta = Number(methods.ecodiff.DEFAULT_BETA, label="sparsity push", info=H["beta"])
                        eco_lr = Number(methods.ecodiff.DEFAULT_LR, label="learning rate", info=H["lr"])
                    eco_preset = gr.Radio([("ours (default)", "ours"), ("the authors' configs", "authors")],
                                          value="ours", label="settings", info=H["eco_preset"])
                with gr.Group(visible=False) as ty_group:
                    with gr.Row():
                        ty_stride = Slider(1, 500, value=100, step=1, label="noise-level stride", info=H["stride"])
                        ty_thr = Slider(0.0, 0.5, value=0.05, step=0.01, label="stop threshold", info=H["thr"])
                        ty_kinds = gr.CheckboxGroup(["head", "neuron", "group"], value=["head", "neuron", "group"],
                                                    label="units", info=H["taylor_kinds"])
                with gr.Group(visible=False) as obs_group:
                    obs_preset = gr.Radio([("ours (default)", "ours"), ("the authors' values", "authors")],
                                          value="ours", label="settings", info=H["obs_preset"])
                with gr.Group(visible=True) as base_group:
                    base_kinds = gr.CheckboxGroup(["head", "neuron", "group"], value=["head", "neuron", "group"],
                                                  label="units", info=H["kinds"])
                with gr.Row():
                    sc_run, sc_stop = gr.Button("Run", variant="primary"), gr.Button("Stop")
                    sc_est_btn = gr.Button("Estimate the cost", size="sm")
                sc_estimate = gr.Markdown(elem_classes="status", elem_id="score-estimate")
                sc_status = gr.Markdown(elem_classes="status", elem_id="score-status")
                sc_plot = gr.Plot(visual.placeholder(), label="scores per layer", elem_id="score-plot")
                eco_loss = gr.Plot(visual.placeholder("EcoDiff's curves appear here.", height=480), visible=False,
                                   label="EcoDiff optimization")
                sc_table = gr.Dataframe(EMPTY["scores"], label="most prunable first", interactive=False, max_height=360)
                next_2 = gr.Button("Next: select what to remove →", size="sm")
            with gr.Tab("3 Select", id="select"):
                gr.Markdown("### 3. Select what to remove, and compare the original and the pruned model")
                with gr.Row():
                    fill_method = gr.Dropdown([(methods.get(n).title, n) for n in methods.names()], value="magnitude",
                                              label="pre-fill from", info=H["prefill"])
                    target = Slider(0.01, 0.9, value=0.2, step=0.01, label="target sparsity", info=H["target"])
                    scope = gr.Radio(["global", "local"], value="global", label="scope", info=H["scope"])
                    native_sw = Checkbox(False, label="native (whole blocks only)", elem_id="native-plan",
                                            info="only what a diffusers config can state: the export then loads "
                                                 "with plain diffusers, without this app's library")
                target_note = gr.Markdown(elem_classes="status", elem_id="target-note")
                fill_btn = gr.Button("Pre-fill the table")
                mode = gr.Radio(list(MODES), value="operators", label="table", info=H["mode"])
                gr.Markdown("Tick what to remove. In the structures table, **kept indices** lists the units of a "
                            "ticked layer that stay (empty = remove them all); **kept units** follows your ticks.")
                table = Table(empty_table(), headers=COLUMNS, datatype=DATATYPES, interactive=True,
                              max_height=360, label="selection: tick what to remove", elem_id="selection")
                with gr.Row():
                    plan_df = gr.Dataframe(EMPTY["totals"], label="your plan removes", interactive=False, scale=2)
                    with gr.Accordion("plan (JSON)", open=False):
                        plan_json = gr.JSON(label="pruning_plan.json")
                kept_plot = gr.Plot(visual.placeholder("Your plan's kept fraction per layer appears here.", height=480),
                                    elem_id="kept-plot")
                with gr.Row():
                    prompt = gr.Textbox(guide.EXAMPLE_PROMPTS["shapes"][0], label="prompt", info=H["prompt"], scale=3,
                                        elem_id="prompt")
                    seed = Number(0, precision=0, label="seed", info=H["seed"])
                    gen_steps = Number(0, precision=0, label="steps", info=H["steps"])
                gr.Examples([[p] for p in guide.EXAMPLE_PROMPTS["shapes"]], [prompt], label="prompts for the shapes models")
                gr.Examples([[p] for p in guide.EXAMPLE_PROMPTS["other"]], [prompt], label="prompts for other models")
                with gr.Row():
                    gen_btn = gr.Button("Generate original vs pruned", variant="primary", scale=3)
                    view = gr.Radio(["side by side", "slider"], value="side by side", label="view", info=H["view"])
                    gen_recon = Checkbox(False, label="reconstruct", info=H["reconstruct"], elem_id="gen-recon")
                gen_status = gr.Markdown(elem_classes="status", elem_id="gen-status")
                with gr.Row(elem_id="pair"):  # never wraps: the two images stay side by side, the same size
                    img_a = gr.Image(label="original", type="pil", format="png", interactive=False, min_width=0,
                                     elem_classes="pixelated", elem_id="img-original")
                    img_b = gr.Image(label="pruned", type="pil", format="png", interactive=False, min_width=0,
                                     elem_classes="pixelated", elem_id="img-pruned")
                img_d = gr.Image(label="difference (x4, black = identical)", type="pil", format="png",
                                 interactive=False, elem_classes="pixelated", elem_id="img-diff")
                slider = gr.ImageSlider(label="original | pruned", visible=False, type="pil", format="png",
                                        elem_classes="pixelated", elem_id="slider")
                metrics = gr.Dataframe(EMPTY["metrics"], label="original vs pruned", interactive=False)
                next_3 = gr.Button("Next: how much can I prune? →", size="sm")
            with gr.Tab("4 How much?", id="quality"):
                gr.Markdown("### 4. How much can I prune?\nEach method scores the model once, is cut at every target, "
                            "and the pruned models are compared with the original on the same prompts and seeds. "
                            "Your own plan (from Select) is marked on the plot. *fewer steps*: the original model "
                            "with its steps cut to spend each plan's MACs per image (20% fewer MACs = 20% fewer "
                            "steps): does pruning beat simply running fewer steps?")
                with gr.Row():
                    cmp_methods = gr.CheckboxGroup([(methods.get(n).title, n) for n in methods.names()],
                                                   value=["magnitude", "random"], label="methods", info=H["cmp_methods"])
                    cmp_sps = gr.Textbox("0.1, 0.2, 0.3", label="target sparsities", info=H["sparsities"])
                cmp_prompts = gr.Textbox(PROMPTS, lines=3, label="prompts (scored with and evaluated on)",
                                         info=H["prompts"])
                with gr.Row():
                    cmp_btn, cmp_stop = gr.Button("Compare", variant="primary"), gr.Button("Stop")
                    cmp_est_btn = gr.Button("Estimate the cost", size="sm")
                    metric = gr.Dropdown([(visual.METRICS[k][0], k) for k in ("latent_mse", "psnr", "ssim", "acc_all")],
                                         value="latent_mse", label="show", info=H["metric"])
                    cmp_recon = Checkbox(False, label="also reconstruct every plan", info=H["cmp_reconstruct"])
                cmp_estimate = gr.Markdown(elem_classes="status", elem_id="quality-estimate")
                cmp_status = gr.Markdown(elem_classes="status", elem_id="quality-status")
                cmp_plot = gr.Plot(visual.placeholder("Run the comparison to see quality against sparsity.", 420),
                                   elem_id="quality-plot")
                cmp_table = gr.Dataframe(EMPTY["quality"], interactive=False, label="every plan, against the original")
                next_4 = gr.Button("Next: export your plan →", size="sm")
            with gr.Tab("5 Export", id="export"):
                gr.Markdown("### 5. Export the slimmed model")
                exp_summary = gr.Markdown("No plan yet.", elem_id="export-summary")
                with gr.Row(elem_id="export-options"):  # one option per line on a phone (CSS)
                    full = Checkbox(True, label="full pipeline", info=H["full"])
                    rec_iters = Number(0, precision=0, label="recovery iterations", info=H["recover"])
                    exp_recon = Checkbox(False, label="reconstruct", info=H["reconstruct"], elem_id="exp-recon")
                    exp_native = Checkbox(False, label="native diffusers folder", elem_id="exp-native",
                                          info="rewritten config, renumbered keys: DiffusionPipeline.from_pretrained "
                                               "loads it without pruning (whole-block plans only)")
                exp_lora = gr.File(label="LoRA to carry through (optional, .safetensors for the base model: exported "
                                   "sliced for the plan into lora/)", file_types=[".safetensors"], type="filepath",
                                   elem_id="exp-lora")
                with gr.Row():
                    exp_btn = gr.Button("Export", variant="primary", scale=3)
                    exp_est_btn = gr.Button("Estimate the cost", size="sm", scale=1)
                exp_estimate = gr.Markdown(elem_classes="status", elem_id="export-estimate")
                exp_status = gr.Markdown(elem_classes="status", elem_id="export-status")
                with gr.Row():
                    dl_zip = gr.DownloadButton("Download the model (.zip)", visible=False)
                    dl_json = gr.DownloadButton("Download pruning_plan.json", visible=False)
                snippet = gr.Code(language="shell", label="load it")

        run = RUN
        reset = [store, plan_state, cmp_state, last_method, sc_plot, eco_loss, sc_table, sc_status, ld_ops, table,
                 mode, plan_df, kept_plot, img_a, img_b, img_d, slider, metrics, gen_status, cmp_plot, cmp_table,
                 cmp_status, exp_summary, dl_zip, dl_json, snippet, fill_method, target, target_note, sc_estimate,
                 cmp_estimate, exp_estimate]
        load_out = [model, info, kinds, model_status, steps_md, *reset]
        load_btn.click(load_model, [source, device, dtype], load_out, api_name="load_model",
                       show_progress_on=[model_status], **run)
        demo.load(load_model, [source, device, dtype], load_out, api_visibility="private",
                  show_progress_on=[model_status], **run)
        demo.unload(end_session)
        for btn, tab in ((next_1, "score"), (next_2, "select"), (next_3, "quality"), (next_4, "export")):
            btn.click(lambda tab=tab: gr.Tabs(selected=tab), None, tabs, queue=False, api_visibility="private")
        for btn in (sc_stop, cmp_stop):
            btn.click(stop_run, None, None, api_name="stop" if btn is sc_stop else None,
                      api_visibility="public" if btn is sc_stop else "private", queue=False)
        method.change(show_method, [model, method, store],
                      [ld_group, eco_group, ty_group, obs_group, base_group, sc_table, sc_plot, method_note, eco_loss],
                      api_visibility="private", **UI)
        sc_inputs = [model, method, sc_prompts, sc_steps, n_gen, granularity, ld_ops, eco_epochs, eco_batch,
                     eco_kinds, eco_beta, eco_lr, ty_stride, ty_thr, ty_kinds, base_kinds, eco_preset, ld_preset,
                     obs_preset, store, clicked]
        eco_preset.change(preset_values, [model, eco_preset], [eco_beta, eco_lr], api_visibility="private", **UI)
        for trigger in (ld_preset, model):  # the note names the loaded model's figures when it was measured
            trigger.change(ldpruner_preset_note, [model, ld_preset], ld_note, api_visibility="private", **UI)
        model.change(suggest_ldpruner_preset, model, ld_preset, api_visibility="private", **UI)
        sc_est_btn.click(score_estimate, sc_inputs[:-2], sc_estimate, api_name="estimate", **run)
        sc_run.click(stamp, None, clicked, queue=False, api_visibility="private").then(
            run_score, sc_inputs, [sc_table, sc_plot, eco_loss, store, last_method, sc_status, fill_method,
                                   sc_estimate],
            api_name="score", show_progress_on=[sc_status], **run)
        fill_method.change(target_range, [model, fill_method, store], [target, target_note],
                           api_visibility="private", **UI)
        fill_btn.click(prefill, [model, fill_method, target, scope, store, native_sw],
                       [table, mode, plan_df, plan_state, kept_plot, target_note], api_name="prefill", **UI)
        mode.input(change_mode, [model, mode], [table, plan_df, plan_state, kept_plot], api_name="table_mode", **UI)
        table.input(plan_totals, [model, mode, table], [table, plan_df, plan_state, kept_plot],
                    api_name="plan_totals", trigger_mode="always_last", **UI)
        plan_state.change(lambda p: p, plan_state, plan_json, api_visibility="private", **UI)
        plan_state.change(export_summary, [model, plan_state], exp_summary, api_visibility="private", **UI)
        plan_state.change(redraw_quality, [cmp_state, metric, plan_state, model], cmp_plot, api_visibility="private",
                          **UI)
        gen_btn.click(stamp, None, clicked, queue=False, api_visibility="private").then(
            generate, [model, plan_state, prompt, seed, gen_steps, view, gen_recon, clicked],
            [img_a, img_b, img_d, slider, metrics, pair_state, gen_status], api_name="generate",
            show_progress_on=[gen_status], **run)
        view.change(switch_view, [view, pair_state], [img_a, img_b, img_d, slider], api_visibility="private", **UI)
        cmp_btn.click(stamp, None, clicked, queue=False, api_visibility="private").then(
            run_quality, [model, cmp_methods, cmp_sps, cmp_prompts, gen_steps, metric, cmp_recon, store, plan_state,
                          clicked],
            [cmp_plot, cmp_table, cmp_state, cmp_status, cmp_estimate], api_name="compare_methods",
            show_progress_on=[cmp_status], **run)
        cmp_est_btn.click(quality_estimate, [model, cmp_methods, cmp_sps, cmp_prompts, gen_steps, cmp_recon],
                          cmp_estimate, api_name="estimate_compare", **run)
        metric.change(redraw_quality, [cmp_state, metric, plan_state, model], cmp_plot, api_name="redraw", **UI)
        exp_btn.click(stamp, None, clicked, queue=False, api_visibility="private").then(
            export_model, [model, plan_state, full, rec_iters, sc_prompts, gen_steps, exp_recon, clicked, exp_lora,
                           exp_native],
            [dl_zip, dl_json, snippet, exp_status, exp_estimate], api_name="export", show_progress_on=[exp_status],
            **run)
        exp_est_btn.click(export_estimate, [model, plan_state, rec_iters, exp_recon], exp_estimate,
                          api_name="estimate_export", **run)
    return demo


demo = build_app()


def _warm(source: str = DEFAULT_MODEL) -> None:
    """Load the default model into the cache in the background, so the first page view is fast."""
    try:
        CACHE.get(source)
    except Exception as e:  # the page's load event shows the error as a toast
        print(f"[app] could not preload {source!r}: {e}", flush=True)


def launch(**kwargs) -> str:
    """Serve the app as ``python app.py`` does (one run at a time per event, a bounded queue, the
    page's CSS); the tests call this too, so they test the app as it is served. Returns the URL."""
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), show_error=True, css=CSS, **kwargs)
    return demo.local_url


if __name__ == "__main__":
    import torch

    # small models on a shared CPU run far faster on one thread (contention); PRUNING_THREADS overrides
    if not torch.cuda.is_available() or os.environ.get("PRUNING_THREADS"):
        torch.set_num_threads(int(os.environ.get("PRUNING_THREADS", "1")))
    threading.Thread(target=_warm, daemon=True).start()
    launch()
