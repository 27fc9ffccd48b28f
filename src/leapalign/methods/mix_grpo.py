"""MixGRPO (Li et al., "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE", 2025).

Flow-GRPO's objective (methods/grpo.py), but the SDE, and hence the policy and its training, is confined to a
window of at most `window_size` consecutive steps; every other step is a plain Euler (ODE) step. The window
follows MixGRPO's "progressive" schedule with overlap and roll-back (fastvideo/utils/grpo_states.py at e5cdd6a,
GRPOTrainingStates with prog_overlap and roll_back, max_timesteps = T - 2): its start c moves by `window_stride`
every `shift_interval` iterations from `range_start`, the window is

    steps c .. min(c + window_size, M) - 1,   M = range_end (None: T - 2, MixGRPO's max_timesteps)

so windows shrink at the end of the range, and c rolls back to `range_start` once it passes the last start that
leaves a step (official: once c > M; at c = M its window is empty and its loop has nothing to train, so that
position is skipped here). Steps T-2 and T-1 are never trained with the default range. Cost per iteration: T
no-grad forwards plus one grad forward/backward per trained step in the window. With range_end = T - 1 and a
window over all of [0, T-1) MixGRPO is Flow-GRPO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.methods.grpo import FlowGRPOConfig, policy_step, rollout_inputs
from leapalign.types import LossOutput, RewardFn, VelocityFn, option


@dataclass
class MixGRPOConfig(FlowGRPOConfig):
    window_size: int = option(4, "SDE (trained) steps per rollout, fewer at the end of the range (MixGRPO Flux: 4 "
                                 "of 25)")
    shift_interval: int = option(25, "iterations before the window moves (MixGRPO iters_per_group: 25)")
    window_stride: int = option(1, "steps the window moves each time (MixGRPO prog_overlap_step: 1; 0 = fixed)")
    range_start: int = option(0, "first step index the window may cover (where it starts and rolls back to)")
    range_end: int | None = option(None, "one past the last index it may cover (None: T - 2, MixGRPO's "
                                         "max_timesteps; at most T - 1)")

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
        if self.range_end is not None and self.range_end <= self.range_start:
            raise ValueError(f"the window range [{self.range_start}, {self.range_end}) is empty; raise range_end")


def window(cfg: MixGRPOConfig, iteration: int, num_steps: int) -> list[int]:
    """The SDE step indices at training iteration `iteration` for a T = num_steps schedule."""
    end = num_steps - 2 if cfg.range_end is None else cfg.range_end
    if not 0 <= cfg.range_start < end <= num_steps - 1:
        raise ValueError(f"the window range [{cfg.range_start}, {end}) must be non-empty and lie in the trainable "
                         f"steps [0, T-1 = {num_steps - 1}); lower range_start/range_end or raise the number of steps")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    starts = 1 if cfg.window_stride == 0 else math.ceil((end - cfg.range_start) / cfg.window_stride)
    start = cfg.range_start + ((iteration // cfg.shift_interval) % starts) * cfg.window_stride
    return list(range(start, min(start + cfg.window_size, end)))


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: MixGRPOConfig, generator: torch.Generator, backward: Callable[[torch.Tensor], None] | None = None,
         *, reference: VelocityFn | None = None, iteration: int = 0, rollouts: dict | None = None) -> LossOutput:
    """One MixGRPO iteration: SDE and training inside the window at `iteration`, ODE elsewhere (a reused batch,
    updates_per_rollout > 1, keeps the window it was sampled with)."""
    noise, sigmas = rollout_inputs(noise, sigmas, cfg)
    steps = window(cfg, iteration - iteration % cfg.updates_per_rollout, sigmas.shape[0] - 1)  # the cycle's
    out = policy_step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, steps, backward, reference,
                      iteration, rollouts)
    out.metrics["window_start"] = float(steps[0])
    return out
