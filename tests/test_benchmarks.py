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
    assert {"P1", "P2", "P3", "P4", "P5", "E1", "G1", "Q1", "Q2", "R0", "R1", "R2", "R3", "R4", "R5", "R6"} <= set(ROWS)
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
