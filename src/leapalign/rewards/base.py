"""The Reward protocol (one signature for every reward) and the helpers every reward shares.

reward(images (B, 3, H, W) in [0, 1], prompts: list[str]) -> (B,) float tensor, higher is better.
Rewards are frozen (requires_grad False everywhere) and in eval(); preprocessing is done in torch so that
gradients reach the pixels.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> rewards (B,), differentiable w.r.t. images."""


class FrozenReward(nn.Module):
    """Base of the reward modules: stays in eval() even when a parent module calls .train(), because dropout
    in a reward would make the reward gradient noisy and the reward value non-reproducible."""

    def train(self, mode: bool = True) -> FrozenReward:
        return super().train(False)


def freeze(module: nn.Module) -> nn.Module:
    """eval() and requires_grad False on every parameter: rewards are never trained, and dropout must be off
    so that a reward is a deterministic function of the pixels."""
    module.eval()
    module.requires_grad_(False)
    return module


def check_inputs(images: torch.Tensor, prompts: list[str]) -> None:
    """Raise a one-line ValueError unless images is (B, 3, H, W) floating point and len(prompts) == B."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"rewards take images (B, 3, H, W) in [0, 1]; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"rewards take floating point images in [0, 1]; got dtype {images.dtype}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise ValueError(
            f"rewards take one prompt per image: got {images.shape[0]} images and "
            f"{'a single string' if isinstance(prompts, str) else len(prompts)} prompts"
        )
