"""The `pruning` library as a package: the wheel built from this checkout installs into a fresh
venv and works there from any directory, offline, with the bundled tiny models (package data).

Nothing is downloaded: the wheel is built with ``--no-build-isolation`` (setuptools from this
venv), installed with ``--no-index --no-deps``, and the fresh venv sees this venv's third-party
packages through a ``.pth`` file (never the checkout itself).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from pruning.loading import folder_hash

pytestmark = pytest.mark.slow  # builds a wheel, a fresh venv and runs it in subprocesses

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle at the top left on a white background"
NOT_IN_WHEEL = ("app_support/", "visual/", "tests/", "benchmarks/", "app.py")
BUNDLED_FILES = (
    "pruning/assets/tiny-shapes-sd/model_index.json",
    "pruning/assets/tiny-shapes-sd/pruning_defaults.json",
    "pruning/assets/tiny-shapes-sd/unet/config.json",
    "pruning/assets/tiny-shapes-sd/unet/diffusion_pytorch_model.safetensors",
    "pruning/assets/tiny-shapes-sd/text_encoder/model.safetensors",
    "pruning/assets/tiny-shapes-sd/tokenizer/tokenizer.json",
    "pruning/assets/tiny-shapes-sd/vae/diffusion_pytorch_model.safetensors",
    "pruning/assets/tiny-shapes-flux/transformer/diffusion_pytorch_model.safetensors",
    "pruning/assets/tiny-shapes-flux/tokenizer_2/tokenizer_config.json",
)


def _env(**extra) -> dict:
    """A clean environment for the child interpreters: no PYTHONPATH (it could name the checkout)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1", **extra)
    return env


def _run(args, *, cwd, timeout=300, **env) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _outer_site_packages() -> list[str]:
    """This interpreter's site-packages folders (where the dependencies are), never the checkout."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    out = []
    for d in dirs:
        p = Path(d).resolve()
        if p.is_dir() and p != REPO and str(p) not in out:
            out.append(str(p))
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built offline from a copy (the build writes build/ and *.egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for p in REPO.iterdir():  # pyproject.toml, README.md, ... and the package itself
        if p.is_file() and not p.name.startswith("."):
            shutil.copy2(p, src / p.name)
    shutil.copytree(REPO / "pruning", src / "pruning",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", dist, src], cwd=dist)
    (whl,) = dist.glob("pruning-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed in it; this venv's packages visible through a .pth."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    py = venv / "bin" / "python"
    # Install before the .pth exists: pip then sees an empty environment.
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-index", "--no-deps", wheel], cwd=venv)
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip()
    (Path(purelib) / "_outer_site_packages.pth").write_text("\n".join(_outer_site_packages()) + "\n")
    return py


def test_wheel_holds_the_library_and_its_bundled_models_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {f for f in BUNDLED_FILES if f not in names} == set()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"pruning"}
    assert not [n for n in names if n.startswith(NOT_IN_WHEEL) or "__pycache__" in n]
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "pruning").rglob("*.py")}
    assert modules - set(names) == set()
    assets = {p.relative_to(REPO).as_posix() for p in (REPO / "pruning" / "assets").rglob("*")
              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(REPO).parts)}
    assert assets - set(names) == set()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("torch>=") for r in requires)
    assert not [r for r in requires if r.startswith(("gradio", "plotly")) and "extra ==" not in r]
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB, {len(names)} files")


DEPS_CHECK = """
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement

dist = md.distribution("pruning")
missing = []
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker is not None and "extra" in str(req.marker):
        continue  # an optional extra (the app)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req} (found {version})")
print(json.dumps({"location": str(dist.locate_file("")), "missing": missing}))
"""

SMOKE = """
import importlib.util, json, sys
from pathlib import Path

repo, venv, expected_ref, prompt = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
import torch
torch.set_num_threads(1)
import pruning
from pruning import PruningPlan, export, generate_images, load_pipeline, load_pruned

here = Path(pruning.__file__).resolve()
assert venv in here.parents and repo not in here.parents, here
assert not [p for p in sys.path if p and Path(p).resolve() == repo], sys.path
assert importlib.util.find_spec("app_support") is None and importlib.util.find_spec("visual") is None

h = load_pipeline("tiny-shapes-sd")
assert h.model_ref == expected_ref, (h.model_ref, expected_ref)  # same bundled files as the checkout
plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=("mid_block.resnets.0",))
folder = export(h, plan, Path("export"), full_pipeline=True)
assert (folder / "pruning_plan.json").is_file(), sorted(p.name for p in folder.iterdir())
small = load_pruned(folder)
(image,) = generate_images(small, [prompt], [0])
print(json.dumps({
    "size": list(image.size),
    "resolution": h.defaults["resolution"],
    "params": [sum(p.numel() for p in m.denoiser.parameters()) for m in (h, small)],
    "ref": small.model_ref,
}))
"""


# One interpreter runs both checks in the fresh venv (importing torch and diffusers there is most of
# each check's time): the smoke script in one folder, then each card's lines where its export was
# unpacked, each as a script of its own.
CHILD = """
import os, runpy, sys
smoke_dir, cards_dir, *smoke_args = sys.argv[1:]
os.chdir(smoke_dir)
sys.argv = ["smoke.py", *smoke_args]
runpy.run_path("smoke.py", run_name="__main__")
os.chdir(cards_dir)
for name in ("pruned-model", "pruned-plan"):
    runpy.run_path(f"{name}.py", run_name="__main__")
    os.replace("pruned.png", f"{name}.png")
"""
CARDS = ("pruned-model", "pruned-plan")


@pytest.fixture(scope="module")
def fresh_run(venv_python, tmp_path_factory) -> dict:
    """The smoke script's output and the folder where the cards' lines ran, in the fresh venv."""
    from pruning import PruningPlan, export, load_pipeline

    venv = venv_python.parents[1]
    expected_ref = f"bundled:tiny-shapes-sd@{folder_hash(REPO / 'pruning' / 'assets' / 'tiny-shapes-sd')}"
    work, cards = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("downloads")
    (work / "smoke.py").write_text(textwrap.dedent(SMOKE))
    h = load_pipeline("tiny-shapes-sd")
    plan = PruningPlan(family="sd", base=h.model_ref, removed_operators=("mid_block.resnets.0",))
    codes = {}
    for name, kw in zip(CARDS, ({"full_pipeline": True}, {"plan_only": True})):
        folder = export(h, plan, cards / name, evaluate=False, **kw)
        card = (folder / "README.md").read_text()
        codes[name] = card.split("```python\n", 1)[1].split("```", 1)[0]
        (cards / f"{name}.py").write_text(codes[name])
    runner = tmp_path_factory.mktemp("runner") / "child.py"
    runner.write_text(CHILD)
    r = _run([venv_python, runner, work, cards, REPO, venv.resolve(), expected_ref, PROMPT], cwd=work)
    return {"smoke": json.loads(r.stdout.strip().splitlines()[-1]), "expected_ref": expected_ref, "cards": cards,
            "codes": codes}


def test_installed_wheel_works_outside_the_checkout(venv_python, fresh_run, tmp_path):
    venv = venv_python.parents[1]
    deps = json.loads(_run([venv_python, "-c", DEPS_CHECK], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert deps["missing"] == [], deps
    assert venv in Path(deps["location"]).resolve().parents

    out = fresh_run["smoke"]
    assert out["size"] == [out["resolution"]] * 2, out
    assert out["params"][1] < out["params"][0], out
    assert out["ref"].startswith(f"pruned:{fresh_run['expected_ref']}#"), out


# Every library module importing without the app's packages: tests/test_architecture.py.


def test_card_snippet_loads_the_export_in_a_fresh_venv(fresh_run):
    """The lines in an export's README.md, run where the folder was unpacked, with only the wheel installed."""
    for name, code in fresh_run["codes"].items():
        assert f'load_pruned("{name}"' in code, code
        assert (fresh_run["cards"] / f"{name}.png").is_file(), name
