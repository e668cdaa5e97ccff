import pytest
from diffusers.models.attention import BasicTransformerBlock

from pruning.reference import PIPELINES, REFERENCE_CONFIGS, meta_denoiser

EXPECTED_M = {"sd15": 859.5, "sd21": 865.9, "sdxl": 2567.5, "flux-dev": 11901.4, "flux-schnell": 11891.2,
              "sd3-medium": 2028.3, "sd35-medium": 2243.2, "sd35-large": 8056.6}


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_param_totals(name):
    m = meta_denoiser(name)
    total = sum(p.numel() for p in m.parameters())
    assert round(total / 1e6, 1) == EXPECTED_M[name]
    assert all(p.device.type == "meta" for p in m.parameters())


def test_exact_totals():
    assert sum(p.numel() for p in meta_denoiser("sd15").parameters()) == 859_520_964
    assert sum(p.numel() for p in meta_denoiser("sdxl").parameters()) == 2_567_463_684


@pytest.mark.parametrize("name,blocks", [("sd15", 16), ("sd21", 16), ("sdxl", 70)])
def test_unet_transformer_blocks(name, blocks):
    m = meta_denoiser(name)
    assert sum(isinstance(x, BasicTransformerBlock) for x in m.modules()) == blocks


def test_flux_blocks():
    m = meta_denoiser("flux-dev")
    assert (len(m.transformer_blocks), len(m.single_transformer_blocks)) == (19, 38)
    assert m.config.guidance_embeds and not meta_denoiser("flux-schnell").config.guidance_embeds


def test_pipeline_facts():
    assert set(PIPELINES) == set(REFERENCE_CONFIGS)
    assert {p["family"] for p in PIPELINES.values()} == {"sd", "sdxl", "flux", "sd3"}
    assert PIPELINES["sd15"]["resolution"] == 512 and PIPELINES["sdxl"]["resolution"] == 1024
    with pytest.raises(KeyError, match="sd3"):
        meta_denoiser("sd3")
