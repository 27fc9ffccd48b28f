"""Records passed between modules (no tuples, no kwargs catch-alls), and the one way a config field is declared."""

from __future__ import annotations

import copy

from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable

import torch

# velocity(x (B, ...), sigma (B,), cond) -> v (B, ...), in the sigma = 1 is noise convention.
VelocityFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
# reward_fn(x0 (B, ...)) -> (B,) rewards, differentiable w.r.t. x0 (decode + reward model inside).
RewardFn = Callable[[torch.Tensor], torch.Tensor]


def option(default: Any, help: str) -> Any:
    """A config dataclass field with its default and help string (`--list-keys` prints the help).

    Every config dataclass (training, methods, demo, bench, ShapesWorld loops) declares its fields this way;
    mutable defaults (lists, dicts, nested config instances) get a fresh copy per instance.
    """
    if is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Trajectory:
    """A sampled Euler trajectory, recorded without gradient.

    latents: (T+1, B, ...) with latents[0] the initial noise and latents[T] the final sample.
    sigmas:  (T+1,) strictly decreasing, sigmas[T] == 0.
    """

    latents: torch.Tensor
    sigmas: torch.Tensor

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.latents.shape[0] != self.sigmas.shape[0]:
            raise ValueError(
                f"trajectory needs latents (T+1, B, ...) and sigmas (T+1,); got latents {tuple(self.latents.shape)} "
                f"and sigmas {tuple(self.sigmas.shape)}"
            )

    @property
    def num_steps(self) -> int:
        """T, the number of Euler steps."""
        return self.sigmas.shape[0] - 1

    @property
    def batch_size(self) -> int:
        return self.latents.shape[1]

    @property
    def sample(self) -> torch.Tensor:
        """The final sample x_0 (B, ...)."""
        return self.latents[-1]

    def sigma(self, i: int) -> float:
        return float(self.sigmas[i])


@dataclass
class LossOutput:
    """What every method returns.

    loss:    scalar tensor; loss.backward() gives the method's parameter gradient.
    metrics: detached scalars for logging (reward, d_j, d_0, w, chosen sigmas, ...).
    backward_done: see the field comment.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    # True when the method already ran backward on its parts itself (memory: one graph alive at a time);
    # loss is then detached and only reported.
    backward_done: bool = False


@dataclass
class SDETrajectory:
    """A rollout of the GRPO family: Euler-Maruyama on the SDE steps, Euler elsewhere (recorded without gradient).

    traj:      the latents (T+1, B, ...) and sigmas (T+1,).
    sde_steps: (T,) bool, True where step i (sigmas[i] -> sigmas[i+1]) was stochastic.
    log_probs: (T, B) log-density of each recorded transition x_{i+1} | x_i (summed over latent elements);
               0 on the deterministic (ODE) steps, which carry no density.
    """

    traj: Trajectory
    sde_steps: torch.Tensor
    log_probs: torch.Tensor

    def __post_init__(self) -> None:
        steps, batch = self.traj.num_steps, self.traj.batch_size
        if self.sde_steps.shape != (steps,) or self.sde_steps.dtype != torch.bool:
            raise ValueError(f"sde_steps must be a (T,) = ({steps},) bool mask, got {tuple(self.sde_steps.shape)} "
                             f"{self.sde_steps.dtype}")
        if self.log_probs.shape != (steps, batch):
            raise ValueError(f"log_probs must be (T, B) = ({steps}, {batch}), got {tuple(self.log_probs.shape)}")
