"""Flow-GRPO (Liu et al., "Flow-GRPO: Training Flow Matching Models via Online RL", 2025) with DanceGRPO's options.

Policy gradient on the SDE form of the sampler (see flow.sde_step_mean_std): each SDE step is a Gaussian policy
pi(x_{i+1} | x_i) = N(mean_theta(x_i), std_i^2 I) whose log-density is closed form. Per micro-batch of B prompts,
G samples each (B*G latents, prompt b's group in rows [b*G, (b+1)*G)):

    rollout     x_0 ... x_T under no_grad, SDE on the SDE steps, old log-probs recorded
    advantage   A = clip((r - mean_group(r)) / (std(r) + 1e-4), +-adv_clip), std per group or global
    ratio       rho_i = exp(log pi_theta(x_{i+1} | x_i) - log pi_old(x_{i+1} | x_i))
    policy      L_i = mean_b max(-A rho_i, -A clip(rho_i, 1 - eps, 1 + eps))       (PPO's clipped surrogate)
    KL          D_i = mean_b ||mean_theta - mean_ref||^2 / (2 std_i^2)   (equal-std Gaussians, closed form)
    loss        mean over the trained steps i of L_i + beta D_i

The rewards may be non-differentiable: they are computed under no_grad on the final latents.
On-policy (this trainer updates once per rollout) rho = 1 in value, so clipping never triggers and the gradient
is the plain policy gradient -mean_b A grad log pi; the clip matters only for stale rollouts, which this step
never produces (Flow-GRPO's `num_inner_epochs` > 1 and its several optimizer steps per sampling epoch are not
reproduced). With `reduce="mean"` the log-densities and the KL are averaged over latent elements, as Flow-GRPO
does, so its clip_range and kl_beta keep their meaning; "sum" uses the exact densities.

DanceGRPO (Xue et al., 2025) options: `same_noise` (one initial noise per group), `diffusion="constant"`
(g_s = eta), `timestep_fraction` (a random subset of steps trained per rollout), `adv_std`.
Memory: each trained step builds one transformer graph; with `backward` it is backpropagated at once, so one
graph is alive at a time (as draft.step_lv does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.flow import (SDE_DIFFUSIONS, gaussian_log_prob, resample_schedule, sample_sde_trajectory,
                            sde_step_mean_std)
from leapalign.methods.common import call_reward, call_velocity, check_schedule_batch
from leapalign.types import LossOutput, RewardFn, SDETrajectory, VelocityFn, option


@dataclass
class FlowGRPOConfig:
    group_size: int = option(8, "G samples per prompt (the trainer repeats each prompt G times)")
    noise_level: float = option(0.7, "a in g_s = a sqrt(s / (1 - s)) (Flow-GRPO: 0.7 SD3.5, 0.9 Flux)")
    diffusion: str = option("flow_grpo", "flow_grpo: g_s = a sqrt(s/(1-s)); constant: g_s = a (DanceGRPO)")
    clip_range: float = option(1e-4, "PPO clip eps on the ratio (Flow-GRPO default 1e-4)")
    adv_clip: float = option(5.0, "advantages clamped to [-adv_clip, adv_clip] (Flow-GRPO adv_clip_max)")
    kl_beta: float = option(0.0, "KL-to-reference weight (Flow-GRPO: 0.04 GenEval/OCR, 0.01 PickScore); > 0 needs "
                                 "the frozen reference velocity")
    timestep_fraction: float = option(1.0, "fraction of the SDE steps trained per rollout: ceil(f * n) drawn at "
                                           "random")
    adv_std: str = option("group", "group: per-prompt std; global: std over the micro-batch")
    same_noise: bool = option(False, "DanceGRPO: the G samples of a prompt share their initial noise")
    train_steps: int | None = option(None, "rollout steps (None: the given schedule); see flow.resample_schedule")
    reduce: str = option("mean", "log-ratio and KL over latent elements: mean (Flow-GRPO) or sum (exact)")

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare samples of one prompt), got "
                             f"{self.group_size}")
        if not self.noise_level > 0:
            raise ValueError(f"noise_level must be > 0 (0 makes every step deterministic: no policy to train), "
                             f"got {self.noise_level}")
        if self.diffusion not in SDE_DIFFUSIONS:
            raise ValueError(f"diffusion must be one of {', '.join(SDE_DIFFUSIONS)}, got {self.diffusion!r}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0 (e.g. 1e-4), got {self.clip_range}")
        if not self.adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0 (use a large value for no clamp), got {self.adv_clip}")
        if self.kl_beta < 0:
            raise ValueError(f"kl_beta must be >= 0, got {self.kl_beta}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.adv_std not in ("group", "global"):
            raise ValueError(f"adv_std must be 'group' or 'global', got {self.adv_std!r}")
        if self.train_steps is not None and self.train_steps < 2:
            raise ValueError(f"train_steps must be >= 2 (the last step is deterministic) or None, got "
                             f"{self.train_steps}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {self.reduce!r}")


def group_size(cfg: FlowGRPOConfig) -> int:
    """Method.samples_per_prompt: G."""
    return cfg.group_size


def uses_kl(cfg: FlowGRPOConfig) -> bool:
    """Method.needs_reference: only a KL term needs the frozen reference model."""
    return cfg.kl_beta > 0


def advantages(rewards: torch.Tensor, group_size: int, adv_std: str = "group", adv_clip: float = math.inf):
    """(r - group mean) / (std + 1e-4), clamped -> (B*G,). Groups are contiguous blocks of `group_size` rows.

    std is the population std (numpy's, as Flow-GRPO's stat tracker) of the group, or of the whole micro-batch.
    """
    r = rewards.detach().to(torch.float64).reshape(-1, group_size)  # (B, G)
    centred = r - r.mean(1, keepdim=True)
    std = r.std(1, unbiased=False, keepdim=True) if adv_std == "group" else r.std(unbiased=False)
    return (centred / (std + 1e-4)).clamp(-adv_clip, adv_clip).reshape(-1)


def trained_steps(sde_steps: torch.Tensor, fraction: float, generator: torch.Generator) -> list[int]:
    """ceil(fraction * n) of the n SDE steps, uniformly without replacement, in increasing order."""
    candidates = torch.nonzero(sde_steps).flatten()
    k = max(1, math.ceil(fraction * candidates.numel() - 1e-9))
    return sorted(candidates[torch.randperm(candidates.numel(), generator=generator)[:k]].tolist())


def clipped_objective(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float):
    """PPO's clipped surrogate mean_b max(-A rho, -A clip(rho)) -> (loss, ratio (B,))."""
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def _reduce(per_sample_sum: torch.Tensor, numel: int, reduce: str) -> torch.Tensor:
    return per_sample_sum / numel if reduce == "mean" else per_sample_sum


def grpo_loss(velocity: VelocityFn, rollout: SDETrajectory, steps: list[int], adv: torch.Tensor, cond: Any,
              cfg: FlowGRPOConfig, reference: VelocityFn | None = None,
              backward: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over `steps` of the clipped policy loss (+ kl_beta KL), one grad-enabled call per step -> (loss, stats).

    With `backward` each step's term is backpropagated as soon as it is built and the returned loss is detached.
    """
    traj, numel = rollout.traj, rollout.traj.latents[0, 0].numel()
    total, stats = None, {"ratio": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "policy_loss": 0.0, "kl": 0.0}
    for i in steps:
        s, s_next = traj.sigmas[i], traj.sigmas[i + 1]
        x, x_next = traj.latents[i].detach(), traj.latents[i + 1].detach()  # (B, ...)
        mean, std = sde_step_mean_std(x, call_velocity(velocity, x, s, cond), s, s_next, cfg.noise_level,
                                      cfg.diffusion)
        log_prob = _reduce(gaussian_log_prob(x_next, mean, std), numel, cfg.reduce)  # (B,)
        old = _reduce(rollout.log_probs[i].to(log_prob), numel, cfg.reduce)
        policy, ratio = clipped_objective(log_prob, old, adv.to(log_prob), cfg.clip_range)
        term = policy
        if cfg.kl_beta > 0:
            with torch.no_grad():
                mean_ref, _ = sde_step_mean_std(x, call_velocity(reference, x, s, cond), s, s_next,
                                                cfg.noise_level, cfg.diffusion)
            kl = _reduce(((mean - mean_ref) ** 2).flatten(1).sum(1), numel, cfg.reduce) / (2 * std ** 2)  # (B,)
            term = term + cfg.kl_beta * kl.mean()
            stats["kl"] += float(kl.detach().mean()) / len(steps)
        term = term / len(steps)
        if backward is not None:
            backward(term)
            term = term.detach()
        total = term if total is None else total + term
        with torch.no_grad():
            stats["ratio"] += float(ratio.mean()) / len(steps)
            stats["clip_frac"] += float(((ratio - 1).abs() > cfg.clip_range).float().mean()) / len(steps)
            stats["approx_kl"] += float(0.5 * ((log_prob - old) ** 2).mean()) / len(steps)
            stats["policy_loss"] += float(policy.detach()) / len(steps)
    return total, stats


def rollout_inputs(noise: torch.Tensor, sigmas: torch.Tensor, cfg: FlowGRPOConfig):
    """Validate the batch layout; apply same_noise and train_steps -> (noise (B*G, ...), sigmas (T'+1,))."""
    check_schedule_batch(noise, sigmas)
    g = cfg.group_size
    if noise.shape[0] % g:
        raise ValueError(f"the batch must hold group_size = {g} samples per prompt in contiguous blocks; got "
                         f"{noise.shape[0]} rows (repeat each prompt G times: Method.samples_per_prompt)")
    if cfg.same_noise:
        noise = noise[::g].repeat_interleave(g, 0)  # (B*G, ...), one initial noise per prompt
    if cfg.train_steps is not None:
        sigmas = resample_schedule(sigmas, cfg.train_steps)
    if sigmas.shape[0] - 1 < 2:
        raise ValueError("the GRPO family needs T >= 2 steps (the last step to sigma = 0 is deterministic)")
    return noise, sigmas


def policy_step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
                cfg: FlowGRPOConfig, generator: torch.Generator, sde_steps: list[int],
                backward: Callable[[torch.Tensor], None] | None, reference: VelocityFn | None) -> LossOutput:
    """Rollout with SDE on `sde_steps`, no-grad rewards, advantages, the clipped loss on a subset of those steps."""
    if cfg.kl_beta > 0 and reference is None:
        raise ValueError(f"kl_beta = {cfg.kl_beta} needs the frozen reference velocity: pass reference=... "
                         f"(the base model, e.g. LoRA disabled), or set kl_beta=0")
    rollout = sample_sde_trajectory(velocity, noise, sigmas, cond, cfg.noise_level, sde_steps, generator,
                                    cfg.diffusion)
    with torch.no_grad():
        rewards = call_reward(reward_fn, rollout.traj.sample).detach()  # (B*G,), may be non-differentiable
    adv = advantages(rewards, cfg.group_size, cfg.adv_std, cfg.adv_clip)
    steps = trained_steps(rollout.sde_steps, cfg.timestep_fraction, generator)
    loss, stats = grpo_loss(velocity, rollout, steps, adv, cond, cfg, reference, backward)
    groups = rewards.reshape(-1, cfg.group_size).to(torch.float64)
    metrics = {
        "reward": float(rewards.float().mean()), "reward_std": float(rewards.float().std()),
        "reward_group_std": float(groups.std(1, unbiased=False).mean()),
        "zero_std_groups": float((groups.std(1) == 0).float().mean()),
        "adv_abs": float(adv.abs().mean()), "loss": float(loss.detach()), "trained_steps": float(len(steps)),
        "sde_steps": float(rollout.sde_steps.sum()), **stats,
    }
    return LossOutput(loss, metrics, backward_done=backward is not None)


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: FlowGRPOConfig, generator: torch.Generator, backward: Callable[[torch.Tensor], None] | None = None,
         *, reference: VelocityFn | None = None) -> LossOutput:
    """One Flow-GRPO iteration on B prompts x G samples: SDE on every step but the last (deterministic) one."""
    noise, sigmas = rollout_inputs(noise, sigmas, cfg)
    return policy_step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, list(range(sigmas.shape[0] - 2)),
                       backward, reference)
