"""The mode world's rewards, all bounded in [0, 1] (the sum in [0, 2]) and falling to 0 off the data.

With d_m = ||x - mu_m|| and r_off the world's off-manifold radius:
    gate(x)      = sum_m exp(-(d_m / r_off)^8)       flat (> 0.99) to 0.56 r_off, e^-1 at r_off, < 1e-11 at 1.5 r_off
    structure(x) = gate(x) exp(kappa (cos(psi(x) - phi) - 1)),  kappa = 2
        psi(x): the angle of x in the ring's plane; phi: the target mode's angle. Peaks (1) in the target mode;
        its slope along the ring points to the target everywhere, and leaving the data costs the gate, so the
        reward cannot be gained by leaving the data. The flat gate puts no pressure on the spread inside a mode
        (a Gaussian bump would: it rewards collapsing every mode onto its centre as much as changing modes).
    detail(x)    = sum_m exp(-(d_m / r_off)^8) exp(-(<x - mu_m, u_m> - delta)^2 / (2 std^2))
        u_m = E (-sin theta_m, cos theta_m) (the ring's tangent at mode m), delta = one std: a shift inside
        whatever mode the sample is in (structure need not change).
    sum(x)       = structure(x) + detail(x)
The condition (layout) does not enter: the target is the same for every layout, only the data's weights differ.
Modes are > 3 r_off apart (2-D; 2 r_off in 16-D), so one term of each sum dominates and gate <= 1 + 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from leapalign.modes.world import ModeWorld

REWARDS = ("structure", "detail", "sum")
SHARPNESS = 2.0  # kappa of the von Mises preference: 1 in the target, 0.56 next door, 0.018 opposite


def _gates(world: ModeWorld, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    diff = x[:, None, :] - world.centers(x)  # (B, M, D)
    d = diff.norm(dim=-1)  # (B, M)
    return torch.exp(-((d / world.off_radius) ** 8)), diff  # (B, M), (B, M, D)


def structure(world: ModeWorld, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    gates, _ = _gates(world, x)
    p = world.plane(x)  # (B, 2)
    psi = torch.atan2(p[:, 1], p[:, 0])
    return gates.sum(-1) * torch.exp(SHARPNESS * (torch.cos(psi - world.target_angle) - 1))  # (B,)


def tangents(world: ModeWorld, x: torch.Tensor) -> torch.Tensor:
    """(M, D) unit tangents of the ring at each mode (counter-clockwise), in x's dtype and device."""
    ang = world.mode_angles
    return (torch.stack([-ang.sin(), ang.cos()], -1).float() @ world.embedding.T).to(x)


def detail(world: ModeWorld, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    gates, diff = _gates(world, x)
    along = (diff * tangents(world, x)).sum(-1)  # (B, M)
    return (gates * torch.exp(-(along - world.std) ** 2 / (2 * world.std ** 2))).sum(-1)  # (B,)


def reward(name: str, world: ModeWorld) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """reward(x (B, D), cond (B,)) -> (B,) for `structure`, `detail` or `sum`."""
    if name == "structure":
        return lambda x, c: structure(world, x, c)
    if name == "detail":
        return lambda x, c: detail(world, x, c)
    if name == "sum":
        return lambda x, c: structure(world, x, c) + detail(world, x, c)
    raise ValueError(f"unknown mode-world reward {name!r}; choose one of: {', '.join(REWARDS)}")
