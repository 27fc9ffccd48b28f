"""The GRPO family: the SDE against Gaussian data's exact marginals, closed-form log-probs, the policy gradient,
PPO clipping, advantages, KL, MixGRPO's window, determinism and argument checks."""

import math

import pytest
import torch
from helpers.fields import MLPField

from leapalign.flow import (gaussian_log_prob, resample_schedule, sample_sde_trajectory, sde_step_mean_std,
                            sigma_schedule)
from leapalign.methods import METHODS
from leapalign.methods.grpo import FlowGRPOConfig, advantages, clipped_objective, grpo_loss, trained_steps
from leapalign.methods.mix_grpo import MixGRPOConfig, window

D, B, G, T = 4, 2, 3, 6
F64 = torch.float64


# ---- Gaussian data: x0 ~ N(mu, c^2) per dimension, whose exact velocity is linear in x ----

MU = torch.tensor([0.5, -1.0], dtype=F64)
C = torch.tensor([0.3, 2.0], dtype=F64)


def marginal(s):
    """x_s = (1 - s) x0 + s eps is Gaussian: mean (1 - s) mu, variance (1 - s)^2 c^2 + s^2."""
    return (1 - s) * MU, (1 - s) ** 2 * C ** 2 + s ** 2


def gaussian_velocity(x, sigma, cond=None):
    """E[eps - x0 | x_s = x]: Cov(eps, x_s) = s, Cov(x0, x_s) = (1 - s) c^2, so the conditional means are
    linear: E[eps | x] = s (x - m) / V, E[x0 | x] = mu + (1 - s) c^2 (x - m) / V."""
    s = sigma[:, None]
    m, var = marginal(s)
    return -MU + (s - (1 - s) * C ** 2) * (x - m) / var


def z_scores(latents, s, n):
    """|sample mean - exact| and |sample var - exact| in standard errors, worst dimension."""
    m, var = marginal(s)
    zm = ((latents.mean(0) - m) / (var / n).sqrt()).abs().max()
    zv = ((latents.var(0) - var) / (var * math.sqrt(2 / n))).abs().max()
    return float(zm), float(zv)


@pytest.mark.parametrize("noise_level,diffusion", [(0.7, "flow_grpo"), (0.3, "constant")])
def test_sde_preserves_the_exact_marginals_of_gaussian_data(noise_level, diffusion):
    n, steps, s0 = 20000, 200, 0.95  # below s = 1, where g_s diverges and the guard is only approximate
    g = torch.Generator().manual_seed(0)
    x0 = MU + C * torch.randn(n, 2, generator=g, dtype=F64)
    x_start = (1 - s0) * x0 + s0 * torch.randn(n, 2, generator=g, dtype=F64)
    sig = torch.cat([torch.linspace(s0, 1 / steps, steps, dtype=F64), torch.zeros(1, dtype=F64)])
    traj = sample_sde_trajectory(gaussian_velocity, x_start, sig, None, noise_level, range(steps - 1), g,
                                 diffusion).traj
    for i in range(0, steps + 1, 10):
        zm, zv = z_scores(traj.latents[i], sig[i], n)
        assert zm < 4 and zv < 4, (i, float(sig[i]), zm, zv)
    # the same noise without the score correction of the drift inflates the variance far beyond sampling error
    x = x_start
    for i in range(steps - 1):
        v = gaussian_velocity(x, sig[i].expand(n))
        _, std = sde_step_mean_std(x, v, sig[i], sig[i + 1], noise_level, diffusion)
        x = x + (sig[i + 1] - sig[i]) * v + std * torch.randn(x.shape, generator=g, dtype=F64)
    assert z_scores(x, sig[steps - 1], n)[1] > 20


def test_transition_log_prob_is_the_gaussian_density_of_the_recorded_step():
    model = MLPField(D)
    sig = sigma_schedule(T, shift=3.0, dtype=F64)
    noise = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    rollout = sample_sde_trajectory(model, noise, sig, None, 0.7, range(T - 1), torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    lat = rollout.traj.latents
    for i in range(T - 1):
        with torch.no_grad():
            mean, std = sde_step_mean_std(lat[i], model(lat[i], sig[i].expand(B)), sig[i], sig[i + 1], 0.7)
        z = torch.randn(lat[i].shape, generator=replay, dtype=F64)
        torch.testing.assert_close(lat[i + 1], mean + std * z, rtol=0, atol=1e-12)  # x_next = mean + std z
        normal = torch.distributions.Normal(mean, std.expand_as(mean))
        torch.testing.assert_close(rollout.log_probs[i], normal.log_prob(lat[i + 1]).sum(1), rtol=1e-12, atol=0)
        torch.testing.assert_close(gaussian_log_prob(lat[i + 1], mean, std), rollout.log_probs[i])
    # mean = x + (s' - s) [v + g^2 / (2 s) eps_hat] with g = a sqrt(s / (1 - s)), std = g sqrt(s - s')
    x, v, s, s_next = lat[2], torch.randn(B, D, dtype=F64), float(sig[2]), float(sig[3])
    g2 = 0.49 * s / (1 - s)
    mean, std = sde_step_mean_std(x, v, s, s_next, 0.7)
    torch.testing.assert_close(mean, x + (s_next - s) * (v + g2 / (2 * s) * (x + (1 - s) * v)))
    assert float(std) == pytest.approx(math.sqrt(g2 * (s - s_next)), rel=1e-12)
    # the last step is the deterministic Euler step
    assert not rollout.sde_steps[-1] and rollout.log_probs[-1].eq(0).all()
    with torch.no_grad():
        euler = lat[T - 1] - sig[T - 1] * model(lat[T - 1], sig[T - 1].expand(B))
    torch.testing.assert_close(lat[T], euler, rtol=0, atol=1e-12)


# ---- the loss ----

def reward_fn(x):
    return -((x - 0.3) ** 2).sum(1)  # (B*G,)


def setup(seed=0):
    model = MLPField(D, seed=seed)
    noise = torch.randn(B * G, D, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return model, noise, sigma_schedule(T, shift=3.0, dtype=F64)


def grads(model, loss=None):
    if loss is not None:
        model.zero_grad()
        loss.backward()
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out


def assert_grads_close(a, b, rtol=1e-10):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-14)


def test_on_policy_gradient_is_the_plain_policy_gradient():
    model, noise, sig = setup()
    cfg = FlowGRPOConfig(group_size=G, timestep_fraction=0.5)
    out = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator().manual_seed(3))
    assert out.metrics["ratio"] == pytest.approx(1.0, abs=1e-12) and out.metrics["clip_frac"] == 0
    ours = grads(model, out.loss)
    # by hand, same generator: rollout, advantages, steps; loss = mean_i -mean_b A_b log p_i,b / numel
    g = torch.Generator().manual_seed(3)
    rollout = sample_sde_trajectory(model, noise, sig, None, cfg.noise_level, range(T - 1), g)
    lat = rollout.traj.latents
    r = reward_fn(lat[-1]).reshape(B, G)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + 1e-4)).reshape(-1)
    steps = trained_steps(rollout.sde_steps, 0.5, g)
    assert len(steps) == math.ceil(0.5 * (T - 1))
    loss = 0
    for i in steps:
        mean, std = sde_step_mean_std(lat[i], model(lat[i], sig[i].expand(B * G)), sig[i], sig[i + 1], 0.7)
        loss = loss - (adv * gaussian_log_prob(lat[i + 1], mean, std) / D).mean() / len(steps)
    assert_grads_close(ours, grads(model, loss))
    assert out.metrics["trained_steps"] == len(steps)


def test_backward_callback_gives_the_same_gradient_one_step_graph_at_a_time():
    model, noise, sig = setup()
    cfg = FlowGRPOConfig(group_size=G)
    ref = grads(model, METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg,
                                                  torch.Generator().manual_seed(4)).loss)
    calls = []

    def backward(loss):
        calls.append(loss.requires_grad)
        loss.backward()

    out = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator().manual_seed(4),
                                    backward=backward)
    assert out.backward_done and not out.loss.requires_grad and calls == [True] * (T - 1)
    assert_grads_close(grads(model), ref)


def test_clipping_zeroes_the_gradient_only_when_the_ratio_moved_with_the_advantage():
    eps = 0.1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=F64)
    old = torch.zeros(4, dtype=F64)
    for delta, zero in [(0.5, True), (-0.5, False)]:
        # ratio pushed past 1 + eps where A > 0 and below 1 - eps where A < 0 (delta > 0): nothing left to gain
        log_prob = (delta * adv.sign()).requires_grad_(True)
        loss, ratio = clipped_objective(log_prob, old, adv, eps)
        (g,) = torch.autograd.grad(loss, log_prob)
        assert ((ratio - 1).abs() > eps).all()
        assert bool((g == 0).all()) == zero
        if not zero:  # the other direction: the unclipped term, gradient -A rho / B
            torch.testing.assert_close(g, -adv * ratio.detach() / 4)


def test_clipping_at_the_model_level():
    model, noise, sig = setup()
    cfg = FlowGRPOConfig(group_size=G, clip_range=1e-3)
    rollout = sample_sde_trajectory(model, noise, sig, None, 0.7, range(T - 1), torch.Generator().manual_seed(2))
    adv = advantages(reward_fn(rollout.traj.sample), G)
    steps = list(range(T - 1))
    for sign, zero in [(1, True), (-1, False)]:
        stale = sample_sde_trajectory(model, noise, sig, None, 0.7, range(T - 1), torch.Generator().manual_seed(2))
        stale.log_probs[:-1] -= sign * 0.01 * D * adv.sign()  # old log-probs: ratio exp(+-0.01) beyond 1 +- 1e-3
        loss, stats = grpo_loss(model, stale, steps, adv, None, cfg)
        assert stats["clip_frac"] == 1.0
        norms = [float(p.norm()) for p in grads(model, loss)]
        assert (max(norms) == 0) == zero


def test_advantages_zero_mean_per_group_and_global_std():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0, -4.0, 0.0, 4.0])
    a = advantages(r, 3).reshape(3, 3)
    torch.testing.assert_close(a.mean(1), torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    assert a[1].eq(0).all()  # equal rewards: no signal, no division blow-up
    torch.testing.assert_close(a[0], torch.tensor([-1.0, 0.0, 1.0], dtype=F64) / (math.sqrt(2 / 3) + 1e-4))
    glob = advantages(r, 3, "global").reshape(3, 3)
    r64 = r.to(F64).reshape(3, 3)
    torch.testing.assert_close(glob, (r64 - r64.mean(1, keepdim=True)) / (r64.std(unbiased=False) + 1e-4))
    assert advantages(r, 3, "group", adv_clip=0.5).abs().max() == 0.5


def test_kl_is_zero_at_the_reference_and_positive_after_a_change():
    model, noise, sig = setup()
    cfg = FlowGRPOConfig(group_size=G, kl_beta=0.5)
    frozen = MLPField(D, seed=0)
    out = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator().manual_seed(6),
                                    reference=frozen)
    assert out.metrics["kl"] == 0
    no_kl = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, FlowGRPOConfig(group_size=G),
                                      torch.Generator().manual_seed(6))
    assert_grads_close(grads(model, out.loss), grads(model, no_kl.loss))  # KL gradient vanishes at the reference
    with torch.no_grad():
        model.net[2].bias.add_(0.1)
    out = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator().manual_seed(6),
                                    reference=frozen)
    assert out.metrics["kl"] > 0
    with pytest.raises(ValueError, match="reference"):
        METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator())


# ---- MixGRPO ----

class PerStepField(torch.nn.Module):
    """v = A x + b[step of sigma]: one bias row per schedule step, so a gradient names the step it came from."""

    def __init__(self, sigmas):
        super().__init__()
        self.sigmas = sigmas
        self.A = torch.nn.Parameter(0.1 * torch.randn(D, D, generator=torch.Generator().manual_seed(0), dtype=F64))
        self.b = torch.nn.Parameter(torch.zeros(sigmas.shape[0] - 1, D, dtype=F64))

    def forward(self, x, sigma, cond=None):
        idx = (self.sigmas[:-1][None, :] - sigma[:, None]).abs().argmin(1)
        return x @ self.A.T + self.b[idx]


def test_mix_grpo_with_the_whole_range_as_window_is_flow_grpo():
    model, noise, sig = setup()
    flow = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, FlowGRPOConfig(group_size=G),
                                     torch.Generator().manual_seed(8))
    mix = METHODS["mix_grpo"].step(model, noise, sig, None, reward_fn,
                                   MixGRPOConfig(group_size=G, window_size=T - 1, range_end=T - 1),
                                   torch.Generator().manual_seed(8), iteration=7)
    assert float(mix.loss.detach()) == float(flow.loss.detach())
    assert_grads_close(grads(model, mix.loss), grads(model, flow.loss), rtol=0)


def test_mix_grpo_trains_only_inside_the_window():
    sig = sigma_schedule(T, shift=3.0, dtype=F64)
    model = PerStepField(sig)
    noise = torch.randn(B * G, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    cfg = MixGRPOConfig(group_size=G, window_size=2, shift_interval=3)
    out = METHODS["mix_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator().manual_seed(0),
                                   iteration=4)
    assert out.metrics["window_start"] == 1 and out.metrics["sde_steps"] == 2
    gb = grads(model, out.loss)[1]  # (T, D)
    assert gb[[1, 2]].abs().sum(1).gt(0).all() and gb[[0, 3, 4, 5]].eq(0).all()


def test_mix_window_slides_shrinks_and_rolls_back():
    cfg = MixGRPOConfig(group_size=G, window_size=2, shift_interval=2, window_stride=1)
    # T = 6: MixGRPO's max_timesteps T - 2 = 4, windows within steps 0..3, shrinking at the end
    assert [window(cfg, n, T) for n in range(0, 12, 2)] == [[0, 1], [1, 2], [2, 3], [3], [0, 1], [1, 2]]
    assert [window(cfg, n, T)[0] for n in range(4)] == [0, 0, 1, 1]
    ranged = MixGRPOConfig(group_size=G, window_size=2, shift_interval=1, window_stride=2, range_start=1, range_end=5)
    assert [window(ranged, n, T) for n in range(3)] == [[1, 2], [3, 4], [1, 2]]
    with pytest.raises(ValueError, match="window range"):
        window(MixGRPOConfig(group_size=G, window_size=2, range_end=6), 0, T)  # step 5 ends at sigma = 0
    with pytest.raises(ValueError, match="window range"):
        window(MixGRPOConfig(group_size=G, window_size=2, range_start=4), 0, T)


# ---- options, determinism, arguments ----

def test_same_noise_shares_the_initial_noise_within_a_group():
    model, noise, sig = setup()
    first = []

    def recording(x, sigma, cond=None):
        if not first:
            first.append(x.clone())
        return model(x, sigma, cond)

    METHODS["flow_grpo"].step(recording, noise, sig, None, reward_fn, FlowGRPOConfig(group_size=G, same_noise=True),
                              torch.Generator())
    groups = first[0].reshape(B, G, D)
    assert (groups == groups[:, :1]).all() and not (groups[0, 0] == groups[1, 0]).all()
    torch.testing.assert_close(groups[:, 0], noise[::G])


def test_train_steps_resamples_the_schedule():
    sig = sigma_schedule(12, dtype=F64)
    new = resample_schedule(sig, 4)
    torch.testing.assert_close(new, torch.tensor([1.0, 1 - 11 / 36, 1 - 22 / 36, 1 / 12, 0.0], dtype=F64))
    model, noise, _ = setup()
    out = METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, FlowGRPOConfig(group_size=G, train_steps=4),
                                    torch.Generator())
    assert out.metrics["sde_steps"] == 3 and out.metrics["trained_steps"] == 3


def test_deterministic_with_a_fixed_generator():
    model, noise, sig = setup()
    cfg = FlowGRPOConfig(group_size=G, timestep_fraction=0.4)
    run = [METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, cfg, torch.Generator().manual_seed(s))
           for s in (11, 11, 12)]
    assert run[0].metrics == run[1].metrics and float(run[0].loss.detach()) == float(run[1].loss.detach())
    assert run[0].metrics["reward"] != run[2].metrics["reward"]


def test_registry_entries_declare_what_the_trainer_must_pass():
    for name in ("leapalign", "refl", "draft", "draft_lv", "drtune", "full"):
        m = METHODS[name]
        assert m.samples_per_prompt(m.config()) == 1 and not m.needs_reference(m.config()) and not m.uses_iteration
        assert m.needs_reward_gradient and not m.keeps_rollouts(m.config())
    flow, mix = METHODS["flow_grpo"], METHODS["mix_grpo"]
    assert flow.samples_per_prompt(flow.config(group_size=5)) == 5 and flow.uses_iteration and mix.uses_iteration
    assert not flow.needs_reward_gradient and not mix.needs_reward_gradient
    assert mix.keeps_rollouts(mix.config(updates_per_rollout=2)) and not flow.keeps_rollouts(flow.config())
    assert flow.needs_reference(flow.config(kl_beta=0.04)) and not flow.needs_reference(flow.config())


@pytest.mark.parametrize("cls,kwargs,match", [
    (FlowGRPOConfig, {"group_size": 1}, "group_size"),
    (FlowGRPOConfig, {"clip_range": 0.0}, "clip_range"),
    (FlowGRPOConfig, {"noise_level": 0.0}, "noise_level"),
    (FlowGRPOConfig, {"timestep_fraction": 0.0}, "timestep_fraction"),
    (FlowGRPOConfig, {"timestep_fraction": 1.5}, "timestep_fraction"),
    (FlowGRPOConfig, {"adv_std": "batch"}, "adv_std"),
    (FlowGRPOConfig, {"diffusion": "ddim"}, "diffusion"),
    (FlowGRPOConfig, {"kl_beta": -1.0}, "kl_beta"),
    (MixGRPOConfig, {"window_size": 0}, "window_size"),
    (MixGRPOConfig, {"range_start": 3, "range_end": 3}, "window range"),
    (FlowGRPOConfig, {"kl": "approx"}, "kl must be"),
    (FlowGRPOConfig, {"updates_per_rollout": 0}, "updates_per_rollout"),
    (MixGRPOConfig, {"range_start": -1}, "range_start"),
])
def test_bad_arguments_say_what_to_change(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_batch_must_hold_whole_groups():
    model, noise, sig = setup()
    with pytest.raises(ValueError, match="group_size = 4"):
        METHODS["flow_grpo"].step(model, noise, sig, None, reward_fn, FlowGRPOConfig(group_size=4), torch.Generator())
