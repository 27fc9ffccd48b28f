"""ReFL (Xu et al., ImageReward, 2023) in the flow setting: reward on a one-step prediction at a late step.

Roll out without gradient to a step t drawn uniformly from the late window, the last
n_late = max(1, round(late_fraction * T)) of the T steps, make one grad-enabled velocity call there, and score
x0_hat = x_t - s_t v(x_t, s_t). Only late steps are ever updated. The window is a fraction of the schedule so
that the paper's operating point (LeapAlign Sec. 4 / SPEC section 4: t from the last 11 of T = 25 steps,
late_fraction = 0.44) means the same at any T: at T = 10, t is in [6, 9], never the first half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.flow import integrate, predict_x0
from leapalign.methods.common import (call_reward, call_velocity, check_hinge, check_late_fraction,
                                      check_schedule_batch, draw_int, late_steps, reward_loss, reward_metrics)
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class ReFLConfig:
    late_fraction: float = option(0.44, "t is drawn from the last max(1, round(late_fraction * T)) steps (paper: 11 "
                                        "of 25 = 0.44)")
    hinge: float | None = option(None, "hinge threshold on the reward; None -> loss = -r")

    def __post_init__(self) -> None:
        check_late_fraction(self.late_fraction)
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
    sigmas = sigmas.to(noise.device)  # (T+1,) beside the latents: no CPU scalar enters a device op
    t = draw_int(num_steps - late_steps(cfg.late_fraction, num_steps), num_steps - 1, generator)
    x_t = integrate(velocity, noise, sigmas, cond, stop=t)
    loss, rewards = refl_loss(velocity, x_t, sigmas[t], cond, reward_fn, cfg.hinge)
    return LossOutput(loss, {**reward_metrics(rewards, loss), "t": float(t), "sigma_t": float(sigmas[t])})
