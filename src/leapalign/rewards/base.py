"""The Reward protocol (one signature for every reward).

reward(images (B, 3, H, W) in [0, 1], prompts: list[str]) -> (B,) float tensor, higher is better.
Rewards are frozen (requires_grad False everywhere) and in eval(); preprocessing is done in torch so that
gradients reach the pixels.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> rewards (B,), differentiable w.r.t. images."""
