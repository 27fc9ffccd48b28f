"""Flow-GRPO (Liu et al., "Flow-GRPO: Training Flow Matching Models via Online RL", 2025) with DanceGRPO's options.

Policy gradient on the SDE form of the sampler (see flow.sde_step_mean_std): each SDE step is a Gaussian policy
pi(x_{i+1} | x_i) = N(mean_theta(x_i), std_i^2 I), std_i = g_i sqrt(s_i - s_{i+1}), whose log-density is closed
form. Per micro-batch of B prompts, G samples each (B*G latents, prompt b's group in rows [b*G, (b+1)*G)):

    rollout     x_0 ... x_T under no_grad, SDE on the SDE steps, old log-probs recorded
    advantage   A = clip((r - mean_group(r)) / (std(r) + 1e-4), +-adv_clip), std per group or global
    ratio       rho_i = exp(log pi_theta(x_{i+1} | x_i) - log pi_old(x_{i+1} | x_i))
    policy      L_i = mean_b max(-A rho_i, -A clip(rho_i, 1 - eps, 1 + eps))       (PPO's clipped surrogate)
    KL          D_i = mean_b ||mean_theta - mean_ref||^2 / (2 g_i^2)     (kl="official": flow_grpo's train_sd3.py)
                D_i = mean_b ||mean_theta - mean_ref||^2 / (2 std_i^2)   (kl="exact": the equal-std Gaussians' KL)
    loss        mean over the trained steps i of L_i + beta D_i

The official scale is the exact KL times (s_i - s_{i+1}) (3.7-25x smaller across SD3.5's T = 10 steps), so
Flow-GRPO's kl_beta (0.04 GenEval/OCR, 0.01 PickScore) means what it means there only with kl="official".
The rewards may be non-differentiable (rule verdicts): they are computed under no_grad on the final latents.

Updates per rollout: with updates_per_rollout = K one sampled batch serves K consecutive iterations (optimizer
steps), PPO's inner epochs (Flow-GRPO's num_inner_epochs; its published configs take 2 optimizer steps per
sampling epoch, on two halves of the epoch's samples). The first update is on-policy (rho = 1 in value, the clip
never triggers, the gradient is the plain policy gradient -mean_b A grad log pi); the later ones are off-policy,
where the clip acts. The trainer's prompts of iterations n with n % K != 0 are not used: the rollout of iteration
K (n // K) is, from `rollouts`, a dict the trainer keeps for the run (a run resumed mid-cycle does not hold it
and stops with one line). With `reduce="mean"` the log-densities and the KL are averaged over latent elements,
as Flow-GRPO does, so its clip_range and kl_beta keep their meaning; "sum" uses the exact densities.

The last step (to sigma = 0): deterministic Euler by default, so the reward scores the images evaluation
samples; `sde_last_step` takes the SDE step there too, as Flow-GRPO's rollouts do (never trained: its mean is
the Euler step plus the score term, its extra noise std is a s / sqrt(1 - s) at the last sigma s).

DanceGRPO (Xue et al., 2025) options: `same_noise` (one initial noise per group), `diffusion="constant"`
(g_s = eta), `timestep_fraction` (a random subset of steps trained per update), `adv_std`.
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
    kl: str = option("official", "KL scale: official = ||mean - mean_ref||^2 / (2 g_s^2) (Flow-GRPO's code, where "
                                 "its kl_beta was tuned); exact = / (2 std^2), the Gaussian KL, (s - s')^-1 x official")
    sde_last_step: bool = option(False, "SDE (not Euler) on the last step to sigma = 0, never trained (Flow-GRPO's "
                                        "rollouts: true; false: the reward scores the images evaluation samples)")
    updates_per_rollout: int = option(1, "optimizer steps (iterations) per sampled batch: PPO's inner epochs; the "
                                         "2nd and later are off-policy, where the clip acts (Flow-GRPO: 2 per "
                                         "sampling epoch); > 1 needs iteration= and rollouts= from the trainer")

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
            raise ValueError(f"train_steps must be >= 2 (the last step is never trained) or None, got "
                             f"{self.train_steps}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {self.reduce!r}")
        if self.kl not in ("official", "exact"):
            raise ValueError(f"kl must be 'official' or 'exact', got {self.kl!r}")
        if self.updates_per_rollout < 1:
            raise ValueError(f"updates_per_rollout must be >= 1 (1 = on-policy), got {self.updates_per_rollout}")


def group_size(cfg: FlowGRPOConfig) -> int:
    """Method.samples_per_prompt: G."""
    return cfg.group_size


def uses_kl(cfg: FlowGRPOConfig) -> bool:
    """Method.needs_reference: only a KL term needs the frozen reference model."""
    return cfg.kl_beta > 0


def reuses_rollouts(cfg: FlowGRPOConfig) -> bool:
    """Method.keeps_rollouts: several updates per sampled batch need the trainer's `rollouts` dict."""
    return cfg.updates_per_rollout > 1


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
    Every step in `steps` must end above sigma = 0 (the last step is never trained).

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
            if cfg.kl == "official":  # / (2 g^2) = / (2 std^2) x (s - s')
                kl = kl * (s - s_next).to(kl)
            term = term + cfg.kl_beta * kl.mean()
            stats["kl"] += kl.detach().mean().double() / len(steps)
        term = term / len(steps)
        if backward is not None:
            backward(term)
            term = term.detach()
        total = term if total is None else total + term
        with torch.no_grad():  # summed on the device in float64 (as Python floats would be): no sync per step
            stats["ratio"] += ratio.mean().double() / len(steps)
            stats["clip_frac"] += ((ratio - 1).abs() > cfg.clip_range).float().mean().double() / len(steps)
            stats["approx_kl"] += (0.5 * ((log_prob - old) ** 2).mean()).double() / len(steps)
            stats["policy_loss"] += policy.detach().double() / len(steps)
    return total, {k: float(v) for k, v in stats.items()}


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
        raise ValueError("the GRPO family needs T >= 2 steps (the last step to sigma = 0 is never trained)")
    return noise, sigmas


@dataclass
class Sampled:
    """One sampled batch and what every update on it reuses: rollout, conditioning, rewards, advantages."""

    rollout: SDETrajectory
    cond: Any
    rewards: torch.Tensor  # (B*G,)
    adv: torch.Tensor  # (B*G,) float64


def sample(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
           cfg: FlowGRPOConfig, generator: torch.Generator, sde_steps: list[int]) -> Sampled:
    """Rollout with SDE on `sde_steps` (and the last step with sde_last_step), no-grad rewards, advantages."""
    steps = list(sde_steps) + ([sigmas.shape[0] - 2] if cfg.sde_last_step else [])
    rollout = sample_sde_trajectory(velocity, noise, sigmas, cond, cfg.noise_level, steps, generator, cfg.diffusion,
                                    stochastic_last=cfg.sde_last_step)
    with torch.no_grad():
        rewards = call_reward(reward_fn, rollout.traj.sample).detach()  # (B*G,), may be non-differentiable
    return Sampled(rollout, cond, rewards, advantages(rewards, cfg.group_size, cfg.adv_std, cfg.adv_clip))


def reuse(rollouts: dict | None, iteration: int, updates: int, make: Callable[[], Sampled]) -> tuple[Sampled, int]:
    """The batch sampled at iteration updates * (iteration // updates) -> (it, updates made on it before).

    `rollouts` holds the current cycle's batches, one per call within an iteration (grad accumulation), in call
    order: iterations that start a cycle sample and store, the others reuse the batch of the same call index."""
    if rollouts is None:
        raise ValueError("updates_per_rollout > 1 needs rollouts={} kept across iterations (the trainer passes "
                         "one: Method.keeps_rollouts) and iteration=")
    cycle, age = divmod(iteration, updates)
    if rollouts.get("iteration") != iteration:
        rollouts.update(iteration=iteration, call=0)
    call = rollouts["call"]
    rollouts["call"] = call + 1
    if age == 0:
        if call == 0:
            rollouts.update(cycle=cycle, batches=[])
        rollouts["batches"].append(make())
    elif rollouts.get("cycle") != cycle or call >= len(rollouts["batches"]):
        raise ValueError(f"iteration {iteration} reuses the batch sampled at iteration {cycle * updates} "
                         f"(updates_per_rollout = {updates}), which this run does not hold (resumed mid-cycle?): "
                         f"resume from a checkpoint at a multiple of {updates} (save_every a multiple of it)")
    return rollouts["batches"][call], age


def policy_step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
                cfg: FlowGRPOConfig, generator: torch.Generator, sde_steps: list[int],
                backward: Callable[[torch.Tensor], None] | None, reference: VelocityFn | None,
                iteration: int = 0, rollouts: dict | None = None) -> LossOutput:
    """Sample (or reuse, see `reuse`) a batch, then the clipped loss on a random subset of its trainable steps."""
    if cfg.kl_beta > 0 and reference is None:
        raise ValueError(f"kl_beta = {cfg.kl_beta} needs the frozen reference velocity: pass reference=... "
                         f"(the base model, e.g. LoRA disabled), or set kl_beta=0")

    def make() -> Sampled:
        return sample(velocity, noise, sigmas, cond, reward_fn, cfg, generator, sde_steps)

    batch, age = (make(), 0) if cfg.updates_per_rollout == 1 else reuse(rollouts, iteration,
                                                                        cfg.updates_per_rollout, make)
    trainable = batch.rollout.sde_steps.clone()
    trainable[-1] = False  # the step to sigma = 0, stochastic only with sde_last_step, is never trained
    steps = trained_steps(trainable, cfg.timestep_fraction, generator)
    loss, stats = grpo_loss(velocity, batch.rollout, steps, batch.adv, batch.cond, cfg, reference, backward)
    rewards, adv = batch.rewards, batch.adv
    groups = rewards.reshape(-1, cfg.group_size).to(torch.float64)
    metrics = {
        "reward": float(rewards.float().mean()), "reward_std": float(rewards.float().std()),
        "reward_group_std": float(groups.std(1, unbiased=False).mean()),
        "zero_std_groups": float((groups.std(1) == 0).float().mean()),
        "adv_abs": float(adv.abs().mean()), "loss": float(loss.detach()), "trained_steps": float(len(steps)),
        "sde_steps": float(batch.rollout.sde_steps.sum()), "rollout_age": float(age), **stats,
    }
    return LossOutput(loss, metrics, backward_done=backward is not None)


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: FlowGRPOConfig, generator: torch.Generator, backward: Callable[[torch.Tensor], None] | None = None,
         *, reference: VelocityFn | None = None, iteration: int = 0, rollouts: dict | None = None) -> LossOutput:
    """One Flow-GRPO iteration on B prompts x G samples: SDE on every step but the last (see sde_last_step)."""
    noise, sigmas = rollout_inputs(noise, sigmas, cfg)
    return policy_step(velocity, noise, sigmas, cond, reward_fn, cfg, generator, list(range(sigmas.shape[0] - 2)),
                       backward, reference, iteration, rollouts)
