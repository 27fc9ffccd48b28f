"""ReFL, DRaFT-K/LV, DRTune and full backprop against plain autograd references and hand computations."""

import pytest
import torch
from helpers.fields import LinearField, MLPField, quadratic_reward

from leapalign.flow import euler_step, integrate, sigma_schedule
from leapalign.methods import METHODS, get_method
from leapalign.methods.drtune import drtune_prediction, training_steps

D, B, T = 5, 3, 6


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def setup(seed=0):
    model = MLPField(D, seed=seed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, D, generator=g, dtype=torch.float64)
    cond = torch.randn(B, D, generator=g, dtype=torch.float64)
    reward = quadratic_reward(torch.randn(B, D, generator=g, dtype=torch.float64))
    return model, noise, cond, reward, sigma_schedule(T, shift=3.0, dtype=torch.float64)


def assert_grads_equal(a, b, rtol=1e-10):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-13)


def full_backprop_reference(model, noise, sigmas, cond, reward):
    """Plain autograd through every Euler step, no checkpointing, no truncation."""
    x = noise
    for i in range(T):
        x = x + (sigmas[i + 1] - sigmas[i]) * model(x, sigmas[i].expand(B), cond)
    return -reward(x).mean()


def test_draft_k_equals_full_backprop_when_k_is_T():
    model, noise, cond, reward, sig = setup()
    ref = grads(model, full_backprop_reference(model, noise, sig, cond, reward))
    for name, cfg in [("draft", METHODS["draft"].config(k=T)), ("full", METHODS["full"].config())]:
        out = METHODS[name].step(model, noise, sig, cond, reward, cfg, torch.Generator())
        assert_grads_equal(grads(model, out.loss), ref)
    # checkpointing changes memory, not the gradient
    out = METHODS["draft"].step(model, noise, sig, cond, reward, METHODS["draft"].config(k=T, checkpointing=False),
                                torch.Generator())
    assert_grads_equal(grads(model, out.loss), ref)


def test_draft_k_truncates_the_chain():
    model, noise, cond, reward, sig = setup()
    k = 2
    x = integrate(model, noise, sig, cond, stop=T - k)
    for i in range(T - k, T):
        x = euler_step(x, model(x, sig[i].expand(B), cond), sig[i], sig[i + 1])
    ref = grads(model, -reward(x).mean())
    out = METHODS["draft"].step(model, noise, sig, cond, reward, METHODS["draft"].config(k=k), torch.Generator())
    assert_grads_equal(grads(model, out.loss), ref)
    full = grads(model, full_backprop_reference(model, noise, sig, cond, reward))
    assert not torch.allclose(full[0], ref[0])  # truncation really drops the early steps


def test_draft_lv_adds_renoised_last_step_gradients():
    model, noise, cond, reward, sig = setup()
    cfg = METHODS["draft_lv"].config(n_extra=2)
    out = METHODS["draft_lv"].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(9))
    ours = grads(model, out.loss)
    g = torch.Generator().manual_seed(9)
    x = integrate(model, noise, sig, cond, stop=T - 1)
    x0 = x - sig[T - 1] * model(x, sig[T - 1].expand(B), cond)
    loss = -reward(x0).mean()
    for _ in range(2):
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        x_re = (1 - sig[T - 1]) * x0.detach() + sig[T - 1] * eps
        loss = loss - reward(x_re - sig[T - 1] * model(x_re, sig[T - 1].expand(B), cond)).mean()
    assert_grads_equal(ours, grads(model, loss))
    zero = METHODS["draft_lv"].step(model, noise, sig, cond, reward, METHODS["draft_lv"].config(n_extra=0),
                                    torch.Generator())
    one = METHODS["draft"].step(model, noise, sig, cond, reward, METHODS["draft"].config(k=1), torch.Generator())
    assert_grads_equal(grads(model, zero.loss), grads(model, one.loss))


def test_refl_equals_one_step_prediction():
    model, noise, cond, reward, sig = setup()
    cfg = METHODS["refl"].config(late_fraction=0.5)  # T = 6: the last 3 steps
    out = METHODS["refl"].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(4))
    t = int(out.metrics["t"])
    assert T - 3 <= t <= T - 1
    x_t = integrate(model, noise, sig, cond, stop=t)
    ref = -reward(x_t - sig[t] * model(x_t, sig[t].expand(B), cond)).mean()
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert_grads_equal(grads(model, out.loss), grads(model, ref))
    ts = {int(METHODS["refl"].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(s))
              .metrics["t"]) for s in range(40)}
    assert ts == {T - 3, T - 2, T - 1}


@pytest.mark.parametrize("train,t_min", [([0, 3], 5), ([1, 4], 4), ([2, 5], 3)])
def test_drtune_gradient_flows_only_along_the_additive_chain(train, t_min):
    model = LinearField(D)
    sig = sigma_schedule(T, shift=3.0, dtype=torch.float64)
    noise = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x0_hat = drtune_prediction(model, noise, sig, None, train, t_min, checkpointing=True)
    gA, gb = grads(model, ((x0_hat - target) ** 2).sum(1).mean())
    # by hand: x0_hat = x_tmin - s_tmin v_tmin with x_{i+1} = x_i + (s_{i+1} - s_i) v(sg(x_i)); only the
    # parameter derivatives of the training-step velocities survive: c_i dv_i/dtheta, no dv/dx factors.
    xs = [noise]
    with torch.no_grad():
        for i in range(t_min):
            xs.append(xs[-1] + (sig[i + 1] - sig[i]) * model(xs[-1], sig[i].expand(B)))
    up = 2 * (x0_hat.detach() - target) / B
    coef = {i: float(sig[i + 1] - sig[i]) for i in train if i < t_min}
    if t_min in train:
        coef[t_min] = -float(sig[t_min])
    ref_A = sum(c * up.T @ xs[i] for i, c in coef.items())
    ref_b = sum(c * (1 + sig[i]) * up.sum(0) for i, c in coef.items())
    torch.testing.assert_close(gA, ref_A, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, ref_b, rtol=1e-10, atol=1e-12)


def test_drtune_training_steps_equally_spaced():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(300):
        steps = training_steps(25, 2, g)
        assert steps[1] - steps[0] == 12 and 0 <= steps[0] and steps[1] <= 24
        starts.add(steps[0])
    assert starts == set(range(13))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_is_deterministic_and_reaches_parameters(name):
    model, noise, cond, reward, sig = setup()
    cfg = METHODS[name].config()
    if METHODS[name].samples_per_prompt(cfg) > 1:
        cfg = METHODS[name].config(group_size=B)  # the policy-gradient family: one prompt's group fills the batch
    outs = [METHODS[name].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(11))
            for _ in range(2)]
    assert torch.equal(outs[0].loss.detach(), outs[1].loss.detach())
    g0, g1 = grads(model, outs[0].loss), grads(model, outs[1].loss)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert any(float(g.abs().sum()) > 0 for g in g0)
    assert {"reward", "loss"} <= set(outs[0].metrics)
    assert all(isinstance(v, float) for v in outs[0].metrics.values())


def test_hinge_zeroes_the_gradient_of_satisfied_samples():
    model, noise, cond, reward, sig = setup()
    out = METHODS["draft"].step(model, noise, sig, cond, reward, METHODS["draft"].config(hinge=-1e9),
                                torch.Generator())
    assert float(out.loss.detach()) == 0.0
    assert all(float(g.abs().sum()) == 0.0 for g in grads(model, out.loss))
    plain = METHODS["draft"].step(model, noise, sig, cond, reward, METHODS["draft"].config(), torch.Generator())
    assert float(plain.loss.detach()) == pytest.approx(-plain.metrics["reward"])


def test_registry_and_config_errors():
    assert set(METHODS) == {"leapalign", "refl", "draft", "draft_lv", "drtune", "full", "flow_grpo", "mix_grpo"}
    with pytest.raises(ValueError, match="leapalign, refl"):
        get_method("leap")
    for name, bad in [("refl", {"late_fraction": 0.0}), ("drtune", {"late_fraction": 1.5}), ("draft", {"k": 0}), ("draft_lv", {"n_extra": -1}),
                      ("drtune", {"k": 0}), ("full", {"hinge": "high"})]:
        with pytest.raises(ValueError):
            METHODS[name].config(**bad)
    with pytest.raises(TypeError):
        METHODS["refl"].config(n_lats=3)  # a misspelled field fails loudly
    model, noise, cond, reward, sig = setup()
    with pytest.raises(ValueError, match="k must be in"):
        METHODS["draft"].step(model, noise, sig, cond, reward, METHODS["draft"].config(k=T + 1), torch.Generator())


def test_draft_lv_per_term_backward_equals_one_backward():
    model, noise, cond, reward, sig = setup()
    cfg = METHODS["draft_lv"].config(n_extra=2)
    one = METHODS["draft_lv"].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(3))
    ref = grads(model, one.loss)
    model.zero_grad()
    split = METHODS["draft_lv"].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(3),
                                     backward=lambda loss: loss.backward())
    assert split.backward_done and float(split.loss) == pytest.approx(float(one.loss.detach()), rel=1e-12)
    assert_grads_equal([p.grad for p in model.parameters()], ref)


@pytest.mark.parametrize("steps", [2, 3, 4, 25])
def test_drtune_always_reaches_k_training_steps(steps):
    model, noise, cond, reward, _ = setup()
    sig = sigma_schedule(steps, dtype=torch.float64)
    for seed in range(15):
        out = METHODS["drtune"].step(model, noise, sig, cond, reward, METHODS["drtune"].config(),
                                     torch.Generator().manual_seed(seed))
        assert out.loss.requires_grad
        assert 1 <= out.metrics["t_min"] <= steps - 1 and out.metrics["first_train_step"] <= out.metrics["t_min"]


@pytest.mark.parametrize("name,key", [("refl", "t"), ("drtune", "t_min")])
def test_late_window_is_a_fraction_of_the_schedule(name, key):
    # The paper's operating point (t from the last 11 of 25 steps) at the demo's T = 10: never the first half.
    model = MLPField(D, seed=0)
    noise, cond = torch.randn(2, D, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64)
    reward = quadratic_reward(torch.zeros(2, D, dtype=torch.float64))
    cfg = METHODS[name].config()
    assert cfg.late_fraction == 0.44
    for steps, window in [(10, set(range(6, 10))), (25, set(range(14, 25)))]:
        sig = sigma_schedule(steps, shift=3.0, dtype=torch.float64)
        with torch.no_grad():
            drawn = {int(METHODS[name].step(model, noise, sig, cond, reward, cfg, torch.Generator().manual_seed(s))
                         .metrics[key]) for s in range(200)}
        assert drawn == window, (steps, sorted(drawn))  # every late step reached, no other
        assert min(drawn) >= steps // 2
