"""Issue 22, Q2 on OBS-Diff: its plans plain (its own compensation) and reconstructed (default
``ReconstructSettings``, which now start from that compensation), on the 64 held-out prompts.

The same ``compare_methods`` run as ``benchmarks.quality_tables`` (default ``CompareSettings``:
64 held-out prompts and seeds 0..63, 32 calibration prompts, the model's steps), for OBS-Diff
alone, with the fewer-steps baseline at its plans' MACs (``--into-tables`` moves "obsdiff" to the
quality tables' fewer-steps rows at those step counts):

    OMP_NUM_THREADS=1 python -m benchmarks.obsdiff_recon tiny-shapes-sd [tiny-shapes-flux ...]
    OMP_NUM_THREADS=1 python -m benchmarks.obsdiff_recon tiny-shapes-sd --settings '{"ridge": 0.1}'

Writes ``benchmarks/results/obsdiff_recon_<model>.csv`` and prints, per sparsity, the plain and
reconstructed latent MSE and acc_all, their ratio (Q2), and the committed rows of
``quality_<model>.csv`` beside them (the plain rows must agree: the same plan and model).
``--settings``: other ``ReconstructSettings`` values (a JSON object); the table and the CSV
(``obsdiff_recon_<model>_<values>.csv``) then name them. The figures: ``results/obsdiff_recon.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pandas as pd
import torch

from benchmarks.quality_tables import OUT, SPARSITIES


def _csv(model: str, values: dict):
    tag = "".join(f"_{k}{v}" for k, v in sorted(values.items()))
    return OUT / f"obsdiff_recon_{model}{tag}.csv"


def run(model: str, values: dict | None = None) -> pd.DataFrame:
    from pruning import compare_methods, load_pipeline
    from pruning.compare import CompareSettings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    h = load_pipeline(model)
    t0 = time.perf_counter()
    settings = CompareSettings(reconstruct=True, fewer_steps=True, reconstruct_settings=values or {})
    df = compare_methods(h, SPARSITIES, ["obsdiff"], settings=settings)
    df.to_csv(_csv(model, values or {}), index=False)
    print(f"{model}: {time.perf_counter() - t0:.0f} s", flush=True)
    return df


def summary(model: str, values: dict | None = None) -> list[dict]:
    """Per sparsity: plain and reconstructed figures, now and as committed in quality_<model>.csv."""
    new = pd.read_csv(_csv(model, values or {}))
    old = pd.read_csv(OUT / f"quality_{model}.csv")
    out = []

    def pick(df, t, recon):
        return df[(df["method"] == "obsdiff") & (df["sparsity"] == t) & (df["reconstructed"] == recon)].iloc[0]

    for t in SPARSITIES:
        p, r, op, orr = pick(new, t, False), pick(new, t, True), pick(old, t, False), pick(old, t, True)
        out.append({"model": model, "settings": json.dumps(values or {}), "sparsity": t, "plain_mse": p["latent_mse"], "plain_acc": p["acc_all"],
                    "recon_mse": r["latent_mse"], "recon_acc": r["acc_all"], "ratio": r["latent_mse"] / p["latent_mse"],
                    "recon_s": r["reconstruct_s"], "committed_plain_mse": op["latent_mse"],
                    "committed_plain_acc": op["acc_all"], "committed_recon_mse": orr["latent_mse"],
                    "committed_recon_acc": orr["acc_all"], "committed_ratio": orr["latent_mse"] / op["latent_mse"]})
    return out


def with_fewer_steps(old: pd.DataFrame, new: pd.DataFrame, method: str = "obsdiff") -> pd.DataFrame:
    """``old``'s fewer-steps rows matched to ``new``'s plans of ``method``: the method leaves the rows
    it named (a row naming no plan then goes) and joins the row at its new plans' step counts (added
    from ``new`` where ``old`` has none), so every fewer-steps row names the plans whose MACs it spends.

    >>> old = pd.DataFrame({"method": ["fewer steps"] * 2, "sparsity": [0.2, 0.2], "steps": [8, 9],
    ...                     "plans": ["a, obsdiff", "obsdiff"]})
    >>> new = pd.DataFrame({"method": ["fewer steps"], "sparsity": [0.2], "steps": [9], "plans": ["obsdiff"]})
    >>> with_fewer_steps(old, new)[["steps", "plans"]].values.tolist()
    [[8, 'a'], [9, 'obsdiff']]
    """
    few = old["method"] == "fewer steps"

    def names(plans):
        return [p.strip() for p in str(plans).split(",") if p.strip() and p.strip() != "nan"]

    old = old.copy()
    old.loc[few, "plans"] = [", ".join(n for n in names(p) if n != method) for p in old.loc[few, "plans"]]
    old = old[~(few & (old["plans"] == ""))].reset_index(drop=True)
    for _, row in new[new["method"] == "fewer steps"].iterrows():
        if method not in names(row.get("plans")):
            continue
        same = (old["method"] == "fewer steps") & (old["sparsity"] == row["sparsity"]) & (old["steps"] == row["steps"])
        if same.any():
            i = same.to_numpy().argmax()
            old.loc[i, "plans"] = ", ".join([*names(old.loc[i, "plans"]), method])
        else:
            old = pd.concat([old, row[old.columns.intersection(row.index)].to_frame().T], ignore_index=True)
    few = old["method"] == "fewer steps"
    ordered = old[few].sort_values(["sparsity", "steps"], kind="stable")
    return pd.concat([old[~few], ordered], ignore_index=True)


def into_tables(model: str, why: str) -> None:
    """Replace the OBS-Diff rows (plain and reconstructed) of ``quality_<model>.csv`` with this
    module's default run, match the fewer-steps rows to its plans' MACs (:func:`with_fewer_steps`),
    and say so in ``quality_runs.json`` (``replaced_rows``)."""
    from benchmarks.quality_tables import RUNS_FILE as RUNS
    from pruning.files import atomic_write

    new = pd.read_csv(_csv(model, {}))
    old = pd.read_csv(OUT / f"quality_{model}.csv")
    rows = new[new["method"] == "obsdiff"]
    at = int((old["method"] == "obsdiff").to_numpy().argmax())  # where its rows were: the tables' order stays
    others = old["method"] != "obsdiff"
    merged = pd.concat([old[:at][others[:at]], rows[old.columns.intersection(rows.columns)], old[at:][others[at:]]],
                       ignore_index=True)
    merged = with_fewer_steps(merged, new)
    with atomic_write(OUT / f"quality_{model}.csv") as tmp:
        merged.to_csv(tmp, index=False)
    runs = json.loads(RUNS.read_text())
    runs[model]["replaced_rows"] = {"rows": "obsdiff, plain and reconstructed (20% and 30%)",
                                    "commit": os.environ.get("COMMIT", "?"), "measured_at": time.strftime("%Y-%m-%d"),
                                    "how": f"python -m benchmarks.obsdiff_recon {model} --into-tables (the same "
                                           f"compare_methods defaults): {_csv(model, {}).relative_to(OUT.parent.parent)}; "
                                           f"{why}"}
    with atomic_write(RUNS) as tmp:
        tmp.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    values = json.loads(args.pop(args.index("--settings") + 1)) if "--settings" in args else {}
    tables = "--into-tables" in args
    for m in [a for a in args if a not in ("--settings", "--into-tables")]:
        run(m, values)
        print(pd.DataFrame(summary(m, values)).to_string(), flush=True)
        if tables and not values:
            into_tables(m, os.environ.get("WHY", "re-measured with the committed defaults"))
