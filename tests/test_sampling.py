import copy
import threading

import pytest
import torch

from pruning.sampling import GenerationStopped, call_pipe, decode_latents, generate_images, generate_latents

PROMPTS = ["a red circle", "a blue square on the left", "a green star"]


def test_shapes(tiny_handle):
    z = generate_latents(tiny_handle, PROMPTS[:2], [0, 1])
    latent_channels = tiny_handle.pipe.vae.config.latent_channels
    assert z.shape == (2, latent_channels, 8, 8)  # (B, C, H, W) for every family
    images = decode_latents(tiny_handle, z)
    assert [im.size for im in images] == [(32, 32)] * 2


def test_same_seed_same_latents_whatever_the_batch(tiny_handle):
    full = generate_latents(tiny_handle, PROMPTS, [0, 1, 2], steps=2)
    assert torch.equal(full, generate_latents(tiny_handle, PROMPTS, [0, 1, 2], steps=2))
    alone = generate_latents(tiny_handle, PROMPTS[1:2], [1], steps=2)
    reordered = generate_latents(tiny_handle, [PROMPTS[2], PROMPTS[1]], [2, 1], steps=2)
    assert torch.allclose(full[1:2], alone, atol=1e-4)  # batched kernels round differently
    assert torch.allclose(full[1], reordered[1], atol=1e-4)
    assert not torch.allclose(full[0], full[1], atol=1e-2)


def test_seed_changes_sample(tiny_sd):
    a = generate_latents(tiny_sd, ["x", "x"], [0, 1], steps=2)
    assert not torch.allclose(a[0], a[1], atol=1e-2)


def test_denoiser_swap_does_not_mutate_pipe(tiny_handle):
    h = tiny_handle
    before = generate_latents(h, PROMPTS[:1], [0], steps=2)
    other = copy.deepcopy(h.denoiser)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    swapped = generate_latents(h, PROMPTS[:1], [0], steps=2, denoiser=other)
    assert not torch.allclose(before, swapped, atol=1e-3)
    assert getattr(h.pipe, h.denoiser_name) is h.denoiser
    assert torch.equal(before, generate_latents(h, PROMPTS[:1], [0], steps=2))


def test_call_pipe_shares_weights(tiny_sdxl):
    p = call_pipe(tiny_sdxl)
    assert p.unet is tiny_sdxl.pipe.unet and p.vae is tiny_sdxl.pipe.vae
    assert p.text_encoder_2 is tiny_sdxl.pipe.text_encoder_2
    assert p.scheduler is not tiny_sdxl.pipe.scheduler


def test_stop_and_callback(tiny_flux):
    stop, seen = threading.Event(), []

    def cb(step, t, latents):
        seen.append(step)
        if step == 1:
            stop.set()

    with pytest.raises(GenerationStopped):
        generate_latents(tiny_flux, PROMPTS[:2], [0, 1], steps=4, stop=stop, callback=cb)
    assert seen == [0, 1]
    seen.clear()
    z = generate_latents(tiny_flux, PROMPTS[:2], [0, 1], steps=3, callback=cb)  # pipe not left interrupted
    assert seen == [0, 1, 2] and z.shape[0] == 2


def test_generate_images_matches_decode(tiny_sd):
    imgs = generate_images(tiny_sd, "a red circle", [5, 6], steps=2)
    again = decode_latents(tiny_sd, generate_latents(tiny_sd, "a red circle", [5, 6], steps=2))
    assert [list(a.getdata()) for a in imgs] == [list(b.getdata()) for b in again]


def test_no_progress_bar_by_default(tiny_sd, capfd):
    generate_latents(tiny_sd, "a", 0, steps=2)
    assert "it/s" not in capfd.readouterr().err


def test_prompt_seed_mismatch(tiny_sd):
    with pytest.raises(ValueError, match="2 prompts and 3 seeds"):
        generate_latents(tiny_sd, ["a", "b"], [0, 1, 2])


def test_decode_matches_the_pipeline(tiny_handle):
    import numpy as np

    h = tiny_handle
    extra = {"max_sequence_length": h.defaults["max_sequence_length"]} if "max_sequence_length" in h.defaults else {}
    ref = h.pipe(PROMPTS[:2], num_inference_steps=2, guidance_scale=h.defaults["guidance"], height=32,
                 width=32, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **extra).images
    ours = generate_images(h, PROMPTS[:2], [0, 1], steps=2)
    for a, b in zip(ref, ours):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_flux_true_cfg_mode(tiny_flux):
    from pruning.loading import handle_from_pipe
    from pruning.sampling import pipeline_kwargs, spec

    h = handle_from_pipe(tiny_flux.pipe, model_ref="x", defaults={
        "guidance_mode": "true_cfg", "negative_prompt": "", "max_sequence_length": 16})
    assert pipeline_kwargs(spec(h, guidance=2.0), 2) == {"true_cfg_scale": 2.0, "negative_prompt": ["", ""],
                                                         "max_sequence_length": 16}
    assert pipeline_kwargs(spec(tiny_flux, guidance=3.5), 1) == {"guidance_scale": 3.5, "max_sequence_length": 32}
    off = generate_latents(h, PROMPTS[:2], [0, 1], steps=2, guidance=1.0)
    on = generate_latents(h, PROMPTS[:2], [0, 1], steps=2, guidance=3.0)
    assert not torch.allclose(on, off, atol=1e-4)
    assert torch.equal(on, generate_latents(h, PROMPTS[:2], [0, 1], steps=2, guidance=3.0))
