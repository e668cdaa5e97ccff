"""The structure holds: a new method is one registration away from every surface, a model's
MAC figure is one number everywhere, the CLI's errors are one line even in a fresh process,
and the library imports nothing of the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pruning import methods
from pruning.compare import CompareSettings, compare_methods
from pruning.facts import model_facts
from pruning.loading import load_pipeline
from pruning.methods.base import Method, Scores
from pruning.methods.baselines import magnitude_scores, unit_table

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class _NoSettings:
    def to_dict(self) -> dict:
        return {}


class MinusMagnitude(Method):
    """A toy fifth method: the largest weights are scored as the most prunable."""

    name = "minus_magnitude"
    title = "Minus magnitude (toy)"
    summary = "The opposite of the magnitude baseline."
    level = "unit"
    Settings = _NoSettings
    data_free = True

    def score(self, handle, settings=None, *, control=None) -> Scores:
        scores = {f: -s for f, s in magnitude_scores(handle).items()}
        return Scores(self.name, "unit", unit_table(handle, scores), handle.model_ref, {})


@pytest.fixture
def toy():
    methods.register(MinusMagnitude())
    yield "minus_magnitude"
    methods.unregister("minus_magnitude")


def test_a_fifth_method_appears_everywhere_without_other_changes(toy, tiny_sd):
    s = CompareSettings(eval_prompts=["a red circle", "a blue square"], calib_prompts=["a red circle"])
    df = compare_methods(tiny_sd, [0.2], [toy, "magnitude"], settings=s)
    assert list(df["method"])[:3] == ["original", toy, "magnitude"] and set(df["method"][3:]) == {"fewer steps"}
    assert abs(df.set_index("method").loc[toy, "params_fraction"] - 0.2) < 0.011

    from pruning.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["score", toy, "--model", "m", "--out", "s.csv"]).method == toy
    assert parser.parse_args(["compare", "--model", "m", "--methods", toy, "--out", "q.csv"]).methods == [toy]

    import app

    demo = app.build_app()  # the app reads the registry when it builds its page
    radios = [c["props"] for c in demo.config["components"] if c.get("props", {}).get("label") == "method"]
    assert toy in [v for _, v in radios[0]["choices"]]
    fill = [c["props"] for c in demo.config["components"] if c.get("props", {}).get("label") == "pre-fill from"]
    assert toy in [v for _, v in fill[0]["choices"]]


@pytest.mark.parametrize("name", ["tiny-shapes-sd", "tiny-shapes-flux"])
def test_one_mac_figure_everywhere(name, capsys):
    """The Model tab, `python -m pruning info`, the comparison table and the README agree."""
    from pruning.cli import main

    h = load_pipeline(name)
    macs = model_facts(h)["macs"]  # what the app's Model tab shows
    assert main(["info", "--model", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == macs
    df = compare_methods(h, [0.1], ["magnitude"], settings=CompareSettings(
        eval_prompts=["a red circle at the top left on a white background"]))
    assert df.set_index("method").loc["original", "macs"] == macs
    readme = (ROOT / "README.md").read_text()
    assert f"| {macs / 1e6:.1f} |" in readme.split("**" + name + "**")[1].split("\n\n")[1], (name, macs)


def test_cli_errors_are_one_line_in_a_fresh_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pruning", "info", "--model", "no-such-model"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no-such-model" in proc.stderr


def test_the_library_never_imports_the_app():
    code = ("import sys, pruning, pruning.cli, pruning.methods; "
            "assert not any(m.split('.')[0] in ('gradio', 'app_support', 'visual', 'app') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
