"""Full backpropagation through the sampler (AlignProp-style, Prabhudesai et al. 2023).

DRaFT-K with K = T: every step grad-enabled and checkpointed. With randomized truncation (AlignProp's
variant) the gradient is cut at a random step: K is drawn uniformly from [1, T] each iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.methods.common import check_hinge, check_schedule_batch, draw_int, reward_metrics
from leapalign.methods.draft import truncated_backprop
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class FullConfig:
    truncate: bool = option(False, "randomized truncation: backprop through the last K ~ U[1, T] steps only")
    hinge: float | None = option(None, "hinge threshold on the reward; None -> loss = -r")
    checkpointing: bool = option(True, "per-step gradient checkpointing (memory ~ T step boundaries, not T graphs)")

    def __post_init__(self) -> None:
        check_hinge(self.hinge)


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: FullConfig, generator: torch.Generator,
         backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    num_steps = check_schedule_batch(noise, sigmas)
    k = draw_int(1, num_steps, generator) if cfg.truncate else num_steps
    loss, rewards, _ = truncated_backprop(velocity, noise, sigmas, cond, reward_fn, k, cfg.hinge, cfg.checkpointing)
    return LossOutput(loss, {**reward_metrics(rewards, loss), "k_steps": float(k)})
