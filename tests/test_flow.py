"""Schedules and the Euler step against diffusers' FlowMatchEulerDiscreteScheduler; the no-grad rollout."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from leapalign.flow import (dynamic_shift, euler_step, flux_mu, integrate, sample_trajectory, sigma_schedule,
                            static_shift)


@pytest.mark.parametrize("steps", [1, 4, 25, 28])
def test_linear_schedule_matches_diffusers_without_shift(steps):
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=[1.0 - i * (1 - 1 / steps) / max(steps - 1, 1) for i in range(steps)])
    ours = sigma_schedule(steps)
    assert ours[-1] == 0 and ours.shape == (steps + 1,)
    torch.testing.assert_close(ours, sched.sigmas, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps,seq_len", [(4, 256), (25, 2025), (28, 4096)])
def test_flux_dynamic_shift_matches_diffusers(steps, seq_len):
    import numpy as np

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    mu = flux_mu(seq_len)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)  # as FluxPipeline does
    torch.testing.assert_close(sigma_schedule(steps, mu=mu), sched.sigmas, rtol=0, atol=1e-6)
    # mu is linear in the token count through (256, 0.5) and (4096, 1.15)
    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)


@pytest.mark.parametrize("steps", [4, 28])
def test_sd3_static_shift_matches_diffusers(steps):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(steps)  # as StableDiffusion3Pipeline does
    base_end = float(static_shift(torch.tensor(1 / 1000, dtype=torch.float64), 3.0))
    ours = sigma_schedule(steps, shift=3.0, base_end=base_end)
    torch.testing.assert_close(ours, sched.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[:-1] * 1000, sched.timesteps, rtol=0, atol=1e-3)


def test_shifts_closed_forms():
    s = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    assert torch.allclose(static_shift(s, 3.0), torch.tensor([1.0, 0.75, 0.3 / 1.2], dtype=torch.float64))
    assert torch.allclose(dynamic_shift(s, 0.0), s)  # mu = 0 is the identity
    assert float(dynamic_shift(torch.tensor(0.5), math.log(3.0))) == pytest.approx(0.75)


def test_euler_step_matches_scheduler_step():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(x.shape, generator=g)
        ref = sched.step(v, t, x).prev_sample
        ours = euler_step(x, v, sched.sigmas[i], sched.sigmas[i + 1])
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
        x = ref


def test_sample_trajectory_records_every_latent_without_grad():
    w = torch.nn.Parameter(torch.tensor(0.5))
    seen = []

    def velocity(x, sigma, cond):
        seen.append(sigma.clone())
        return w * x + cond

    noise = torch.randn(3, 5)
    sigmas = sigma_schedule(4)
    traj = sample_trajectory(velocity, noise, sigmas, torch.ones(3, 5))
    assert traj.latents.shape == (5, 3, 5) and not traj.latents.requires_grad
    assert torch.equal(traj.latents[0], noise)
    assert all(s.shape == (3,) for s in seen)
    # closed form: each step multiplies by (1 + dt w) and adds dt * cond
    x = noise.clone()
    for i in range(4):
        dt = float(sigmas[i + 1] - sigmas[i])
        x = x + dt * (0.5 * x + 1.0)
        torch.testing.assert_close(traj.latents[i + 1], x)
    torch.testing.assert_close(integrate(velocity, noise, sigmas, torch.ones(3, 5), stop=2), traj.latents[2])


def test_inference_mode_rollout_gives_ordinary_tensors():
    lin = torch.nn.Linear(4, 4)
    traj = sample_trajectory(lambda x, s, c: lin(x), torch.randn(2, 4), sigma_schedule(3), inference_mode=True)
    assert not traj.latents.is_inference()
    ref = sample_trajectory(lambda x, s, c: lin(x), traj.latents[0], sigma_schedule(3))
    assert torch.equal(traj.latents, ref.latents)
    lin(traj.latents[1]).sum().backward()  # usable on a gradient path


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 0.5, 0.6, 0.0]), torch.tensor([1.0, 0.5]),
                                 torch.tensor([[1.0, 0.0]]), torch.tensor([1.5, 0.0])])
def test_bad_schedules_rejected(bad):
    with pytest.raises(ValueError, match="sigmas"):
        sample_trajectory(lambda x, s, c: x, torch.zeros(1, 2), bad)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        sigma_schedule(0)
    with pytest.raises(ValueError, match="shift"):
        sigma_schedule(4, shift=-1.0)


def test_inference_rollout_wrapper_same_values_and_gradients():
    from leapalign.flow import inference_rollout

    lin = torch.nn.Linear(4, 4)
    fast = inference_rollout(lambda x, s, c: lin(x))
    noise, sig = torch.randn(2, 4), sigma_schedule(3)
    traj = sample_trajectory(fast, noise, sig)
    assert torch.equal(traj.latents, sample_trajectory(lambda x, s, c: lin(x), noise, sig).latents)
    x = traj.latents[1]
    with torch.no_grad():
        assert not fast(x, sig[:2], None).is_inference()
    fast(x, sig[:2], None).sum().backward()  # grad-enabled calls take the training path
    assert lin.weight.grad is not None and float(lin.weight.grad.abs().sum()) > 0
