"""DRTune (Wu et al., "Deep Reward Supervisions for Tuning Text-to-Image Diffusion Models", ECCV 2024).

Every step runs with its model input detached, x_{i+1} = x_i + (s_{i+1} - s_i) v(sg(x_i), s_i), so the
reward gradient flows only along the additive Euler chain (no Jacobians dv/dx). Only K equally spaced
"training steps" keep parameter gradients; the rest are computed without a graph. The rollout stops early at
t_min, drawn from the late window (the last max(1, round(late_fraction * T)) steps; paper: 11 of 25 = 0.44,
SPEC section 4; and >= K-1), and the reward is taken on x0_hat = x_tmin - s_tmin v(sg(x_tmin), s_tmin).
The training steps are spaced over the N = t_min + 1 velocity calls actually made (s0 = randint over
[0, N - (K-1)(N//K)), steps s0 + i (N//K)), so all K are always reached; with N = T this is the paper's rule,
and drawing over T instead would leave short rollouts (small T) without any parameter gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from leapalign.flow import euler_step, predict_x0
from leapalign.methods.common import (call_reward, call_velocity, check_hinge, check_late_fraction,
                                      check_schedule_batch, draw_int, late_steps, reward_loss, reward_metrics)
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class DRTuneConfig:
    k: int = option(2, "training steps that keep parameter gradients (paper: 2)")
    late_fraction: float = option(0.44, "the early stop t_min is drawn from the last max(1, round(late_fraction * T)) "
                                        "steps (paper: 11 of 25 = 0.44)")
    hinge: float | None = option(None, "hinge threshold on the reward; None -> loss = -r")
    checkpointing: bool = option(True, "recompute the training steps' activations in backward")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got k={self.k}")
        check_late_fraction(self.late_fraction)
        check_hinge(self.hinge)


def training_steps(num_steps: int, k: int, generator: torch.Generator) -> list[int]:
    """K equally spaced step indices, start uniform in [0, T - (K-1)(T//K) - 1]."""
    stride = num_steps // k
    if stride < 1:
        raise ValueError(f"k = {k} training steps need T >= k, got T = {num_steps}")
    s0 = draw_int(0, num_steps - (k - 1) * stride - 1, generator)
    return [s0 + i * stride for i in range(k)]


def drtune_prediction(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any,
                      train_steps: list[int], t_min: int, checkpointing: bool) -> torch.Tensor:
    """x0_hat from the detached-input rollout stopped at t_min; parameter gradient only at train_steps."""

    def v_at(x: torch.Tensor, i: int) -> torch.Tensor:
        x_in = x.detach()  # the DRTune stop-gradient on the model input
        if i not in train_steps:
            with torch.no_grad():
                return call_velocity(velocity, x_in, sigmas[i], cond)
        if checkpointing:
            return checkpoint(call_velocity, velocity, x_in, sigmas[i], cond, use_reentrant=False)
        return call_velocity(velocity, x_in, sigmas[i], cond)

    x = noise
    for i in range(t_min):
        x = euler_step(x, v_at(x, i), sigmas[i], sigmas[i + 1])
    return predict_x0(x, v_at(x, t_min), sigmas[t_min])


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: DRTuneConfig, generator: torch.Generator,
         backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    num_steps = check_schedule_batch(noise, sigmas)
    if cfg.k > num_steps:
        raise ValueError(f"DRTune's k = {cfg.k} training steps need T >= k, got T = {num_steps}")
    sigmas = sigmas.to(noise.device)  # (T+1,) beside the latents: no CPU scalar enters a device op
    # t_min >= k - 1 so the stopped rollout makes at least k velocity calls
    t_min = draw_int(max(cfg.k - 1, num_steps - late_steps(cfg.late_fraction, num_steps)), num_steps - 1,
                     generator)
    train_steps = training_steps(t_min + 1, cfg.k, generator)
    x0_hat = drtune_prediction(velocity, noise.detach(), sigmas, cond, train_steps, t_min, cfg.checkpointing)
    rewards = call_reward(reward_fn, x0_hat)
    loss = reward_loss(rewards, cfg.hinge).mean()
    return LossOutput(loss, {**reward_metrics(rewards, loss), "t_min": float(t_min), "sigma_t": float(sigmas[t_min]),
                             "first_train_step": float(train_steps[0])})
