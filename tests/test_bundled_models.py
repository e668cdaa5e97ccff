"""The bundled tiny shapes models: offline loading, layout, size, and quality floors.

A broken or retrained-for-the-worse checkpoint fails here: a subset of the held-out prompts
is generated at the saved defaults and the task evaluator must stay above its floors.
"""

import json
from pathlib import Path

import pytest
import torch

from pruning import quality, tiny

N_PROMPTS = 24  # held-out subset, fixed seeds
FLOORS = {"color": 0.9, "shape": 0.75, "position": 0.9, "all": 0.7}  # measured: >= 0.95 each


@pytest.fixture(scope="module", autouse=True)
def offline():
    import os

    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def sd(shapes_sd):
    return shapes_sd.pipe


@pytest.fixture(scope="module")
def flux(shapes_flux):
    return shapes_flux.pipe


@pytest.mark.parametrize("name", sorted(tiny.BUNDLED))
def test_folder_is_small_safetensors_with_defaults(name):
    path = Path(tiny.BUNDLED[name])
    files = [f for f in path.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert any(f.suffix == ".safetensors" for f in files)
    d = json.loads((path / "pruning_defaults.json").read_text())
    assert isinstance(d["steps"], int) and isinstance(d["guidance"], float) and d["resolution"] == 64


def test_sd_layout(sd):
    from diffusers import DDIMScheduler
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    assert sd.safety_checker is None and sd.config.requires_safety_checker is False
    assert isinstance(sd.scheduler, DDIMScheduler)
    assert 2 ** (len(sd.vae.config.block_out_channels) - 1) == 8 and sd.vae.config.latent_channels == 4
    u = sd.unet
    assert sum("CrossAttn" in b for b in u.config.down_block_types) >= 2
    attns = [m for n, m in u.named_modules() if isinstance(m, Attention) and n.endswith("attn2")]
    assert attns and all(a.heads > 1 for a in attns)
    assert any(isinstance(m, GEGLU) for m in u.modules())
    resnets = [m for m in u.modules() if isinstance(m, ResnetBlock2D)]
    assert all(r.norm1.num_groups > 1 for r in resnets)
    assert any(r.conv_shortcut is not None for r in resnets)


def test_flux_layout(flux, sd):
    from diffusers import FlowMatchEulerDiscreteScheduler

    t = flux.transformer
    assert len(t.transformer_blocks) >= 2 and len(t.single_transformer_blocks) >= 2
    assert t.config.num_attention_heads >= 2
    assert isinstance(flux.scheduler, FlowMatchEulerDiscreteScheduler)
    assert flux.vae.config.shift_factor == 0.0
    # shared with the SD model: the same VAE and CLIP text encoder weights
    for a, b in [(flux.vae, sd.vae), (flux.text_encoder, sd.text_encoder)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sd3_layout(shapes_sd3, sd):
    from diffusers import FlowMatchEulerDiscreteScheduler

    p = shapes_sd3.pipe
    t = p.transformer
    assert len(t.transformer_blocks) >= 2 and t.config.num_attention_heads >= 2
    assert t.transformer_blocks[-1].context_pre_only and t.transformer_blocks[0].attn2 is not None  # SD3.5 style
    assert t.config.qk_norm == "rms_norm" and isinstance(p.scheduler, FlowMatchEulerDiscreteScheduler)
    assert p.text_encoder_3 is not None and shapes_sd3.defaults["max_sequence_length"] == 16
    sa, sb = p.vae.state_dict(), sd.vae.state_dict()  # the shared VAE
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("which", ["sd", "flux", "sd3"])
def test_quality_floors_on_heldout_subset(which, request):
    pipe = request.getfixturevalue(f"shapes_{which}")  # generates exactly as the app and the CLI do
    prompts = tiny.heldout_prompts()[:N_PROMPTS]
    seeds = list(range(N_PROMPTS))
    r = quality.evaluate(pipe, prompts, seeds)
    for k, floor in FLOORS.items():
        assert r[k] >= floor, (which, k, r[k])
    assert r["latents"].shape == (N_PROMPTS, 4, 8, 8) and r["images"].shape == (N_PROMPTS, 64, 64, 3)
    # the reference API: identical outputs against itself, precomputed or as a pipeline
    r2 = quality.evaluate(
        pipe, prompts[:4], seeds[:4], reference={"latents": r["latents"][:4], "images": r["images"][:4]}
    )
    assert r2["latent_mse"] < 1e-8 and r2["psnr"] > 60  # batch size changes float rounding only
    ref = quality.evaluate(pipe, prompts[:2], [5, 6], steps=2)
    r3 = quality.evaluate(pipe, prompts[:2], [5, 6], reference=ref, steps=2)
    assert r3["latent_mse"] == 0.0
