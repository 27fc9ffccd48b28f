"""Fidelity of the GRPO family to the official code, each against the official formula written out here (in the
official variables, float64): Flow-GRPO's KL scale (scripts/train_sd3.py), its SDE step to sigma = 0
(flow_grpo/diffusers_patch/sd3_sde_with_logprob.py), MixGRPO's progressive window (GRPOTrainingStates); and
several updates per sampled batch (PPO's inner epochs), where the clip acts."""

import math

import pytest
import torch
from helpers.fields import MLPField

from leapalign.flow import sample_sde_trajectory, sigma_schedule
from leapalign.methods import METHODS
from leapalign.methods.grpo import FlowGRPOConfig, grpo_loss
from leapalign.methods.mix_grpo import MixGRPOConfig, window

F64 = torch.float64
D, B, G, T = 4, 2, 3, 6


def official_sde_mean(sample, model_output, sigma, sigma_next, noise_level):
    """Flow-GRPO's sde_step_with_logprob: std_dev_t = sqrt(sigma / (1 - sigma)) * noise_level (the diffusion
    coefficient g), prev_sample_mean = sample (1 + g^2 dt / (2 sigma)) + model_output (1 + g^2 (1 - sigma) /
    (2 sigma)) dt with dt = sigma_next - sigma; prev_sample = prev_sample_mean + g sqrt(-dt) noise."""
    std_dev_t = math.sqrt(sigma / (1 - sigma)) * noise_level
    dt = sigma_next - sigma
    mean = sample * (1 + std_dev_t ** 2 / (2 * sigma) * dt) + model_output * (1 + std_dev_t ** 2 * (1 - sigma)
                                                                              / (2 * sigma)) * dt
    return mean, std_dev_t, dt


def test_kl_default_is_flow_grpos_scale_and_exact_is_the_gaussian_kl():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=gen, dtype=F64)
    v, v_ref = torch.randn(B, D, generator=gen, dtype=F64), torch.randn(B, D, generator=gen, dtype=F64)
    sig = torch.tensor([1.0, 0.6, 0.4, 0.0], dtype=F64)
    i, a = 1, 0.7
    policy, reference = (lambda x_, s_, c_: v), (lambda x_, s_, c_: v_ref)
    rollout = sample_sde_trajectory(policy, x, sig, None, a, [1], torch.Generator().manual_seed(1))
    rollout.traj.latents[i] = x  # the step's input is x itself
    adv = torch.zeros(B, dtype=F64)
    kls = {}
    for kl, reduce in [("official", "mean"), ("exact", "mean"), ("exact", "sum")]:
        cfg = FlowGRPOConfig(group_size=B, kl_beta=1.0, kl=kl, reduce=reduce, noise_level=a)
        kls[kl, reduce] = grpo_loss(policy, rollout, [i], adv, None, cfg, reference)[1]["kl"]
    # train_sd3.py: kl_loss = ((prev_sample_mean - prev_sample_mean_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    #               / (2 * std_dev_t ** 2), then .mean() over the batch
    mean, std_dev_t, dt = official_sde_mean(x, v, 0.6, 0.4, a)
    mean_ref, _, _ = official_sde_mean(x, v_ref, 0.6, 0.4, a)
    official = (((mean - mean_ref) ** 2).mean(1) / (2 * std_dev_t ** 2)).mean()
    assert kls["official", "mean"] == pytest.approx(float(official), rel=1e-12)
    assert kls["exact", "mean"] == pytest.approx(float(official) / (0.6 - 0.4), rel=1e-12)  # 1 / (s - s') = 5x
    step_std = torch.tensor(std_dev_t * math.sqrt(-dt), dtype=F64)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(mean, step_std),
                                              torch.distributions.Normal(mean_ref, step_std)).sum(1).mean()
    assert kls["exact", "sum"] == pytest.approx(float(exact), rel=1e-12)


def test_sde_last_step_follows_flow_grpos_rollout_and_is_never_trained():
    model = MLPField(D)
    sig = sigma_schedule(T, shift=3.0, dtype=F64)
    noise = torch.randn(B * G, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    rollout = sample_sde_trajectory(model, noise, sig, None, 0.7, range(T), torch.Generator().manual_seed(3),
                                    stochastic_last=True)
    lat, replay = rollout.traj.latents, torch.Generator().manual_seed(3)
    for i in range(T):  # one draw per SDE step, in order
        z = torch.randn(noise.shape, generator=replay, dtype=F64)
        if i == 0:
            continue  # from sigma = 1 both evaluate g at the next sigma (test_grpo covers it)
        with torch.no_grad():
            mean, std_dev_t, dt = official_sde_mean(lat[i], model(lat[i], sig[i].expand(B * G)), float(sig[i]),
                                                    float(sig[i + 1]), 0.7)
        torch.testing.assert_close(lat[i + 1], mean + std_dev_t * math.sqrt(-dt) * z, rtol=0, atol=1e-12)
    s = float(sig[T - 1])  # the last step's extra noise: g sqrt(s) = a s / sqrt(1 - s)
    assert official_sde_mean(lat[0], lat[0], s, 0.0, 0.7)[1] * math.sqrt(s) == pytest.approx(0.7 * s / math.sqrt(1 - s))
    assert rollout.log_probs[T - 1].ne(0).all()

    trained = []

    def recording(x, sigma, cond=None):
        if torch.is_grad_enabled():
            trained.append(float(sigma[0]))
        return model(x, sigma, cond)

    reward = lambda x: -(x ** 2).sum(1)  # noqa: E731
    out = METHODS["flow_grpo"].step(recording, noise, sig, None, reward,
                                    FlowGRPOConfig(group_size=G, sde_last_step=True), torch.Generator().manual_seed(3))
    assert out.metrics["sde_steps"] == T and out.metrics["trained_steps"] == T - 1
    assert sorted(trained, reverse=True) == sig[:T - 1].tolist()  # every step but the last, which is never trained
    default = METHODS["flow_grpo"].step(model, noise, sig, None, reward, FlowGRPOConfig(group_size=G),
                                        torch.Generator().manual_seed(3))
    assert default.metrics["sde_steps"] == T - 1  # Euler on the last step unless asked


def official_windows(num_steps, window_size, iters_per_group, step, iterations):
    """MixGRPO's GRPOTrainingStates, progressive with prog_overlap and roll_back, max_timesteps = T - 2: the window
    is range(cur, min(cur + size, max_timesteps)); after each iteration cur moves by `step` every iters_per_group
    iterations and rolls back to 0 once cur > max_timesteps."""
    max_timesteps, cur, it, out = num_steps - 2, 0, 0, []
    for _ in range(iterations):
        out.append(list(range(cur, min(cur + window_size, max_timesteps))))
        it += 1
        if it >= iters_per_group:
            it, cur = 0, cur + step
        if cur > max_timesteps:
            cur, it = 0, 0
    return out


@pytest.mark.parametrize("num_steps,size,interval,stride,iterations", [
    (25, 4, 25, 1, 575),  # MixGRPO's Flux run: identical until its window would empty at cur = 23
    (10, 4, 5, 1, 40),  # the ShapesWorld demo: starts 0..7 once, shrinking windows at 5, 6, 7
    (10, 3, 2, 3, 60),  # a stride that jumps past max_timesteps: several roll-backs
    (12, 4, 1, 4, 30),
])
def test_mix_window_is_mixgrpos_progressive_schedule(num_steps, size, interval, stride, iterations):
    cfg = MixGRPOConfig(group_size=G, window_size=size, shift_interval=interval, window_stride=stride)
    official = official_windows(num_steps, size, interval, stride, iterations)
    assert all(official)  # these runs never reach the official empty window (see mix_grpo.py)
    assert [window(cfg, n, num_steps) for n in range(iterations)] == official
    assert max(max(w) for w in official) == num_steps - 3  # steps T-2 and T-1 are never trained


def test_several_updates_per_sampled_batch_reuse_it_and_clip_off_policy():
    model = MLPField(D)
    sig = sigma_schedule(T, shift=3.0, dtype=F64)
    reward = lambda x: -((x - 0.3) ** 2).sum(1)  # noqa: E731
    cfg = FlowGRPOConfig(group_size=G, updates_per_rollout=2, clip_range=1e-3)
    rollouts, opt = {}, torch.optim.SGD(model.parameters(), lr=0.5)
    outs = []
    for n in range(4):
        noise = torch.randn(B * G, D, generator=torch.Generator().manual_seed(10 + n), dtype=F64)
        out = METHODS["flow_grpo"].step(model, noise, sig, None, reward, cfg, torch.Generator().manual_seed(n),
                                        iteration=n, rollouts=rollouts)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        outs.append(out.metrics)
    assert [m["rollout_age"] for m in outs] == [0, 1, 0, 1]
    assert outs[1]["reward"] == outs[0]["reward"] and outs[2]["reward"] != outs[1]["reward"]  # reused, then fresh
    assert outs[0]["ratio"] == pytest.approx(1, abs=1e-12) and outs[0]["clip_frac"] == 0  # on-policy
    assert outs[1]["clip_frac"] > 0 and outs[1]["ratio"] != pytest.approx(1, abs=1e-9)  # one step stale: clipped
    with pytest.raises(ValueError, match="resumed mid-cycle"):  # iteration 5 reuses iteration 4's batch
        METHODS["flow_grpo"].step(model, noise, sig, None, reward, cfg, torch.Generator(), iteration=5,
                                  rollouts={})
    with pytest.raises(ValueError, match="rollouts"):
        METHODS["flow_grpo"].step(model, noise, sig, None, reward, cfg, torch.Generator(), iteration=0)
