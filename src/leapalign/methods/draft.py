"""DRaFT-K and DRaFT-LV (Clark et al., "Directly Fine-Tuning Diffusion Models on Differentiable Rewards", 2023).

DRaFT-K: roll out without gradient to step T-K, then K grad-enabled Euler steps (full chain rule, through the
model inputs too) to x_0, reward on x_0. Each step is gradient-checkpointed, so memory grows by one step's
activations-at-the-boundary rather than a whole forward per step.
DRaFT-LV: K = 1, plus n extra samples: re-noise sg(x_0) to the last step's sigma with fresh noise, take one
grad-enabled step from there, and add their reward gradients (loss terms are summed, as in the paper). With a
`backward` callback each term is backpropagated as soon as it is built, so one decoder+reward graph is alive at
a time instead of n + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from leapalign.flow import add_noise, euler_step, integrate
from leapalign.methods.common import (call_reward, call_velocity, check_hinge, check_schedule_batch, reward_loss,
                                      reward_metrics)
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class DraftConfig:
    k: int = option(1, "grad-enabled steps at the end of the trajectory (K = T: full backprop)")
    hinge: float | None = option(None, "hinge threshold on the reward; None -> loss = -r")
    checkpointing: bool = option(True, "recompute each step's activations in backward (memory ~ K boundaries)")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (grad-enabled steps) must be >= 1, got {self.k}")
        check_hinge(self.hinge)


@dataclass
class DraftLVConfig:
    n_extra: int = option(2, "extra re-noised samples of the last step (paper: n = 2)")
    hinge: float | None = option(None, "hinge threshold on the reward; None -> loss = -r")
    checkpointing: bool = option(True, "recompute each grad-enabled step's activations in backward (less memory)")

    def __post_init__(self) -> None:
        if self.n_extra < 0:
            raise ValueError(f"n_extra must be >= 0, got {self.n_extra}")
        check_hinge(self.hinge)


def grad_steps(velocity: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, cond: Any, start: int,
               checkpointing: bool) -> torch.Tensor:
    """Grad-enabled Euler steps from sigmas[start] to 0 with the full chain rule -> x_0 (B, ...)."""

    def one_step(x_i: torch.Tensor, i: int) -> torch.Tensor:
        return euler_step(x_i, call_velocity(velocity, x_i, sigmas[i], cond), sigmas[i], sigmas[i + 1])

    for i in range(start, sigmas.shape[0] - 1):
        x = checkpoint(one_step, x, i, use_reentrant=False) if checkpointing else one_step(x, i)
    return x


def truncated_backprop(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any,
                       reward_fn: RewardFn, k: int, hinge: float | None, checkpointing: bool):
    """No-grad rollout to step T-k, k grad steps, reward on x_0 -> (loss, rewards (B,), x_0)."""
    num_steps = check_schedule_batch(noise, sigmas)
    if not 1 <= k <= num_steps:
        raise ValueError(f"k must be in [1, T = {num_steps}], got {k}")
    sigmas = sigmas.to(noise.device)  # (T+1,) beside the latents: no CPU scalar enters a device op
    x = integrate(velocity, noise, sigmas, cond, stop=num_steps - k).detach()
    x0 = grad_steps(velocity, x, sigmas, cond, num_steps - k, checkpointing)
    rewards = call_reward(reward_fn, x0)
    return reward_loss(rewards, hinge).mean(), rewards, x0


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: DraftConfig, generator: torch.Generator,
         backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    loss, rewards, _ = truncated_backprop(velocity, noise, sigmas, cond, reward_fn, cfg.k, cfg.hinge,
                                          cfg.checkpointing)
    return LossOutput(loss, {**reward_metrics(rewards, loss), "k_steps": float(cfg.k)})


def step_lv(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
            cfg: DraftLVConfig, generator: torch.Generator,
            backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    loss, rewards, x0 = truncated_backprop(velocity, noise, sigmas, cond, reward_fn, 1, cfg.hinge,
                                           cfg.checkpointing)
    x0 = x0.detach()
    if backward is not None:
        backward(loss)
        loss = loss.detach()
    sigmas, last = sigmas.to(x0.device), sigmas.shape[0] - 2
    for _ in range(cfg.n_extra):
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_re = add_noise(x0, eps, sigmas[last])
        term = reward_loss(call_reward(reward_fn, grad_steps(velocity, x_re, sigmas, cond, last, cfg.checkpointing)),
                           cfg.hinge).mean()
        if backward is not None:
            backward(term)
            term = term.detach()
        loss = loss + term
    return LossOutput(loss, reward_metrics(rewards, loss), backward_done=backward is not None)
