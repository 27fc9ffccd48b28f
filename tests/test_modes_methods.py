"""Every method, run through METHODS[name].step on the shipped mode-world model, sends its reward gradient to the
rollout steps it should (and to no other): a velocity callable records each grad-enabled call's sigma and whether
gradient arrived at its output."""

import copy

import pytest
import torch

from leapalign.flow import sigma_schedule
from leapalign.methods import METHODS
from leapalign.modes.jobs import rows
from leapalign.modes.model import load_base
from leapalign.modes.rewards import reward
from leapalign.modes.train import ModeRun, finetune
from leapalign.modes.world import ModeWorld

T = 10
SIGMAS = sigma_schedule(T)


@pytest.fixture(scope="module")
def world_model():
    torch.manual_seed(0)
    return ModeWorld(), copy.deepcopy(load_base(2)).requires_grad_(True)


def reached_steps(world, model, row, draws=12):
    """Per draw of the method's generator: the set of step indices whose velocity output received gradient."""
    method, args = rows(T, 60)[row]
    m = METHODS[method]
    cfg = m.config(**args)
    index = {round(float(s), 6): i for i, s in enumerate(SIGMAS[:-1])}
    out = []
    for seed in range(draws):
        hits = set()

        def velocity(x, sigma, feats):
            v = model(x, sigma, feats)
            if v.requires_grad:
                i = index[round(float(sigma[0]), 6)]
                v.register_hook(lambda g, i=i: hits.add(i) if g.abs().sum() > 0 else None)
            return v

        g = torch.Generator().manual_seed(seed)
        cond = torch.tensor(world.split("train")[:2]).repeat_interleave(8)  # 2 conditions x 8 (GRPO groups)
        noise = torch.randn(16, 2, generator=g)
        extra = {"iteration": 30 * seed} if m.uses_iteration else {}
        res = m.step(velocity, noise, SIGMAS, world.features(cond), lambda x: reward("structure", world)(x, cond),
                     cfg, g, **extra)
        if not res.backward_done:
            res.loss.backward()
        model.zero_grad(set_to_none=True)
        out.append(hits)
    return out


def test_late_step_methods_never_reach_early_steps(world_model):
    late_window = set(range(T - 4, T))  # ReFL / DRTune's stop: the last round(0.44 T) = 4 steps
    for draw in reached_steps(*world_model, "refl"):
        assert len(draw) == 1 and draw <= late_window
    for draw in reached_steps(*world_model, "draft_lv"):
        assert draw == {T - 1}
    for draw in reached_steps(*world_model, "draft_k3"):
        assert draw == {T - 3, T - 2, T - 1}


def test_full_backprop_reaches_every_step(world_model):
    for draw in reached_steps(*world_model, "full", draws=2):
        assert draw == set(range(T))


def test_leapalign_reaches_early_steps_and_the_late_half_ablation_does_not(world_model):
    draws = reached_steps(*world_model, "leapalign", draws=30)
    assert all(len(d) == 2 for d in draws)  # two grad-enabled calls: the leap pair (k, j)
    union = set().union(*draws)
    assert 0 in union and union & set(range(T // 2)) and union <= set(range(T))
    late = reached_steps(*world_model, "leapalign_late_half", draws=30)
    assert set().union(*late) <= set(range(T // 2, T))
    one = reached_steps(*world_model, "leapalign_one_leap", draws=30)
    assert all(len(d) == 1 for d in one) and set().union(*one) & set(range(T // 2))


def test_drtune_and_grpo_reach_early_steps(world_model):
    drtune = reached_steps(*world_model, "drtune", draws=20)
    assert all(len(d) == 2 for d in drtune) and set().union(*drtune) & set(range(T // 2))
    grpo = reached_steps(*world_model, "flow_grpo", draws=2)
    assert all(d == set(range(T - 1)) for d in grpo)  # every SDE step; the last (to sigma 0) is deterministic
    mix = reached_steps(*world_model, "mix_grpo", draws=2)
    assert all(len(d) == 4 for d in mix)


def test_finetune_changes_the_model_and_is_seeded(world_model):
    world, _ = world_model
    base = load_base(2)
    spec = ModeRun("leapalign", "leapalign", {}, 1e-3, 3, 0)
    a, b = finetune(world, base, spec, world.split("train")), finetune(world, base, spec, world.split("train"))
    pa, pb, p0 = (list(m.parameters()) for m in (a.model, b.model, base))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert all(not torch.equal(x, y) for x, y in zip(pa, p0))
