"""Q1: the method comparison for both bundled models at 10/20/30/50% param sparsity.

Writes ``benchmarks/results/quality_<model>.csv`` and ``benchmarks/results/quality.md`` (the
markdown table the README shows). Headline: at 20% on tiny-shapes-sd, the best method's
latent MSE divided by random's (lower is better; target < 1).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

MODELS = ("tiny-shapes-sd", "tiny-shapes-flux")
SPARSITIES = (0.1, 0.2, 0.3, 0.5)
OUT = Path(__file__).with_name("results")
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
    parts = []
    for model, df in tables.items():
        df = df[[c for c in COLUMNS if c in df.columns]].copy()
        df["params"] = (df["params"] / 1e6).round(3)
        df["macs"] = (df["macs"] / 1e6).round(1)
        df = df.rename(columns={"params": "params (M)", "macs": "MACs (M)"})
        parts.append(f"**{model}**\n\n" + _table(df))
    return "\n\n".join(parts) + "\n"


def run(quick: bool = False) -> dict:
    from pruning import compare_methods, load_pipeline
    from pruning.compare import CompareSettings

    torch.set_num_threads(2)
    OUT.mkdir(exist_ok=True)
    tables, detail = {}, {}
    for model in MODELS[:1] if quick else MODELS:
        handle = load_pipeline(model)
        settings = CompareSettings(random_draws=2 if quick else 5, sweep={"n_gen": 8},
                                   ecodiff={"epochs": 3, "batch_size": 4})
        sparsities = (0.2,) if quick else SPARSITIES
        df = compare_methods(handle, sparsities, settings=settings)
        df.to_csv(OUT / f"quality_{model}.csv", index=False)
        tables[model] = df
        at20 = df[df["sparsity"] == 0.2].set_index("method")
        detail[model] = at20[["latent_mse"] + [c for c in ("acc_all",) if c in at20]].to_dict()
    (OUT / "quality.md").write_text(_markdown(tables))
    sd = tables[MODELS[0]]
    at20 = sd[(sd["sparsity"] == 0.2) & sd["latent_mse"].notna()].set_index("method")["latent_mse"]
    best = at20.drop(["random", "original"], errors="ignore").min()
    ratio = float(best / at20["random"])
    return {"value": round(ratio, 3), "target": "< 1 (best method's latent MSE / random's, 20%)",
            "ok": ratio < 1, "unit": "x", "detail": detail}
