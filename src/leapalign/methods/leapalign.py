"""LeapAlign (Liang et al., arXiv 2604.15311): reward gradients at any step through a two-step leap.

For a leap pair k < j (indices into the schedule, s_k > s_j > 0), with rollout latents x_k, x_j, x_0:

    leap 1      xhat_j = x_k - (s_k - s_j) v(x_k, s_k)
    connector   xj_c   = xhat_j + sg(x_j - xhat_j)                 value x_j, gradient of xhat_j
    discount    xin    = alpha xj_c + (1 - alpha) sg(xj_c)
    leap 2      xhat_0 = xj_c - s_j v(xin, s_j)
    connector   x0_c   = xhat_0 + sg(x_0 - xhat_0)                 value x_0 (the real sample)
    weight      w      = 1 / (max(d_j, tau) + max(d_0, tau)),  d = mean |x - xhat| per sample (no gradient)
    loss        mean_b sg(w_b) l(R(x0_c)_b),  l(r) = relu(lam - r) or -r

giving the parameter gradient of paper Eq. 10:
    dx0/dtheta = -s_j dv_j/dtheta - (s_k - s_j) dv_k/dtheta + alpha s_j (s_k - s_j) dv_j/dx dv_k/dtheta.

Decoupled form (exact): both connectors carry real rollout values, so g = dl(R(x_0))/dx_0 does not depend on
(k, j). Compute g once with no transformer graph alive, then backpropagate mean_b sg(w_b) <sg(g_b), xhat_0_b>
through the two leaps; peak memory is max(reward part, leap part) instead of their sum, and several pairs
reuse one rollout and one reward backward.

Ablation options (paper Table 4): `weighting` "both" (the w above), "j" (w = 1 / max(d_j, tau)) or "none"
(w = 1); `leaps=1`, one leap straight to the sample: the pair degenerates to (k, T), where leap 2 from s_T = 0
is the identity, so xhat_0 = x_k - s_k v(x_k, s_k), d_j = mean |x_0 - xhat_0| and d_0 = 0 (the connector makes
the value x_0); its gradient is -s_k dv_k/dtheta, with no nested term and no second model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from leapalign.flow import sample_trajectory
from leapalign.methods.common import (call_reward, call_velocity, check_hinge, check_schedule_batch, discount,
                                      per_sample_mean_abs, reward_loss, reward_metrics, straight_through)
from leapalign.types import LossOutput, RewardFn, Trajectory, VelocityFn, option


WEIGHTINGS = ("both", "j", "none")


@dataclass
class LeapAlignConfig:
    alpha: float = option(0.3, "gradient discount of the nested term (paper: 0.3 HPSv2.1, 0.1 PickScore)")
    tau: float = option(0.1, "floor of each trajectory distance in the similarity weight")
    hinge: float | None = option(None, "hinge threshold lam on the reward (paper: 0.55 HPSv2.1); None -> loss = -r")
    weighting: str | bool = option("both", "trajectory-similarity weight: both (1 / (d_j + d_0), the paper), j "
                                           "(1 / d_j), none (w = 1); True/False mean both/none")
    min_step: int = option(0, "smallest allowed leap index (0 = the pure-noise step)")
    max_step: int | None = option(None, "largest allowed leap index (None -> T-1; never the final sample T)")
    pairs_per_rollout: int = option(1, "leap pairs reusing one rollout (and, decoupled, one reward backward)")
    decoupled: bool = option(True, "reward gradient first, then the two leaps (same gradient, less memory)")
    leaps: int = option(2, "2: the paper's k -> j -> 0; 1: one leap k -> 0 (the pair (k, T); ablation)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (1 = full autograd, 0 = drop nested term), got {self.alpha}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0 (it floors the trajectory distances), got {self.tau}")
        check_hinge(self.hinge)
        if self.min_step < 0 or (self.max_step is not None and self.max_step <= self.min_step):
            raise ValueError(f"need 0 <= min_step < max_step for a leap pair, got min_step={self.min_step}, "
                             f"max_step={self.max_step}")
        if self.pairs_per_rollout < 1:
            raise ValueError(f"pairs_per_rollout must be >= 1, got {self.pairs_per_rollout}")
        if isinstance(self.weighting, bool):  # the earlier boolean option
            self.weighting = "both" if self.weighting else "none"
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)} (or True/False), got "
                             f"{self.weighting!r}")
        if self.leaps not in (1, 2):
            raise ValueError(f"leaps must be 2 (the paper's two leaps) or 1 (one leap to the sample), got "
                             f"{self.leaps}")


def check_pair(k: int, j: int, num_steps: int, one_leap: bool = False) -> None:
    if not (isinstance(k, int) and isinstance(j, int)):
        raise ValueError(f"leap indices k, j must be ints, got {k!r}, {j!r}")
    if not 0 <= k < j:
        raise ValueError(f"need 0 <= k < j (k is the earlier, noisier step), got k={k}, j={j}")
    if one_leap and j != num_steps:
        raise ValueError(f"one leap goes straight to the sample: j must be T = {num_steps}, got j={j}")
    if not one_leap and j > num_steps - 1:
        raise ValueError(f"j must be <= T-1 = {num_steps - 1} (the final sample is not a leap point), got j={j}")


def sample_pair(num_steps: int, generator: torch.Generator, min_step: int = 0,
                max_step: int | None = None) -> tuple[int, int]:
    """Uniform over distinct pairs k < j in [min_step, max_step] (max_step defaults to T-1)."""
    hi = num_steps - 1 if max_step is None else max_step
    if not 0 <= min_step < hi <= num_steps - 1:
        raise ValueError(f"allowed leap range [{min_step}, {hi}] must hold two steps within [0, T-1 = "
                         f"{num_steps - 1}]; lower min_step or raise max_step/num_steps")
    a, b = (torch.randperm(hi - min_step + 1, generator=generator)[:2] + min_step).tolist()
    return min(a, b), max(a, b)


def sample_start(num_steps: int, generator: torch.Generator, min_step: int = 0,
                 max_step: int | None = None) -> tuple[int, int]:
    """One-leap variant: k uniform in [min_step, max_step] (default T-1), paired with j = T (the sample)."""
    hi = num_steps - 1 if max_step is None else max_step
    if not 0 <= min_step <= hi <= num_steps - 1:
        raise ValueError(f"allowed leap range [{min_step}, {hi}] must lie within [0, T-1 = {num_steps - 1}]")
    return min_step + int(torch.randint(hi - min_step + 1, (), generator=generator)), num_steps


def leaps(velocity: VelocityFn, traj: Trajectory, k: int, j: int, alpha: float, cond: Any = None,
          one_leap: bool = False):
    """The two grad-enabled leaps -> (xhat_j, xhat_0), each (B, ...); xhat_0 carries the Eq. 10 gradient.
    one_leap (j = T): leap 2 from s_T = 0 is the identity, so xhat_0 = connector(x_0, xhat_j)."""
    check_pair(k, j, traj.num_steps, one_leap)
    s_k, s_j = traj.sigmas[k], traj.sigmas[j]
    x_k, x_j = traj.latents[k].detach(), traj.latents[j].detach()
    xhat_j = x_k - (s_k - s_j) * call_velocity(velocity, x_k, s_k, cond)   # leap 1
    if one_leap:
        return xhat_j, straight_through(x_j, xhat_j)
    xj_c = straight_through(x_j, xhat_j)                                   # connector 1
    xin = discount(xj_c, alpha)                                            # only the model-input path
    xhat_0 = xj_c - s_j * call_velocity(velocity, xin, s_j, cond)          # leap 2
    return xhat_j, xhat_0


def similarity_weight(traj: Trajectory, j: int, xhat_j: torch.Tensor, xhat_0: torch.Tensor, cfg: LeapAlignConfig):
    """w = 1 / (max(d_j, tau) + max(d_0, tau)) per sample, no gradient -> (w, d_j, d_0), each (B,)."""
    dtype = torch.promote_types(xhat_0.dtype, torch.float32)  # bf16 latents: weigh in fp32
    with torch.no_grad():
        d_j = per_sample_mean_abs(traj.latents[j].to(dtype), xhat_j.to(dtype))
        d_0 = per_sample_mean_abs(traj.sample.to(dtype), xhat_0.to(dtype))
        if cfg.weighting == "both":
            w = 1.0 / (d_j.clamp(min=cfg.tau) + d_0.clamp(min=cfg.tau))
        elif cfg.weighting == "j":
            w = 1.0 / d_j.clamp(min=cfg.tau)
        else:
            w = torch.ones_like(d_j)
    return w, d_j, d_0


def _pair_metrics(traj: Trajectory, pairs, ws, djs, d0s) -> dict[str, float]:
    m = len(pairs)
    return {
        "w": sum(float(w.mean()) for w in ws) / m,
        "d_j": sum(float(d.mean()) for d in djs) / m,
        "d_0": sum(float(d.mean()) for d in d0s) / m,
        "k": sum(k for k, _ in pairs) / m,
        "j": sum(j for _, j in pairs) / m,
        "sigma_k": sum(traj.sigma(k) for k, _ in pairs) / m,
        "sigma_j": sum(traj.sigma(j) for _, j in pairs) / m,
    }


def leap_objective(velocity: VelocityFn, traj: Trajectory, k: int, j: int, reward_fn: RewardFn,
                   cfg: LeapAlignConfig, cond: Any = None) -> LossOutput:
    """The official (coupled) LeapAlign loss for one pair: the leap graphs stay alive while the reward runs."""
    xhat_j, xhat_0 = leaps(velocity, traj, k, j, cfg.alpha, cond, cfg.leaps == 1)
    x0_c = straight_through(traj.sample, xhat_0)                            # connector 2
    rewards = call_reward(reward_fn, x0_c)                                  # (B,) on the real sample
    w, d_j, d_0 = similarity_weight(traj, j, xhat_j, xhat_0, cfg)
    loss = (w.to(rewards.dtype) * reward_loss(rewards, cfg.hinge)).mean()
    return LossOutput(loss, {**reward_metrics(rewards, loss), **_pair_metrics(traj, [(k, j)], [w], [d_j], [d_0])})


def reward_gradient(traj: Trajectory, reward_fn: RewardFn, hinge: float | None):
    """g = d l(R(x_0)) / d x_0 per sample (decoder + reward graph freed on return) -> (rewards (B,), l (B,), g)."""
    x0 = traj.sample.detach().requires_grad_(True)
    with torch.enable_grad():
        rewards = call_reward(reward_fn, x0)
        per_sample = reward_loss(rewards, hinge)
        (g,) = torch.autograd.grad(per_sample.sum(), x0)
    return rewards.detach(), per_sample.detach(), g


def decoupled_objective(velocity: VelocityFn, traj: Trajectory, pairs: list[tuple[int, int]], reward_fn: RewardFn,
                        cfg: LeapAlignConfig, cond: Any = None,
                        backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    """Mean over `pairs` of the LeapAlign loss, gradient-identical to the coupled form.

    With `backward`, each pair's surrogate is backpropagated as soon as it is built, so one pair's two leap
    graphs are alive at a time; the returned loss is then detached (backward_done=True).
    """
    rewards, per_sample, g = reward_gradient(traj, reward_fn, cfg.hinge)
    total = None
    ws, djs, d0s = [], [], []
    for k, j in pairs:
        xhat_j, xhat_0 = leaps(velocity, traj, k, j, cfg.alpha, cond, cfg.leaps == 1)
        w, d_j, d_0 = similarity_weight(traj, j, xhat_j, xhat_0, cfg)
        ws.append(w), djs.append(d_j), d0s.append(d_0)
        w = w.to(g.dtype)
        surrogate = (w * (g * xhat_0).flatten(1).sum(1)).mean()
        value = (w * per_sample).mean()
        # value of the real loss, gradient of the surrogate
        part = (surrogate - surrogate.detach() + value) / len(pairs)
        if backward is not None:
            backward(part)
            part = part.detach()
        total = part if total is None else total + part
    metrics = {**reward_metrics(rewards, total), **_pair_metrics(traj, pairs, ws, djs, d0s)}
    return LossOutput(total, metrics, backward_done=backward is not None)


def step(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, reward_fn: RewardFn,
         cfg: LeapAlignConfig, generator: torch.Generator,
         backward: Callable[[torch.Tensor], None] | None = None) -> LossOutput:
    """One LeapAlign iteration: no-grad rollout, `pairs_per_rollout` leap pairs, loss (steps 1-9 of the module docstring)."""
    num_steps = check_schedule_batch(noise, sigmas)
    traj = sample_trajectory(velocity, noise, sigmas, cond)
    draw = sample_pair if cfg.leaps == 2 else sample_start
    pairs = [draw(num_steps, generator, cfg.min_step, cfg.max_step) for _ in range(cfg.pairs_per_rollout)]
    if cfg.decoupled:
        return decoupled_objective(velocity, traj, pairs, reward_fn, cfg, cond, backward)
    outs = [leap_objective(velocity, traj, k, j, reward_fn, cfg, cond) for k, j in pairs]
    loss = sum(o.loss for o in outs) / len(outs)
    metrics = {key: sum(o.metrics[key] for o in outs) / len(outs) for key in outs[0].metrics}
    metrics["loss"] = float(loss.detach())
    return LossOutput(loss, metrics)
