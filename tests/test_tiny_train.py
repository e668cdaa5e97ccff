"""The bundled models' training asks each family for its objective, timesteps and latent packing
(``Family.train_loss``, ``train_timesteps``, ``pack``): the loss Diff-Pruning differentiates is
the one the models were trained with, and the training loop has no per-architecture branch."""

from __future__ import annotations

import pytest
import torch

from pruning import families
from pruning.loading import handle_from_pipe
from pruning.testing import tiny_pipeline
from pruning.tiny import train


@pytest.mark.parametrize("arch", ["sd", "flux", "sd3"])
def test_a_few_training_steps_run_through_the_family(arch, monkeypatch):
    """Two steps of the real loop (on random latents instead of the rendered shapes): the weights
    move and stay finite."""
    torch.manual_seed(0)
    lat = torch.randn(70, 4, 8, 8)  # (N, C, H, W) scaled latents
    monkeypatch.setattr(train, "cache_latents", lambda vae, seed=0: (lat, torch.arange(70) % len(train.TRAIN_PROMPTS)))
    monkeypatch.setattr(train, "_log", lambda msg: None)
    vae = tiny_pipeline("sd").vae  # 4 latent channels, as the bundled VAE
    start = {"sd": train.M.unet, "flux": train.M.flux_transformer, "sd3": train.M.sd3_transformer}[arch](train.SEED)
    pipe = train.train_denoiser(arch, vae, steps=2)
    den = getattr(pipe, families.get(arch).denoiser_name)
    after = den.state_dict()
    moved = [k for k, v in start.state_dict().items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert moved and all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_flow_timesteps_per_sample_match_one_timestep():
    """A (B,) timestep tensor gives each sample the loss it gets alone at that timestep."""
    h = handle_from_pipe(tiny_pipeline("flux"), model_ref="tiny:flux")
    fam = families.of(h)
    from pruning.rollout import prepare

    traj = prepare(h, ["a red circle", "a blue square"], [0, 1], steps=2)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(traj.z0.shape, generator=g), torch.randn(traj.z0.shape, generator=g)
    with torch.no_grad():
        both = fam.train_loss(h, x0, noise, traj, torch.tensor([250, 250]))
        one = fam.train_loss(h, x0, noise, traj, 250)
    torch.testing.assert_close(both, one)
    assert fam.train_timesteps(5, torch.Generator().manual_seed(0), 1000).shape == (5,)
    assert families.get("sd").train_timesteps(5, torch.Generator().manual_seed(0), 1000).dtype == torch.int64
