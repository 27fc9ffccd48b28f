"""LeapAlign against the closed form of paper Eq. 10 and its limits: alpha = 1 is autograd through the two leaps,
alpha = 0 detaches leap 2's model input, coupled == decoupled."""

import itertools

import pytest
import torch
from helpers.fields import LinearField, MLPField, quadratic_reward

from leapalign.flow import sample_trajectory, sigma_schedule
from leapalign.methods.common import discount, straight_through
from leapalign.methods.leapalign import (LeapAlignConfig, decoupled_objective, leap_objective, sample_pair, step)

D, B, T = 6, 3, 8


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def rollout(model, seed=0, cond=None, steps=T, shift=3.0):
    noise = torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sample_trajectory(model, noise, sigma_schedule(steps, shift=shift, dtype=torch.float64), cond)


@pytest.mark.parametrize("alpha,weighting,hinge", list(itertools.product([0.0, 0.3, 1.0], [False, True],
                                                                        [None, -4.0])))
def test_gradient_equals_eq10_closed_form_on_linear_field(alpha, weighting, hinge):
    model = LinearField(D)
    traj = rollout(model)
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    k, j = 2, 5
    cfg = LeapAlignConfig(alpha=alpha, weighting=weighting, hinge=hinge, tau=0.1)
    out = leap_objective(model, traj, k, j, quadratic_reward(target), cfg)
    gA, gb = grads(model, out.loss)

    # By hand. v(x, s) = A x + c(s) b with c(s) = 1 + s.
    A, b = model.A.detach(), model.b.detach()
    sk, sj = traj.sigmas[k], traj.sigmas[j]
    dlt, ck, cj = sk - sj, 1 + sk, 1 + sj
    xk, xj, x0 = traj.latents[k], traj.latents[j], traj.latents[-1]
    xhat_j = xk - dlt * (xk @ A.T + ck * b)
    xhat_0 = xj - sj * (xj @ A.T + cj * b)
    r = -((x0 - target) ** 2).sum(1)
    g = 2 * (x0 - target)  # dl/dx0 for l = -r
    if hinge is not None:
        g = g * (r < hinge).to(g.dtype)[:, None]
    if weighting:
        d_j = (xj - xhat_j).abs().mean(1)
        d_0 = (x0 - xhat_0).abs().mean(1)
        w = 1 / (d_j.clamp(min=0.1) + d_0.clamp(min=0.1))
    else:
        w = torch.ones(B, dtype=torch.float64)
    gw = (w / B)[:, None] * g  # (B, D): the per-sample upstream gradient
    # Eq. 10: dx0 = -s_j dv_j - (s_k - s_j) dv_k + alpha s_j (s_k - s_j) dv_j/dx dv_k, dv_j/dx = A
    up_k = -dlt * gw + alpha * sj * dlt * gw @ A  # multiplies dv_k/dtheta (row vectors: A^T g)
    up_j = -sj * gw                               # multiplies dv_j/dtheta
    ref_A = up_k.T @ xk + up_j.T @ xj
    ref_b = (ck * up_k + cj * up_j).sum(0)
    torch.testing.assert_close(gA, ref_A, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, ref_b, rtol=1e-10, atol=1e-12)
    # loss value: the reward of the real sample, weighted
    lval = torch.relu(hinge - r) if hinge is not None else -r
    assert float(out.loss.detach()) == pytest.approx(float((w * lval).mean()), rel=1e-12)
    assert out.metrics["d_j"] == pytest.approx(float(((xj - xhat_j).abs().mean(1)).mean()), rel=1e-9)


def test_discount_operator_value_and_gradient():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for alpha in (0.0, 0.3, 1.0):
        y = discount(x, alpha)
        assert torch.equal(y, x)  # bit-exact value
        up = torch.randn(4, 3, dtype=torch.float64)
        (gx,) = torch.autograd.grad(y, x, up)
        torch.testing.assert_close(gx, alpha * up, rtol=0, atol=1e-15)
        # the operator is alpha * a + (1 - alpha) * sg(a); gradcheck its two-argument form
        assert torch.autograd.gradcheck(lambda a, b: alpha * a + (1 - alpha) * b,
                                        (x, x.detach().clone().requires_grad_()))


def test_connectors_are_bit_exact_straight_through():
    value = torch.randn(5, dtype=torch.float64)
    path = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = straight_through(value, path * 3)
    assert torch.equal(out, value)
    (g,) = torch.autograd.grad(out.sum(), path)
    torch.testing.assert_close(g, torch.full_like(g, 3.0))


def reference_two_leaps(model, traj, k, j, reward_fn, detach_input, cond=None):
    """Plain autograd through the two leaps (no discount operator), optionally with leap 2's input detached."""
    sk, sj = traj.sigmas[k], traj.sigmas[j]
    xk, xj, x0 = traj.latents[k], traj.latents[j], traj.latents[-1]
    xhat_j = xk - (sk - sj) * model(xk, sk.expand(B), cond)
    xj_c = xhat_j + (xj - xhat_j).detach()
    xin = xj_c.detach() if detach_input else xj_c
    xhat_0 = xj_c - sj * model(xin, sj.expand(B), cond)
    x0_c = xhat_0 + (x0 - xhat_0).detach()
    return -reward_fn(x0_c).mean()


@pytest.mark.parametrize("alpha,detach", [(1.0, False), (0.0, True)])
def test_alpha_limits_equal_plain_autograd(alpha, detach):
    model = MLPField(D)
    cond = torch.randn(B, D, dtype=torch.float64)
    traj = rollout(model, cond=cond)
    reward = quadratic_reward(torch.zeros(B, D, dtype=torch.float64))
    out = leap_objective(model, traj, 1, 6, reward, LeapAlignConfig(alpha=alpha, weighting=False), cond)
    ours = grads(model, out.loss)
    ref = grads(model, reference_two_leaps(model, traj, 1, 6, reward, detach, cond))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_alpha_interpolates_between_the_limits():
    """The gradient is affine in alpha: g(0.3) = 0.7 g(0) + 0.3 g(1)."""
    model = MLPField(D)
    traj = rollout(model)
    reward = quadratic_reward(torch.zeros(B, D, dtype=torch.float64))
    g = {a: grads(model, leap_objective(model, traj, 0, 4, reward, LeapAlignConfig(alpha=a)).loss)
         for a in (0.0, 0.3, 1.0)}
    for g0, g3, g1 in zip(g[0.0], g[0.3], g[1.0]):
        torch.testing.assert_close(g3, 0.7 * g0 + 0.3 * g1, rtol=1e-10, atol=1e-13)
    assert not all(torch.allclose(a, b) for a, b in zip(g[0.0], g[1.0]))  # the nested term is not zero here


@pytest.mark.parametrize("hinge,weighting", [(None, True), (-3.0, True), (None, False)])
def test_coupled_equals_decoupled_with_several_pairs(hinge, weighting):
    model = MLPField(D)
    traj = rollout(model)
    reward = quadratic_reward(torch.randn(B, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    cfg = LeapAlignConfig(alpha=0.3, hinge=hinge, weighting=weighting)
    pairs = [(0, 3), (2, 7), (5, 6)]
    coupled = sum(leap_objective(model, traj, k, j, reward, cfg).loss for k, j in pairs) / len(pairs)
    ref = grads(model, coupled)
    out = decoupled_objective(model, traj, pairs, reward, cfg)
    assert float(out.loss.detach()) == pytest.approx(float(coupled.detach()), rel=1e-12)
    for a, b in zip(grads(model, out.loss), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # per-pair backward (one pair's graphs alive at a time) accumulates the same gradient
    model.zero_grad()
    out2 = decoupled_objective(model, traj, pairs, reward, cfg, backward=lambda loss: loss.backward())
    assert out2.backward_done and not out2.loss.requires_grad
    for p, b in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, b, rtol=1e-10, atol=1e-13)


def test_step_coupled_equals_decoupled_and_is_deterministic():
    model = MLPField(D)
    noise = torch.randn(B, D, dtype=torch.float64)
    sig = sigma_schedule(T, dtype=torch.float64)
    reward = quadratic_reward(torch.zeros(B, D, dtype=torch.float64))
    res = {}
    for decoupled in (False, True):
        for rep in range(2):
            cfg = LeapAlignConfig(decoupled=decoupled, pairs_per_rollout=2)
            out = step(model, noise, sig, None, reward, cfg, torch.Generator().manual_seed(5))
            res[decoupled, rep] = (out.loss.detach(), grads(model, out.loss), out.metrics)
    assert torch.equal(res[True, 0][0], res[True, 1][0])  # bitwise-equal loss for the same seed
    assert all(torch.equal(a, b) for a, b in zip(res[True, 0][1], res[True, 1][1]))
    assert res[True, 0][2]["k"] == res[False, 0][2]["k"]  # same pairs drawn
    for a, b in zip(res[True, 0][1], res[False, 0][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_pair_sampler_uniform_over_distinct_pairs():
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(6000):
        k, j = sample_pair(4, g)
        assert 0 <= k < j <= 3
        counts[k, j] = counts.get((k, j), 0) + 1
    assert len(counts) == 6  # every pair of {0..3}, the noise step 0 and adjacent pairs included
    assert max(counts.values()) / min(counts.values()) < 1.2
    pairs = {sample_pair(10, g, min_step=3, max_step=5) for _ in range(200)}
    assert pairs == {(3, 4), (3, 5), (4, 5)}


def test_bad_arguments_raise_clear_errors():
    model = LinearField(D)
    traj = rollout(model)
    reward = quadratic_reward(torch.zeros(B, D, dtype=torch.float64))
    cfg = LeapAlignConfig()
    with pytest.raises(ValueError, match="k < j"):
        leap_objective(model, traj, 4, 4, reward, cfg)
    with pytest.raises(ValueError, match="k < j"):
        leap_objective(model, traj, 5, 2, reward, cfg)
    with pytest.raises(ValueError, match="j must be <= T-1"):
        leap_objective(model, traj, 2, T, reward, cfg)
    with pytest.raises(ValueError, match="alpha"):
        LeapAlignConfig(alpha=1.5)
    with pytest.raises(ValueError, match="tau"):
        LeapAlignConfig(tau=0.0)
    with pytest.raises(ValueError, match="pairs_per_rollout"):
        LeapAlignConfig(pairs_per_rollout=0)
    with pytest.raises(ValueError, match="one reward per sample"):
        leap_objective(model, traj, 1, 2, lambda x: x.sum(), cfg)
    with pytest.raises(ValueError, match="shaped like its input"):
        leap_objective(lambda x, s, c: x[:, :2], traj, 1, 2, reward, cfg)
    with pytest.raises(ValueError, match="allowed leap range"):
        sample_pair(T, torch.Generator(), min_step=T - 1)


@pytest.mark.parametrize("weighting,expected", [("both", lambda dj, d0: 1 / (dj.clamp(min=0.1) + d0.clamp(min=0.1))),
                                                ("j", lambda dj, d0: 1 / dj.clamp(min=0.1)),
                                                ("none", lambda dj, d0: torch.ones_like(dj)),
                                                (True, lambda dj, d0: 1 / (dj.clamp(min=0.1) + d0.clamp(min=0.1))),
                                                (False, lambda dj, d0: torch.ones_like(dj))])
def test_weighting_formula(weighting, expected):
    from leapalign.methods.leapalign import similarity_weight
    from leapalign.types import Trajectory

    latents = torch.zeros(3, 4, 2, dtype=torch.float64)  # T = 2, B = 4
    xhat_j = torch.tensor([[0.05, 0.05], [0.3, 0.1], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    xhat_0 = torch.tensor([[0.0, 0.0], [0.5, 0.5], [-0.2, 0.0], [0.3, 0.3]], dtype=torch.float64)
    cfg = LeapAlignConfig(weighting=weighting)
    w, d_j, d_0 = similarity_weight(Trajectory(latents, torch.tensor([1.0, 0.5, 0.0])), 1, xhat_j, xhat_0, cfg)
    torch.testing.assert_close(d_j, torch.tensor([0.05, 0.2, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(d_0, torch.tensor([0.0, 0.5, 0.1, 0.3], dtype=torch.float64))
    torch.testing.assert_close(w, expected(d_j, d_0))
    with pytest.raises(ValueError, match="weighting must be one of"):
        LeapAlignConfig(weighting="d0")


def test_one_leap_is_the_pair_k_T():
    # leaps=1: xhat_0 = x_k - s_k v(x_k, s_k), value x_0, gradient -s_k dv_k/dtheta (ReFL's, on the real sample)
    from leapalign.methods.leapalign import decoupled_objective, sample_start

    model, cond = MLPField(D, seed=3), None
    traj = rollout(model, seed=3)
    sig = traj.sigmas
    reward = quadratic_reward(torch.randn(B, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    k = 2
    cfg = LeapAlignConfig(leaps=1, weighting="none")
    out = decoupled_objective(model, traj, [(k, T)], reward, cfg, cond)
    model.zero_grad()
    out.loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    x0 = traj.sample.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(-reward(x0).mean(), x0)
    model.zero_grad()
    xhat_0 = traj.latents[k] - sig[k] * model(traj.latents[k], sig[k].expand(B), cond)
    (g * xhat_0).sum().backward()
    for a, b in zip(ours, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    starts = {sample_start(T, torch.Generator().manual_seed(s), min_step=2) for s in range(100)}
    assert starts == {(k, T) for k in range(2, T)}
    with pytest.raises(ValueError, match="leaps must be"):
        LeapAlignConfig(leaps=3)
