"""Fine-tune the mode world's base model with any registered method: a small in-process loop (no accelerate).

Per iteration: `conds_per_iter` training conditions (drawn without replacement from the train split) x `group`
samples each (contiguous blocks: the GRPO family's groups; the direct-gradient methods see the same 64 samples),
independent noise, then exactly the trainer's call
    out = METHODS[name].step(velocity, noise, sigmas, features, reward_fn, cfg, generator, **extra)
with `iteration=` for MixGRPO, backward unless the step did it, gradient clipping at 1.0 and one AdamW step
(the paper's betas and weight decay). Every method gets the same lr, iterations, batch and rollout steps unless
the protocol says otherwise (demo.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from leapalign.flow import sample_trajectory, sigma_schedule
from leapalign.methods import get_method
from leapalign.modes.metrics import summary
from leapalign.modes.model import VelocityMLP
from leapalign.modes.rewards import reward as make_reward
from leapalign.modes.world import ModeWorld


@dataclass(frozen=True)
class ModeRun:
    """One fine-tuning run. `args`: the method's config fields; `name`: the row it reports under."""

    name: str
    method: str
    args: dict
    lr: float
    iterations: int
    seed: int
    reward: str = "structure"
    num_steps: int = 10
    conds_per_iter: int = 8
    group: int = 8
    eval_every: int = 0  # 0: no curve


@dataclass(frozen=True)
class EvalSet:
    """Evaluation samples: condition index and fixed noise per sample (the same for every model and seed)."""

    cond: torch.Tensor  # (N,)
    noise: torch.Tensor  # (N, D)

    @staticmethod
    def build(world: ModeWorld, conds: list[int], per_cond: int, seed: int) -> "EvalSet":
        g = torch.Generator().manual_seed(seed)
        cond = torch.tensor(conds).repeat_interleave(per_cond)
        return EvalSet(cond, torch.randn(cond.shape[0], world.dim, generator=g))

    def head(self, n: int) -> "EvalSet":
        """Every condition's first n samples (a cheaper subset for curves)."""
        per = int((self.cond == self.cond[0]).sum())
        keep = (torch.arange(self.cond.shape[0]) % per) < n
        return EvalSet(self.cond[keep], self.noise[keep])


@dataclass
class RunResult:
    spec: ModeRun
    curve: list[dict] = field(default_factory=list)  # {"iteration", target_mode_rate, off_manifold_rate, reward}
    train_seconds: float = 0.0
    model: VelocityMLP | None = None


def velocity_of(model: VelocityMLP):
    return lambda x, sigma, features: model(x, sigma, features)


def sample(world: ModeWorld, model: VelocityMLP, ev: EvalSet, num_steps: int, keep_path: bool = False):
    """Final samples (N, D), or the whole trajectory (T+1, N, D) with keep_path."""
    traj = sample_trajectory(velocity_of(model), ev.noise, sigma_schedule(num_steps), world.features(ev.cond))
    return traj.latents if keep_path else traj.latents[-1]


def evaluate(world: ModeWorld, model: VelocityMLP, ev: EvalSet, reward: str, num_steps: int,
             base_x: torch.Tensor | None = None) -> dict[str, float]:
    x = sample(world, model, ev, num_steps)
    with torch.no_grad():
        r = make_reward(reward, world)(x, ev.cond)
    return summary(world, x, r, base_x)


def finetune(world: ModeWorld, base: VelocityMLP, spec: ModeRun, train_conds: list[int],
             curve_set: EvalSet | None = None) -> RunResult:
    """Train a copy of `base` per `spec`; the curve (every spec.eval_every iterations, on curve_set) is not timed."""
    model = copy.deepcopy(base).train().requires_grad_(True)
    method = get_method(spec.method)
    cfg = method.config(**spec.args)
    if method.samples_per_prompt(cfg) not in (1, spec.group):
        raise ValueError(f"{spec.method}: group_size must equal the mode world's group ({spec.group})")
    if method.needs_reference(cfg):
        raise ValueError(f"{spec.method}: kl_beta > 0 needs a frozen reference; the mode world runs with kl_beta=0")
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.999), weight_decay=1e-4)
    sigmas = sigma_schedule(spec.num_steps)
    reward_of = make_reward(spec.reward, world)
    data_g = torch.Generator().manual_seed(1000 + spec.seed)
    method_g = torch.Generator().manual_seed(2000 + spec.seed)
    pool = torch.tensor(train_conds)
    result = RunResult(spec)
    for it in range(spec.iterations + 1):
        if curve_set is not None and spec.eval_every and (it % spec.eval_every == 0 or it == spec.iterations):
            model.eval()
            result.curve.append({"iteration": it, **evaluate(world, model, curve_set, spec.reward, spec.num_steps)})
            model.train()
        if it == spec.iterations:
            break
        t0 = time.perf_counter()
        picks = pool[torch.randperm(len(pool), generator=data_g)[:spec.conds_per_iter]]
        cond = picks.repeat_interleave(spec.group)  # (B,), contiguous groups
        noise = torch.randn(cond.shape[0], world.dim, generator=data_g)
        features = world.features(cond)
        extra = {"iteration": it} if method.uses_iteration else {}
        out = method.step(velocity_of(model), noise, sigmas, features, lambda x0: reward_of(x0, cond), cfg,
                          method_g, **extra)
        if not out.backward_done:
            out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.train_seconds += time.perf_counter() - t0
    result.model = model.eval().requires_grad_(False)
    return result


def velocity_change(world: ModeWorld, base: VelocityMLP, model: VelocityMLP, ev: EvalSet,
                    num_steps: int) -> list[float]:
    """Per step i: mean ||v_model - v_base|| at the base model's own trajectory points (where the method changed
    the velocity field, by step)."""
    path = sample(world, base, ev, num_steps, keep_path=True)  # (T+1, N, D)
    sigmas, features = sigma_schedule(num_steps), world.features(ev.cond)
    out = []
    with torch.no_grad():
        for i in range(num_steps):
            s = sigmas[i].expand(ev.cond.shape[0])
            out.append(float((model(path[i], s, features) - base(path[i], s, features)).norm(dim=-1).mean()))
    return out
