"""Flow matching sampling in the sigma convention: schedules, the Euler step, no-grad rollouts.

sigma = 1 is pure noise, sigma = 0 is data. A schedule is a 1-D tensor of length T+1, strictly decreasing,
ending at exactly 0; step i goes from sigmas[i] to sigmas[i+1]. The schedules reproduce diffusers'
FlowMatchEulerDiscreteScheduler.set_timesteps (diffusers 0.42) for FluxPipeline and StableDiffusion3Pipeline.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from leapalign.types import Trajectory, VelocityFn


def static_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution-independent shift: s' = k s / (1 + (k - 1) s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dynamic_shift(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """Flux's exponential time shift: s' = e^mu / (e^mu + 1/s - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu linear in the image token count through (256, 0.5) and (4096, 1.15), as FluxPipeline."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def sigma_schedule(
    num_steps: int,
    *,
    shift: float = 1.0,
    mu: float | None = None,
    base_end: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The T+1 sigmas of a T-step sampler.

    The unshifted grid is linspace(1, base_end, T) (base_end defaults to 1/T, as FluxPipeline passes it;
    StableDiffusion3Pipeline's scheduler uses the shifted 1/1000 instead). Then the dynamic shift with `mu` if
    given, else the static `shift` (1.0 = none), and a final 0 is appended.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    end = 1.0 / num_steps if base_end is None else base_end
    if not 0 < end <= 1:
        raise ValueError(f"base_end must be in (0, 1], got {end}")
    # float32 grid first, as diffusers builds it, so the values match bit for bit after the cast.
    base = torch.linspace(1.0, end, num_steps, dtype=torch.float64).to(torch.float32).to(torch.float64)
    sig = dynamic_shift(base, mu) if mu is not None else static_shift(base, shift)
    return torch.cat([sig.to(torch.float32), sig.new_zeros(1, dtype=torch.float32)]).to(dtype)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor):
    """x_{s'} = x_s + (s' - s) v, with s' < s (towards data)."""
    return x + (sigma_next - sigma) * v


def predict_x0(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """One-step data prediction x0_hat = x_s - s v (exact for a straight path)."""
    return x - sigma * v


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps."""
    return (1 - sigma) * x0 + sigma * noise


def check_schedule(sigmas: torch.Tensor) -> None:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of length T+1 >= 2, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing (sigma = 1 is noise, 0 is data)")
    if float(sigmas[-1]) != 0.0 or float(sigmas[0]) > 1.0:
        raise ValueError(f"sigmas must lie in [0, 1] and end at exactly 0, got first {float(sigmas[0])}, "
                         f"last {float(sigmas[-1])}")


def sample_trajectory(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    inference_mode: bool = False,
) -> Trajectory:
    """Euler-integrate from `noise` (B, ...) along `sigmas` (T+1,), recording every latent without gradient.

    `inference_mode=True` runs the loop under torch.inference_mode (faster dispatch); the recorded latents are
    stacked outside it, so they are ordinary tensors that later grad-enabled calls may use. Keep it off for
    velocity models that cache tensors lazily (they would become inference tensors).
    """
    check_schedule(sigmas)
    sig = sigmas.to(device=noise.device)
    steps = [noise]
    with torch.inference_mode() if inference_mode else torch.no_grad():
        for i in range(sig.shape[0] - 1):
            steps.append(_euler(velocity, steps[-1], sig, i, cond))
    with torch.no_grad():
        latents = torch.stack(steps)  # (T+1, B, ...)
    return Trajectory(latents=latents, sigmas=sig)


def integrate(
    velocity: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Euler-integrate x (at sigmas[start]) to sigmas[stop] without gradient; returns x at step `stop`."""
    stop = sigmas.shape[0] - 1 if stop is None else stop
    if not 0 <= start <= stop <= sigmas.shape[0] - 1:
        raise ValueError(f"need 0 <= start <= stop <= T, got start={start}, stop={stop}, T={sigmas.shape[0] - 1}")
    sig = sigmas.to(device=x.device)
    with torch.no_grad():
        for i in range(start, stop):
            x = _euler(velocity, x, sig, i, cond)
    return x


def _euler(velocity: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, i: int, cond: Any) -> torch.Tensor:
    """One Euler step i of the sampler (sigmas on x's device), in x's dtype."""
    v = velocity(x, sigmas[i].expand(x.shape[0]).to(x.dtype), cond)
    return euler_step(x, v.to(x.dtype), sigmas[i], sigmas[i + 1]).to(x.dtype)


def inference_rollout(velocity: VelocityFn) -> VelocityFn:
    """Wrap a velocity so that its no-grad calls (the rollout) run under torch.inference_mode.

    Grad-enabled calls pass through unchanged. The fast path's output is cloned outside inference mode so that
    methods may later use rollout latents on a gradient path (inference tensors cannot be saved for backward).
    """

    def wrapped(x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return velocity(x, sigma, cond)
        with torch.inference_mode():
            v = velocity(x, sigma, cond)
        return v.clone()

    return wrapped
