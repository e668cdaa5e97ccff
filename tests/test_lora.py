"""LoRAs carried through pruning: sliced like the weights, loadable by diffusers onto the pruned
pipeline, removed operators reported; and the other order, pruning with the LoRA fused."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from pruning import PruningPlan, export, load_pruned, masked, slim
from pruning.errors import PlanError, SettingsError
from pruning.lora import LORA_FILE, fuse_into, fuse_lora, read_lora, slice_lora
from pruning.manifest import MANIFEST
from pruning.metrics import example_inputs
from pruning.sampling import generate_latents
from pruning.testing import tiny_pipeline

PROMPTS, SEEDS = ["a red circle at the top left on a white background", "a blue square in the center"], [0, 1]
SD_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj", "net.2", "conv1", "conv2", "time_emb_proj",
              "conv_shortcut"]
FLUX_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "proj", "net.2", "proj_mlp", "proj_out"]


def _make_lora(pipe, targets, path, seed):
    """A peft LoRA with random non-zero factors (alpha 8, rank 4) on ``targets``, saved as diffusers does."""
    torch.manual_seed(seed)
    den = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    den.add_adapter(cfg)
    state = get_peft_model_state_dict(den)
    with torch.no_grad():
        for k, v in state.items():
            state[k] = torch.randn_like(v) * 0.05
    name = "transformer" if hasattr(pipe, "transformer") else "unet"
    type(pipe).save_lora_weights(path, **{f"{name}_lora_layers": state,
                                          f"{name}_lora_adapter_metadata": cfg.to_dict()})
    return path / LORA_FILE


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory):
    from pruning import load_pipeline

    return _make_lora(load_pipeline("tiny-shapes-sd").pipe, SD_TARGETS, tmp_path_factory.mktemp("lora"), 0)


@pytest.fixture(scope="module")
def flux_lora(tmp_path_factory):
    return _make_lora(tiny_pipeline("flux"), FLUX_TARGETS, tmp_path_factory.mktemp("flora"), 1)


def _sd_plan(h):
    return PruningPlan(family="sd", base=h.model_ref,
                       removed_operators=("mid_block.resnets.0", "down_blocks.1.resnets.0",
                                          "up_blocks.0.attentions.0.transformer_blocks.0.attn2"),
                       kept_heads={"down_blocks.0.attentions.0.transformer_blocks.0.attn1": (1, 3)},
                       kept_neurons={"down_blocks.0.attentions.0.transformer_blocks.0.ff": tuple(range(0, 128, 3))},
                       kept_groups={"up_blocks.0.resnets.1": (0, 2, 5)})


def _flux_plan(h):
    return PruningPlan(family="flux", base=h.model_ref, removed_operators=("transformer_blocks.1.ff",),
                       kept_heads={"transformer_blocks.0.attn": (0,), "single_transformer_blocks.0.attn": (1,)},
                       kept_neurons={"single_transformer_blocks.1.proj_mlp": tuple(range(0, 64, 2)),
                                     "transformer_blocks.0.ff_context": tuple(range(0, 64, 4))})


def _case(request, name):
    h = request.getfixturevalue("shapes_sd" if name == "sd" else "tiny_flux")
    path = request.getfixturevalue(f"{name}_lora")
    return h, path, (_sd_plan if name == "sd" else _flux_plan)(h)


@pytest.mark.parametrize("name", ["sd", "flux"])
@torch.no_grad()
def test_masked_fused_equals_slim_plus_sliced_lora(request, name):
    h, path, plan = _case(request, name)
    fused = fuse_lora(h, path)
    kw = example_inputs(h.denoiser, batch=2, sample_size=8, text_len=8, generator=torch.Generator().manual_seed(0))
    with masked(fused.denoiser, plan):
        want = fused.denoiser(**kw)[0]
    lora = slice_lora(h, plan, read_lora(h, path))
    small = fuse_into(slim(h.denoiser, plan), lora.for_component(h.denoiser_name))
    got = small(**kw)[0]
    err = (got - want).abs().max().item()
    print(f"{name}: max abs {err:.2e}")
    assert err < 1e-5
    assert not torch.allclose(fused.denoiser(**kw)[0], h.denoiser(**kw)[0], atol=1e-3)  # the LoRA matters


@pytest.mark.parametrize("name", ["sd", "flux"])
@torch.no_grad()
def test_sliced_lora_loads_with_diffusers_onto_the_export(request, name, tmp_path):
    h, path, plan = _case(request, name)
    out = export(h, plan, tmp_path / "pruned-model", full_pipeline=True, lora=path, evaluate=False)
    report = json.loads((out / MANIFEST).read_text())["lora"]
    assert report["file"] == f"lora/{LORA_FILE}" and report["sliced"] > 0
    pruned = load_pruned(out)
    line = next(x for x in (out / "README.md").read_text().splitlines() if "load_lora_weights" in x)
    assert 'load_lora_weights("pruned-model", subfolder="lora", weight_name="pytorch_lora_weights.safetensors")' in line
    pruned.pipe.load_lora_weights(str(out), subfolder="lora", weight_name=LORA_FILE)  # diffusers' loader, as the card says
    lora = slice_lora(h, plan, read_lora(h, path))
    small = fuse_into(slim(h.denoiser, plan), lora.for_component(h.denoiser_name))
    want = generate_latents(h, PROMPTS, SEEDS, denoiser=small)
    got = generate_latents(pruned, PROMPTS, SEEDS)
    err = ((got - want).norm() / want.norm()).item()
    print(f"{name}: relative L2 {err:.2e}, max abs {(got - want).abs().max().item():.2e}")
    assert err < 1e-5
    assert "## LoRA" in (out / "README.md").read_text()


def test_lora_on_removed_operators_is_reported(shapes_sd, sd_lora):
    lora = slice_lora(shapes_sd, _sd_plan(shapes_sd), read_lora(shapes_sd, sd_lora))
    dropped = {d.split(" ")[0] for d in lora.dropped}
    assert "unet.mid_block.resnets.0.conv1" in dropped and "unet.mid_block.resnets.0.time_emb_proj" in dropped
    assert "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q" in dropped
    assert all("(removed with" in d for d in lora.dropped)
    assert "unet.down_blocks.1.resnets.0.conv_shortcut" in lora.layers  # the kept shortcut keeps its LoRA
    assert not any(k.startswith("unet.mid_block.resnets.0.") for k in lora.layers)


def test_kohya_alpha_and_bad_loras(shapes_sd, tmp_path):
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    kohya = "lora_unet_" + name.replace(".", "_")
    A, B = torch.randn(2, 32), torch.randn(32, 2)
    save_file({f"{kohya}.lora_down.weight": A, f"{kohya}.lora_up.weight": B, f"{kohya}.alpha": torch.tensor(1.0)},
              str(tmp_path / "kohya.safetensors"))
    (a, b, _), = read_lora(shapes_sd, tmp_path / "kohya.safetensors").layers.values()
    assert torch.allclose(b @ a, (B @ A) * 0.5)  # alpha 1 / rank 2
    with pytest.raises(SettingsError, match="not a .safetensors"):
        read_lora(shapes_sd, tmp_path / "lora.bin")
    save_file({"unet.nope.lora_A.weight": A, "unet.nope.lora_B.weight": B}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SettingsError, match="'unet.nope'.*another model"):  # refused as soon as it is read
        read_lora(shapes_sd, tmp_path / "other.safetensors")


def test_plans_made_on_the_fused_model_name_the_lora(shapes_sd, sd_lora):
    fused = fuse_lora(shapes_sd, sd_lora)
    assert fused.model_ref.startswith(shapes_sd.model_ref + "+lora:")
    plan = PruningPlan(family="sd", base=fused.model_ref, removed_operators=("mid_block.resnets.0",))
    with pytest.raises(PlanError, match="lora"):
        export(shapes_sd, plan, "/nonexistent/x")


def test_cli_lora_and_export_with_lora(capsys, shapes_sd, sd_lora, tmp_path):
    from pruning.cli import main

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(_sd_plan(shapes_sd).to_json())
    code = main(["lora", "--model", "tiny-shapes-sd", "--plan", str(plan_file), "--lora", str(sd_lora),
                 "--out", str(tmp_path / "small.safetensors")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "dropped   unet.mid_block.resnets.0.conv1 (removed with mid_block.resnets.0)" in out
    from safetensors.torch import load_file  # the sliced LoRA fits the slim model, not this one: keys only

    written = {k.rsplit(".lora_", 1)[0] for k in load_file(str(tmp_path / "small.safetensors"))}
    assert written == set(slice_lora(shapes_sd, _sd_plan(shapes_sd), read_lora(shapes_sd, sd_lora)).layers)
    code = main(["export", "--model", "tiny-shapes-sd", "--plan", str(plan_file), "--lora", str(sd_lora),
                 "--out", str(tmp_path / "exp"), "--no-card-eval"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "lora      dropped unet.mid_block.resnets.0.conv1" in out and (tmp_path / "exp" / "lora" / LORA_FILE).is_file()
    code = main(["lora", "--model", "tiny-shapes-sd", "--plan", str(plan_file), "--lora", str(tmp_path / "x.bin"),
                 "--out", str(tmp_path / "y.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "x.bin" in err
    code = main(["generate", "--model", "tiny-shapes-sd", "--fuse-lora", str(sd_lora), "--prompt", "a red circle",
                 "--steps", "1", "--out", str(tmp_path / "images")])
    assert code == 0, capsys.readouterr().err
