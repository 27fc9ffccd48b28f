"""Composite rewards: weighted sum, normalisation, hinge, per-reward logging, loading through the registry."""

from __future__ import annotations

import pytest
import torch

from leapalign.rewards.composite import CompositeReward, CompositeTerm


def brightness(path=None, *, device="cpu", dtype=torch.float32):
    reward = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731 - a minimal user reward
    reward.name = "brightness"
    return reward


def redness(path=None, *, device="cpu", dtype=torch.float32):
    return lambda images, prompts: 10 * images[:, 0].mean(dim=(1, 2))


def test_weighted_normalised_hinged_sum_and_logged_values():
    terms = [
        CompositeTerm("test_rewards_composite:brightness", weight=2.0, mean=0.5, std=0.25),
        CompositeTerm("test_rewards_composite:redness", weight=-1.0, mean=1.0, std=2.0, hinge=4.0),
        CompositeTerm("test_rewards_composite:brightness", weight=1.0),
    ]
    reward = CompositeReward.from_terms(terms)
    images = torch.rand(4, 3, 8, 8)
    images[0, 0] = 1.0  # redness 10 > hinge 4: capped, no gradient through that term
    images[1, 0] = 0.1  # redness 1 < hinge 4: the term is active
    x = images.clone().requires_grad_(True)
    total = reward(x, ["p"] * 4)
    b, red = images.mean(dim=(1, 2, 3)), 10 * images[:, 0].mean(dim=(1, 2))
    expected = 2.0 * (b - 0.5) / 0.25 - 1.0 * (red.clamp(max=4.0) - 1.0) / 2.0 + b
    torch.testing.assert_close(total, expected)
    assert set(reward.last_values) == {"test_rewards_composite:brightness", "test_rewards_composite:redness",
                                       "test_rewards_composite:brightness#2"}
    torch.testing.assert_close(reward.last_values["test_rewards_composite:redness"], red)  # raw, unhinged
    assert reward.metrics()["reward/test_rewards_composite:redness"] == pytest.approx(red.mean().item())
    total.sum().backward()
    # Brightness gradient: (2 / 0.25 + 1) / (3 * 64) per pixel; the redness term adds -0.5 * 10 / 64 on channel 0,
    # except for sample 0, whose redness is past the hinge.
    torch.testing.assert_close(x.grad[0, 0], torch.full((8, 8), 9.0 / 192))
    torch.testing.assert_close(x.grad[1, 0], torch.full((8, 8), 9.0 / 192 - 0.5 * 10 / 64))


def test_composite_errors():
    with pytest.raises(ValueError, match="std must be > 0"):
        CompositeTerm("clip", std=0.0)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        CompositeReward.from_terms([CompositeTerm("nope")])
    with pytest.raises(ValueError, match="one reward per term"):
        CompositeReward([], [])
