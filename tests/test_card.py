"""The model card in every export, plan-only exports re-applied to the base weights, Hub upload up
to the network call."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from pruning import PruningPlan, export, load_pruned, reconstruct
from pruning.card import CARD, GRID, front_matter
from pruning.errors import ExportError
from pruning.manifest import DELTAS, MANIFEST, WEIGHTS
from pruning.reconstruct import ReconstructSettings
from pruning.sampling import generate_latents

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
FF = "down_blocks.0.attentions.0.transformer_blocks.0.ff"
RES = "up_blocks.0.resnets.0"


def _plan(h) -> PruningPlan:
    return PruningPlan(family="sd", base=h.model_ref, removed_operators=("mid_block.resnets.0",),
                       kept_heads={ATTN: (0, 2)}, kept_neurons={FF: tuple(range(0, 128, 2))},
                       kept_groups={RES: tuple(range(4))}).with_provenance(method="magnitude", settings={"seed": 0})


def test_card_front_matter_figures_and_grid(shapes_sd, tmp_path):
    out = export(shapes_sd, _plan(shapes_sd), tmp_path / "pruned-model", full_pipeline=True)
    text = (out / CARD).read_text()
    meta = yaml.safe_load(text.split("---\n")[1])  # a YAML parser on the front matter itself
    assert meta == front_matter(text)
    assert meta["base_model"] == "tiny-shapes-sd" and meta["library_name"] == "diffusers"
    assert meta["pipeline_tag"] == "text-to-image"
    assert {"pruning", "pruning-magnitude"} <= set(meta["tags"])
    manifest = json.loads((out / MANIFEST).read_text())
    card = manifest["card"]
    s = card["summary"]
    for k in ("params_total", "params_removed", "params_fraction", "macs_total", "macs_removed", "macs_fraction"):
        assert meta["pruning"][k] == s[k], k
    assert s["params_total"] - s["params_removed"] == manifest["params"]  # what the slim weights hold
    assert f"**{s['params_removed']:,} of {s['params_total']:,} params" in text
    assert f"{s['macs_removed']:,} of {s['macs_total']:,} MACs" in text
    q = card["quality"]
    assert meta["pruning"]["quality"]["latent_mse"] == q["latent_mse"] > 0
    assert 0 < q["ssim"] < 1 and 0 <= q["task_accuracy"] <= 1 and len(q["prompts"]) == 4
    assert f"| latent MSE (lower is better) | 0 | {q['latent_mse']:.6g} |" in text
    assert all(p in text for p in q["prompts"]) and "CLIP score: not measured" in text
    assert f"| `{ATTN}` | 0.50 |" in text and "`mid_block.resnets.0`" in text
    assert "Reconstruction: not applied." in text and "Recovery finetune: not applied." in text
    assert 'load_pruned("pruned-model")' in text
    grid = Image.open(out / GRID)
    res = shapes_sd.defaults["resolution"]
    assert grid.size == (4 * res, 2 * res)


def test_card_without_evaluation_says_so(tiny_flux, tmp_path):
    plan = PruningPlan(family="flux", base=tiny_flux.model_ref, removed_operators=("transformer_blocks.0.ff",))
    out = export(tiny_flux, plan, tmp_path / "e", evaluate=False)
    text = (out / CARD).read_text()
    assert "not measured at export" in text and "--card-eval" in text and not (out / GRID).exists()
    assert json.loads((out / MANIFEST).read_text())["card"]["quality"] is None
    assert 'base="tiny:flux"' in text  # the slim transformer alone: loaded with its base's other parts
    assert not (export(tiny_flux, plan, tmp_path / "nocard", card=False) / CARD).exists()


@pytest.mark.parametrize("recon", [False, True], ids=["plain", "reconstructed"])
@torch.no_grad()
def test_plan_only_export_reapplies_bit_for_bit(shapes_sd, tmp_path, recon):
    plan, small = _plan(shapes_sd), None
    if recon:
        small = reconstruct(shapes_sd, plan, ReconstructSettings(prompts=("a red circle",), steps=2))
        plan = small.pruning_plan
    full = export(shapes_sd, plan, tmp_path / "full", denoiser=small, evaluate=False)
    only = export(shapes_sd, plan, tmp_path / "only", denoiser=small, plan_only=True, evaluate=False)
    names = sorted(p.relative_to(only).as_posix() for p in only.rglob("*") if p.is_file())
    assert names == sorted([CARD, MANIFEST, "pruning_defaults.json", *([DELTAS] if recon else [])])
    a = load_pruned(full, base=shapes_sd)
    b = load_pruned(only)  # the base comes from the plan: the bundled model, checked by its hash
    c = load_pruned(only, base=shapes_sd)
    za = generate_latents(a, ["a red circle at the top left on a white background"], [0])
    for h in (b, c):
        assert torch.equal(generate_latents(h, ["a red circle at the top left on a white background"], [0]), za)
    sa, sb = a.denoiser.state_dict(), b.denoiser.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    if recon:  # the deltas are what reconstruction changed, and without them it would differ
        from safetensors.torch import load_file

        deltas = load_file(str(only / DELTAS))
        assert deltas and all(k.endswith((".weight", ".bias")) for k in deltas)
    with pytest.raises(ExportError, match="plan-only"):
        from pruning.export import load_pruned_denoiser

        load_pruned_denoiser(only)


def test_plan_only_refuses_weights_it_cannot_carry(shapes_sd, tmp_path):
    with pytest.raises(ExportError, match="plan-only"):
        export(shapes_sd, _plan(shapes_sd), tmp_path / "x", plan_only=True, full_pipeline=True)
    out = export(shapes_sd, _plan(shapes_sd), tmp_path / "y", plan_only=True, evaluate=False)
    m = json.loads((out / MANIFEST).read_text())
    m["files"] = {f"unet/{WEIGHTS}": "0" * 64}
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ExportError, match="plan-only export holds no denoiser weights"):
        load_pruned(out)


def test_push_to_hub_offline_fails_fast_naming_the_repo(shapes_sd, tmp_path):
    with pytest.raises(ExportError, match="'someone/pruned-sd'.*offline"):
        export(shapes_sd, _plan(shapes_sd), tmp_path / "x", push_to_hub="someone/pruned-sd")
    assert not (tmp_path / "x").exists()  # nothing was done
    with pytest.raises(ExportError, match="not a Hub repo id"):
        export(shapes_sd, _plan(shapes_sd), tmp_path / "x", push_to_hub="no such repo")
    with pytest.raises(ExportError, match="'someone/pruned-sd'.*offline"):
        load_pruned("someone/pruned-sd")


def test_push_to_hub_up_to_the_network_call(shapes_sd, tmp_path, monkeypatch):
    import pruning.hub as hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            files = sorted(p.name for p in (tmp_path / "only").iterdir())
            calls.append(("upload_folder", kw["repo_id"], kw["folder_path"], files))

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "_api", lambda token: calls.append(("token", token)) or FakeApi())
    out = export(shapes_sd, _plan(shapes_sd), tmp_path / "only", plan_only=True, evaluate=False,
                 push_to_hub="someone/pruned-sd", private=True, token="hf_x")
    assert calls[0] == ("token", "hf_x")
    assert calls[1] == ("create_repo", "someone/pruned-sd", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2] == ("upload_folder", "someone/pruned-sd", str(out), sorted([CARD, MANIFEST, "pruning_defaults.json"]))
    assert 'load_pruned("someone/pruned-sd")' in (out / CARD).read_text()

    # and back: load_pruned("user/name") resolves the repo to its snapshot folder, then re-applies the plan
    monkeypatch.setattr(hub, "_snapshot", lambda repo_id, **kw: calls.append(("snapshot", repo_id, kw)) or str(out))
    h = load_pruned("someone/pruned-sd")
    assert calls[-1] == ("snapshot", "someone/pruned-sd", {"revision": None, "local_files_only": False})
    assert h.model_ref.startswith(f"pruned:{shapes_sd.model_ref}#")

    def refused(**kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(FakeApi, "upload_folder", lambda self, **kw: refused())
    with pytest.raises(ExportError, match="'someone/pruned-sd': ConnectionError: no route to host"):
        export(shapes_sd, _plan(shapes_sd), tmp_path / "again", plan_only=True, evaluate=False,
               push_to_hub="someone/pruned-sd")
