"""Our sampler + adapter reproduce the diffusers pipelines' own outputs (tiny random pipelines, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from helpers import tiny_pipelines as tp
from leapalign.adapters.flux import FluxAdapter
from leapalign.adapters.sd3 import SD3Adapter
from leapalign.flow import sample_trajectory

PROMPTS = ["a red circle left of a blue square", "two green triangles"]
SIZE, STEPS = 32, 3


@pytest.fixture(scope="module")
def flux_dev():
    return FluxAdapter(tp.flux_pipeline(guidance_embeds=True), guidance_scale=4.0, max_sequence_length=tp.T5_LEN)


@pytest.fixture(scope="module")
def flux_schnell():
    return FluxAdapter(tp.flux_pipeline(guidance_embeds=False), max_sequence_length=tp.T5_LEN)


@pytest.fixture(scope="module")
def sd3():
    return SD3Adapter(tp.sd3_pipeline(), guidance_scale=5.0, negative_prompt="blurry", max_sequence_length=tp.T5_LEN)


def _noise(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(PROMPTS), *adapter.latent_shape(SIZE, SIZE), generator=g)


def _ours(adapter):
    noise = _noise(adapter)
    cond = adapter.encode_prompts(PROMPTS)
    traj = sample_trajectory(adapter.velocity, noise, adapter.sigmas(STEPS, SIZE, SIZE), cond)
    return noise, traj


def _scheduler_sigmas(pipe):
    return torch.cat([pipe.scheduler.timesteps / 1000, torch.zeros(1)])


@pytest.mark.parametrize("variant", ["flux_dev", "flux_schnell"])
def test_flux_rollout_matches_pipeline(variant, request):
    adapter = request.getfixturevalue(variant)
    pipe = adapter.pipe
    noise, traj = _ours(adapter)
    packed = pipe._pack_latents(noise, *noise.shape)
    common = dict(prompt=PROMPTS, latents=packed, num_inference_steps=STEPS, height=SIZE, width=SIZE,
                  max_sequence_length=tp.T5_LEN, guidance_scale=adapter.guidance_scale or 0.0)
    latents = pipe(**common, output_type="latent").images
    assert torch.allclose(_scheduler_sigmas(pipe), traj.sigmas, atol=1e-6)
    ours = pipe._pack_latents(traj.sample, *noise.shape)
    assert latents.abs().max() > 0.1
    torch.testing.assert_close(ours, latents, atol=1e-5, rtol=1e-5)
    images = pipe(**common, output_type="pt").images
    torch.testing.assert_close(adapter.decode(traj.sample), images, atol=1e-5, rtol=1e-5)


def test_flux_dev_guidance_changes_velocity(flux_dev):
    # Guards against the guidance tensor being silently dropped (the fidelity test would still pass then).
    x, cond = _noise(flux_dev), flux_dev.encode_prompts(PROMPTS)
    sigma = torch.full((2,), 0.7)
    v1 = flux_dev.velocity(x, sigma, cond)
    flux_dev.guidance_scale = 1.0
    try:
        v2 = flux_dev.velocity(x, sigma, cond)
    finally:
        flux_dev.guidance_scale = 4.0
    assert (v1 - v2).abs().max() > 1e-4


def test_sd3_rollout_matches_pipeline(sd3):
    pipe = sd3.pipe
    noise, traj = _ours(sd3)
    common = dict(prompt=PROMPTS, negative_prompt=["blurry"] * 2, latents=noise, num_inference_steps=STEPS,
                  height=SIZE, width=SIZE, max_sequence_length=tp.T5_LEN, guidance_scale=sd3.guidance_scale)
    latents = pipe(**common, output_type="latent").images
    assert torch.allclose(_scheduler_sigmas(pipe), traj.sigmas, atol=1e-6)
    torch.testing.assert_close(traj.sample, latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sd3.decode(traj.sample), pipe(**common, output_type="pt").images, atol=1e-5, rtol=1e-5)


def test_sd3_cfg_is_the_guided_combination(sd3):
    x, cond = _noise(sd3), sd3.encode_prompts(PROMPTS)
    sigma = torch.full((2,), 0.5)
    t = sd3.transformer
    cond_v = t(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond.prompt_embeds,
               pooled_projections=cond.pooled_prompt_embeds, return_dict=False)[0]
    uncond_v = t(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond.negative_prompt_embeds,
                 pooled_projections=cond.negative_pooled_prompt_embeds, return_dict=False)[0]
    expected = uncond_v + 5.0 * (cond_v - uncond_v)
    torch.testing.assert_close(sd3.velocity(x, sigma, cond), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 4, 28])
def test_sigmas_equal_scheduler_timesteps(flux_dev, flux_schnell, sd3, steps):
    for adapter, size in ((flux_dev, 64), (flux_schnell, 32), (sd3, 48)):
        pipe = adapter.pipe
        if adapter is sd3:
            pipe.scheduler.set_timesteps(steps)
        else:
            mu = calculate_shift((size // 4) ** 2) if pipe.scheduler.config.use_dynamic_shifting else None
            pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        torch.testing.assert_close(adapter.sigmas(steps, size, size), _scheduler_sigmas(pipe), atol=1e-6, rtol=0)


def test_velocity_is_differentiable_and_sub_batches_agree(flux_dev):
    x, cond = _noise(flux_dev), flux_dev.encode_prompts(PROMPTS)
    x.requires_grad_(True)
    sigma = torch.tensor([0.9, 0.3])
    v = flux_dev.velocity(x, sigma, cond)
    v.square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in flux_dev.trainable_parameters())
    one = flux_dev.velocity(x[1:].detach(), sigma[1:], cond.select(slice(1, 2)))
    torch.testing.assert_close(one, v[1:].detach(), atol=1e-5, rtol=1e-5)
    image = flux_dev.decode(x)
    assert image.shape == (2, 3, SIZE, SIZE) and 0 <= image.min() and image.max() <= 1


def test_bad_inputs(flux_schnell, flux_dev):
    with pytest.raises(ValueError, match="divisible by 4"):
        flux_dev.latent_shape(30, 32)
    with pytest.raises(ValueError, match="no guidance embedding"):
        FluxAdapter(flux_schnell.pipe, guidance_scale=3.5)
