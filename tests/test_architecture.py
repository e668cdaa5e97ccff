"""The structure holds: a new method is one registration away from every surface, a model's
MAC figure is one number everywhere, imports flow one way, and the library imports nothing of the app."""

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
from pruning.methods.base import Method, Scores, opt
from pruning.methods.baselines import magnitude_scores, unit_table
from pruning.methods.cost import MethodCost

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class _ToySettings:
    passes: int = opt(1, "times the weights are read (a toy knob)", "int", label="passes", basic=True, low=1,
                      high=8, step=1)

    def to_dict(self) -> dict:
        return {"passes": self.passes}


class MinusMagnitude(Method):
    """A toy fifth method: the largest weights are scored as the most prunable."""

    name = "minus_magnitude"
    aliases = ("minus",)
    title = "Minus magnitude (toy)"
    summary = "The opposite of the magnitude baseline."
    level = "unit"
    Settings = _ToySettings
    commands = ("antimag",)
    work_unit = "passes"
    data_free = True

    def score(self, handle, settings=None, *, control=None) -> Scores:
        scores = {f: -s for f, s in magnitude_scores(handle).items()}
        return Scores(self.name, "unit", unit_table(handle, scores), handle.model_ref,
                      (settings or self.Settings()).to_dict())

    def cost(self, handle, settings, step) -> MethodCost:
        """Its own count: ``passes`` reads of the weights at 1 GB/s, a float32 copy of them held."""
        return MethodCost(settings.passes * step.weights_bytes / 1e9, {"weight passes": settings.passes},
                          step.weights_bytes, ["fewer passes"])


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
    # its own shortcut, its alias and its settings' options (help from the settings field)
    assert parser.parse_args(["antimag", "--model", "m", "--out", "s.csv", "--passes", "3"]).passes == 3
    assert parser.parse_args(["score", "minus", "--model", "m", "--out", "s.csv"]).method == "minus"
    assert "times the weights are read" in _help(parser, ["score", toy])

    # a real estimate: its own count, priced with this device's timings
    from pruning.estimate import estimate, estimate_comparison

    e = estimate(tiny_sd, toy, methods.get(toy).settings(passes=3))
    assert e.what == "Minus magnitude (toy)" and e.calls == {"weight passes": 3}
    weights = sum(p.numel() * p.element_size() for p in tiny_sd.denoiser.parameters())
    assert e.peak_bytes == 2 * weights and abs(e.seconds - 3 * weights / 1e9) < 1e-9
    both = estimate_comparison(tiny_sd, [0.2], [toy, "magnitude"], s)
    assert both.calls["plans"] == 2 and both.seconds > e.seconds / 3
    # and through the CLI's --estimate, by its shortcut
    from pruning.cli import main

    assert main(["antimag", "--model", "tiny-shapes-sd", "--estimate", "--passes", "2"]) == 0

    import app

    demo = app.build_app()  # the app reads the registry when it builds its page
    radios = [c["props"] for c in demo.config["components"] if c.get("props", {}).get("label") == "method"]
    assert toy in [v for _, v in radios[0]["choices"]]
    fill = [c["props"] for c in demo.config["components"] if c.get("props", {}).get("label") == "pre-fill from"]
    assert toy in [v for _, v in fill[0]["choices"]]


def _help(parser, argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args([*argv, "--help"])
    return " ".join(out.getvalue().split())


def test_a_method_that_does_not_say_its_cost_gets_no_estimate(tiny_sd):
    """No silent "weights only" default: a method without cost() is refused, by name."""
    from pruning.errors import SettingsError
    from pruning.estimate import estimate

    class Silent(MinusMagnitude):
        name = "silent"
        aliases = ()
        commands = ()
        cost = Method.cost

    methods.register(Silent())
    try:
        with pytest.raises(SettingsError, match="'silent' does not say what a run costs"):
            estimate(tiny_sd, "silent")
    finally:
        methods.unregister("silent")


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


IMPORT_ALL = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    sys.modules[name] = None  # any `import <name>` now raises ImportError
import pruning

failed = {}
def onerror(name):
    failed[name] = repr(sys.exc_info()[1])
names = ["pruning"]
for info in pkgutil.walk_packages(pruning.__path__, "pruning.", onerror=onerror):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except BaseException as e:
        failed[info.name] = repr(e)
print(json.dumps({"modules": names, "failed": failed}))
"""
APP_ONLY = ("gradio", "plotly", "app_support", "visual", "app")  # the app's side: the library imports none of them


@pytest.mark.slow  # a fresh interpreter that imports every module of the library
def test_the_library_never_imports_the_app():
    """`pruning` and all its submodules import with gradio, plotly and the app's packages blocked.
    (The CLI's one-line errors in a fresh process: tests/abuse/test_io.py::test_13.)"""
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL, *APP_ONLY], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PRUNING_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]
    expected = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "pruning").rglob("*.py")}
    assert set(out["modules"]) == {n.removesuffix(".__init__") for n in expected}


def _import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, every import statement included (those inside
    functions too; not those under ``if TYPE_CHECKING:``, which never run). ``from . import x``
    imports the module ``x``, not the package; a parent package is imported first by Python anyway,
    so it is no edge."""
    import ast

    mods = {}
    for p in package.rglob("*.py"):
        parts = p.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):  # imports only type checkers see (`if TYPE_CHECKING:`) are never run
            if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
                node.body = []
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            graph[m] |= {t for t in targets if t in mods and t != m and not m.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_flow_one_way():
    """No import cycle among the library's modules (imports inside functions included): the
    vocabulary (specs, validate, families.base, tiny.parts) sits below the families, and the
    engine above them."""
    graph = _import_graph(ROOT / "pruning")
    assert len(graph) > 50 and "pruning.specs" in graph["pruning.families.sd"]
    assert _cycles(graph) == []
    # a cycle is found when there is one
    assert _cycles({**graph, "pruning.specs": graph["pruning.specs"] | {"pruning.catalog"}})
