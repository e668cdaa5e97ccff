"""Our hooks, slim and generation under diffusers' memory savers: offload hooks, VAE tiling.

There is no GPU here, but with diffusers 0.42 / accelerate 1.15 ``enable_model_cpu_offload(
device="cpu")`` attaches the real hooks (``CpuOffload``, chained text encoder -> denoiser -> VAE)
with the CPU as the execution device: every forward goes through them, only nothing moves.
``enable_sequential_cpu_offload(device="cpu")`` fails inside the tiny CLIP text encoder with this
accelerate/torch (a ``TypeError`` in ``set_module_tensor_to_device``, before any of our code
runs), so sequential offload is tested on the denoiser alone with ``accelerate.cpu_offload``
(the same ``AlignDevicesHook(offload=True)`` per layer, weights on meta between calls).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from accelerate import cpu_offload

from pruning.catalog import discover
from pruning.cli import main
from pruning.errors import SettingsError
from pruning.loading import handle_from_pipe
from pruning.masks import masked
from pruning.memory import enable_memory_savers, offloaded, plain_copy
from pruning.methods.diffpruning import DiffPruningSettings, importance
from pruning.metrics import example_inputs
from pruning.plan import PruningPlan
from pruning.rollout import prepare, rollout
from pruning.sampling import decode_latents, generate_latents
from pruning.slim import slim
from pruning.testing import tiny_pipeline
from tests.test_ecodiff import _grads

PROMPTS, SEEDS = ["a red circle at the top left", "a blue square"], [0, 1]


def _pair(family):
    """(plain handle, handle whose pipeline has model offload hooks): the same random weights."""
    pipe = tiny_pipeline(family)
    twin = copy.deepcopy(pipe)
    twin.enable_model_cpu_offload(device="cpu")
    return (handle_from_pipe(pipe, model_ref=f"tiny:{family}"), handle_from_pipe(twin, model_ref=f"tiny:{family}"))


def _plan(handle):
    """A head, every other FFN neuron and one whole operator removed."""
    found = discover(handle.denoiser)
    head = next(s for s in found.structures.values() if s.kind == "head")
    ffn = next(s for s in found.structures.values() if s.kind == "neuron")
    return PruningPlan(family=handle.family, base=handle.model_ref, kept_heads={head.fqn: (0,)},
                       kept_neurons={ffn.fqn: tuple(range(0, ffn.units, 2))},
                       removed_operators=(sorted(found.operators)[3],))


@pytest.fixture(scope="module", params=["sd", "sdxl", "flux"])
def pair(request):
    return _pair(request.param)


def test_the_hooks_are_really_there(pair):
    plain, hooked = pair
    assert offloaded(hooked.denoiser) and not offloaded(plain.denoiser)
    assert type(hooked.denoiser._hf_hook).__name__ == "CpuOffload"
    assert hooked.device == torch.device("cpu")  # accelerate says cpu:0; the handle compares equal to cpu


def test_masked_generation_equals_without_hooks(pair):
    plain, hooked = pair
    plan = _plan(plain)
    with masked(plain.denoiser, plan):
        want = generate_latents(plain, PROMPTS, SEEDS, steps=2)
    with masked(hooked.denoiser, plan):
        got = generate_latents(hooked, PROMPTS, SEEDS, steps=2)
    assert not torch.equal(want, generate_latents(plain, PROMPTS, SEEDS, steps=2))  # the plan does something
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    traj = prepare(hooked, PROMPTS, SEEDS, steps=2)
    with masked(hooked.denoiser, plan):
        torch.testing.assert_close(traj.unpack(rollout(hooked.denoiser, traj)[-1]), want, rtol=0, atol=1e-5)


def test_slim_of_a_hooked_denoiser(pair):
    plain, hooked = pair
    plan = _plan(plain)
    text_encoders = [m for n, m in hooked.pipe.components.items() if n.startswith("text_encoder") and m is not None]
    small, want = slim(hooked.denoiser, plan), slim(plain.denoiser, plan)
    assert not offloaded(small) and "forward" not in small.__dict__
    assert not any(m is t or type(m) is type(t) for m in small.modules() for t in text_encoders)  # no copied encoder
    kw = example_inputs(plain.denoiser, batch=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small(**kw)[0], want(**kw)[0], rtol=0, atol=0)  # standalone, no hook
    before = generate_latents(hooked, PROMPTS, SEEDS, steps=2)
    seen = []
    got = generate_latents(hooked, PROMPTS, SEEDS, steps=2, denoiser=small,
                           callback=lambda *_: seen.append(offloaded(small)))
    assert seen and all(seen) and not offloaded(small)  # offloaded like the pipeline's for the call only
    torch.testing.assert_close(got, generate_latents(plain, PROMPTS, SEEDS, steps=2, denoiser=want), rtol=0, atol=0)
    torch.testing.assert_close(generate_latents(hooked, PROMPTS, SEEDS, steps=2), before, rtol=0, atol=0)
    assert type(hooked.denoiser._hf_hook).__name__ == "CpuOffload"  # the pipeline's hooks are untouched


def _gate_grads(handle):
    """(loss, gate gradients) of a checkpointed EcoDiff step towards a shifted target."""
    traj = prepare(handle, PROMPTS, SEEDS, steps=2)
    with torch.no_grad():
        target = traj.unpack(rollout(handle.denoiser, traj)[-1]) + 0.05
    for p in handle.denoiser.parameters():
        p.requires_grad_(False)
    return _grads(handle, traj, target, "timestep")


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_ecodiff_gate_gradients_equal_without_hooks(family):
    (loss_a, a), (loss_b, b) = (_gate_grads(handle) for handle in _pair(family))
    assert a.abs().max() > 0 and loss_a == loss_b
    torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_taylor_importance_equals_without_hooks():
    settings = DiffPruningSettings(prompts=["a red circle"], steps=2, stride=500)
    plain, hooked = (importance(h, settings) for h in _pair("sd"))
    assert plain["importance"].abs().max() > 0
    assert plain.attrs["timesteps"] == hooked.attrs["timesteps"] == [0, 500]
    np.testing.assert_array_equal(hooked["importance"].to_numpy(), plain["importance"].to_numpy())


def test_taylor_on_user_images_under_offload():
    """The images go to where the VAE computes, not where an offloaded VAE's weights wait."""
    images = [np.full((32, 32, 3), v, np.uint8) for v in (30, 200)]
    settings = DiffPruningSettings(images=images, steps=2, stride=500)
    plain, hooked = (importance(h, settings) for h in _pair("sd"))
    assert plain["importance"].abs().max() > 0
    np.testing.assert_array_equal(hooked["importance"].to_numpy(), plain["importance"].to_numpy())


@pytest.mark.parametrize("family", ["sd", "flux"])
@torch.no_grad()
def test_sequential_offload_of_the_denoiser(family):
    den = tiny_pipeline(family).unet if family == "sd" else tiny_pipeline(family).transformer
    plain = copy.deepcopy(den)
    cpu_offload(den, execution_device="cpu")  # per-layer hooks; the module's weights are on meta now
    assert next(den.parameters()).is_meta
    handle = handle_from_pipe(tiny_pipeline(family), model_ref=f"tiny:{family}")
    plan = _plan(handle)
    kw = example_inputs(plain, batch=2, generator=torch.Generator().manual_seed(0))
    with masked(plain, plan):
        want = plain(**kw)[0]
    with masked(den, plan):  # gates are made on the execution device, not on meta
        torch.testing.assert_close(den(**kw)[0], want, rtol=0, atol=0)
    small = slim(den, plan)  # the weights come back from the hooks
    assert not offloaded(small) and not any(p.is_meta for p in small.parameters())
    torch.testing.assert_close(small(**kw)[0], want, rtol=0, atol=1e-5)
    copied = plain_copy(den)
    assert copied.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(copied.state_dict()[k], v) for k, v in plain.state_dict().items())
    assert next(den.parameters()).is_meta  # the original keeps its hooks


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_vae_tiling_and_slicing_decode(family):
    """Tiles of 4x4 latents (16 px) on 8x8 latents force 9 overlapping tiles per image. The tiny
    VAE's GroupNorm normalises each tile on its own, so tiled images differ from untiled ones:
    measured on these random VAEs, mean |diff| is 20 (SD, SDXL) and 30 (FLUX) of 255, while two
    different samples differ by 40-45: each tiled image is still far nearer its own untiled image.
    Slicing changes at most 1 of 255 (batch-size rounding)."""
    handle = handle_from_pipe(tiny_pipeline(family), model_ref=f"tiny:{family}")
    z = generate_latents(handle, PROMPTS, SEEDS, steps=2)
    whole = np.stack([np.asarray(im, dtype=float) for im in decode_latents(handle, z)])
    handle = enable_memory_savers(handle, vae_tiling=True)
    vae = handle.pipe.vae
    vae.tile_latent_min_size, vae.tile_sample_min_size = 4, 16
    calls = []
    real = vae.tiled_decode
    vae.tiled_decode = lambda *a, **k: calls.append(a[0].shape) or real(*a, **k)
    tiled = np.stack([np.asarray(im, dtype=float) for im in decode_latents(handle, z)])
    assert calls == [z.shape] and tiled.shape == whole.shape
    own = [np.abs(tiled[i] - whole[i]).mean() for i in (0, 1)]
    other = [np.abs(tiled[i] - whole[1 - i]).mean() for i in (0, 1)]
    assert all(0 < d < 35 for d in own) and all(d < 0.8 * o for d, o in zip(own, other)), (own, other)
    handle = enable_memory_savers(handle, vae_slicing=True)
    sliced = np.stack([np.asarray(im, dtype=float) for im in decode_latents(handle, z)])
    assert len(calls) == 3 and [c[0] for c in calls[1:]] == [1, 1]  # one image at a time
    assert np.abs(sliced - tiled).max() <= 1


def test_offload_without_an_accelerator_says_so(tiny_sd):
    if torch.accelerator.current_accelerator() is not None:
        pytest.skip("this machine has an accelerator")
    with pytest.raises(SettingsError, match=r"offload='model' moves each model to an accelerator only while it "
                                            r"runs, and this machine has none"):
        enable_memory_savers(tiny_sd, offload="model")
    assert not offloaded(tiny_sd.denoiser)
    with pytest.raises(SettingsError, match="offload must be one of"):
        enable_memory_savers(tiny_sd, offload="disk")


def test_enable_memory_savers_on_cpu_attaches_the_hooks():
    plain, _ = _pair("sd")
    handle = enable_memory_savers(handle_from_pipe(tiny_pipeline("sd"), model_ref="tiny:sd"), offload="model",
                                  device="cpu")
    assert type(handle.denoiser._hf_hook).__name__ == "CpuOffload" and handle.device == torch.device("cpu")
    torch.testing.assert_close(generate_latents(handle, PROMPTS, SEEDS, steps=2),
                               generate_latents(plain, PROMPTS, SEEDS, steps=2), rtol=0, atol=0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_memory_flags(capsys, sd_folder, tmp_path):
    if torch.accelerator.current_accelerator() is None:
        code, _, err = run(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--out", tmp_path,
                           "--offload", "model")
        assert code == 2 and "offload='model' moves each model to an accelerator" in err and "has none" in err
    code, _, err = run(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--out", tmp_path, "--offload", "disk")
    assert code == 2 and "--offload: invalid choice: 'disk'" in err
    code, out, err = run(capsys, "generate", "--model", sd_folder, "--prompt", "a", "--steps", 2, "--out", tmp_path,
                         "--vae-tiling")
    assert code == 0, err
    assert (tmp_path / "original_p0_seed0.png").is_file()


def test_sequential_offload_gate_gradients_and_taylor_refusal():
    """EcoDiff trains gates only, so per-layer offload is fine; Taylor needs the weights' own
    gradients, which accelerate's per-call rebuilt weights cannot keep: refused, not zeros."""
    plain, _ = _pair("sd")
    pipe = tiny_pipeline("sd")
    cpu_offload(pipe.unet, execution_device="cpu")  # the denoiser only: see the module docstring
    seq = handle_from_pipe(pipe, model_ref="tiny:sd")
    grads = [_gate_grads(handle) for handle in (plain, seq)]
    assert grads[0][1].abs().max() > 0 and grads[0][0] == grads[1][0]
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)
    with pytest.raises(SettingsError, match=r"on the meta device \(with sequential offload"):
        importance(seq, DiffPruningSettings(prompts=["a red circle"], steps=2, stride=500))
