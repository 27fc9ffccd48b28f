"""ReFL (Xu et al., ImageReward, 2023) in the flow setting: reward on a one-step prediction at a late step.

Roll out without gradient to a step t drawn uniformly from the last `n_last` of T steps, make one
grad-enabled velocity call there, and score x0_hat = x_t - s_t v(x_t, s_t). Only late steps are ever updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.flow import integrate, predict_x0
from leapalign.methods.common import (call_reward, call_velocity, check_hinge, check_schedule_batch, draw_int,
                                      reward_loss, reward_metrics)
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class ReFLConfig:
    n_last: int = option(11, "t is drawn from the last n_last of the T steps")
    hinge: float | None = option(None, "hinge threshold on the reward; None -> loss = -r")

    def __post_init__(self) -> None:
        if self.n_last < 1:
            raise ValueError(f"n_last must be >= 1, got {self.n_last}")
        check_hinge(self.hinge)


def refl_loss(velocity: VelocityFn, x_t: torch.Tensor, sigma_t: torch.Tensor, cond: Any, reward_fn: RewardFn,
              hinge: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One grad-enabled call at x_t (detached) -> (loss, rewards (B,)) on the one-step prediction."""
    x_t = x_t.detach()
    x0_hat = predict_x0(x_t, call_velocity(velocity, x_t, sigma_t, cond), sigma_t)
    rewards = call_reward(reward_fn, x0_hat)
    return reward_loss(rewards, hinge).mean(), rewards


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: ReFLConfig, generator: torch.Generator,
         backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    num_steps = check_schedule_batch(noise, sigmas)
    t = draw_int(max(0, num_steps - cfg.n_last), num_steps - 1, generator)
    x_t = integrate(velocity, noise, sigmas, cond, stop=t)
    loss, rewards = refl_loss(velocity, x_t, sigmas[t], cond, reward_fn, cfg.hinge)
    return LossOutput(loss, {**reward_metrics(rewards, loss), "t": float(t), "sigma_t": float(sigmas[t])})
