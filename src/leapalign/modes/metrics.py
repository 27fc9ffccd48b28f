"""Exact metrics of the mode world: which mode a sample is in, whether it is on the data, how far it moved.

A sample is in mode m when mu_m is its nearest centre and it lies within r_off of it; it is off the data (off the
manifold) when it is farther than r_off from every centre. So target rate + other-mode rate + off rate = 1.
"""

from __future__ import annotations

from typing import Any

import torch

from leapalign.flow import integrate
from leapalign.modes.rewards import tangents
from leapalign.modes.world import ModeWorld
from leapalign.types import VelocityFn


def assign(world: ModeWorld, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest mode (B,), its distance (B,)) for samples x (B, D)."""
    d = (x[:, None, :] - world.centers(x)).norm(dim=-1)  # (B, M)
    dist, mode = d.min(-1)
    return mode, dist


def sample_metrics(world: ModeWorld, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample indicators and values: in_target, off_manifold (bool (B,)), mode (B,), shift along the ring's
    tangent inside the nearest mode (B,) (the detail reward's direction; its optimum is one std)."""
    mode, dist = assign(world, x)
    off = dist > world.off_radius
    shift = ((x - world.centers(x)[mode]) * tangents(world, x)[mode]).sum(-1)
    return {"in_target": (mode == world.target) & ~off, "off_manifold": off, "mode": mode, "shift": shift}


def summary(world: ModeWorld, x: torch.Tensor, rewards: torch.Tensor,
            base_x: torch.Tensor | None = None) -> dict[str, float]:
    """target_mode_rate, off_manifold_rate, reward, detail_shift and (given the base model's samples from the same
    noise) moved = mean ||x - base_x|| and mode_changed = share whose mode differs from the base sample's."""
    m = sample_metrics(world, x)
    out = {"target_mode_rate": float(m["in_target"].float().mean()),
           "off_manifold_rate": float(m["off_manifold"].float().mean()),
           "reward": float(rewards.float().mean()), "detail_shift": float(m["shift"].mean())}
    if base_x is not None:
        out["moved"] = float((x - base_x).norm(dim=-1).mean())
        out["mode_changed"] = float((m["mode"] != assign(world, base_x)[0]).float().mean())
    return out


def mode_decision_curve(world: ModeWorld, velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor,
                        features: Any, generator: torch.Generator) -> list[dict[str, float]]:
    """The base model's mode decision: for each step i, re-noise the final samples to sigmas[i] with fresh noise
    (x_i = (1 - s_i) x0 + s_i eps'), re-sample from step i to 0, and count the share that keeps its mode. Near 1:
    the mode was already decided at sigma_i (only late steps remain); near the mixture's chance level: undecided."""
    x0 = integrate(velocity, noise, sigmas, features)
    mode0, _ = assign(world, x0)
    out = []
    for i in range(sigmas.shape[0] - 1):
        s = float(sigmas[i])
        xi = (1 - s) * x0 + s * torch.randn(x0.shape, generator=generator)
        x = integrate(velocity, xi, sigmas, features, start=i)
        out.append({"step": i, "sigma": s, "kept": float((assign(world, x)[0] == mode0).float().mean())})
    return out
