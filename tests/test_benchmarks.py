"""Smoke test of the benchmark framework: quick rows write well-formed, merged results."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from benchmarks.__main__ import main
from benchmarks.registry import ROWS
from benchmarks.results import check_entry


def test_quick_rows_merge_into_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    old = {"P9": {"value": 1, "target": 1, "ok": True, "unit": "x", "detail": {}, "measured_at": "2020-01-01"}}
    out.write_text(json.dumps(old))
    assert main(["P1", "P4", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["P9"] == old["P9"]  # rows not run keep their old entries
    for rid in ("P1", "P4"):
        entry = check_entry(rid, data[rid])
        assert entry["measured_at"] == datetime.now(timezone.utc).date().isoformat()
        assert isinstance(entry["value"], (int, float)) and entry["detail"]["threads"] >= 1
    plan = data["P1"]["detail"]["tiny"]["plans"][0]
    assert plan["params_predicted"] == plan["params_measured"]
    assert plan["macs_predicted"] == plan["macs_measured"]
    assert data["P4"]["detail"]["tiny"]["outputs_equal"] is True
    table = capsys.readouterr().out
    assert "P1" in table and "P4" in table


def test_registry_and_unknown_row(tmp_path):
    assert {"P1", "P4"} <= set(ROWS)
    with pytest.raises(SystemExit):
        main(["P0", "--out", str(tmp_path / "r.json")])
    with pytest.raises(ValueError, match="missing"):
        check_entry("X", {"value": 1})
