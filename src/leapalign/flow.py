"""Flow matching sampling in the sigma convention: schedules, the Euler step, no-grad rollouts.

sigma = 1 is pure noise, sigma = 0 is data. A schedule is a 1-D tensor of length T+1, strictly decreasing,
ending at exactly 0; step i goes from sigmas[i] to sigmas[i+1]. The schedules reproduce diffusers'
FlowMatchEulerDiscreteScheduler.set_timesteps (diffusers 0.42) for FluxPipeline and StableDiffusion3Pipeline.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from leapalign.types import SDETrajectory, Trajectory, VelocityFn


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


# ---- the marginal-preserving SDE of the policy-gradient family (Flow-GRPO, Liu et al. 2025) ----
#
# The probability-flow ODE dx = v ds has the same marginals as the reverse SDE
#     dx = [v - (g^2 / 2) score] ds + g dw,   score(x, s) = -eps_hat / s,   eps_hat = x + (1 - s) v
# (eps_hat is the noise estimate: x_s = (1 - s) x0 + s eps and v = eps - x0 give eps = x + (1 - s) v). One
# Euler-Maruyama step s -> s' < s is therefore Gaussian with
#     mean = x + (s' - s) [v + (g^2 / (2 s)) eps_hat],   std = g sqrt(s - s').

SDE_DIFFUSIONS = ("flow_grpo", "constant")


def sde_diffusion(s: float | torch.Tensor, s_next: float | torch.Tensor, noise_level: float,
                  diffusion: str = "flow_grpo") -> torch.Tensor:
    """g_s = a sqrt(s / (1 - s)) (Flow-GRPO) or g_s = a (DanceGRPO's constant eta).

    Flow-GRPO's g diverges at s = 1; there s is replaced by s_next inside g only (Flow-GRPO does the same with
    sigmas[1], which is s_next on the first step), so a schedule that starts at pure noise stays usable.
    """
    s = s if isinstance(s, torch.Tensor) else torch.tensor(s, dtype=torch.float64)
    s_next = s_next if isinstance(s_next, torch.Tensor) else torch.tensor(s_next, dtype=s.dtype)
    if diffusion == "constant":
        return torch.full_like(s, noise_level)
    if diffusion != "flow_grpo":
        raise ValueError(f"unknown diffusion {diffusion!r}; choose one of: {', '.join(SDE_DIFFUSIONS)}")
    s_g = torch.where(s >= 1, s_next, s)
    return noise_level * torch.sqrt(s / (1 - s_g))


def sde_step_mean_std(x: torch.Tensor, v: torch.Tensor, s: float | torch.Tensor, s_next: float | torch.Tensor,
                      noise_level: float, diffusion: str = "flow_grpo",
                      stochastic_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, ...) and std (0-d) of the Gaussian step x_{s'} | x_s, computed in at least float32.

    The final step to s' = 0 is deterministic by default: std = 0 and the mean is the plain Euler step (the SDE
    drift's eps_hat / s term would add noise-estimate error for nothing). stochastic_last: take the SDE step
    there too (std g_s sqrt(s)), as Flow-GRPO's rollouts do. Flow-GRPO computes in float32 because the drift
    overflows in bf16.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, v = x.to(dtype), v.to(dtype)
    s = torch.as_tensor(s, dtype=dtype, device=x.device)
    s_next = torch.as_tensor(s_next, dtype=dtype, device=x.device)
    if float(s_next) == 0.0 and not stochastic_last:
        return euler_step(x, v, s, s_next), torch.zeros((), dtype=dtype, device=x.device)
    g = sde_diffusion(s, s_next, noise_level, diffusion).to(device=x.device, dtype=dtype)
    eps_hat = x + (1 - s) * v  # (B, ...)
    mean = x + (s_next - s) * (v + (g ** 2 / (2 * s)) * eps_hat)
    return mean, g * torch.sqrt(s - s_next)


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x_next; mean, std^2 I) summed over the non-batch dims -> (B,). std: 0-d or broadcastable, > 0."""
    x_next = x_next.to(mean.dtype)
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    lp = -((x_next - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.expand_as(mean).flatten(1).sum(1)


def step_mask(sde_steps: torch.Tensor | list[int] | range, num_steps: int,
              stochastic_last: bool = False) -> torch.Tensor:
    """A (T,) bool mask from a mask or an index set; the final step (to sigma = 0) stays deterministic unless
    stochastic_last."""
    if isinstance(sde_steps, torch.Tensor) and sde_steps.dtype == torch.bool:
        mask = sde_steps.cpu()
        if mask.shape != (num_steps,):
            raise ValueError(f"an sde_steps mask must have shape (T,) = ({num_steps},), got {tuple(mask.shape)}")
    else:
        idx = [int(i) for i in sde_steps]
        if any(not 0 <= i < num_steps for i in idx):
            raise ValueError(f"sde_steps indices must lie in [0, T-1 = {num_steps - 1}], got {idx}")
        mask = torch.zeros(num_steps, dtype=torch.bool)
        mask[idx] = True
    if bool(mask[-1]) and not stochastic_last:
        raise ValueError(f"step T-1 = {num_steps - 1} ends at sigma = 0 and is deterministic; keep sde_steps in "
                         f"[0, T-2 = {num_steps - 2}] or set stochastic_last")
    return mask


def sample_sde_trajectory(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any,
    noise_level: float,
    sde_steps: torch.Tensor | list[int] | range,
    generator: torch.Generator,
    diffusion: str = "flow_grpo",
    stochastic_last: bool = False,
) -> SDETrajectory:
    """Roll out from `noise` (B, ...) without gradient: SDE on `sde_steps`, Euler elsewhere (MixGRPO's window).

    Step noise is drawn from `generator` (on the CPU, then moved: identical streams on every device) only on SDE
    steps. Each recorded log-prob is that of the latent as stored (cast to the latents' dtype), so a later
    grad-enabled recomputation at the same parameters gives exactly the same value (ratio 1 on-policy).
    """
    check_schedule(sigmas)
    num_steps = sigmas.shape[0] - 1
    mask = step_mask(sde_steps, num_steps, stochastic_last)
    sig = sigmas.to(device=noise.device)
    steps, log_probs = [noise], torch.zeros(num_steps, noise.shape[0], dtype=torch.float64, device=noise.device)
    with torch.no_grad():
        for i in range(num_steps):
            x = steps[-1]
            if not bool(mask[i]):
                steps.append(_euler(velocity, x, sig, i, cond))
                continue
            v = velocity(x, sig[i].expand(x.shape[0]).to(x.dtype), cond)
            mean, std = sde_step_mean_std(x, v, sig[i], sig[i + 1], noise_level, diffusion, stochastic_last)
            z = torch.randn(x.shape, generator=generator, dtype=mean.dtype).to(x.device)
            x_next = (mean + std * z).to(x.dtype)
            log_probs[i] = gaussian_log_prob(x_next, mean, std).to(torch.float64)
            steps.append(x_next)
        latents = torch.stack(steps)  # (T+1, B, ...)
    return SDETrajectory(Trajectory(latents, sig), mask, log_probs)


def resample_schedule(sigmas: torch.Tensor, num_steps: int) -> torch.Tensor:
    """A `num_steps`-step schedule over the same sigma range: sigmas[:T] linearly interpolated in the step index.

    Keeps the first and the last non-zero sigma and the schedule's shape (exact for linear grids; for shifted
    ones the points lie on the piecewise-linear interpolant of the shifted curve), then appends 0. The native
    schedule of an adapter (e.g. Flux's num_steps-step grid ending at a shifted 1/num_steps) differs slightly
    at the low end; pass that schedule directly when it matters.
    """
    check_schedule(sigmas)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    body = sigmas[:-1].to(torch.float64)  # (T,) the non-zero sigmas
    if num_steps == 1:
        new = body[:1]
    elif body.numel() == 1:
        raise ValueError("a 1-step schedule has no range to resample to more steps; build the schedule directly")
    else:
        pos = torch.linspace(0, body.numel() - 1, num_steps, dtype=torch.float64)
        lo = pos.floor().long().clamp(max=body.numel() - 2)
        new = body[lo] + (pos - lo) * (body[lo + 1] - body[lo])
    return torch.cat([new, new.new_zeros(1)]).to(sigmas.dtype)
