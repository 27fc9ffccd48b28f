"""The mode world: geometry, exact metrics on hand-made samples, reward bounds and falloff, the shipped models."""

import math

import pytest
import torch

from leapalign.flow import sample_trajectory, sigma_schedule
from leapalign.modes.metrics import sample_metrics, summary
from leapalign.modes.model import PretrainConfig, load_base, pretrain
from leapalign.modes.rewards import detail, reward, structure, tangents
from leapalign.modes.train import velocity_of
from leapalign.modes.world import ModeWorld, chi2_quantile


def test_off_radius_is_the_chi2_quantile():
    # chi2 with 2 dof has the closed-form quantile -2 ln(1 - p)
    assert ModeWorld().off_radius == pytest.approx(0.15 * math.sqrt(-2 * math.log(1e-3)), rel=1e-9)
    q = chi2_quantile(0.999, 16)
    assert float(torch.special.gammainc(torch.tensor(8.0, dtype=torch.float64),
                                        torch.tensor(q / 2, dtype=torch.float64))) == pytest.approx(0.999, abs=1e-9)


def test_embedding_weights_and_splits():
    w = ModeWorld(dim=16)
    assert torch.allclose(w.embedding.T @ w.embedding, torch.eye(2), atol=1e-6)
    parts = [set(w.split(s)) for s in ("train", "validation", "heldout")]
    assert sorted(set().union(*parts)) == list(range(w.num_conditions))
    assert sum(len(p) for p in parts) == w.num_conditions
    assert w.split("heldout") == [3, 7, 11, 15]
    with pytest.raises(ValueError, match="unknown split"):
        w.split("test")
    weights = w.weights(torch.arange(16))
    assert torch.allclose(weights.sum(-1), torch.ones(16))
    e = math.exp(1.0)  # kappa = 1: layout 0 leans to mode 0 (e^1), away from mode 4 (e^-1)
    assert float(weights[0, 0] / weights[0, 4]) == pytest.approx(e * e, rel=1e-5)
    assert int(weights[8].argmax()) == 4 and int(weights[8].argmin()) == 0


def test_metrics_on_hand_made_samples():
    w = ModeWorld()
    mu = w.center_table  # (8, 2), mode m at angle 45 m degrees, radius 2.5; target mode 0
    x = torch.stack([mu[0], mu[1] + torch.tensor([0.1, 0.0]), torch.tensor([0.0, -0.1]),
                     mu[0] * (1 + 1.01 * w.off_radius / 2.5)])
    m = sample_metrics(w, x)
    assert m["in_target"].tolist() == [True, False, False, False]
    assert m["off_manifold"].tolist() == [False, False, True, True]
    assert m["mode"].tolist()[:2] == [0, 1] and int(m["mode"][2]) == 6
    # tangent at mode 1 (45 degrees) is (-sin 45, cos 45): the shift (0.1, 0) projects to -0.1 / sqrt(2)
    assert m["shift"][:2].tolist() == pytest.approx([0.0, -0.1 / math.sqrt(2)], abs=1e-6)
    base_x = x + torch.tensor([0.3, 0.4])
    s = summary(w, x, torch.tensor([1.0, 0.5, 0.0, 0.5]), base_x)
    assert s["target_mode_rate"] == 0.25 and s["off_manifold_rate"] == 0.5 and s["reward"] == 0.5
    assert s["moved"] == pytest.approx(0.5, abs=1e-6)
    assert s["mode_changed"] == 0.25  # (0, -0.1) is nearest mode 6, (0.3, 0.3) nearest mode 1


def test_rewards_peak_in_the_target_and_fall_off_the_data():
    w = ModeWorld()
    mu = w.center_table
    cond = torch.full((1,), 5)  # the layout does not enter the rewards
    assert float(structure(w, mu[0:1], cond)) == pytest.approx(1.0, abs=1e-6)
    assert float(structure(w, mu[1:2], cond)) == pytest.approx(math.exp(2 * (math.cos(math.pi / 4) - 1)), abs=1e-6)
    assert float(structure(w, mu[4:5], cond)) == pytest.approx(math.exp(-4), abs=1e-6)
    # outward along the target's ray: exp(-(d / r_off)^8), monotone
    d = torch.linspace(0, 2 * w.off_radius, 9)
    r = structure(w, mu[0] + d[:, None] * torch.tensor([1.0, 0.0]), cond.expand(9))
    assert torch.allclose(r, torch.exp(-((d / w.off_radius) ** 8)), atol=1e-5)
    assert float(r[-1]) < 1e-12 and bool((r[1:] <= r[:-1]).all()) and float(r[4]) == pytest.approx(math.exp(-1))
    # detail: gate x 1 at one std along the tangent inside any mode, exp(-1/2) at the centre
    t5 = tangents(w, mu)[5]
    gate = math.exp(-((w.std / w.off_radius) ** 8))
    assert float(detail(w, (mu[5] + w.std * t5)[None], cond)) == pytest.approx(gate, abs=1e-6)
    assert float(detail(w, mu[5:6], cond)) == pytest.approx(math.exp(-0.5), abs=1e-6)


@pytest.mark.parametrize("dim", [2, 16])
def test_rewards_bounded(dim):
    w = ModeWorld(dim=dim)
    g = torch.Generator().manual_seed(0)
    cond = torch.randint(w.num_conditions, (4000,), generator=g)
    x = torch.cat([4 * (2 * torch.rand(2000, dim, generator=g) - 1), w.sample(cond[:2000], g)[0]])
    for name, hi in (("structure", 1.0), ("detail", 1.0), ("sum", 2.0)):
        r = reward(name, w)(x, cond)
        assert float(r.min()) >= 0.0 and float(r.max()) <= hi + 1e-6
    with pytest.raises(ValueError, match="unknown mode-world reward"):
        reward("shape", w)


@pytest.mark.parametrize("dim", [2, 16])
def test_shipped_model_reproduces_the_modes(dim):
    """Per layout, the mode shares of the base model's on-data samples (T = 10, the demo's rollout) match the
    mixture weights, and few samples leave the data."""
    torch.manual_seed(0)
    w, model = ModeWorld(dim=dim), load_base(dim)
    n = 2048
    cond = torch.tensor([0, 3, 6, 9]).repeat_interleave(n)
    g = torch.Generator().manual_seed(1)
    x = sample_trajectory(velocity_of(model), torch.randn(cond.shape[0], dim, generator=g), sigma_schedule(10),
                          w.features(cond)).latents[-1]
    m = sample_metrics(w, x)
    assert float(m["off_manifold"].float().mean()) < OFF_MAX[dim]
    for a in (0, 3, 6, 9):
        sel = (cond == a) & ~m["off_manifold"]
        shares = torch.bincount(m["mode"][sel], minlength=w.num_modes).float() / int(sel.sum())
        assert (shares - w.weights(torch.tensor([a]))[0]).abs().max() < 0.06, (a, shares)


OFF_MAX = {2: 0.10, 16: 0.20}  # measured at T = 10: 0.07 and 0.14 (Euler error in 16-D)


def test_pretraining_is_deterministic():
    cfg = PretrainConfig(iterations=5, hidden=16, batch_size=32)
    a, b = pretrain(cfg), pretrain(cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="dim=3"):
        load_base(3)
