"""Native exports (``pruning.native``): block plans that stock diffusers loads without this package.

One session fixture exports a block plan of every family's tiny pipeline and of the three bundled
models as native full-pipeline folders, then loads all of them in ONE child interpreter of a fresh
venv that sees torch / diffusers / transformers but not ``pruning`` (asserted there), with
``DiffusionPipeline.from_pretrained``; its latents must equal ``load_pruned``'s bit for bit.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pruning import families
from pruning.catalog import discover
from pruning.errors import ExportError, PlanError
from pruning.export import export, load_pruned, load_pruned_denoiser
from pruning.loading import load_pipeline
from pruning.manifest import WEIGHTS, read_manifest
from pruning.metrics import example_inputs
from pruning.native import blockers, describe, native_layout, report, split_state
from pruning.plan import PruningPlan
from pruning.reference import meta_denoiser
from pruning.slim import slim

REPO = Path(__file__).resolve().parents[1]
PARTS = ("attn1", "attn2", "ff")


def _block(path: str) -> tuple[str, ...]:
    """The operators that make up one whole UNet BasicTransformerBlock."""
    return tuple(f"{path}.{c}" for c in PARTS)


# a native block plan per model: whole blocks only (UNets: a BasicTransformerBlock, or every
# attention of a block; the mid block keeps as many blocks as the last down block's first attention)
BLOCK_PLANS = {
    "sd": _block("down_blocks.0.attentions.0.transformer_blocks.0")
    + ("up_blocks.1.attentions.0", "up_blocks.1.attentions.1"),
    "sdxl": _block("down_blocks.2.attentions.0.transformer_blocks.1")
    + _block("mid_block.attentions.0.transformer_blocks.0") + _block("up_blocks.0.attentions.1.transformer_blocks.0"),
    "flux": ("transformer_blocks.0", "single_transformer_blocks.1"),
    "sd3": ("transformer_blocks.1",),
    "tiny-shapes-sd": _block("down_blocks.0.attentions.0.transformer_blocks.0")
    + _block("up_blocks.0.attentions.1.transformer_blocks.0") + ("up_blocks.1.attentions.0", "up_blocks.1.attentions.1"),
    "tiny-shapes-flux": ("transformer_blocks.1", "single_transformer_blocks.0"),
    "tiny-shapes-sd3": ("transformer_blocks.0",),
}

CHILD = r"""
import json, sys
try:
    import pruning
except ImportError:
    pass
else:
    raise SystemExit(f"pruning is importable in the fresh venv: {pruning.__file__}")
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

jobs = json.loads(open(sys.argv[1]).read())
torch.set_num_threads(int(sys.argv[2]))
out, classes = {}, {}
for name, job in jobs.items():
    pipe = DiffusionPipeline.from_pretrained(job["folder"])
    pipe.set_progress_bar_config(disable=True)
    den = getattr(pipe, job["denoiser"])
    classes[name] = [type(pipe).__name__, type(den).__name__, sum(p.numel() for p in den.parameters())]
    g = torch.Generator().manual_seed(0)
    out[name] = pipe(**job["kwargs"], generator=g, output_type="latent").images.contiguous()
save_file(out, sys.argv[3])
print(json.dumps(classes))
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}


def _run(args, cwd) -> str:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def fresh_python(root: Path) -> Path:
    """A fresh venv that sees this venv's third-party packages through a .pth, never the checkout."""
    _run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], cwd=root)
    py = root / "venv" / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip())
    dirs = {str(Path(d).resolve()) for d in (*site.getsitepackages(), sysconfig.get_paths()["purelib"])}
    assert str(REPO) not in dirs
    (purelib / "_outer_site_packages.pth").write_text("\n".join(sorted(d for d in dirs if Path(d).is_dir())) + "\n")
    return py


def _handle(name: str, tiny_handles: dict):
    return tiny_handles[name] if name in tiny_handles else load_pipeline(name)


def _kwargs(h) -> dict:
    d = h.defaults
    kw = {"prompt": "a red circle at the top left", "num_inference_steps": 2, "height": d["resolution"],
          "width": d["resolution"], "guidance_scale": float(d["guidance"])}
    if "max_sequence_length" in d:
        kw["max_sequence_length"] = int(d["max_sequence_length"])
    return kw


@pytest.fixture(scope="session")
def native_runs(tmp_path_factory, tiny_sd, tiny_sdxl, tiny_flux, tiny_sd3):
    """Every model's native export, and the latents a pruning-free interpreter got from each."""
    root = tmp_path_factory.mktemp("native")
    tiny = {"sd": tiny_sd, "sdxl": tiny_sdxl, "flux": tiny_flux, "sd3": tiny_sd3}
    jobs, handles = {}, {}
    for name, ops in BLOCK_PLANS.items():
        h = _handle(name, tiny)
        plan = PruningPlan(family=h.family, base=h.model_ref, removed_operators=ops)
        single = h.family in ("flux", "sd3")  # beside the folder; DiffusionPipeline must not mind it
        folder = export(h, plan, root / name, full_pipeline=True, native=True, single_file=single, evaluate=False)
        handles[name] = (h, plan, folder)
        jobs[name] = {"folder": str(folder), "denoiser": h.denoiser_name, "kwargs": _kwargs(h)}
    (root / "jobs.json").write_text(json.dumps(jobs))
    work = root / "clean"  # not the checkout: `import pruning` must fail there
    work.mkdir()
    (work / "child.py").write_text(CHILD)
    py = fresh_python(root)
    classes = json.loads(_run([py, "child.py", root / "jobs.json", torch.get_num_threads(), root / "latents.safetensors"],
                              cwd=work).strip().splitlines()[-1])
    return handles, load_file(str(root / "latents.safetensors")), classes


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BLOCK_PLANS))
def test_plain_diffusers_loads_the_native_export_with_load_pruneds_latents(native_runs, name):
    handles, latents, classes = native_runs
    h, plan, folder = handles[name]
    pruned = load_pruned(folder)
    g = torch.Generator().manual_seed(0)
    ours = pruned.pipe(**_kwargs(h), generator=g, output_type="latent").images
    assert torch.equal(ours, latents[name]), (ours - latents[name]).abs().max()
    fam = families.get(h.family)
    n_slim = sum(p.numel() for p in pruned.denoiser.parameters())
    assert classes[name][:2] == [fam.pipeline_class.__name__, fam.denoiser_class.__name__]
    dead = sum(p.numel() for d in native_layout(h.denoiser, plan).dropped
               for p in pruned.denoiser.get_submodule(d).parameters())
    assert (dead > 0) == (read_manifest(folder)[1]["native"]["dropped"] is not None) == (h.family in ("sd", "sdxl"))
    assert classes[name][2] == n_slim - dead  # only the unused LayerNorms of removed UNet blocks are left out
    assert classes[name][2] < sum(p.numel() for p in h.denoiser.parameters())
    assert "DiffusionPipeline.from_pretrained" in (folder / "README.md").read_text()


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux", "sd3"])
def test_native_denoiser_equals_the_slim_model_in_process(request, family, tmp_path):
    """The native folder's denoiser, read by diffusers' own from_pretrained, is the slim model; load_pruned
    gives back the slim model's exact state dict."""
    h = request.getfixturevalue(f"tiny_{family}")
    plan = PruningPlan(family=family, base=h.model_ref, removed_operators=BLOCK_PLANS[family])
    folder = export(h, plan, tmp_path / "x", native=True, evaluate=False)
    fam = families.get(family)
    native = fam.denoiser_class.from_pretrained(folder / h.denoiser_name).eval()
    small = slim(h.denoiser, plan).eval()
    back = load_pruned_denoiser(folder)
    a, b = small.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kw = example_inputs(h.denoiser, device="cpu")
    with torch.no_grad():
        assert torch.equal(small(**kw)[0], native(**kw)[0])
    manifest = read_manifest(folder)[1]
    assert manifest["native"]["params"] == sum(p.numel() for p in native.parameters())
    assert json.loads((folder / h.denoiser_name / "config.json").read_text())["_class_name"] == \
        fam.denoiser_class.__name__


def test_native_configs_state_the_slim_shape(tiny_sdxl, tiny_sd3, tiny_flux):
    flux = native_layout(tiny_flux.denoiser, PruningPlan(family="flux", base="x",
                                                         removed_operators=BLOCK_PLANS["flux"])).config
    assert (flux["num_layers"], flux["num_single_layers"]) == (1, 1)
    sd3 = native_layout(tiny_sd3.denoiser, PruningPlan(family="sd3", base="x", removed_operators=("transformer_blocks.0",)))
    assert (sd3.config["num_layers"], sd3.config["dual_attention_layers"]) == (2, [])  # block 0 had the dual attention
    assert sd3.key("transformer_blocks.2.attn.to_q.weight") == "transformer_blocks.1.attn.to_q.weight"
    xl = native_layout(tiny_sdxl.denoiser, PruningPlan(family="sdxl", base="x", removed_operators=BLOCK_PLANS["sdxl"]))
    # down 2 keeps 1 of 2 (and the mid block follows it); up 0 keeps [2, 1] in its two attentions
    assert xl.config["transformer_layers_per_block"][1:] == [1, 1]
    assert xl.config["reverse_transformer_layers_per_block"][0] == [2, 1]
    assert xl.key("up_blocks.0.attentions.1.transformer_blocks.1.attn1.to_q.weight") == \
        "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight"
    assert xl.key("up_blocks.0.attentions.1.transformer_blocks.0.norm1.weight") is None  # the removed block's norm


def test_blockers_name_the_layer_that_prevents_a_native_export(tiny_sd, tiny_sdxl, tiny_flux, tiny_sd3, tmp_path):
    def why(h, **kw):
        return blockers(h.denoiser, PruningPlan(family=h.family, base=h.model_ref, **kw))

    attn = "transformer_blocks.0.attn"
    assert why(tiny_flux, kept_heads={attn: (0,)})[0].startswith(f"{attn}: attention heads pruned")
    assert why(tiny_flux, removed_operators=("transformer_blocks.0.ff",))[0].startswith("transformer_blocks.0.ff: a removed ff")
    assert why(tiny_sd3, removed_operators=("transformer_blocks.2",))[0].startswith("transformer_blocks.2: the last joint block")
    partial = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert why(tiny_sd, removed_operators=(partial,))[0].startswith(f"{partial}: part of the transformer block")
    assert why(tiny_sd, removed_operators=("mid_block.resnets.0",))[0].startswith("mid_block.resnets.0: a removed resnet")
    assert why(tiny_sd, removed_operators=("up_blocks.1.attentions.0",))[0].startswith(
        "up_blocks.1.attentions.0: one of the attentions of up_blocks.1")
    mid = why(tiny_sdxl, removed_operators=_block("mid_block.attentions.0.transformer_blocks.0"))
    assert mid[0].startswith("mid_block.attentions.0: keeps 1 transformer blocks and down_blocks.2.attentions.0 keeps 2")
    assert why(tiny_sd, removed_operators=BLOCK_PLANS["sd"]) == []
    rep = report(tiny_flux.denoiser, PruningPlan(family="flux", base=tiny_flux.model_ref, kept_heads={attn: (0,)}))
    assert rep["native"] is False and describe(rep).startswith(f"not native: {attn}")
    plan = PruningPlan(family="sd3", base=tiny_sd3.model_ref, removed_operators=("transformer_blocks.2",))
    with pytest.raises(PlanError, match="not native .*transformer_blocks.2: the last joint block"):
        export(tiny_sd3, plan, tmp_path / "no", native=True, evaluate=False)
    assert not (tmp_path / "no").exists()
    ok = PruningPlan(family="sd3", base=tiny_sd3.model_ref, removed_operators=("transformer_blocks.0",))
    with pytest.raises(ExportError, match="plan-only export .* cannot be native"):
        export(tiny_sd3, ok, tmp_path / "no", native=True, plan_only=True, evaluate=False)
    with pytest.raises(ExportError, match="single-file checkpoint comes with a native export"):
        export(tiny_sd3, ok, tmp_path / "no", single_file=True, evaluate=False)
    with pytest.raises(ExportError, match="FLUX and SD3 only .* not for 'sd'"):
        export(tiny_sd, PruningPlan(family="sd", base=tiny_sd.model_ref, removed_operators=BLOCK_PLANS["sd"]),
               tmp_path / "no", native=True, single_file=True, evaluate=False)
    assert not (tmp_path / "no").exists()


def _unet_blocks(den) -> list[str]:
    return [n for n, m in den.named_modules() if type(m).__name__ == "BasicTransformerBlock"]


@pytest.mark.slow
@pytest.mark.parametrize("name, share", [pytest.param("sdxl", 0.30, marks=pytest.mark.thorough), ("flux-dev", 0.25)])
def test_real_size_native_plans_build_from_the_rewritten_config(name, share):
    """At real size on the meta device: the rewritten config builds the stock diffusers class with exactly
    the slim model's shapes, and its parameter count is plan.summary()'s (UNets: less the unused LayerNorms
    of the removed blocks, which the slim model keeps)."""
    den = meta_denoiser(name)
    fam = families.for_denoiser(den)
    if name == "sdxl":  # 21 of 70 BasicTransformerBlocks: the last 3 of each 10-block attention, 1 of each up.1's 2
        tens = [p for p in {b.rsplit(".transformer_blocks.", 1)[0] for b in _unet_blocks(den)}
                if len(den.get_submodule(p).transformer_blocks) == 10]
        gone = [f"{p}.transformer_blocks.{k}" for p in tens for k in (7, 8, 9)]
        gone += [f"up_blocks.1.attentions.{j}.transformer_blocks.1" for j in range(3)]
        total = len(_unet_blocks(den))
        ops = [o for b in gone for o in _block(b)]
        fam_name = "sdxl"
    else:  # 14 of 57 blocks: every 4th double and single block
        found = discover(den).operators
        blocks = [f for f, o in found.items() if o.kind in ("double_block", "single_block")]
        gone = ops = blocks[::4][:14]
        total = len(blocks)
        fam_name = "flux"
    assert round(len(gone) / total, 2) == share
    plan = PruningPlan(family=fam_name, base="meta", removed_operators=tuple(ops))
    assert blockers(den, plan) == []
    layout = native_layout(den, plan)
    native = families.get(fam_name).meta_denoiser(layout.config)
    assert type(native) is fam.denoiser_class
    small = slim(den, plan)
    shapes, _ = split_state(layout, {k: v for k, v in small.state_dict().items()})
    assert {k: tuple(v.shape) for k, v in native.state_dict().items()} == {k: tuple(v.shape) for k, v in shapes.items()}
    s = plan.summary(den)
    unused = sum(p.numel() for d in layout.dropped for p in small.get_submodule(d).parameters())
    assert sum(p.numel() for p in native.parameters()) == s["params_total"] - s["params_removed"] - unused
    if name == "sdxl":  # norm1..3 (weight and bias) of each removed block
        assert unused == sum(6 * den.get_submodule(b).norm1.normalized_shape[0] for b in gone) > 0
    else:
        assert unused == 0


def test_weights_file_is_aligned_for_identical_rounding(tiny_flux, tmp_path):
    plan = PruningPlan(family="flux", base=tiny_flux.model_ref, removed_operators=BLOCK_PLANS["flux"])
    folder = export(tiny_flux, plan, tmp_path / "x", native=True, evaluate=False)
    raw = (folder / "transformer" / WEIGHTS).read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 64 == 0


# ----------------------------------------------------------------------------- native plans on purpose


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux", "sd3"])
def test_to_plan_native_restricts_any_methods_plan_to_whole_blocks(request, family):
    from pruning import methods

    h = request.getfixturevalue(f"tiny_{family}")
    unit = methods.get("magnitude").score(h)
    plain = methods.to_plan(h, unit, target_sparsity=0.1)
    assert not report(h.denoiser, plain)["native"]  # heads / neurons: never native
    plan = methods.to_plan(h, unit, target_sparsity=0.1, native=True)
    assert report(h.denoiser, plan) == {"native": True, "blockers": []}
    assert plan.summary(h.denoiser)["params_fraction"] >= 0.1 and plan.provenance["native"] is True
    ops = discover(h.denoiser).operators
    table = {"fqn": list(ops), "score": [float(i) for i in range(len(ops))]}  # operator scores, e.g. LD-Pruner's
    scores = methods.Scores("ldpruner", "operator", pd.DataFrame(table), h.model_ref, {})
    by_ops = methods.to_plan(h, scores, target_sparsity=0.05, native=True)
    assert report(h.denoiser, by_ops)["native"] and by_ops.removed_operators


def test_native_plan_removes_a_unet_mid_block_with_its_partner(tiny_sdxl):
    """The mid block keeps as many blocks as down_blocks.2.attentions.0: ranked first, its block waits and goes
    together with one of down_blocks.2.attentions.0's."""
    from pruning import methods

    h = tiny_sdxl
    ops = discover(h.denoiser).operators
    first = ("mid_block.attentions.0.transformer_blocks.1", "down_blocks.2.attentions.0.transformer_blocks.0")
    score = [(0.0 if any(f.startswith(b + ".") for b in first) else 1.0 + i) for i, f in enumerate(ops)]
    scores = methods.Scores("ldpruner", "operator", pd.DataFrame({"fqn": list(ops), "score": score}), h.model_ref, {})
    plan = methods.to_plan(h, scores, target_sparsity=0.01, native=True)
    assert set(plan.removed_operators) == {o for b in first for o in _block(b)}
    assert native_layout(h.denoiser, plan).config["transformer_layers_per_block"][-1] == 1


@pytest.mark.slow
def test_cli_prune_and_export_native(capsys, sd_folder, sd_folder_handle, tmp_path):
    from pruning import methods
    from pruning.cli import main

    scores = methods.get("magnitude").score(sd_folder_handle).write(tmp_path / "mag.csv")
    plan_path = tmp_path / "plan.json"
    assert main(["prune", "--model", str(sd_folder), "--scores", str(scores), "--target-sparsity", "0.05",
                 "--native", "--out", str(plan_path)]) == 0
    out = capsys.readouterr().out
    assert "native    native: plain diffusers loads its export" in out
    assert main(["export", "--model", str(sd_folder), "--plan", str(plan_path), "--out", str(tmp_path / "n"),
                 "--native", "--no-card-eval"]) == 0
    assert "native    the denoiser is in stock diffusers form" in capsys.readouterr().out
    assert "transformer_layers_per_block" in (tmp_path / "n" / "unet" / "config.json").read_text()
    assert main(["export", "--model", str(sd_folder), "--plan", str(plan_path), "--out", str(tmp_path / "plain"),
                 "--no-card-eval"]) == 0
    assert "native    native: plain diffusers loads its export (export --native)" in capsys.readouterr().out
    heads = PruningPlan(family="sd", base=sd_folder_handle.model_ref,
                        kept_heads={"down_blocks.0.attentions.0.transformer_blocks.0.attn1": (0,)})
    (tmp_path / "heads.json").write_text(heads.to_json())
    code = main(["prune", "--model", str(sd_folder), "--scores", str(scores), "--operators", "x", "--native",
                 "--out", str(tmp_path / "p2.json")])
    assert code == 2 and "--native" in capsys.readouterr().err
    code = main(["export", "--model", str(sd_folder), "--plan", str(tmp_path / "heads.json"),
                 "--out", str(tmp_path / "h"), "--native", "--no-card-eval"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1: attention heads pruned" in err
    assert not (tmp_path / "h").exists()


# ----------------------------------------------------------------------------- LoRAs on a native export


@torch.no_grad()
def test_lora_on_a_native_export_loads_with_diffusers_and_equals_the_fused_slim_model(tiny_flux, tmp_path):
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from pruning.lora import LORA_FILE, fuse_into, read_lora, slice_lora
    from pruning.native import LORA_DIR
    from pruning.testing import tiny_pipeline

    torch.manual_seed(3)
    donor = tiny_pipeline("flux")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v", "to_out.0", "add_k_proj", "proj_mlp",
                                                        "proj_out", "net.2"], init_lora_weights=False)
    donor.transformer.add_adapter(cfg)
    state = {k: torch.randn_like(v) * 0.05 for k, v in get_peft_model_state_dict(donor.transformer).items()}
    FluxPipeline.save_lora_weights(tmp_path / "in", transformer_lora_layers=state,
                                   transformer_lora_adapter_metadata=cfg.to_dict())
    path = tmp_path / "in" / LORA_FILE
    h = tiny_flux
    plan = PruningPlan(family="flux", base=h.model_ref, removed_operators=BLOCK_PLANS["flux"])
    folder = export(h, plan, tmp_path / "pruned-model", full_pipeline=True, native=True, lora=path, evaluate=False)
    card = (folder / "README.md").read_text()
    assert f'load_lora_weights("pruned-model", subfolder="{LORA_DIR}", weight_name="{LORA_FILE}")' in card
    keys = load_file(str(folder / LORA_DIR / LORA_FILE)).keys()
    assert any(k.startswith("transformer.single_transformer_blocks.0.") for k in keys)  # was single block 0
    assert not any(k.startswith("transformer.single_transformer_blocks.1.") for k in keys)  # 2 -> 1 of 2 kept: no
    assert not any(k.startswith("transformer.transformer_blocks.1.") for k in keys)  # double 1 is now 0
    pipe = FluxPipeline.from_pretrained(folder)  # plain diffusers, then its own LoRA loader
    pipe.load_lora_weights(str(folder), subfolder=LORA_DIR, weight_name=LORA_FILE)
    fused = fuse_into(slim(h.denoiser, plan), slice_lora(h, plan, read_lora(h, path)).for_component("transformer"))
    kw = example_inputs(h.denoiser, batch=2, sample_size=8, text_len=8, generator=torch.Generator().manual_seed(0))
    want, got = fused(**kw)[0], pipe.transformer(**kw)[0]
    print(f"native LoRA: relative L2 {((got - want).norm() / want.norm()).item():.2e}, max abs "
          f"{(got - want).abs().max().item():.2e}")
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert not torch.allclose(slim(h.denoiser, plan)(**kw)[0], want, atol=1e-3)  # the LoRA matters
    pruned = load_pruned(folder)  # and pruning's loader with the slim model's own LoRA file, as before
    pruned.pipe.load_lora_weights(str(folder), subfolder="lora", weight_name=LORA_FILE)
    assert ((pruned.denoiser(**kw)[0] - want).norm() / want.norm()).item() < 1e-5


# ----------------------------------------------------------------------------- single-file checkpoints


@torch.no_grad()
def test_sd3_single_file_round_trip_through_from_single_file(tiny_sd3, tmp_path):
    """Stability's key layout, joint block count from the keys: diffusers' from_single_file (with the export's
    config) gives the native model's exact weights and the same latents."""
    from diffusers import SD3Transformer2DModel

    from pruning.native import SINGLE_FILE
    from pruning.sampling import generate_latents

    h = tiny_sd3
    plan = PruningPlan(family="sd3", base=h.model_ref, removed_operators=("transformer_blocks.0",))
    folder = export(h, plan, tmp_path / "pruned-model", native=True, single_file=True, evaluate=False)
    keys = load_file(str(folder / SINGLE_FILE)).keys()
    assert {int(k.split(".")[1]) for k in keys if k.startswith("joint_blocks.")} == {0, 1}
    assert not any(k.startswith("transformer_blocks.") for k in keys)
    single = SD3Transformer2DModel.from_single_file(str(folder / SINGLE_FILE), config=str(folder),
                                                    subfolder="transformer").eval()
    native = SD3Transformer2DModel.from_pretrained(folder / "transformer").eval()
    a, b = native.state_dict(), single.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert single.config.num_layers == 2 and list(single.config.dual_attention_layers) == []
    prompts, seeds = ["a red circle at the top left"], [0]
    want = generate_latents(h, prompts, seeds, denoiser=load_pruned_denoiser(folder), steps=2)
    assert torch.equal(generate_latents(h, prompts, seeds, denoiser=single, steps=2), want)
    assert "from_single_file" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_flux_single_file_key_layout_inverts_diffusers_conversion_at_real_width():
    """diffusers' FLUX converter hard-codes the 3072 width, so the values are checked at real width on cheap
    stand-in tensors (each row of each tensor labelled): BFL layout -> diffusers' converter -> our names."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from pruning.families.flux import FLUX_DEV_TRANSFORMER
    from pruning.native import plain_config

    config = {**FLUX_DEV_TRANSFORMER, "num_layers": 2, "num_single_layers": 3, "joint_attention_dim": 64}
    meta = families.get("flux").meta_denoiser(config)
    state = {k: (torch.arange(v.shape[0], dtype=torch.float32) + 30000 * i).view(-1, *[1] * (v.dim() - 1)).expand(v.shape)
             for i, (k, v) in enumerate(sorted(meta.state_dict().items()))}  # rows labelled, no memory per column
    original = families.get("flux").single_file_state(state, plain_config(meta))
    assert {k.split(".")[0] for k in original} >= {"double_blocks", "single_blocks", "final_layer", "txt_in", "img_in"}
    assert {int(k.split(".")[1]) for k in original if k.startswith("single_blocks.")} == {0, 1, 2}
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    assert isinstance(meta, FluxTransformer2DModel)


@pytest.mark.thorough  # ~1 GB in bf16; the key layout at real width (above) and SD3's round trip stay in the suite
@torch.no_grad()
def test_flux_single_file_round_trip_through_from_single_file_at_real_width(tmp_path):
    """One double and one single block at FLUX.1's width (diffusers' converter needs 3072), bf16 (~1 GB):
    from_single_file on the BFL-layout file gives the native model's exact weights and output."""
    from diffusers import FluxTransformer2DModel

    from pruning.families.flux import FLUX_DEV_TRANSFORMER
    from pruning.native import SINGLE_FILE, plain_config, save_aligned

    config = {**FLUX_DEV_TRANSFORMER, "num_layers": 1, "num_single_layers": 1, "joint_attention_dim": 64,
              "pooled_projection_dim": 64, "in_channels": 16}
    model = families.get("flux").meta_denoiser(config).to_empty(device="cpu").to(torch.bfloat16)
    noise = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) * 0.02
    for i, p in enumerate(model.parameters()):  # cheap random-looking weights: a rolled noise vector, tiled
        flat = noise.roll(i * 7919)
        p.view(-1).copy_(flat.repeat(p.numel() // flat.numel() + 1)[: p.numel()])
    model.save_pretrained(tmp_path / "transformer")
    state = model.state_dict()
    save_aligned(families.get("flux").single_file_state(state, plain_config(model)), tmp_path / SINGLE_FILE,
                 {"format": "pt"})
    single = FluxTransformer2DModel.from_single_file(str(tmp_path / SINGLE_FILE), config=str(tmp_path),
                                                     subfolder="transformer", torch_dtype=torch.bfloat16)
    got = single.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    native = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16)
    kw = example_inputs(native, batch=1, sample_size=8, text_len=4, dtype=torch.bfloat16)
    assert torch.equal(native(**kw)[0], single(**kw)[0])
