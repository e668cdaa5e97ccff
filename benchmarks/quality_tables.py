"""Q1 and Q2: the method comparison for both bundled models, plain and reconstructed.

One ``compare_methods`` run per model, shared by both rows in a process: every registered
method at 10/20/30/50% param sparsity, each plan evaluated as slimmed and as reconstructed
(``pruning.reconstruct``, default settings), on the 64 held-out prompts and seeds, the methods
scoring with 32 calibration prompts, random as the mean of 3 plans, no recovery finetune.
Writes ``benchmarks/results/quality_<model>.csv`` and ``benchmarks/results/quality.md``, and
puts the tables into the README between its markers (``quick`` writes to a temporary folder
and touches neither).

* Q1: at 20% on tiny-shapes-sd, the best method's latent MSE / random's (plain; target < 1).
* Q2: reconstructed / plain latent MSE for every method at 20% and 30% on both models; the
  value is the worst (highest) ratio, target <= 0.5. Also: the best reconstructed plan's task
  accuracy against the original's at 20% (within 5 points) and 30% (within 10), and the
  reconstruction time per plan (target < 60 s).
* Q3: per bundled model, the best training-free plan (every registered method, plain and
  reconstructed; not random) and its task-accuracy gap to the original at 20% and 30% params
  removed (targets: within 3 and 6 points), with the "fewer steps" baseline beside it (the
  original at the steps that spend the plans' MACs per image).

The comparison runs at 20% and 30% (``SPARSITIES``: the figures Q1-Q3 read; 10% and 50% were
dropped to fit the run on the shared CPU).

``python -m benchmarks.quality_tables`` re-renders the markdown and the README from the CSVs;
``python -m benchmarks.quality_tables --run tiny-shapes-sd3`` first reruns the comparison of that
one model (its CSV, and its run's details in ``quality_runs.json``), keeping the others' committed
tables; ``--rows`` then computes Q1-Q3 from the committed tables and merges them into
``benchmarks/results.json`` (how the models can be compared in parallel processes, one thread each).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux", "tiny-shapes-sd3")
SPARSITIES = (0.2, 0.3)  # what Q1, Q2 and Q3 read (10% and 50% cost an hour more on the shared CPU)
NOT_PLANS = ("original", "random", "fewer steps")  # rows that are no method's plan (random is the yardstick)
Q3_SLACK = {0.2: 0.03, 0.3: 0.06}  # Q3: the best plan's accuracy within this of the original's
OUT = Path(__file__).with_name("results")
README = Path(__file__).parent.parent / "README.md"
RUNS_FILE = OUT / "quality_runs.json"  # per model: when and how its table was measured
START, END = "<!-- quality tables: python -m benchmarks Q1 -->", "<!-- end of quality tables -->"
Q2_SPARSITIES = (0.2, 0.3)
ACC_SLACK = {0.2: 0.05, 0.3: 0.10}  # Q2: the best reconstructed plan's accuracy within this of the original's
_RUNS: dict[bool, tuple[dict, dict]] = {}  # quick -> (tables, detail): Q1 and Q2 share one run


def _table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _interval(lo, hi) -> str:
    return "" if pd.isna(lo) else f"[{lo:.2f}, {hi:.2f}]"


def _markdown(tables: dict[str, pd.DataFrame]) -> str:
    """Params in M with 3 decimals and MACs in M with 1 decimal, as the app's Model tab and
    ``python -m pruning info`` print them (one figure everywhere); the latent MSE with its
    standard error and the task accuracy with its 95% bootstrap interval."""
    parts = []
    for model, df in tables.items():
        df = df.copy()
        rec = df["reconstructed"].fillna(False).astype(bool) if "reconstructed" in df else False
        label = df["method"].astype(str)
        if "steps" in df:
            few = df["method"] == "fewer steps"
            label[few] = [f"fewer steps ({int(k)} of {int(n)})"
                          for k, n in zip(df["steps"][few], df["steps_full"][few])]
        out = pd.DataFrame({
            "method": label, "reconstructed": pd.Series(rec).map({True: "yes", False: ""}).values,
            "sparsity": df["sparsity"], "params removed": df["params_fraction"].map(lambda v: f"{v:.1%}"),
            "params (M)": (df["params"] / 1e6).map(lambda v: f"{v:.3f}"),
            "MACs (M)": (df["macs"] / 1e6).map(lambda v: f"{v:.1f}"),
            "latent MSE (± SE)": [f"{m:.4g} ± {s:.2g}" if pd.notna(m) else _unreachable(e)
                                  for m, s, e in zip(df["latent_mse"], df.get("latent_mse_se", df["latent_mse"] * 0),
                                                     df.get("error", pd.Series([None] * len(df))))],
            "PSNR dB": df["psnr"].map(lambda v: f"{v:.1f}"),
            "SSIM": df["ssim"].map(lambda v: f"{v:.3f}") if "ssim" in df else "",
        })
        if "acc_all" in df:
            out["task accuracy (95% CI)"] = [f"{a:.3f} {_interval(lo, hi)}" if pd.notna(a) else ""
                                             for a, lo, hi in zip(df["acc_all"], df.get("acc_all_lo"), df.get("acc_all_hi"))]
        for col in ("params removed", "params (M)", "MACs (M)", "PSNR dB", "SSIM"):
            out.loc[df["latent_mse"].isna().values, col] = ""
        parts.append(f"**{model}**\n\n" + _table(out))
    summary = q3_table(tables)
    head = ("**Q3: the best training-free plan per model**, read from the tables below (task accuracy "
            "acc_all, 95% interval; gap in "
            "points below the original; fewer steps: the original at the steps that spend the plans' MACs "
            "per image)\n\n" + _table(summary) + "\n\n") if len(summary) else ""
    return head + "\n\n".join(parts) + "\n"


def _unreachable(error) -> str:
    """An unreachable target's cell: "not reachable (at most N%)" from the plan error's figure."""
    if not isinstance(error, str):
        return "nan"
    m = re.search(r"at most ([0-9.]+)(%?)", error)
    if not m:
        return "not reachable"
    v = float(m.group(1)) / (100 if m.group(2) else 1)
    return f"not reachable (at most {v:.0%})"


def _best(df: pd.DataFrame, t: float) -> pd.Series | None:
    """The best plan at ``t`` by task accuracy (then lower latent MSE): every method, plain or
    reconstructed, except random and the fewer-steps baseline."""
    at = df[(df["sparsity"] == t) & ~df["method"].isin(NOT_PLANS)
            & df["acc_all"].notna()]
    if not len(at):
        return None
    return at.sort_values(["acc_all", "latent_mse"], ascending=[False, True]).iloc[0]


def q3_figures(tables: dict[str, pd.DataFrame]) -> dict:
    """Per model and target: the best plan, its accuracy and interval, the gap in points, and the
    fewer-steps baseline's accuracy (the best of its step counts at that target)."""
    out = {}
    for model, df in tables.items():
        if "acc_all" not in df:
            continue
        orig = float(df[df["method"] == "original"]["acc_all"].iloc[0])
        for t in Q2_SPARSITIES:
            best = _best(df, t)
            few = df[(df["method"] == "fewer steps") & (df["sparsity"] == t)] if "steps" in df else df.iloc[:0]
            entry = {"original": round(orig, 4)}
            if best is not None:
                rec = bool(best.get("reconstructed")) if pd.notna(best.get("reconstructed")) else False
                entry.update(best=f"{best['method']}{' + reconstruction' if rec else ''}",
                             acc_all=round(float(best["acc_all"]), 4),
                             interval=[round(float(best.get("acc_all_lo", float("nan"))), 4),
                                       round(float(best.get("acc_all_hi", float("nan"))), 4)],
                             latent_mse=round(float(best["latent_mse"]), 5),
                             gap_points=round(100 * (orig - float(best["acc_all"])), 1),
                             target_points=round(100 * Q3_SLACK[t], 1))
                entry["ok"] = entry["gap_points"] <= entry["target_points"]
            if len(few):
                f = few.sort_values("acc_all", ascending=False).iloc[0]
                entry["fewer_steps"] = {"steps": f"{int(f['steps'])} of {int(f['steps_full'])}",
                                        "acc_all": round(float(f["acc_all"]), 4),
                                        "latent_mse": round(float(f["latent_mse"]), 5),
                                        "gap_points": round(100 * (orig - float(f["acc_all"])), 1)}
            out[f"{model} {t:.0%}"] = entry
    return out


def q3_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for key, e in q3_figures(tables).items():
        model, t = key.rsplit(" ", 1)
        few = e.get("fewer_steps")
        rows.append({"model": model, "params removed": t, "original": f"{e['original']:.3f}",
                     "best plan": e.get("best", "none"),
                     "its accuracy (95% CI)": f"{e['acc_all']:.3f} {_interval(*e['interval'])}" if "best" in e else "",
                     "gap (points)": f"{e['gap_points']:.1f}" if "best" in e else "",
                     "target": f"<= {e['target_points']:.0f}" if "best" in e else "",
                     "fewer steps (same MACs)": f"{few['acc_all']:.3f} ({few['steps']} steps)" if few else ""})
    return pd.DataFrame(rows)


def write_readme(markdown: str, readme: Path = README) -> None:
    """Put ``markdown`` (the tables) into ``readme`` between the quality markers, so the README
    shows the figures of the last committed run and no copy of its own."""
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:start] + "\n" + markdown + text[end:])


def tables_from_csv(out: Path | None = None) -> dict[str, pd.DataFrame]:
    """The committed tables, read back (``python -m benchmarks.quality_tables`` re-renders them)."""
    out = out or OUT
    return {m: pd.read_csv(out / f"quality_{m}.csv") for m in MODELS if (out / f"quality_{m}.csv").is_file()}


def _settings(handle, quick: bool):
    from pruning.compare import CompareSettings
    from pruning.prompts import evaluation_prompts

    if not quick:  # every default: 64 held-out prompts, 32 calibration prompts, the model's steps
        return CompareSettings(reconstruct=True)
    return CompareSettings(eval_prompts=evaluation_prompts(handle.model_ref, 4), steps=2, random_draws=1,
                           reconstruct=True, reconstruct_settings={"prompts": ["a red circle"], "steps": 2},
                           method_settings={"ecodiff": {"epochs": 1}, "taylor": {"stride": 500}})


def comparison(quick: bool = False, models: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """``({model: table}, detail)`` of the shared run (computed once per process); ``models``: only
    these (the others' tables are read from their committed CSVs)."""
    if quick in _RUNS and models is None:
        return _RUNS[quick]
    from pruning import compare_methods, load_pipeline, methods

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # OMP_NUM_THREADS=1 on a shared machine
    out = Path(tempfile.mkdtemp(prefix="q-quick-")) if quick else OUT  # quick never overwrites the tables
    out.mkdir(exist_ok=True)
    tables, detail = {}, {"methods": methods.names(), "threads": torch.get_num_threads()}
    if models is not None:
        tables.update({m: df for m, df in tables_from_csv(out).items() if m not in models})
    for model in MODELS[:1] if quick else (models or MODELS):
        handle = load_pipeline(model)
        sparsities = (0.2, 0.3) if quick else SPARSITIES
        settings = _settings(handle, quick)
        t0 = time.perf_counter()
        df = compare_methods(handle, sparsities, settings=settings)
        if df.attrs.get("partial"):
            raise RuntimeError(f"compare_methods on {model} stopped early: {df.attrs.get('stopped')}")
        df.to_csv(out / f"quality_{model}.csv", index=False)
        tables[model] = df
        errors = df[df["error"].notna()][["method", "sparsity", "error"]].to_dict("records") \
            if "error" in df.columns else []
        detail[model] = {"seconds": round(time.perf_counter() - t0, 1), "eval_prompts": len(df.attrs["eval_prompts"]),
                         "calib_prompts": len(df.attrs["calib_prompts"]), "random_draws": settings.random_draws,
                         "steps": settings.steps or "model default", "method_settings": settings.method_settings,
                         "unreachable": errors}
    tables = {m: tables[m] for m in MODELS if m in tables}
    if not quick:  # each model's run, kept beside its CSV (``--rows`` reads them when the models ran apart)
        runs = json.loads(RUNS_FILE.read_text()) if RUNS_FILE.is_file() else {}
        runs.update({m: {**detail[m], "threads": detail["threads"], "methods": detail["methods"],
                         "measured_at": time.strftime("%Y-%m-%d")} for m in tables if m in detail})
        RUNS_FILE.write_text(json.dumps(runs, indent=2, default=str) + "\n")
    md = _markdown(tables)
    (out / "quality.md").write_text(md)
    if not quick:
        write_readme(md)
    detail["tables"] = str(out / "quality.md") if quick else "benchmarks/results/quality.md"
    _RUNS[quick] = tables, detail
    return tables, detail


def from_csv() -> tuple[dict, dict]:
    """The committed tables and their runs' details (``RUNS_FILE``), as ``comparison`` returns them:
    the Q rows of models compared in separate processes (``--run <model>`` each)."""
    runs = json.loads(RUNS_FILE.read_text()) if RUNS_FILE.is_file() else {}
    tables = tables_from_csv()
    missing = [m for m in MODELS if m not in tables]
    if missing:
        raise FileNotFoundError(f"no committed comparison for {missing}: run --run {' '.join(missing)} first")
    detail = {"methods": sorted({x for m in runs.values() for x in m.get("methods", [])}),
              **{m: runs.get(m, {}) for m in tables}, "tables": "benchmarks/results/quality.md"}
    return tables, detail


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["reconstructed"].fillna(False).astype(bool)] if "reconstructed" in df else df


def _ratio_at(df: pd.DataFrame, sparsity: float) -> tuple[float, str]:
    """The best non-random method's latent MSE / random's at ``sparsity`` (plain plans), and that method."""
    df = _plain(df)
    at = df[(df["sparsity"] == sparsity) & df["latent_mse"].notna()].set_index("method")["latent_mse"]
    best = at.drop(list(NOT_PLANS), errors="ignore")  # the baseline's rows are no method's plan
    return float(best.min() / at["random"]), str(best.idxmin())


def run(quick: bool = False) -> dict:
    """Q1."""
    tables, detail = comparison(quick)
    sd = tables[MODELS[0]]
    ratio, best = _ratio_at(sd, 0.2)
    at20 = _plain(sd)[_plain(sd)["sparsity"] == 0.2].set_index("method")
    detail = {**detail, "best_at_20": best, "best_over_random_at_20": round(ratio, 3),
              **at20[["latent_mse"] + [c for c in ("acc_all",) if c in at20]].to_dict()}
    return {"value": round(ratio, 3), "target": "< 1 (best method's latent MSE / random's, 20%)",
            "ok": ratio < 1, "unit": "x", "detail": detail}


def run_q2(quick: bool = False) -> dict:
    """Q2: what reconstruction buys, per method, sparsity and model."""
    tables, detail = comparison(quick)
    ratios, accuracy, seconds, ok = {}, {}, [], True
    for model, df in tables.items():
        df = df[df["latent_mse"].notna()]
        rec = df["reconstructed"].fillna(False).astype(bool)
        original = df[df["method"] == "original"].iloc[0]
        for t in (Q2_SPARSITIES if not quick else (0.2, 0.3)):
            plain = df[~rec & (df["sparsity"] == t)].set_index("method")
            rebuilt = df[rec & (df["sparsity"] == t)].set_index("method")
            for m in rebuilt.index:
                ratios[f"{model} {m} {t:.0%}"] = round(float(rebuilt.loc[m, "latent_mse"] / plain.loc[m, "latent_mse"]), 3)
            seconds += list(rebuilt["reconstruct_s"])
            if "acc_all" in rebuilt:
                best = rebuilt.drop("random", errors="ignore")["acc_all"]
                gap = float(original["acc_all"] - best.max())
                accuracy[f"{model} {t:.0%}"] = {"best": str(best.idxmax()), "acc_all": round(float(best.max()), 4),
                                                "original": float(original["acc_all"]), "gap": round(gap, 4),
                                                "target_gap": ACC_SLACK.get(t), "ok": gap <= ACC_SLACK.get(t, 1)}
                ok = ok and gap <= ACC_SLACK.get(t, 1)
    worst = max(ratios.values())
    timed = _timed(quick)  # a quiet machine's times, where benchmarks.recon_time measured them
    slowest = timed["max_s"] if timed else (max(seconds) if seconds else 0.0)
    median = timed["median_s"] if timed else (round(float(pd.Series(seconds).median()), 2) if seconds else None)
    ok = ok and worst <= 0.5 and slowest < 60
    return {"value": worst, "target": 0.5, "ok": bool(ok), "unit": "x (worst reconstructed / plain latent MSE)",
            "detail": {"ratios": ratios, "accuracy": accuracy, "reconstruct_s_max": round(slowest, 2),
                       "reconstruct_s_median": median, "reconstruct_s_target": 60,
                       "reconstruct_s_from": "benchmarks/results/recon_time.json (python -m benchmarks.recon_time)"
                       if timed else "the tables' reconstruct_s",
                       "tables_reconstruct_s_max": round(max(seconds), 2) if seconds else None,
                       "tables": detail["tables"]}}


def _timed(quick: bool) -> dict | None:
    """``benchmarks.recon_time``'s committed figures (not for a quick run)."""
    path = OUT / "recon_time.json"
    return None if quick or not path.exists() else json.loads(path.read_text())


def run_q3(quick: bool = False) -> dict:
    """Q3: the best training-free plan's accuracy gap per model at 20% and 30% params removed."""
    tables, detail = comparison(quick)
    figures = q3_figures(tables)
    gaps = {k: e["gap_points"] for k, e in figures.items() if "gap_points" in e}
    ok = bool(figures) and all(e.get("ok", False) for e in figures.values())
    worst = max(gaps.values()) if gaps else float("nan")
    return {"value": worst, "target": "<= 3 points at 20%, <= 6 at 30% (every bundled model)", "ok": ok,
            "unit": "points (worst gap of the best plan's acc_all to the original's)",
            "detail": {"figures": figures, "methods": detail.get("methods"), "tables": detail["tables"]}}


if __name__ == "__main__":  # re-render quality.md and the README's tables from the committed CSVs
    import sys

    if sys.argv[1:2] == ["--run"]:  # rerun the comparison of the named models first
        print(comparison(models=tuple(sys.argv[2:]))[1])
    md = _markdown(tables_from_csv())
    (OUT / "quality.md").write_text(md)
    write_readme(md)
    if sys.argv[1:2] == ["--rows"]:  # Q1-Q3 from the committed tables into results.json
        from .__main__ import DEFAULT_OUT
        from .registry import ROWS
        from .results import format_table, merge_results

        _RUNS[False] = from_csv()
        rows = {"Q1": run(), "Q2": run_q2(), "Q3": run_q3()}
        merge_results(DEFAULT_OUT, rows)
        print(format_table(rows, ROWS))
