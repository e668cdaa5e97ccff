"""Smoke test of the benchmark framework: quick rows write well-formed, merged results."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from benchmarks.__main__ import main
from benchmarks.registry import ROWS
from benchmarks.results import check_entry, merge_results


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def test_quick_rows_merge_into_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    old = {"P9": {"value": 1, "target": 1, "ok": True, "unit": "x", "detail": {}, "measured_at": "2020-01-01"}}
    out.write_text(json.dumps(old))
    before = _today()
    assert main(["P1", "P4", "--quick", "--out", str(out)]) == 0
    after = _today()  # a run that crosses midnight UTC is stamped with either date
    data = json.loads(out.read_text())
    assert data["P9"] == old["P9"]  # rows not run keep their old entries
    for rid in ("P1", "P4"):
        entry = check_entry(rid, data[rid])
        assert entry["measured_at"] in {before, after}
        assert isinstance(entry["value"], (int, float)) and entry["detail"]["threads"] >= 1
    plan = data["P1"]["detail"]["tiny"]["plans"][0]
    assert plan["params_predicted"] == plan["params_measured"]
    assert plan["macs_predicted"] == plan["macs_measured"]
    assert data["P4"]["detail"]["tiny"]["outputs_equal"] is True
    table = capsys.readouterr().out
    assert "P1" in table and "P4" in table


def test_measured_at_is_the_utc_date_of_the_merge(tmp_path):
    entry = {"value": 1.0, "target": 1, "ok": True, "unit": "x", "detail": {}}
    before = _today()
    merged = merge_results(tmp_path / "r.json", {"X1": entry})
    after = _today()
    assert merged["X1"]["measured_at"] in {before, after}
    assert json.loads((tmp_path / "r.json").read_text())["X1"] == merged["X1"]


def test_registry_and_unknown_row(tmp_path):
    assert {"P1", "P2", "P3", "P4", "P5", "E1", "G1", "Q1", "Q2", "R0", "R1", "R2", "R3", "R4", "R5", "R6", "Q3", "C1", "C2", "C3"} <= set(ROWS)
    with pytest.raises(SystemExit):
        main(["P0", "--out", str(tmp_path / "r.json")])
    with pytest.raises(ValueError, match="missing"):
        check_entry("X", {"value": 1})


class _Broken:
    title = "broken"

    def __init__(self, error):
        self.error = error

    def run(self, quick=False):
        raise self.error


def test_missing_dependency_skips_but_broken_import_fails(tmp_path, monkeypatch, capsys):
    import benchmarks.__main__ as runner

    missing = ModuleNotFoundError("No module named 'somepkg'", name="somepkg")
    renamed = ImportError("cannot import name '_gone' from 'pruning.methods.ecodiff'", name="pruning.methods.ecodiff")
    monkeypatch.setattr(runner, "ROWS", {"X1": _Broken(missing), "X2": _Broken(renamed)})
    out = tmp_path / "r.json"
    assert runner.main(["X1", "--out", str(out)]) == 0  # an optional dependency: skipped
    assert "X1: skipped" in capsys.readouterr().err
    assert runner.main(["X2", "--out", str(out)]) == 1  # the project's own import broke: a failure
    assert "X2: failed: ImportError" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {}


def test_q3_reads_the_best_plan_and_the_fewer_steps_baseline():
    import pandas as pd

    from benchmarks.quality_tables import _markdown, q3_figures

    df = pd.DataFrame({
        "method": ["original", "taylor", "taylor", "random", "fewer steps", "ldpruner"],
        "reconstructed": [False, False, True, False, False, False], "sparsity": [0, 0.2, 0.2, 0.2, 0.2, 0.3],
        "params_fraction": [0, 0.2, 0.2, 0.2, 0.0, float("nan")], "params": [1e6, 8e5, 8e5, 8e5, 1e6, float("nan")],
        "macs": [1e7, 8e6, 8e6, 8e6, 8e6, float("nan")], "latent_mse": [0, 0.1, 0.05, 0.3, 0.02, float("nan")],
        "psnr": [100, 30, 31, 20, 35, float("nan")], "acc_all": [0.95, 0.8, 0.9, 0.99, 0.93, float("nan")],
        "acc_all_lo": [0.9, 0.7, 0.8, 0.9, 0.85, float("nan")], "acc_all_hi": [1, 0.9, 0.95, 1, 0.97, float("nan")],
        "steps": [None, None, None, None, 16, None], "steps_full": [None, None, None, None, 20, None],
        "error": [None] * 5 + ["target_sparsity=0.3 is not reachable: removing them removes at most 0.4392"]})
    f = q3_figures({"m": df})
    assert f["m 20%"]["best"] == "taylor + reconstruction" and f["m 20%"]["gap_points"] == 5.0  # random is no plan
    assert f["m 20%"]["fewer_steps"]["steps"] == "16 of 20" and not f["m 20%"]["ok"]
    md = _markdown({"m": df})
    assert "not reachable (at most 44%)" in md and "nan%" not in md and "fewer steps (16 of 20)" in md


def test_q_rows_from_the_committed_tables(monkeypatch, tmp_path):
    """``quality_tables --rows``: Q1-Q3 from the committed per-model CSVs (models compared in
    separate processes) equal what one in-process comparison would compute from the same tables."""
    import shutil

    from benchmarks import quality_tables as q

    for m in q.MODELS:
        shutil.copy(q.OUT / f"quality_{m}.csv", tmp_path / f"quality_{m}.csv")
    monkeypatch.setattr(q, "OUT", tmp_path)
    monkeypatch.setattr(q, "RUNS_FILE", tmp_path / "quality_runs.json")
    tables, detail = q.from_csv()
    assert list(tables) == list(q.MODELS) and detail["tables"] == "benchmarks/results/quality.md"
    monkeypatch.setitem(q._RUNS, False, (tables, detail))
    q3 = q.run_q3()
    assert set(q3["detail"]["figures"]) == {f"{m} {t:.0%}" for m in q.MODELS for t in (0.2, 0.3)}
    assert q3["value"] == max(e["gap_points"] for e in q3["detail"]["figures"].values())
    assert q.run()["detail"]["best_at_20"] != "random" and q.run_q2()["unit"].startswith("x")
    (tmp_path / f"quality_{q.MODELS[-1]}.csv").unlink()
    with pytest.raises(FileNotFoundError, match=q.MODELS[-1]):
        q.from_csv()


def test_check_rows_assert_their_invariants(capsys):
    """C1 / C2 hold the suite's thorough checks: a row fails when one check does not hold."""
    from benchmarks import checks

    def holds(ctx):
        return {"mse": 0.1}

    def breaks(ctx):
        assert 0.3 < 0.2, {"mse": 0.3}

    r = checks.run_checks((holds,))
    assert r["ok"] and r["value"] == r["target"] == 1 and r["detail"]["checks"]["holds"]["figures"] == {"mse": 0.1}
    with pytest.raises(AssertionError, match=r"1 of 2 checks failed: \['breaks'\]"):
        checks.run_checks((holds, breaks))
    assert "breaks: FAILED" in capsys.readouterr().out
    assert {c.__name__ for c in checks.C1} >= {"every_method_beats_random_at_20_percent", "recovery_helps_a_30_percent_plan"}
    assert ROWS["C1"].load() is checks.run_c1 and ROWS["C2"].load() is checks.run_c2 and ROWS["C3"].load() is checks.run_c3
