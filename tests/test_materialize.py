"""``materialize``: the export streamed from the base's files equals ``export`` of the loaded model."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from pruning import materialize
from pruning.cli import main
from pruning.errors import ExportError, PlanError
from pruning.export import export, load_pruned_denoiser
from pruning.loading import load_pipeline
from pruning.manifest import MANIFEST, read_manifest
from pruning.plan import PruningPlan
from pruning.reconstruct import ReconstructSettings, reconstruct
from pruning.shards import INDEX, WEIGHTS, LazyWeights
from pruning.testing import FAMILIES, tiny_pipeline
from tests.plans import random_plan

SHARDED = {"sd": True, "sdxl": False, "flux": True, "sd3": False}  # bases saved in shards or as one file


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    """``(folder, handle)``: a family's tiny pipeline saved as a diffusers folder, loaded back."""
    family = request.param
    folder = tmp_path_factory.mktemp("bases") / f"tiny-{family}"
    pipe = tiny_pipeline(family)
    pipe.save_pretrained(folder, safe_serialization=True)
    if SHARDED[family]:
        name = "unet" if hasattr(pipe, "unet") else "transformer"
        for f in (folder / name).glob("*.safetensors"):
            f.unlink()
        getattr(pipe, name).save_pretrained(folder / name, safe_serialization=True, max_shard_size="30KB")
        assert (folder / name / INDEX).is_file()
    return folder, load_pipeline(str(folder))


def _tensors(folder, name) -> dict[str, torch.Tensor]:
    if (folder / name / WEIGHTS).is_file():
        return load_file(str(folder / name / WEIGHTS))
    return dict(LazyWeights(folder / name).items())


def _assert_same_export(a, b, name) -> None:
    ta, tb = _tensors(a, name), _tensors(b, name)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]), k
    ma, mb = read_manifest(a)[1], read_manifest(b)[1]
    assert ma["plan"] == mb["plan"] and ma["params"] == mb["params"] and ma["denoiser"] == mb["denoiser"]
    assert ma["card"]["summary"] == mb["card"]["summary"]
    assert json.loads((a / "pruning_defaults.json").read_text()) == json.loads((b / "pruning_defaults.json").read_text())


def test_materialize_equals_export(saved, tmp_path):
    folder, h = saved
    name = h.denoiser_name
    for seed in (1, 2):
        plan = random_plan(h, seed)
        want = export(h, plan, tmp_path / f"export-{seed}", evaluate=False)
        got = materialize(plan, str(folder), tmp_path / f"streamed-{seed}", max_shard_size="20KB")
        assert (got / name / INDEX).is_file() and len(list((got / name).glob("*-of-*.safetensors"))) > 1
        _assert_same_export(want, got, name)
        small, ref = load_pruned_denoiser(got), load_pruned_denoiser(want)  # a normal export: the loader reads the shards
        sa, sb = small.state_dict(), ref.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb) and sa.keys() == sb.keys()
    plan = random_plan(h, 3)  # one shard when the model fits: the single-file layout, byte for byte
    one = materialize(plan, str(folder), tmp_path / "one")
    assert sorted(read_manifest(one)[1]["files"]) == [f"{name}/{WEIGHTS}"]
    _assert_same_export(export(h, plan, tmp_path / "one-export", evaluate=False), one, name)


def test_plan_only_export_becomes_full(tmp_path):
    """A plan-only export of a reconstruction (with its re-fitted tensors) becomes the full export."""
    folder = tmp_path / "tiny-sd"
    tiny_pipeline("sd").save_pretrained(folder, safe_serialization=True)
    h = load_pipeline(str(folder))
    small = reconstruct(h, random_plan(h, 7), ReconstructSettings(prompts=("a red circle",), steps=2))
    full = export(h, small.pruning_plan, tmp_path / "full", denoiser=small, evaluate=False)
    plan_only = export(h, small.pruning_plan, tmp_path / "plan-only", plan_only=True, evaluate=False)
    got = materialize(plan_only, str(folder), tmp_path / "streamed", max_shard_size="50KB")
    _assert_same_export(full, got, "unet")
    with pytest.raises(ExportError, match="re-fitted tensors are not here"):
        (tmp_path / "plan.json").write_text(small.pruning_plan.to_json())
        materialize(tmp_path / "plan.json", str(folder), tmp_path / "nope")


def test_errors_name_the_culprit(saved, tmp_path):
    folder, h = saved
    plan = random_plan(h, 1)
    other = PruningPlan.from_dict({**plan.to_dict(), "base": "local:/elsewhere@0123456789ab"})
    with pytest.raises(PlanError, match="was made for"):
        materialize(other, str(folder), tmp_path / "x")
    t0 = time.perf_counter()
    with pytest.raises(ExportError, match="'nobody/no-such-model'.*offline"):
        materialize(plan, "nobody/no-such-model", tmp_path / "y")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ExportError, match="not a diffusers folder"):
        materialize(plan, str(tmp_path), tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_materialize(saved, tmp_path, capsys):
    folder, h = saved
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(random_plan(h, 4).to_json())
    out = tmp_path / "out"
    assert main(["materialize", "--plan", str(plan_file), "--base", str(folder), "--out", str(out),
                 "--max-shard-size", "40KB"]) == 0
    assert "exported" in capsys.readouterr().out and (out / MANIFEST).is_file()
    assert main(["materialize", "--plan", str(plan_file), "--base", "nobody/nothing", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nobody/nothing'" in err


def test_streaming_holds_one_tensor_at_a_time(saved, tmp_path, monkeypatch):
    """The path R6 measures at FLUX size: no base tensor read outlives the next read by more than one."""
    import weakref

    folder, h = saved
    alive, most = [], [0]
    real_get = LazyWeights.get

    def get(self, key):  # reference counting frees a dropped tensor at once: no gc pass needed
        alive[:] = [r for r in alive if r() is not None]
        most[0] = max(most[0], len(alive))
        t = real_get(self, key)
        alive.append(weakref.ref(t))
        return t

    monkeypatch.setattr(LazyWeights, "get", get)
    materialize(random_plan(h, 5), str(folder), tmp_path / "out", max_shard_size="20KB")
    assert most[0] <= 1
