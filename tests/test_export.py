"""Export and reload: bit-identical outputs, atomic writes, clear errors on corrupt input."""

from __future__ import annotations

import json

import pytest
import torch

from pruning import PruningPlan, export, load_pruned, load_pruned_denoiser, slim
from pruning.errors import ExportError, PlanError
from pruning.files import sha256_file
from pruning.loading import load_pipeline
from pruning.manifest import MANIFEST, WEIGHTS
from pruning.metrics import example_inputs
from pruning.sampling import generate_latents
from tests.plans import random_plan


def _kw(den):
    return example_inputs(den, batch=2, sample_size=8, text_len=8, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_denoiser_export_reloads_bit_identical(tiny_handle, tmp_path):
    plan = random_plan(tiny_handle, 11)
    small = slim(tiny_handle.denoiser, plan)
    out = export(tiny_handle, plan, tmp_path / "exp")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["plan"]["base"] == tiny_handle.model_ref
    assert list(manifest["files"]) == [f"{tiny_handle.denoiser_name}/{WEIGHTS}"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # safetensors only
    again = load_pruned_denoiser(out)
    assert isinstance(again, torch.nn.Module)
    # load_pruned gives a Handle, the other components from the plan's base: an in-memory model has none
    with pytest.raises(ExportError, match="holds the slim denoiser only.*load_pruned_denoiser"):
        load_pruned(out)
    kw = _kw(small)
    assert torch.equal(again(**kw)[0], small(**kw)[0])
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), small.state_dict().values()))


@torch.no_grad()
def test_full_pipeline_export_reloads(tiny_handle, tmp_path):
    plan = random_plan(tiny_handle, 12)
    small = slim(tiny_handle.denoiser, plan)
    out = export(tiny_handle, plan, tmp_path / "full", full_pipeline=True)
    assert (out / "model_index.json").is_file() and (out / "vae").is_dir()
    h2 = load_pruned(out)
    assert h2.family == tiny_handle.family and h2.model_ref.startswith("pruned:")
    want = generate_latents(tiny_handle, ["a red circle"], [3], steps=2, denoiser=small)
    got = generate_latents(h2, ["a red circle"], [3], steps=2)
    assert torch.equal(got, want)


@torch.no_grad()
def test_plan_only_reapplication(tiny_sd, tmp_path):
    folder = tmp_path / "base"
    tiny_sd.pipe.save_pretrained(folder, safe_serialization=True)
    base = load_pipeline(str(folder))
    plan = random_plan(base, 13)
    (tmp_path / "plan.json").write_text(plan.to_json())
    h2 = load_pruned(tmp_path / "plan.json", base=str(folder))
    small = slim(base.denoiser, plan)
    kw = _kw(small)
    assert torch.equal(h2.denoiser(**kw)[0], small(**kw)[0])
    # an export manifest works as a plan file too
    out = export(base, plan, tmp_path / "exp")
    h3 = load_pruned(out / MANIFEST, base=base)
    assert torch.equal(h3.denoiser(**kw)[0], small(**kw)[0])


def test_plan_for_another_model_is_refused(tiny_sd, tiny_flux, tmp_path):
    plan = PruningPlan(family="sd", base="tiny:other@deadbeef")
    (tmp_path / "plan.json").write_text(plan.to_json())
    with pytest.raises(PlanError, match="tiny:other@deadbeef"):
        load_pruned(tmp_path / "plan.json", base=tiny_sd)
    with pytest.raises(PlanError, match="'sd'"):
        load_pruned(tmp_path / "plan.json", base=tiny_flux)
    with pytest.raises(PlanError, match="family"):
        export(tiny_flux, plan, tmp_path / "x")


def test_corrupt_weights_and_hash_mismatch(tiny_sd, tmp_path):
    plan = random_plan(tiny_sd, 14)
    out = export(tiny_sd, plan, tmp_path / "exp")
    weights = out / "unet" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="sha256 mismatch.*" + WEIGHTS):
        load_pruned(out)
    # a truncated file whose hash the manifest agrees with: still refused, naming the file
    weights.write_bytes(bytes(data[:100]))
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][f"unet/{WEIGHTS}"] = sha256_file(weights)
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="corrupt safetensors.*" + WEIGHTS):
        load_pruned(out)
    weights.unlink()
    with pytest.raises(ExportError, match="missing weights"):
        load_pruned(out)


def test_weights_for_another_plan_are_refused(tiny_sd, tmp_path):
    out_a = export(tiny_sd, random_plan(tiny_sd, 15), tmp_path / "a")
    out_b = export(tiny_sd, random_plan(tiny_sd, 16), tmp_path / "b")
    (out_a / "unet" / WEIGHTS).write_bytes((out_b / "unet" / WEIGHTS).read_bytes())
    manifest = json.loads((out_a / MANIFEST).read_text())
    manifest["files"]["unet/" + WEIGHTS] = sha256_file(out_a / "unet" / WEIGHTS)  # hashes agree: shapes must not
    (out_a / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="do not match the plan"):
        load_pruned(out_a)


def test_not_an_export(tmp_path):
    with pytest.raises(ExportError, match=str(tmp_path)):
        load_pruned(tmp_path)
    with pytest.raises(ExportError, match="nothing.json"):
        load_pruned(tmp_path / "nothing.json", base="x")
    (tmp_path / "p.json").write_text("{oops")
    with pytest.raises(PlanError, match="p.json.*not valid JSON"):
        load_pruned(tmp_path / "p.json", base="x")


def test_export_is_atomic(tiny_sd, tmp_path, monkeypatch):
    plan = random_plan(tiny_sd, 17)
    target = tmp_path / "exp"
    export(tiny_sd, plan, target)
    with pytest.raises(ExportError, match="already exists"):
        export(tiny_sd, plan, target)
    import sys
    ex = sys.modules["pruning.export"]  # the package attribute `pruning.export` is the function

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ex, "save_file", boom)
    with pytest.raises(ExportError, match="cannot write .*exp.*disk full"):
        export(tiny_sd, plan, target, overwrite=True)
    with pytest.raises(ExportError, match="cannot write .*new.*disk full"):
        export(tiny_sd, plan, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp leftovers, old export kept
    assert load_pruned_denoiser(target) is not None
