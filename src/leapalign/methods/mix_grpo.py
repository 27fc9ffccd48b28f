"""MixGRPO (Li et al., "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE", 2025).

Flow-GRPO's objective (methods/grpo.py), but the SDE, and hence the policy and its training, is confined to a
window of `window_size` consecutive steps; every other step is a plain Euler (ODE) step. The window slides with
the training iteration n (MixGRPO's "progressive" strategy with overlap):

    start(n) = range_start + ((n // shift_interval) * window_stride) mod (range_end - window_size - range_start + 1)

so it moves `window_stride` steps every `shift_interval` iterations and rolls back to `range_start` after the
end of the range (`range_end` exclusive, default T-1: the last step to sigma = 0 is deterministic). Cost per
iteration: T no-grad forwards plus one grad forward/backward per trained step in the window, instead of per step
of the whole trajectory. With the window over all of [0, T-1) MixGRPO is Flow-GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.methods.grpo import FlowGRPOConfig, policy_step, rollout_inputs
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class MixGRPOConfig(FlowGRPOConfig):
    window_size: int = option(4, "SDE (trained) steps per rollout (MixGRPO Flux: 4 of 25)")
    shift_interval: int = option(25, "iterations before the window moves (MixGRPO: 25)")
    window_stride: int = option(1, "steps the window moves each time (MixGRPO: 1)")
    range_start: int = option(0, "first step index the window may cover")
    range_end: int | None = option(None, "one past the last index it may cover (None: T-1, all stochastic steps)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if self.shift_interval < 1:
            raise ValueError(f"shift_interval must be >= 1 iteration, got {self.shift_interval}")
        if self.window_stride < 0:
            raise ValueError(f"window_stride must be >= 0 (0 = a fixed window), got {self.window_stride}")
        if self.range_start < 0:
            raise ValueError(f"range_start must be >= 0, got {self.range_start}")
        if self.range_end is not None and self.range_end - self.range_start < self.window_size:
            raise ValueError(f"the window range [{self.range_start}, {self.range_end}) must hold window_size = "
                             f"{self.window_size} steps; widen the range or shrink the window")


def window(cfg: MixGRPOConfig, iteration: int, num_steps: int) -> list[int]:
    """The SDE step indices at training iteration `iteration` for a T = num_steps schedule."""
    end = num_steps - 1 if cfg.range_end is None else cfg.range_end
    if not 0 <= cfg.range_start < end <= num_steps - 1 or end - cfg.range_start < cfg.window_size:
        raise ValueError(f"the window range [{cfg.range_start}, {end}) with window_size {cfg.window_size} must fit "
                         f"in the stochastic steps [0, T-1 = {num_steps - 1}); lower range_end/window_size or "
                         f"raise the number of steps")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    positions = end - cfg.window_size - cfg.range_start + 1
    start = cfg.range_start + ((iteration // cfg.shift_interval) * cfg.window_stride) % positions
    return list(range(start, start + cfg.window_size))


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: MixGRPOConfig, generator: torch.Generator, backward: Callable[[torch.Tensor], None] | None = None,
         *, reference: VelocityFn | None = None, iteration: int = 0) -> LossOutput:
    """One MixGRPO iteration: SDE and training inside the window at `iteration`, ODE elsewhere."""
    noise, sigmas = rollout_inputs(noise, sigmas, cfg)
    steps = window(cfg, iteration, sigmas.shape[0] - 1)
    out = policy_step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, steps, backward, reference)
    out.metrics["window_start"] = float(steps[0])
    return out
