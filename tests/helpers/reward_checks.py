"""Checks and reference modules shared by the reward tests."""

from __future__ import annotations

import torch
from torch import nn


def grad_checks(reward, images, prompts):
    """Shared checks: (B,) finite output, non-zero finite pixel gradient, no reward parameter gradient."""
    x = images.clone().requires_grad_(True)
    r = reward(x, prompts)
    assert r.shape == (images.shape[0],) and torch.isfinite(r).all()
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reward.parameters())
    assert not reward.training
    return r.detach()


class OfficialMLP(nn.Module):
    """improved-aesthetic-predictor's MLP, as in its simple_inference.py (dropout layers included)."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def randomize_norms(module: nn.Module) -> None:
    """LayerNorms start at (1, 0); perturb them so that a swapped LayerNorm mapping cannot pass."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
