"""Q1: the method comparison for both bundled models at 10/20/30/50% param sparsity.

``compare_methods`` with every registered method and the defaults of ``CompareSettings``: 16
held-out evaluation prompts (seeds 0..15), 8 training prompts for the methods to score with,
the model's own steps and guidance, each method's default settings, random as the mean of
``random_draws`` plans. Writes ``benchmarks/results/quality_<model>.csv`` and
``benchmarks/results/quality.md`` (the markdown table the README shows; ``quick`` writes to a
temporary folder instead). Headline: at 20% on
tiny-shapes-sd, the best method's latent MSE divided by random's (lower is better; target < 1).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux")
SPARSITIES = (0.1, 0.2, 0.3, 0.5)
OUT = Path(__file__).with_name("results")
README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- quality tables: python -m benchmarks Q1 -->", "<!-- end of quality tables -->"
COLUMNS = ["method", "sparsity", "params_fraction", "params", "macs", "latent_mse", "psnr",
           "acc_color", "acc_shape", "acc_position", "acc_all"]


def _table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _markdown(tables: dict[str, pd.DataFrame]) -> str:
    """Params in M with 3 decimals and MACs in M with 1 decimal, as the app's Model tab and
    ``python -m pruning info`` print them (one figure everywhere)."""
    parts = []
    for model, df in tables.items():
        df = df[[c for c in COLUMNS if c in df.columns]].copy()
        df["params"] = (df["params"] / 1e6).map(lambda v: f"{v:.3f}")
        df["macs"] = (df["macs"] / 1e6).map(lambda v: f"{v:.1f}")
        df = df.rename(columns={"params": "params (M)", "macs": "MACs (M)"})
        parts.append(f"**{model}**\n\n" + _table(df))
    return "\n\n".join(parts) + "\n"


def write_readme(markdown: str, readme: Path = README) -> None:
    """Put ``markdown`` (the tables) into ``readme`` between the quality markers, so the README
    shows the figures of the last committed run and no copy of its own."""
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:start] + "\n" + markdown + text[end:])


def tables_from_csv(out: Path = OUT) -> dict[str, pd.DataFrame]:
    """The committed tables, read back (``python -m benchmarks.quality_tables`` re-renders them)."""
    return {m: pd.read_csv(out / f"quality_{m}.csv") for m in MODELS}


def _ratio_at(df: pd.DataFrame, sparsity: float) -> tuple[float, str]:
    """The best non-random method's latent MSE / random's at ``sparsity``, and that method."""
    at = df[(df["sparsity"] == sparsity) & df["latent_mse"].notna()].set_index("method")["latent_mse"]
    best = at.drop(["random", "original"], errors="ignore")
    return float(best.min() / at["random"]), str(best.idxmin())


def _settings(handle, quick: bool):
    from pruning.compare import CompareSettings
    from pruning.prompts import evaluation_prompts

    if not quick:
        return CompareSettings()  # every default: 16 held-out prompts, 8 calibration prompts, model steps
    return CompareSettings(eval_prompts=evaluation_prompts(handle.model_ref, 4), steps=2, random_draws=1,
                           method_settings={"ecodiff": {"epochs": 1}, "taylor": {"stride": 500}})


def run(quick: bool = False) -> dict:
    from pruning import compare_methods, load_pipeline, methods

    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp(prefix="q1-quick-")) if quick else OUT  # quick never overwrites the tables
    out.mkdir(exist_ok=True)
    tables, detail = {}, {"methods": methods.names(), "threads": torch.get_num_threads()}
    for model in MODELS[:1] if quick else MODELS:
        handle = load_pipeline(model)
        sparsities = (0.2,) if quick else SPARSITIES
        t0 = time.perf_counter()
        settings = _settings(handle, quick)
        df = compare_methods(handle, sparsities, settings=settings)
        seconds = time.perf_counter() - t0
        if df.attrs.get("partial"):
            raise RuntimeError(f"compare_methods on {model} stopped early: {df.attrs.get('stopped')}")
        df.to_csv(out / f"quality_{model}.csv", index=False)
        tables[model] = df
        at20 = df[df["sparsity"] == 0.2].set_index("method")
        ratio, best = _ratio_at(df, 0.2)
        errors = df[df["error"].notna()][["method", "sparsity", "error"]].to_dict("records") \
            if "error" in df.columns else []
        detail[model] = {"seconds": round(seconds, 1), "eval_prompts": len(df.attrs["eval_prompts"]),
                         "calib_prompts": len(df.attrs["calib_prompts"]), "random_draws": settings.random_draws,
                         "steps": settings.steps or "model default", "method_settings": settings.method_settings,
                         "best_at_20": best, "best_over_random_at_20": round(ratio, 3),
                         **at20[["latent_mse"] + [c for c in ("acc_all",) if c in at20]].to_dict(),
                         "unreachable": errors}
    (out / "quality.md").write_text(_markdown(tables))
    if not quick:
        write_readme(_markdown(tables))
    detail["tables"] = str(out / "quality.md") if quick else "benchmarks/results/quality.md"
    ratio, best = _ratio_at(tables[MODELS[0]], 0.2)
    return {"value": round(ratio, 3), "target": "< 1 (best method's latent MSE / random's, 20%)",
            "ok": ratio < 1, "unit": "x", "detail": detail}


if __name__ == "__main__":  # re-render quality.md and the README's tables from the committed CSVs
    md = _markdown(tables_from_csv())
    (OUT / "quality.md").write_text(md)
    write_readme(md)
