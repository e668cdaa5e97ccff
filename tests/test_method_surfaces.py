"""A method owns its surfaces: its cost, comparison defaults, CLI commands, aliases and work
unit, and the plain-words help of its settings come from the method; nothing outside
``pruning/methods/`` names a method; an older name still reads in files and on the command line."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest

from pruning import methods
from pruning.compare import CompareSettings, method_settings
from pruning.methods.base import Method, Scores

ROOT = Path(__file__).resolve().parent.parent


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_no_method_name_outside_the_methods_package():
    """The library outside ``pruning/methods/`` asks the registry and the methods; it never
    branches on a method's name (docstring examples aside)."""
    known = set(methods.names()) | set(methods.ALIASES)
    found = []
    for path in sorted((ROOT / "pruning").rglob("*.py")):
        if "methods" in path.relative_to(ROOT / "pruning").parts[:1]:
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        found += [f"{path.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in known and id(n) not in docs]
    assert found == []


@pytest.mark.parametrize("name", methods.names())
def test_every_method_says_what_shows_it(name):
    m = methods.get(name)
    assert type(m).cost is not Method.cost, f"{name} does not say what a run costs"
    assert m.title and m.summary and m.work_unit and m.level in ("operator", "unit")
    fields = m.fields()
    assert fields and all(f["help"] and f["label"] for f in fields)
    assert any(f["basic"] for f in fields), f"{name} shows no control first"
    for f in fields:
        if f["low"] is not None:
            assert f["low"] < f["high"] and f["step"] > 0
    m.settings(**m.quick_values())  # the quick values are valid settings
    m.settings(**m.comparison_settings(("a red circle", "a blue square"), quick=True))
    assert set(m.setting_help()) == {f["name"] for f in fields}
    assert all(m.preset_title(p) for p in m.presets) and (len(m.presets) == 1 or m.preset_help)
    assert m.budget_preset is None or m.budget_preset in m.presets


def test_setting_help_is_the_library_s():
    assert "EcoDiff paper" in methods.setting_help("ecodiff")["beta"]
    assert "LD-Pruner paper" in methods.setting_help("ldpruner")["n_gen"]
    stride = next(f for f in methods.fields("diffpruning") if f["name"] == "stride")
    assert (stride["label"], stride["default"], stride["quick"], stride["basic"]) == ("noise-level stride", 50, 100,
                                                                                       True)


def test_one_name_and_the_older_one_still_reads(tiny_sd, tmp_path):
    """Diff-Pruning is ``diffpruning`` (module, registry, settings class, CLI, files); ``taylor``,
    its older name, still finds it in scores files, run states, comparisons and the CLI."""
    from pruning.chunks import score_chunk
    from pruning.cli import build_parser
    from pruning.methods import diffpruning
    from pruning.runs import Budget

    m = methods.get("taylor")
    assert m is methods.get("diffpruning") and m.name == "diffpruning" == diffpruning.__name__.rsplit(".", 1)[1]
    assert m.Settings is diffpruning.DiffPruningSettings and "taylor" not in methods.names()

    # a scores file written under the older name
    s = methods.get("magnitude").score(tiny_sd)
    old = Scores("taylor", "unit", s.table, s.model_ref, {"stride": 500})
    path = old.write(tmp_path / "old.csv")
    assert json.loads(Path(f"{path}.json").read_text())["method"] == "taylor"
    back = Scores.read(path)
    assert back.method == "diffpruning" and methods.to_plan(tiny_sd, back, target_sparsity=0.2).provenance[
        "method"] == "diffpruning"

    # a run state saved under the older name resumes
    settings = m.settings(prompts=["a red circle"], steps=2, stride=250, thr=0.0)
    _, state = score_chunk(tiny_sd, "diffpruning", settings, None, Budget(units=2))
    assert state is not None and state.what == "diffpruning"
    older = replace(state, what="taylor")
    m.check_state(tiny_sd, settings, older)
    done, rest = score_chunk(tiny_sd, "taylor", settings, older)
    assert rest is None and done.method == "diffpruning" and done.info["timesteps"] == [0, 250, 500, 750]

    # comparison settings keyed by the older name, and the command line
    cs = CompareSettings(method_settings={"taylor": {"stride": 300}})
    assert method_settings(m, cs, ("a red circle",)).stride == 300
    parser = build_parser()
    assert parser.parse_args(["taylor", "--model", "x", "--out", "s.csv"]).command == "taylor"
    assert parser.parse_args(["score", "taylor", "--model", "x", "--out", "s.csv"]).method == "taylor"
    assert parser.parse_args(["compare", "--model", "x", "--methods", "taylor"]).methods == ["taylor"]


def test_a_comparison_asks_the_method_for_its_draws_and_runs():
    rnd, obs = methods.get("random"), methods.get("obsdiff")
    draws = rnd.comparison_draws(rnd.settings(), 3)
    assert [d.seed for d in draws] == [0, 1, 2]
    assert methods.get("magnitude").comparison_draws(rnd.settings(), 3) == [rnd.settings()]
    assert obs.comparison_runs(obs.settings(sparsity=0.2), [0.1, 0.2, 0.3]) == 3
    assert methods.get("ecodiff").comparison_runs(None, [0.1, 0.2, 0.3]) == 1


def test_the_package_docstring_documents_its_whole_public_surface():
    import re

    import pruning

    missing = [n for n in pruning.__all__ if not re.search(rf"``{n}\b|`{n}`", pruning.__doc__)]
    assert missing == []


def test_quick_estimates_for_every_method(tiny_sd):
    """The app's guide asks the library: every registered method's estimate at its quick settings."""
    from pruning.estimate import estimate_methods

    found = estimate_methods(tiny_sd, prompts=2)
    assert list(found) == methods.names()
    assert all(e.seconds > 0 and e.peak_bytes > 0 for e in found.values())
    assert methods.get("diffpruning").quick_settings(["a red circle"]).stride == 100
