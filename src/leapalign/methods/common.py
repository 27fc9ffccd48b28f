"""Pieces every method shares: the reward loss l(r), checked model calls, straight-through connectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from leapalign.types import LossOutput, RewardFn, VelocityFn


def check_hinge(hinge: float | None) -> None:
    if hinge is not None and not isinstance(hinge, (int, float)):
        raise ValueError(f"hinge must be a number or None (no hinge), got {hinge!r}")


def reward_loss(rewards: torch.Tensor, hinge: float | None) -> torch.Tensor:
    """l(r) per sample (B,): relu(hinge - r) with a hinge threshold (paper: 0.55 HPSv2.1), else -r."""
    return torch.relu(hinge - rewards) if hinge is not None else -rewards


def call_reward(reward_fn: RewardFn, x0: torch.Tensor) -> torch.Tensor:
    """reward_fn(x0) checked to give one finite-or-not float per sample, shape (B,)."""
    r = reward_fn(x0)
    if r.shape != (x0.shape[0],):
        raise ValueError(f"reward_fn must return one reward per sample, shape ({x0.shape[0]},); "
                         f"got {tuple(r.shape)}")
    return r


def call_velocity(velocity: VelocityFn, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
    """velocity(x, sigma expanded to (B,), cond), checked to return a tensor shaped like x."""
    v = velocity(x, sigma.expand(x.shape[0]).to(device=x.device, dtype=x.dtype), cond)
    if v.shape != x.shape:
        raise ValueError(f"velocity must return a tensor shaped like its input {tuple(x.shape)}, got {tuple(v.shape)}")
    return v


def straight_through(value: torch.Tensor, grad_path: torch.Tensor) -> torch.Tensor:
    """A connector: value exactly `value` (detached), gradient exactly that of `grad_path`.

    Written as value + (g - sg(g)) rather than g + sg(value - g) so the forward value is bit-exact.
    """
    return value.detach() + (grad_path - grad_path.detach())


def discount(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Gradient discounting: value x, gradient scaled by alpha (= alpha x + (1 - alpha) sg(x), bit-exact value)."""
    return x.detach() + alpha * (x - x.detach())


def per_sample_mean_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean |a - b| over all non-batch elements -> (B,)."""
    return (a - b).abs().flatten(1).mean(1)


def check_schedule_batch(noise: torch.Tensor, sigmas: torch.Tensor) -> int:
    """Validate the method inputs; return T."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of length T+1 >= 2, got shape {tuple(sigmas.shape)}")
    if noise.ndim < 2:
        raise ValueError(f"noise must be batch-first (B, ...), got shape {tuple(noise.shape)}")
    return sigmas.shape[0] - 1


def late_steps(late_fraction: float, num_steps: int) -> int:
    """How many of the T steps form the late window: max(1, round(late_fraction * T)) (paper: 11 of 25 = 0.44)."""
    return max(1, min(num_steps, round(late_fraction * num_steps)))


def check_late_fraction(late_fraction: float) -> None:
    if not 0 < late_fraction <= 1:
        raise ValueError(f"late_fraction must be in (0, 1] (paper: 11 of 25 steps = 0.44), got {late_fraction}")


def draw_int(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive) from an explicit generator."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def reward_metrics(rewards: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    r = rewards.detach().float()
    return {"reward": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
            "loss": float(loss.detach())}


class MethodStep(Protocol):
    def __call__(self, velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any,
                 reward_fn: RewardFn, cfg: Any, generator: torch.Generator,
                 backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput: ...


def one_sample_per_prompt(cfg: Any) -> int:
    return 1


def never(cfg: Any) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    """A registry entry: the hyperparameter dataclass and the step that turns one batch into a LossOutput.

    samples_per_prompt(cfg): G; the trainer repeats each prompt of a micro-batch G times in contiguous blocks and
        passes (B*G, ...) independent noise (the GRPO family compares the G samples of a prompt).
    needs_reference(cfg): whether step takes `reference=` (the frozen base velocity); a function of the config
        so that a KL weight of 0 costs no frozen model copy.
    uses_iteration: whether step takes `iteration=` (the global training iteration; MixGRPO's window position).
    keeps_rollouts(cfg): whether step takes `rollouts=` (a dict the trainer keeps for the whole run, in which the
        GRPO family stores a sampled batch that several updates reuse).
    needs_reward_gradient: whether the loss backpropagates the reward into the pixels (every direct-gradient
        method); such a method refuses a reward marked `differentiable = False` (rewards.require_differentiable).
    """

    name: str
    config: type
    step: MethodStep
    samples_per_prompt: Callable[[Any], int] = one_sample_per_prompt
    needs_reference: Callable[[Any], bool] = never
    uses_iteration: bool = False
    keeps_rollouts: Callable[[Any], bool] = never
    needs_reward_gradient: bool = True
